//! Errors.
//!
//! Every fallible operation returns [`Error`]. Errors are values that can be cloned: one
//! workflow failure reaches every [`WorkflowHandle`](crate::WorkflowHandle) waiting on it.
//! Each variant's message carries its cause (no variant also returns it from
//! [`source`](std::error::Error::source), so reports do not print it twice).

use std::fmt;
use std::path::PathBuf;

use crate::codec::{CodecError, Fingerprint};
use crate::path::StepPath;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another runtime, in this process or another, holds the journal open.
    #[error(
        "journal {} is in use by another runtime (it holds {}); stop that runtime or open another file. \
         The lock is released when its process exits, however it exits; deleting the lock file does \
         not release it, it lets two runtimes run the same workflows",
        path.display(),
        lock.display()
    )]
    Locked {
        /// The journal file.
        path: PathBuf,
        /// What is held: the lock file, or, when another runtime of this process holds
        /// the same file under another name (a hard link), the name it opened.
        lock: PathBuf,
    },

    /// The journal could not be opened, read or written.
    #[error("{0}")]
    Store(StoreError),

    /// A value could not be encoded for the journal.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded, such as `the input of workflow order-42`.
        what: String,
        /// What the codec reported.
        reason: CodecError,
    },

    /// A journal row is damaged: it fails its checksum, or its bytes are not a value
    /// durable wrote. The journal is left as it is and the workflow stays pending;
    /// restore the journal from a backup to resume it.
    #[error(
        "workflow {workflow_id}: the recorded {location} is damaged ({reason}); the journal is left \
         as it is and the workflow stays pending: restore the journal from a backup"
    )]
    Corrupt {
        /// The workflow whose row is corrupt.
        workflow_id: String,
        /// Which row.
        location: Location,
        /// What the codec reported.
        reason: CodecError,
    },

    /// A recorded value does not fit the type the code now reads it as: the type changed
    /// since the value was recorded, in a way that cannot keep its meaning (a field's
    /// type changed, a recorded variant was removed, a number no longer fits). Nothing
    /// is returned in its place: the journal is left as it is and the workflow stays
    /// pending. Change the type back, or evolve it compatibly (see the crate
    /// documentation, "Changing recorded types"), and reopen the journal to resume it.
    #[error(
        "workflow {workflow_id}: the recorded {location} does not decode as `{type_name}`: {reason}. \
         Its type changed since it was recorded: change it back, or change it in a way the \
         recorded value can follow (fields added with `#[serde(default)]`, variants kept by name), \
         then reopen the journal; the workflow stays pending until then"
    )]
    Incompatible {
        /// The workflow whose value does not fit.
        workflow_id: String,
        /// Which recorded value.
        location: Location,
        /// The type the code reads it as.
        type_name: String,
        /// What does not fit, and where in the value.
        reason: CodecError,
    },

    /// Replay diverged: the code asked for a different step than the journal recorded at
    /// a path, asked for the same step with other arguments, or finished without asking
    /// for a recorded step. The journal is left as it is and the workflow stays pending;
    /// make the code deterministic (or restore the old code) and reopen the journal to
    /// resume it.
    #[error("{}", divergence(workflow_id, path, recorded, requested.as_deref(), arguments.as_deref()))]
    Divergence {
        /// The workflow that diverged.
        workflow_id: String,
        /// The step path where it diverged.
        path: StepPath,
        /// The step name recorded at that path.
        recorded: String,
        /// The step name the code asked for, or `None` if it never asked for that path.
        requested: Option<String>,
        /// Set when the code asked for the recorded step, with other arguments (boxed:
        /// errors travel in every `Result` of the runtime).
        arguments: Option<Box<ArgumentsChanged>>,
    },

    /// The workflow failed for good and the failure is recorded in the journal: a step
    /// or the workflow body panicked. Starting the same id again returns this error.
    #[error("workflow {workflow_id} failed: {message}")]
    Failed {
        /// The workflow that failed.
        workflow_id: String,
        /// What failed.
        kind: FailureKind,
        /// The recorded message.
        message: String,
    },

    /// The journal holds a workflow id that was started for a different workflow.
    #[error(
        "workflow id {workflow_id} belongs to workflow `{existing}`, not `{requested}`; use another id"
    )]
    WorkflowMismatch {
        /// The id.
        workflow_id: String,
        /// The workflow name recorded for it.
        existing: String,
        /// The workflow the caller tried to start.
        requested: String,
    },

    /// A workflow could not start its child: the child's id (`<parent id>/<path>`)
    /// belongs to a workflow that is not that parent's child (one started under that id
    /// with [`Runtime::start_with_id`](crate::Runtime::start_with_id)). The parent is
    /// not handed that workflow's result; it stays pending.
    #[error(
        "workflow {parent_id} cannot start its child {workflow_id}: a workflow that is not its child \
         already has that id (started with that id by hand); give your workflows ids that their \
         parents' children cannot take, and move that one's row aside, then reopen the journal"
    )]
    ChildIdTaken {
        /// The child's id.
        workflow_id: String,
        /// The parent.
        parent_id: String,
    },

    /// A pending workflow's name is not registered in this program (the `#[workflow]`
    /// was renamed or removed). It stays pending in the journal.
    #[error(
        "workflow {workflow_id} is a `{name}`, but no `#[workflow]` of that name is linked into this program"
    )]
    UnknownWorkflow {
        /// The workflow id.
        workflow_id: String,
        /// The recorded workflow name.
        name: String,
    },

    /// Two `#[workflow]` functions registered the same name, so recovery could not tell
    /// which one owns a journal row. Give one of them `#[workflow(name = "...")]`.
    #[error(
        "two `#[workflow]` functions are named `{name}`; give one a distinct `#[workflow(name = \"...\")]`"
    )]
    DuplicateWorkflowName {
        /// The name both use.
        name: String,
    },

    /// A step takes app state of a type (a `#[state]` parameter,
    /// [`StepContext::state`](crate::StepContext::state)) that the runtime was not given
    /// with [`RuntimeBuilder::state`](crate::RuntimeBuilder::state). The step's body did
    /// not run; the workflow stays pending in the journal, and runs on at the next open
    /// of a runtime that has the state.
    #[error(
        "workflow {workflow_id}: step {step} takes app state of type `{type_name}`, which this \
         runtime was not given; register it with `Runtime::builder(..).state(Arc::new(..))` \
         (the workflow stays pending and runs on at the next open)"
    )]
    MissingState {
        /// The workflow id.
        workflow_id: String,
        /// The step: its name, or its path when asked through its context.
        step: String,
        /// The state's type, as `std::any::type_name` spells it.
        type_name: &'static str,
    },

    /// [`RuntimeBuilder::state`](crate::RuntimeBuilder::state) was given two values of
    /// one type: a step could not tell which it takes.
    #[error(
        "app state of type `{type_name}` was registered twice; register each type once (to \
         keep two values of one type, wrap each in a type of its own)"
    )]
    StateTwice {
        /// The type registered twice.
        type_name: &'static str,
    },

    /// The runtime stopped (its tokio runtime shut down, or its task was dropped) before
    /// the workflow finished. The workflow stays pending in the journal and resumes at the
    /// next [`Runtime::open`](crate::Runtime::open).
    #[error(
        "the runtime stopped before workflow {workflow_id} finished; it stays pending and resumes at the next open"
    )]
    Stopped {
        /// The workflow id.
        workflow_id: String,
    },

    /// The workflow was cancelled ([`Runtime::cancel`](crate::Runtime::cancel), its
    /// deadline, or its parent's cancellation) and the cancellation is recorded.
    /// [`Runtime::resume`](crate::Runtime::resume) continues it from its last recorded
    /// step.
    #[error("workflow {workflow_id} was cancelled: {reason}")]
    Cancelled {
        /// The workflow id.
        workflow_id: String,
        /// Why.
        reason: CancelReason,
    },

    /// The journal has no workflow with this id.
    #[error("no workflow {workflow_id} in the journal")]
    NotFound {
        /// The id asked for.
        workflow_id: String,
    },

    /// [`Runtime::resume`](crate::Runtime::resume) was asked for a workflow that is not
    /// cancelled or failed.
    #[error(
        "workflow {workflow_id} is {status}; only a cancelled or failed workflow can be resumed"
    )]
    NotResumable {
        /// The workflow id.
        workflow_id: String,
        /// Its status: `pending` (it runs, or resumes at the next open) or `completed`.
        status: &'static str,
    },

    /// A workflow primitive that only means something inside a workflow (such as
    /// [`recv`](crate::recv)) was used outside one.
    #[error("`{operation}` was called outside a workflow; {hint}")]
    NotInWorkflow {
        /// The primitive, such as `durable_runtime::recv`.
        operation: &'static str,
        /// What to do instead.
        hint: &'static str,
    },

    /// Something a workflow body did would escape its journal: run again on every
    /// replay (starting a workflow through a [`Runtime`](crate::Runtime) handle), or run
    /// without being recorded (a step called in a future the body spawned without
    /// making it a branch). It is refused, and the message says what to use instead.
    #[error("workflow {workflow_id}: {operation} {problem}; {hint}")]
    Unrecorded {
        /// The workflow whose body did it.
        workflow_id: String,
        /// What was done, such as ``Runtime::start`` or ``step `charge` ``.
        operation: String,
        /// Why it escapes the journal.
        problem: &'static str,
        /// What to do instead.
        hint: &'static str,
    },

    /// The runtime was closed ([`Runtime::close`](crate::Runtime::close)): it takes no
    /// new work. Open the journal again to go on.
    #[error("the runtime of journal {} was closed; open the journal again to start or change workflows", path.display())]
    Closed {
        /// The journal file.
        path: PathBuf,
    },

    /// A workflow id was rejected.
    #[error("invalid workflow id {id:?}: {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why it is invalid.
        reason: &'static str,
    },

    /// A queue was declared or used wrongly: a name or limit that is not valid, a
    /// queue the runtime was not built with, or one declared twice.
    #[error("queue {queue:?}: {problem}")]
    Queue {
        /// The queue's name.
        queue: String,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// A cron schedule was refused: its expression is not valid cron (or never fires),
    /// its time zone is unknown, or it is scheduled twice in one runtime.
    #[error("schedule {schedule:?}: {problem}")]
    Schedule {
        /// The schedule's name.
        schedule: String,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// An enqueue was refused because a workflow of the same queue with the same
    /// deduplication id is queued or running (see
    /// [`Enqueue::dedup`](crate::Enqueue::dedup)).
    #[error(
        "workflow {existing:?} with deduplication id {dedup_id:?} is already queued or running \
         in queue {queue:?}, so this one was not enqueued; wait for it, or enqueue with \
         `OnDuplicate::Join` to get its handle instead"
    )]
    Duplicate {
        /// The queue.
        queue: String,
        /// The deduplication id.
        dedup_id: String,
        /// The id of the workflow that holds it.
        existing: String,
    },

    /// A fork ([`Runtime::fork`](crate::Runtime::fork)) was refused: its new id is
    /// taken by a workflow that is not a fork of the same workflow.
    #[error(
        "workflow id {workflow_id:?} is taken by a workflow that is not a fork of {origin:?}; \
         fork under another id"
    )]
    IdTaken {
        /// The id asked for.
        workflow_id: String,
        /// The workflow the fork was of.
        origin: String,
    },

    /// The runtime that owns the journal applied a [`Client`](crate::Client)'s command
    /// and it failed there; nothing was done.
    #[error(
        "workflow {workflow_id}: the runtime that owns the journal refused the command: {reason}"
    )]
    Command {
        /// The workflow the command was for.
        workflow_id: String,
        /// Why, as the owner recorded it.
        reason: String,
    },
}

