//! What the transaction steps of both databases share ([`crate::sqlite::transaction`],
//! `crate::postgres::transaction`): the slot their closure's result goes through, how
//! a run becomes the step's record, and the end of the step.

use std::any::Any;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, encode_checked};
use crate::error::{Error, FailureKind};
use crate::journal::{RecordedOutcome, TxStep, TxWork};
use crate::primitives::{Op, or_stop};
use crate::util::{lock, now_ms, panic_message};

/// Where a transaction step's closure leaves its result (as decoded back from what
/// is recorded), or its panic's message.
pub(crate) struct TxSlot<T, E>(Arc<Mutex<Option<Ran<T, E>>>>);

/// A run's result, or its panic's message.
type Ran<T, E> = Result<Result<T, E>, String>;

impl<T, E> Clone for TxSlot<T, E> {
    fn clone(&self) -> Self {
        TxSlot(self.0.clone())
    }
}

impl<T, E> TxSlot<T, E>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    pub(crate) fn new() -> Self {
        TxSlot(Arc::default())
    }

    /// Forgets what an earlier run of the closure left.
    #[cfg(feature = "postgres")]
    pub(crate) fn clear(&self) {
        *lock(&self.0) = None;
    }

    /// What to record of a run of the closure (`ran`: its result, or its panic) of the
    /// step `label`, and whether its writes are kept; keeps the result (or the panic's
    /// message) for [`finish`]. `Err`: the result does not encode.
    pub(crate) fn ran(
        &self,
        codec: Codec,
        label: &str,
        ran: Result<Result<T, E>, Box<dyn Any + Send>>,
    ) -> Result<(RecordedOutcome, bool), String> {
        match ran {
            Ok(result) => {
                let keep = result.is_ok();
                let (back, bytes) = encode_checked(codec, &result)
                    .map_err(|e| format!("cannot encode the result of transaction {label}: {e}"))?;
                *lock(&self.0) = Some(Ok(back));
                Ok((RecordedOutcome::Output(bytes), keep))
            }
            Err(payload) => {
                let message = format!("{label} panicked: {}", panic_message(&*payload));
                *lock(&self.0) = Some(Err(message.clone()));
                Ok((RecordedOutcome::Panicked(message), false))
            }
        }
    }
}

/// The label of the step `op` in messages.
pub(crate) fn label(op: &Op) -> String {
    let key = op.key();
    format!("step {} (`{}`)", key.path, key.name)
}

/// Gives the step `op` and its `work` to the journal, and answers the result its
/// closure left in `slot`; a panic fails the workflow.
pub(crate) async fn finish<T, E>(op: &Op, work: TxWork, slot: TxSlot<T, E>) -> Result<T, E> {
    let step = TxStep {
        key: op.key(),
        started_at: now_ms(),
        work,
    };
    or_stop!(op, op.acked(op.claim.ctx.store.transaction(step)).await);
    let result = lock(&slot.0).take();
    match result {
        Some(Ok(result)) => result,
        panicked => {
            let message = match panicked {
                Some(Err(message)) => format!("transaction {message}"),
                _ => format!(
                    "transaction step {} (`{}`) panicked",
                    op.claim.path, op.name
                ),
            };
            let error = Error::Failed {
                workflow_id: op.claim.ctx.id.to_string(),
                kind: FailureKind::StepPanicked,
                message,
            };
            op.stop(error).await
        }
    }
}
