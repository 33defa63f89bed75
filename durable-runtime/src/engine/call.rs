//! A call to a `#[workflow]` function, made before it is started: its input, its
//! options, and the position it claimed in a calling workflow.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::sync::Arc;
use std::time::Duration;

use crate::codec::fingerprint::Args;
use crate::codec::{Codec, CodecError, encode_checked};
#[allow(unused_imports)] // in rustdoc links
use crate::error::CancelReason;
use crate::error::{Error, Result};
use crate::util::now_ms;

use crate::engine::scope::{self, Claim};
use crate::engine::workflow::{ErasedWorkflow, Launch, WorkflowDef};

/// A workflow's input, kept as a value until the runtime that starts it says how to
/// encode it.
pub(crate) trait Input: Send + 'static {
    fn encode(&self, codec: Codec) -> Result<Vec<u8>, CodecError>;
    /// Adds the input to the fingerprint of a child call's arguments.
    fn fingerprint(&self, args: &mut Args);
}

impl<I: Serialize + DeserializeOwned + Send + 'static> Input for I {
    fn encode(&self, codec: Codec) -> Result<Vec<u8>, CodecError> {
        encode_checked(codec, self).map(|(_, bytes)| bytes)
    }

    fn fingerprint(&self, args: &mut Args) {
        args.arg(self);
    }
}

/// A call to a `#[workflow]` function: which workflow, with which (encoded) input.
///
/// Calling a workflow function runs nothing; pass the call to
/// [`Runtime::start`](crate::Runtime::start) or
/// [`Runtime::start_with_id`](crate::Runtime::start_with_id), which journal it and run
/// it. `O` is the workflow's return type.
///
/// Inside a workflow, awaiting a call runs it as a *child workflow* (see
/// [`IntoFuture for WorkflowCall`](#impl-IntoFuture-for-WorkflowCall<O>)); the call
/// claims its position in the parent when the function is called, like a step.
#[must_use = "calling a workflow function runs nothing: pass the call to `Runtime::start`, or await it inside a workflow"]
pub struct WorkflowCall<O> {
    pub(crate) def: &'static dyn ErasedWorkflow,
    pub(crate) input: Box<dyn Input>,
    pub(crate) timeout: Option<Duration>,
    /// The position claimed in the calling workflow, if it was called inside one.
    pub(crate) claim: Option<Claim>,
    _output: PhantomData<fn() -> O>,
}

impl<O> WorkflowCall<O> {
    #[doc(hidden)]
    pub fn new<I>(def: &'static WorkflowDef<I, O>, input: I) -> Self
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        WorkflowCall {
            def,
            input: Box::new(input),
            timeout: None,
            claim: scope::claim(),
            _output: PhantomData,
        }
    }

    /// The workflow's name, as recorded in the journal.
    pub fn name(&self) -> &'static str {
        self.def.name()
    }

    /// Adds the call (the workflow's name and its input) to the fingerprint of a child
    /// call's arguments: a parent that calls another child at the same position
    /// diverges instead of receiving the recorded child's result.
    pub(crate) fn fingerprint(&self, args: &mut Args) {
        args.arg(self.def.name());
        self.input.fingerprint(args);
    }

    /// Gives the run a deadline, `timeout` after it starts: if it has not finished by
    /// then, it and its children are cancelled ([`Error::Cancelled`] with
    /// [`CancelReason::DeadlineExceeded`]). The deadline is recorded when the run
    /// starts, so it holds across restarts. Starting an id that exists keeps that run's
    /// deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_runtime::{CancelReason, Error, Runtime, sleep, workflow};
    ///
    /// #[workflow]
    /// async fn slow() -> u32 {
    ///     sleep(Duration::from_secs(3600)).await;
    ///     1
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// let h = rt.start(slow().timeout(Duration::from_millis(50))).await?;
    /// assert!(matches!(
    ///     h.result().await,
    ///     Err(Error::Cancelled { reason: CancelReason::DeadlineExceeded, .. })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The input, encoded with `codec` and checked, as a run to start under `id`.
    pub(crate) fn into_launch(
        self,
        id: &str,
        parent_id: Option<Arc<str>>,
        codec: Codec,
    ) -> Result<Launch> {
        let name = self.def.name();
        let input = self.input.encode(codec).map_err(|reason| Error::Encode {
            what: format!("the input of workflow {id} (`{name}`)"),
            reason,
        })?;
        let deadline_at = self
            .timeout
            .map(|t| now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
        Ok(Launch {
            def: self.def,
            input,
            parent_id,
            deadline_at,
        })
    }
}

impl<O> fmt::Debug for WorkflowCall<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowCall")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}