impl Error {
    /// The workflow id this error is about, if it is about one.
    pub fn workflow_id(&self) -> Option<&str> {
        match self {
            Error::Corrupt { workflow_id, .. }
            | Error::Incompatible { workflow_id, .. }
            | Error::Divergence { workflow_id, .. }
            | Error::Failed { workflow_id, .. }
            | Error::WorkflowMismatch { workflow_id, .. }
            | Error::UnknownWorkflow { workflow_id, .. }
            | Error::Cancelled { workflow_id, .. }
            | Error::NotFound { workflow_id }
            | Error::NotResumable { workflow_id, .. }
            | Error::Unrecorded { workflow_id, .. }
            | Error::ChildIdTaken { workflow_id, .. }
            | Error::Command { workflow_id, .. }
            | Error::IdTaken { workflow_id, .. }
            | Error::Stopped { workflow_id } => Some(workflow_id),
            _ => None,
        }
    }
}

/// The error for a recorded value that did not decode as `T`: [`Error::Corrupt`] if its
/// bytes are not a valid encoding, [`Error::Incompatible`] if they are a valid value of
/// another type.
pub(crate) fn undecodable<T: ?Sized>(
    workflow_id: impl Into<String>,
    location: Location,
    reason: CodecError,
) -> Error {
    let workflow_id = workflow_id.into();
    if reason.is_malformed() {
        Error::Corrupt {
            workflow_id,
            location,
            reason,
        }
    } else {
        Error::Incompatible {
            workflow_id,
            location,
            type_name: crate::codec::type_name::<T>(),
            reason,
        }
    }
}

