//! Workflow definitions, calls and the registry recovery uses.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::sync::Arc;

use crate::codec::{Codec, CodecError, encode_checked, type_name};
#[allow(unused_imports)] // in rustdoc links
use crate::error::CancelReason;
use crate::error::{Error, Result};

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
    /// A hash of the function's code as written (see [`ErasedWorkflow::code`]).
    code: u64,
}

impl<I, O> WorkflowDef<I, O> {
    /// A workflow named `name` whose body is `run`.
    pub const fn new(name: &'static str, run: fn(I) -> BoxFuture<O>) -> Self {
        WorkflowDef { name, run, code: 0 }
    }

    /// The same, with the hash of its function's code.
    #[must_use]
    pub const fn code(mut self, code: u64) -> Self {
        self.code = code;
        self
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
    /// A hash of the `#[workflow]` function's code as written: another number means
    /// other code, whose waits a replay must find (see `durable_dormant`).
    fn code(&self) -> u64;
    /// Decodes the recorded input and starts the body; the future encodes the output
    /// with `codec`. A failed decode comes with the input type's name.
    fn start(&'static self, input: &[u8], codec: Codec) -> Started;
    /// Whether `input` decodes as the workflow's arguments; if not, why, and their
    /// type's name.
    fn accepts(&self, input: &[u8]) -> Result<(), (CodecError, String)>;
}

impl<I, O> ErasedWorkflow for WorkflowDef<I, O>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    O: Serialize + DeserializeOwned + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn code(&self) -> u64 {
        self.code
    }

    fn accepts(&self, input: &[u8]) -> Result<(), (CodecError, String)> {
        Codec::decode::<I>(input)
            .map(drop)
            .map_err(|e| (e, type_name::<I>()))
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
