//! The journal store: every read and write the runtime makes to its journal goes through
//! [`Store`]. SQL lives only in the implementations ([`sqlite`]).

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{FailureKind, Location, StoreError};
use crate::path::StepPath;

mod crc;
pub(crate) mod sqlite;

pub(crate) use sqlite::SqliteStore;

/// The reply to a write, sent once the write is durable (or has failed).
pub(crate) type Ack<T = ()> = oneshot::Receiver<Result<T, StoreError>>;

/// Where workflow runs and step results are journaled.
///
/// Writes return at once with an [`Ack`] that resolves when the write is durable, so an
/// implementation can batch concurrent writes into one commit. Reads block; the runtime
/// calls them from `spawn_blocking`.
pub(crate) trait Store: Send + Sync + Debug + 'static {
    /// The journal's location, for error messages.
    fn path(&self) -> &Path;
    /// Inserts a workflow run unless one with that id exists; returns the existing one.
    fn create_workflow(&self, workflow: NewWorkflow) -> Ack<Created>;
    /// Records a step's result. A path is recorded at most once; a second record for the
    /// same path is an error and changes nothing.
    fn record_step(&self, step: StepRecord) -> Ack;
    /// Records a workflow's final outcome, if it is still pending.
    fn finish_workflow(&self, finish: Finish) -> Ack;
    /// All recorded steps of one workflow run, in one query.
    fn steps(&self, workflow_id: &str) -> Result<Vec<RecordedStep>, StoreError>;
    /// Every workflow run that has not finished.
    fn pending_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError>;
    /// How many write transactions have committed so far (for tests and benchmarks:
    /// a sequential step should cost one, concurrent steps should share them).
    fn commits(&self) -> u64;
    /// How long the waiter of a write enqueued just now should stay runnable (re-polled
    /// through the scheduler) before letting its task sleep until the ack wakes it.
    /// Zero when the write is unlikely to be acknowledged that soon. Staying runnable
    /// saves a sleep and a wake-up of a worker thread per sequential step where commits
    /// are faster than those, and costs the scheduler nothing else: the task yields on
    /// every poll.
    fn ack_spin(&self) -> Duration;
    /// Every workflow run, finished or not, oldest first (for replay checks).
    fn workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError>;
    /// Stops writing at once, as a crash would: nothing queued or being written is
    /// committed, and every later write fails. For fault injection in tests; a store
    /// that cannot stop early may ignore it.
    fn halt(&self) {}
    /// Whether [`halt`](Store::halt) was called: a simulated crash has happened, and the
    /// runtime must not poll anything of its workflows again (a killed process would
    /// not run them either).
    fn is_halted(&self) -> bool {
        false
    }
    /// A step body is about to run an attempt. For test instrumentation only: stores
    /// ignore it.
    fn step_started(&self, _workflow_id: &Arc<str>, _path: &StepPath, _name: &'static str) {}
}

/// A workflow run to create.
#[derive(Debug)]
pub(crate) struct NewWorkflow {
    pub(crate) id: Arc<str>,
    pub(crate) name: &'static str,
    pub(crate) input: Vec<u8>,
    pub(crate) app_version: Option<Arc<str>>,
    pub(crate) created_at: i64,
}

/// The answer to [`Store::create_workflow`].
#[derive(Debug)]
pub(crate) enum Created {
    New,
    Existing(WorkflowRecord),
}

/// Where a workflow run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordStatus {
    Pending,
    Completed,
    Failed,
}

impl RecordStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Pending => "pending",
            RecordStatus::Completed => "completed",
            RecordStatus::Failed => "failed",
        }
    }
}

/// A workflow run as the journal holds it.
#[derive(Debug, Clone)]
pub(crate) struct WorkflowRecord {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: RecordStatus,
    pub(crate) input: Vec<u8>,
    pub(crate) output: Option<Vec<u8>>,
    pub(crate) failure: Option<(FailureKind, String)>,
    /// Set if the input or output fails its checksum: which, and the message.
    pub(crate) damaged: Option<(Location, String)>,
}

/// What a step's record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordedOutcome {
    /// The encoded return value (an `Err` of the step's `Result` included).
    Output(Vec<u8>),
    /// The step panicked; the message.
    Panicked(String),
}

/// A step result to record.
#[derive(Debug)]
pub(crate) struct StepRecord {
    pub(crate) workflow_id: Arc<str>,
    pub(crate) path: StepPath,
    pub(crate) name: &'static str,
    pub(crate) outcome: RecordedOutcome,
    pub(crate) attempts: u32,
    pub(crate) started_at: i64,
    pub(crate) finished_at: i64,
}

/// A step result as the journal holds it.
#[derive(Debug, Clone)]
pub(crate) struct RecordedStep {
    pub(crate) path: StepPath,
    pub(crate) name: String,
    pub(crate) outcome: RecordedOutcome,
    pub(crate) attempts: u32,
    pub(crate) started_at: i64,
    pub(crate) finished_at: i64,
}

/// A workflow's final outcome.
#[derive(Debug)]
pub(crate) struct Finish {
    pub(crate) id: Arc<str>,
    pub(crate) outcome: Finished,
    pub(crate) at: i64,
}

#[derive(Debug)]
pub(crate) enum Finished {
    Completed(Vec<u8>),
    Failed(FailureKind, String),
}
