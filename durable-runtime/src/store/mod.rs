//! The journal store: every read and write the runtime makes to its journal goes through
//! [`Store`]. SQL lives only in the implementations ([`sqlite`]).

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::codec::Fingerprint;
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
    /// Records a workflow's final outcome, if it is still pending; answers whether it
    /// was (a cancellation that committed first wins).
    fn finish_workflow(&self, finish: Finish) -> Ack<bool>;
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
    /// Commits what was queued, stops the writer and releases the journal (its lock,
    /// its connections). Blocks until that is done; later writes and reads fail with
    /// [`StoreErrorKind::Closed`](crate::StoreErrorKind::Closed).
    fn close(&self) -> Result<(), StoreError>;
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
    /// The writes of the workflow primitives (waits, messages, cancellation, resumption,
    /// start records and transaction steps), one entry point so that stores which wrap
    /// another forward them all in one place.
    fn write(&self, write: Write) -> Ack<Written>;
    /// What one workflow run recorded beside its steps: start records
    /// ([`Write::Started`], and the deadlines of waits that had to wait) and patch
    /// markers ([`Write::Patch`]).
    fn side_records(&self, workflow_id: &str) -> Result<SideRecords, StoreError>;
    /// One workflow run, if the journal has it.
    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError>;
}

/// Identifies one journaled operation: a step, or a primitive such as a sleep.
#[derive(Debug, Clone)]
pub(crate) struct StepKey {
    pub(crate) workflow_id: Arc<str>,
    pub(crate) path: StepPath,
    pub(crate) name: &'static str,
    /// The fingerprint of the operation's arguments, recorded with its result.
    pub(crate) args: Option<Fingerprint>,
}

/// What a step's checkpoint also does, in the same transaction.
#[derive(Debug, Default)]
pub(crate) enum Effect {
    /// Nothing: a plain step.
    #[default]
    None,
    /// Sends a message (a `send` from a workflow: replay finds the step recorded and
    /// does not send again). Boxed, like the event: every step record carries an
    /// `Effect`, and almost all of them none.
    Send(Box<NewMessage>),
    /// Sets (or replaces) one of the workflow's events: its key and encoded value.
    SetEvent(Box<(String, Vec<u8>)>),
}

/// A message to append to a destination's queue for one topic.
#[derive(Debug)]
pub(crate) struct NewMessage {
    pub(crate) destination: String,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) sent_at: i64,
}

/// What a wait waits for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum WaitFor {
    /// The oldest message for `destination` on `topic`, which the wait consumes.
    Message { destination: String, topic: String },
    /// The value of event `key` of workflow `workflow_id`.
    Event { workflow_id: String, key: String },
}

/// A wait for a message or an event.
///
/// If what it waits for is there, the store answers at once with its bytes; a wait
/// with a `record` also records that answer as the step (consuming the message) in the
/// same transaction. If it is not there and `park` is set, the store keeps the wait and
/// answers it right after the transaction that sends the message or sets the event.
/// Otherwise it answers `None`.
#[derive(Debug)]
pub(crate) struct Wait {
    pub(crate) what: WaitFor,
    pub(crate) record: Option<WaitRecord>,
    pub(crate) park: bool,
}

/// The step a wait records its answer as.
#[derive(Debug, Clone)]
pub(crate) struct WaitRecord {
    pub(crate) key: StepKey,
    pub(crate) started_at: i64,
    /// When the wait gives up; written as a start record if the wait has to park, so a
    /// recovered wait keeps its original deadline.
    pub(crate) deadline_at: Option<i64>,
}

/// What a workflow run recorded beside its steps; see [`Store::side_records`].
#[derive(Debug, Default)]
pub(crate) struct SideRecords {
    pub(crate) started: Vec<StartedRecord>,
    /// `(position, patch name)`: the run went through `patched(name)` at `position`.
    pub(crate) patches: Vec<(StepPath, String)>,
}

/// A record that an operation began, written before its result.
#[derive(Debug, Clone)]
pub(crate) struct StartedRecord {
    pub(crate) path: StepPath,
    /// The deadline of a wait, if it had one.
    pub(crate) wake_at: Option<i64>,
}

/// The work of a transaction step: runs on the writer's connection, inside a
/// transaction that also records the step. Returns what to record, and whether the
/// application's writes are kept (`false`: they are rolled back, and the outcome, an
/// `Err` or a panic, is still recorded); `Err` records nothing and fails the write.
pub(crate) type TxWork =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<(RecordedOutcome, bool), String> + Send>;