/// A step or primitive called inside a future that workflow `workflow_id` spawned
/// without making it a branch.
pub(crate) fn spawned_unrecorded(workflow_id: &str, operation: String) -> Error {
    Error::Unrecorded {
        workflow_id: workflow_id.to_owned(),
        operation,
        problem: "was called in a future the workflow passed to `tokio::spawn` (or another \
                  spawn) that is not a branch of its body, so it would run without being \
                  recorded, and run again on every replay",
        hint: "mark the async function that calls it `#[branch]`, or spawn an `async` block \
               written in the workflow body (both are branches, numbered and recorded)",
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

/// How the arguments of a step differ from the ones recorded with its result (in
/// [`Error::Divergence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ArgumentsChanged {
    /// The fingerprint recorded with the step's result.
    pub recorded: Fingerprint,
    /// The fingerprint of the arguments the code passes now.
    pub requested: Fingerprint,
    /// The arguments the code passes now, rendered briefly (JSON-like, cut when long).
    pub requested_preview: String,
}

fn divergence(
    workflow_id: &str,
    path: &StepPath,
    recorded: &str,
    requested: Option<&str>,
    arguments: Option<&ArgumentsChanged>,
) -> String {
    match (requested, arguments) {
        (Some(_), Some(a)) => format!(
            "workflow {workflow_id} diverged from its journal at step {path}: `{recorded}` was \
             recorded with other arguments (fingerprint {}) than the code passes now, {} \
             (fingerprint {}); a workflow must call the same steps with the same arguments on \
             every run (iterating a HashMap or HashSet, or calling steps in the order others \
             finish, gives other arguments on replay). The journal is left as it is: restore \
             the old code, or make this deterministic, then reopen the journal",
            a.recorded, a.requested_preview, a.requested
        ),
        (Some(r), None) => format!(
            "workflow {workflow_id} diverged from its journal at step {path}: recorded \
             `{recorded}`, but the code asked for `{r}`"
        ),
        (None, _) => format!(
            "workflow {workflow_id} diverged from its journal at step {path}: recorded \
             `{recorded}`, but the code finished without asking for it"
        ),
    }
}

/// Which recorded value a [`Error::Corrupt`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// The workflow's input.
    Input,
    /// The workflow's output.
    Output,
    /// A step's output.
    Step {
        /// The step's path.
        path: StepPath,
        /// The step's recorded name.
        name: String,
    },
    /// An event's value.
    Event {
        /// The event's key.
        key: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Input => f.write_str("workflow input"),
            Location::Output => f.write_str("workflow output"),
            Location::Step { path, name } => write!(f, "output of step {path} (`{name}`)"),
            Location::Event { key } => write!(f, "value of event `{key}`"),
        }
    }
}

