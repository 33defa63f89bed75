//! Workflow definitions, calls and the registry recovery uses.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::sync::Arc;
use std::time::Duration;

use crate::codec::fingerprint::Args;
use crate::codec::{Codec, CodecError, encode_checked, type_name};
use crate::engine::scope::{self, Claim};
#[allow(unused_imports)] // in rustdoc links
use crate::error::CancelReason;
use crate::error::{Error, Result};
use crate::util::now_ms;

/// What a run ends with, as every handle of it sees it: the encoded output, or why it
/// has none.
pub(crate) type Outcome = Arc<Result<Vec<u8>>>;

/// A run to start: which workflow, with which input, as a child of which workflow,
/// with which deadline.
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) def: &'static dyn ErasedWorkflow,
    pub(crate) input: Vec<u8>,
    pub(crate) parent_id: Option<Arc<str>>,
    pub(crate) deadline_at: Option<i64>,
}

/// A boxed, sendable future: what a workflow body becomes once started.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A `#[workflow]` function: its name and its body, taking the arguments as one tuple.
/// Built by the macro; not API.
#[doc(hidden)]
pub struct WorkflowDef<I, O> {
    name: &'static str,
    run: fn(I) -> BoxFuture<O>,
}

impl<I, O> WorkflowDef<I, O> {
    /// A workflow named `name` whose body is `run`.
    pub const fn new(name: &'static str, run: fn(I) -> BoxFuture<O>) -> Self {
        WorkflowDef { name, run }
    }
}

impl<I, O> fmt::Debug for WorkflowDef<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A started workflow body: its future encodes the output. Or, if the recorded input did
/// not decode, why, with the input type's name.
pub(crate) type Started = Result<BoxFuture<Result<Vec<u8>, CodecError>>, (CodecError, String)>;

/// A workflow with its input and output types erased, for recovery by name.
pub(crate) trait ErasedWorkflow: Sync + fmt::Debug + 'static {
    fn name(&self) -> &'static str;
    /// Decodes the recorded input and starts the body; the future encodes the output
    /// with `codec`. A failed decode comes with the input type's name.
    fn start(&'static self, input: &[u8], codec: Codec) -> Started;
}

impl<I, O> ErasedWorkflow for WorkflowDef<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&'static self, input: &[u8], codec: Codec) -> Started {
        let input: I = Codec::decode(input).map_err(|e| (e, type_name::<I>()))?;
        let body = (self.run)(input);
        Ok(Box::pin(async move {
            let output = body.await;
            encode_checked(codec, &output).map(|(_, bytes)| bytes)
        }))
    }
}

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

/// One registered workflow. The macro submits one per `#[workflow]` function, so
/// recovery finds every workflow linked into the program without a list.
#[doc(hidden)]
#[derive(Debug)]
pub struct WorkflowEntry(pub(crate) &'static dyn ErasedWorkflow);

impl WorkflowEntry {
    /// Registers `def`.
    pub const fn new<I, O>(def: &'static WorkflowDef<I, O>) -> Self
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        WorkflowEntry(def)
    }
}

inventory::collect!(WorkflowEntry);

/// All registered workflows.
pub(crate) fn registered() -> impl Iterator<Item = &'static dyn ErasedWorkflow> {
    inventory::iter::<WorkflowEntry>.into_iter().map(|e| e.0)
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

/// Every workflow linked into the program, by name.
pub(crate) fn registry() -> Result<HashMap<&'static str, &'static dyn ErasedWorkflow>> {
    let mut registry: HashMap<&'static str, &'static dyn ErasedWorkflow> = HashMap::new();
    for def in registered() {
        if registry.insert(def.name(), def).is_some() {
            return Err(Error::DuplicateWorkflowName {
                name: def.name().to_owned(),
            });
        }
    }
    Ok(registry)
}