/// The writes behind [`Store::write`].
pub(crate) enum Write {
    /// A wait for a message or an event; answers [`Written::Value`].
    Wait(Wait),
    /// A parked wait whose deadline passed: records `None` as its answer unless it was
    /// answered already, and answers [`Written::Value`] with what it recorded.
    Expire(WaitRecord),
    /// A start record (before a `fail_if_interrupted` step runs its body); answers
    /// [`Written::Done`].
    Started(StepKey, i64),
    /// A message from outside any workflow; answers [`Written::Done`].
    Send(NewMessage),
    /// Marks that a run took patch `name`'s new path at `path` (the position the next
    /// claim there takes); answers [`Written::Done`].
    Patch {
        workflow_id: Arc<str>,
        path: StepPath,
        name: &'static str,
    },
    /// A `recv` that may have taken a message and never delivered it: if its record
    /// holds one, deletes the record and puts the message back at the front of its
    /// queue; answers [`Written::Done`].
    GiveBack { key: StepKey, topic: String },
    /// Cancels a pending workflow and its pending descendants; answers
    /// [`Written::Ids`] with every workflow it cancelled.
    Cancel {
        id: String,
        reason: crate::error::CancelReason,
        at: i64,
    },
    /// Makes a cancelled or failed workflow, and its cancelled descendants, pending again
    /// (dropping recorded panics and interruptions, and the deadline); answers
    /// [`Written::Ids`] with every workflow it made pending.
    Resume { id: String, at: i64 },
    /// A transaction step; answers [`Written::Done`] once its transaction committed.
    Transaction {
        key: StepKey,
        started_at: i64,
        work: TxWork,
    },
}

impl Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Write::Wait(w) => f.debug_tuple("Wait").field(w).finish(),
            Write::Expire(w) => f.debug_tuple("Expire").field(w).finish(),
            Write::Started(k, _) => f.debug_tuple("Started").field(k).finish(),
            Write::Send(m) => f.debug_tuple("Send").field(m).finish(),
            Write::Patch { name, .. } => f.debug_tuple("Patch").field(name).finish(),
            Write::GiveBack { key, .. } => f.debug_tuple("GiveBack").field(key).finish(),
            Write::Cancel { id, .. } => f.debug_struct("Cancel").field("id", id).finish(),
            Write::Resume { id, .. } => f.debug_struct("Resume").field("id", id).finish(),
            Write::Transaction { key, .. } => f.debug_tuple("Transaction").field(key).finish(),
        }
    }
}

/// The answer to a [`Write`].
#[derive(Debug)]
pub(crate) enum Written {
    Done,
    Value(Option<Vec<u8>>),
    Ids(Vec<String>),
}

/// A workflow run to create.
#[derive(Debug)]
pub(crate) struct NewWorkflow {
    pub(crate) id: Arc<str>,
    pub(crate) name: &'static str,
    pub(crate) input: Vec<u8>,
    pub(crate) app_version: Option<Arc<str>>,
    pub(crate) created_at: i64,
    /// The workflow that started this one as its child.
    pub(crate) parent_id: Option<Arc<str>>,
    /// When the run is cancelled if it has not finished, in ms since the epoch.
    pub(crate) deadline_at: Option<i64>,
}

/// The answer to [`Store::create_workflow`].
#[derive(Debug)]
pub(crate) enum Created {
    New,
    Existing(Box<WorkflowRecord>),
}

/// Where a workflow run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordStatus {
    Pending,
    Completed,
    Failed,
    Cancelled,
}

impl RecordStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Pending => "pending",
            RecordStatus::Completed => "completed",
            RecordStatus::Failed => "failed",
            RecordStatus::Cancelled => "cancelled",
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
    /// Why a cancelled run was cancelled.
    pub(crate) cancelled: Option<crate::error::CancelReason>,
    pub(crate) deadline_at: Option<i64>,
    /// The workflow that started this one as its child.
    pub(crate) parent_id: Option<String>,
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
    /// The step was interrupted by a crash and is configured not to run again
    /// (`on_interrupt = "fail"`); the message.
    Interrupted(String),
}

/// A step result to record.
#[derive(Debug)]
pub(crate) struct StepRecord {
    pub(crate) workflow_id: Arc<str>,
    pub(crate) path: StepPath,
    pub(crate) name: &'static str,
    /// The fingerprint of the arguments the step was called with, if it has any to
    /// check on replay.
    pub(crate) args: Option<Fingerprint>,
    pub(crate) outcome: RecordedOutcome,
    pub(crate) attempts: u32,
    pub(crate) started_at: i64,
    pub(crate) finished_at: i64,
    pub(crate) effect: Effect,
}

/// A step result as the journal holds it.
#[derive(Debug, Clone)]
pub(crate) struct RecordedStep {
    pub(crate) path: StepPath,
    pub(crate) name: String,
    /// The fingerprint of the arguments it was called with (`None` in rows from before
    /// schema 4, and for operations that have none).
    pub(crate) args: Option<Fingerprint>,
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