/// What kind of recorded failure an [`Error::Failed`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// A step panicked; the panic is recorded as that step's result.
    StepPanicked,
    /// The workflow body panicked outside any step.
    WorkflowPanicked,
    /// The workflow's output could not be encoded.
    OutputNotEncodable,
    /// A step configured with `#[step(on_interrupt = "fail")]` was interrupted by a
    /// crash after its body started and before its result was recorded, so it was not
    /// run again.
    StepInterrupted,
}

impl FailureKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureKind::StepPanicked => "step_panicked",
            FailureKind::WorkflowPanicked => "workflow_panicked",
            FailureKind::OutputNotEncodable => "output_not_encodable",
            FailureKind::StepInterrupted => "step_interrupted",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            FailureKind::StepPanicked,
            FailureKind::WorkflowPanicked,
            FailureKind::OutputNotEncodable,
            FailureKind::StepInterrupted,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Why a workflow was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`Runtime::cancel`](crate::Runtime::cancel) was called for it or for an ancestor.
    Requested,
    /// Its deadline ([`WorkflowCall::timeout`](crate::WorkflowCall::timeout)), or an
    /// ancestor's, passed before it finished.
    DeadlineExceeded,
}

impl CancelReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CancelReason::Requested => "cancelled",
            CancelReason::DeadlineExceeded => "deadline_exceeded",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [CancelReason::Requested, CancelReason::DeadlineExceeded]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelReason::Requested => "cancellation was requested",
            CancelReason::DeadlineExceeded => "its deadline passed",
        })
    }
}

