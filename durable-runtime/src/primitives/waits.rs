//! What messages and events share: a step record with an effect, and a wait that
//! parks in the journal until what it waits for is written.

use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::ByteBuf;
use crate::error::{Error, Result};
use crate::journal::{Ack, Effect, StepKey, Wait, WaitFor, WaitRecord};
use crate::util::now_ms;

use super::*;

/// A primitive whose record is `()` and whose work is an [`Effect`] committed with it
/// (`send`, `set_event`): a replay does nothing, a first execution writes the effect,
/// made with the record's time.
pub(crate) async fn record_effect(
    claimed: Claimed,
    outside: Error,
    effect: Result<impl FnOnce(i64) -> Effect>,
) -> Result<()> {
    let op = op_or!(claimed, Err(outside));
    if let Some(recorded) = op.replayed::<()>() {
        or_stop!(op, recorded);
        return Ok(());
    }
    let effect = effect?;
    if !op.may_run() {
        return pending().await;
    }
    let now = now_ms();
    or_stop!(op, op.record_value(&(), effect(now), now).await);
    Ok(())
}

/// A message a `recv` of this execution took (recorded at its step) but has not
/// returned to the workflow code yet. If the `recv` is dropped before it returns it (a
/// durable `select` it lost, a cancelled workflow, a timeout around it), the message is
/// given back: its record is deleted and it goes back to the front of its queue.
///
/// Only this execution's own waits give back. A message an earlier execution recorded
/// may have reached the code then, even if this replay drops the `recv` unpolled (a
/// `recv` created before a select and moved into its losing branch), so it stays taken.
/// The window that leaves a message taken and never delivered is narrow: a crash after
/// the wait's answer committed and before its select's winner was recorded (a give-back
/// is queued before the winner's record, so it commits first).
pub(crate) struct Undelivered {
    ctx: Arc<crate::engine::context::WorkflowCtx>,
    key: StepKey,
    topic: String,
    /// The writer's answer to this execution's wait, not yet received. Dropped with
    /// it, the wait may have been answered (or be answered in the batch being written):
    /// the give-back, queued after the answer is dropped, undoes whatever it recorded.
    answer: Option<Ack<Option<Vec<u8>>>>,
}

impl Undelivered {
    pub(crate) fn new(op: &Op, topic: &str) -> Self {
        Undelivered {
            ctx: op.claim.ctx.clone(),
            key: op.key(),
            topic: topic.to_owned(),
            answer: None,
        }
    }

    /// The message reached the workflow code (or will not be given back).
    fn delivered(&mut self) {
        self.answer = None;
    }
}

impl Drop for Undelivered {
    fn drop(&mut self) {
        // The wait's answer is dropped before the give-back is queued: from then on the
        // writer answers this wait with nothing (it checks whether anyone still waits),
        // so the give-back, applied after, finds everything the wait will ever take.
        // Queued the other way round, a send between the two could still hand this wait
        // a message that nothing gives back.
        let Some(mut answer) = self.answer.take() else {
            return;
        };
        let reply = answer.try_reply();
        drop(answer);
        if matches!(reply, Some(Ok(None) | Err(_))) {
            // Timed out, failed, or answered and taken already: nothing to give back.
            return;
        }
        if self.ctx.runs().is_none() {
            // A replay check: nothing is written.
            return;
        }
        #[cfg(feature = "testkit")]
        if self.ctx.crashed() {
            // A simulated crash: nothing of the "process" runs again.
            return;
        }
        tracing::debug!(workflow = %self.key.workflow_id, path = %self.key.path, "giving back a message its recv never delivered");
        // Nobody waits for the answer: if it fails, the message stays recorded at the
        // recv (taken once, not lost from the journal).
        drop(
            self.ctx
                .store
                .give_back(self.key.clone(), std::mem::take(&mut self.topic)),
        );
    }
}

/// A recorded wait for a message or an event: replays what it recorded, or waits in the
/// journal writer (woken by the write it waits for) until its deadline.
pub(crate) async fn wait<T: Serialize + DeserializeOwned>(
    op: &Op,
    what: WaitFor,
    timeout: Option<Duration>,
    mut undelivered: Option<Undelivered>,
) -> Option<T> {
    let answer: Option<ByteBuf> = match op.replayed::<Option<ByteBuf>>() {
        Some(recorded) => or_stop!(op, recorded),
        None => {
            if !op.may_run() {
                return pending().await;
            }
            let now = now_ms();
            // A wait that began before a restart keeps the deadline it recorded then.
            let deadline_at = op
                .claim
                .ctx
                .started(&op.claim.path)
                .and_then(|s| s.wake_at)
                .or_else(|| timeout.map(|t| now.saturating_add(millis(t))));
            let record = WaitRecord {
                key: op.key(),
                started_at: now,
                deadline_at,
            };
            let ctx = &op.claim.ctx;
            // Parked while it waits: the run may go dormant (see `WorkflowCtx::park`).
            let mut parked = match ctx.dormancy {
                Some(_) => ctx.park(
                    &op.claim.path,
                    crate::engine::context::ParkedOn::Write(what.clone()),
                    deadline_at,
                ),
                None => None,
            };
            let ack = ctx.store.wait(Wait {
                what,
                record: Some(record.clone()),
                park: true,
            });
            // Held where a drop can see it: see `Undelivered`.
            let mut own = None;
            let slot = match undelivered.as_mut() {
                Some(u) => &mut u.answer,
                None => &mut own,
            };
            let ack = slot.insert(ack);
            let answered = match deadline_at {
                None => ack.await,
                Some(at) => {
                    tokio::select! {
                        biased;
                        answer = &mut *ack => answer,
                        () = sleep_until_ms(at) => {
                            parked = None;
                            // Gives the wait up, unless it was answered meanwhile; the
                            // writer decides, so a message is never both taken and missed.
                            let expired = op.claim.ctx.store.expire(record);
                            *slot = Some(expired);
                            let _busy = op.claim.ctx.busy();
                            match slot.as_mut() {
                                Some(expired) => expired.await,
                                None => return pending().await,
                            }
                        }
                    }
                }
            };
            drop(parked);
            match answered {
                Ok(v) => v.map(ByteBuf),
                Err(e) => return op.stop(e.into()).await,
            }
        }
    };
    if let Some(u) = undelivered.as_mut() {
        u.delivered();
    }
    match answer {
        None => None,
        Some(bytes) => Some(or_stop!(op, op.decode::<T>(&bytes.0))),
    }
}