/// The journal could not be opened, read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("journal {}: {message}", path.display())]
pub struct StoreError {
    path: PathBuf,
    kind: StoreErrorKind,
    message: String,
}

/// What kind of [`StoreError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The file exists but is not a durable journal: not an SQLite database (or one whose
    /// first page is destroyed), another application's database, or a directory.
    NotAJournal,
    /// The file is a durable journal, but damaged: SQLite found a malformed page, an
    /// index disagrees with its table, or durable's own tables are unreadable. Restore
    /// it from a backup; [`JournalView::check`](crate::JournalView::check) lists what
    /// it can see of the damage.
    Damaged,
    /// The journal was written by a newer version of durable (its schema is newer).
    NewerSchema,
    /// A row the runtime wrote earlier violates the journal's invariants (for example a
    /// step recorded twice, or a status that is not one of ours).
    Invariant,
    /// The runtime's writer has stopped (the runtime is shutting down or failed).
    Closed,
    /// The process may not write the journal: the file or its directory lacks write
    /// permission, or the file system is read-only.
    ReadOnly,
    /// Any other SQLite, PostgreSQL or file system failure.
    Io,
    /// Another runtime sharing the PostgreSQL journal took over this workflow: this
    /// runtime was out of touch with the journal (paused, or cut off from the database)
    /// for longer than its lease. The workflow goes on there; this runtime records
    /// nothing more for it.
    TakenOver,
}

impl StoreError {
    pub(crate) fn new(
        path: impl Into<PathBuf>,
        kind: StoreErrorKind,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The journal file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// What went wrong, without the journal's name.
    #[cfg(feature = "postgres")]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}
