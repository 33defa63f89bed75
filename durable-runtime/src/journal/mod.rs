//! The journal store: every read and write the runtime makes to its journal goes through
//! [`Store`]. SQL lives only in the implementations ([`sqlite`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::codec::{Codec, Fingerprint};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{
    CancelReason, Error, FailureKind, Location, StoreError, StoreErrorKind, undecodable,
};
use crate::path::StepPath;

pub(crate) mod command;
#[cfg(test)]
mod contract;
pub(crate) mod crc;
mod damage;
pub(crate) mod listing;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod queue;
pub(crate) mod retention;
pub(crate) mod schedule;
pub(crate) mod sqlite;
mod step_info;

pub use damage::Damage;
pub use step_info::{AttemptTime, StepInfo};

/// Why a value that fails its checksum is refused.
pub(crate) const DAMAGED: &str = "the value does not match its checksum: the journal is damaged";

pub(crate) use sqlite::SqliteStore;

/// How hard a commit tries to survive a crash.
///
/// The journal always runs in WAL mode; this picks SQLite's `synchronous` setting for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL` (the default): every commit is fsynced before the step that
    /// made it returns. Survives process crashes and power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits reach the operating system before the step returns
    /// and are fsynced at WAL checkpoints. Survives process crashes (SIGKILL, panics,
    /// OOM kills); a power loss or kernel crash can lose the most recent commits, and a
    /// workflow then re-runs the steps whose records were lost. Much faster on disks
    /// with slow fsync.
    Normal,
    /// `synchronous=OFF`: commits are handed to the operating system and never fsynced
    /// by SQLite. Survives process crashes; a power loss or kernel crash can lose
    /// commits *and corrupt the journal file*. For tests, benchmarks and journals on
    /// a tmpfs, never for data you need to keep.
    Off,
}

/// Where a runtime's journal is, before it is opened.
#[derive(Debug, Clone)]
pub(crate) enum JournalSpec {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (and the schema in it).
    #[cfg(feature = "postgres")]
    Postgres(Box<postgres::PgConfig>),
    /// A journal that cannot be opened (a URL that is not valid, or a PostgreSQL URL
    /// in a build without the `postgres` feature): how to show it, and why.
    Unusable(PathBuf, StoreError),
}

/// Whether `journal` (a path as the user gave it) is a PostgreSQL URL rather than a
/// file: it starts with `postgres://` or `postgresql://`.
pub(crate) fn is_postgres_url(journal: &str) -> bool {
    let scheme = journal.split_once("://").map(|(scheme, _)| scheme);
    scheme
        .is_some_and(|s| s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql"))
}

/// How many recorded steps a replay reads at a time: one query per this many steps (a
/// journal reads a batch this size as a small read).
pub(crate) const REPLAY_BATCH: usize = 1024;

/// How to open a journal: options every kind of journal takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct JournalOptions {
    pub(crate) durability: Durability,
    /// How values are encoded (here: the codec the writer re-encodes wait answers with).
    pub(crate) codec: Codec,
    /// The workflows the program can run, by name (`None`: any, for a store opened
    /// without a program). A journal shared by several programs hands each one only
    /// runs of its own workflows, and a program with none, none.
    pub(crate) workflows: Option<Arc<[&'static str]>>,
    /// How long a runtime sharing the journal may be out of touch before another takes
    /// over its workflows (`None`: the journal's default).
    pub(crate) lease: Option<Duration>,
    /// The testkit's simulated crash: once set, the journal commits nothing more.
    #[cfg(feature = "testkit")]
    pub(crate) halt: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The testkit's SQLite VFS (by its registered name) for every connection the
    /// journal opens; SQLite's default when `None`.
    #[cfg(feature = "testkit")]
    pub(crate) vfs: Option<String>,
}

impl JournalSpec {
    /// The journal `path` names: a SQLite file, or a PostgreSQL database if it is a
    /// `postgres://` URL.
    pub(crate) fn new(path: &Path) -> JournalSpec {
        match path.to_str() {
            Some(url) if is_postgres_url(url) => postgres_spec(url),
            _ => JournalSpec::Sqlite(path.to_owned()),
        }
    }

    /// The PostgreSQL journal `url` names; a journal that cannot open if it is not a
    /// PostgreSQL URL.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(url: &str) -> JournalSpec {
        postgres_spec(url)
    }

    /// Where the journal is, for messages.
    pub(crate) fn path(&self) -> &Path {
        match self {
            JournalSpec::Sqlite(path) => path,
            #[cfg(feature = "postgres")]
            JournalSpec::Postgres(config) => Path::new(config.shown()),
            JournalSpec::Unusable(shown, _) => shown,
        }
    }

    /// Opens the journal (blocking: call it off the async threads).
    pub(crate) fn open(&self, options: &JournalOptions) -> Result<Arc<dyn Store>, Error> {
        match self {
            JournalSpec::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path, options)?)),
            #[cfg(feature = "postgres")]
            JournalSpec::Postgres(config) => {
                Ok(Arc::new(postgres::PgStore::open(config, options)?))
            }
            JournalSpec::Unusable(_, e) => Err(Error::Store(e.clone())),
        }
    }
}

/// The journal a PostgreSQL URL names.
#[cfg(feature = "postgres")]
fn postgres_spec(url: &str) -> JournalSpec {
    match postgres::PgConfig::parse(url) {
        Ok(config) => JournalSpec::Postgres(Box::new(config)),
        Err(e) => JournalSpec::Unusable(e.path().to_owned(), e),
    }
}

/// The journal a PostgreSQL URL names: none, in a build without the `postgres` feature.
#[cfg(not(feature = "postgres"))]
fn postgres_spec(_url: &str) -> JournalSpec {
    let shown = PathBuf::from("postgres://…");
    let e = StoreError::new(
        &shown,
        StoreErrorKind::NotAJournal,
        "this is a PostgreSQL URL, and this build of durable-runtime has no PostgreSQL \
         journal: turn on its `postgres` cargo feature",
    );
    JournalSpec::Unusable(shown, e)
}

thread_local! {
    /// Whether the write being made on this thread may commit on it (see
    /// [`sequential_write`]); `None` when the writer did not say.
    static SEQUENTIAL: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Makes a step's checkpoint through `write`, saying whether it is `sequential`: no
/// other step of its workflow is waiting to record, so nothing would share its commit
/// by waiting for company. A store may commit a sequential write on the caller's thread
/// when its writer is idle, which saves two thread hand-offs. The checkpoints of a
/// fan-out are not sequential: they are queued, and share commits.
pub(crate) fn sequential_write<R>(sequential: bool, write: impl FnOnce() -> R) -> R {
    let outer = SEQUENTIAL.with(|s| s.replace(Some(sequential)));
    let made = write();
    SEQUENTIAL.with(|s| s.set(outer));
    made
}

/// Whether the write being made may commit on the caller's thread: yes, unless it was
/// made through [`sequential_write`] with `false`.
pub(crate) fn may_commit_here() -> bool {
    SEQUENTIAL.with(std::cell::Cell::get).unwrap_or(true)
}

/// The reply to a write: resolves once the write is durable, or has failed. If the
/// journal's writer goes away without answering, it resolves to
/// [`StoreErrorKind::Closed`], so a caller never has to tell a lost reply from an error.
#[derive(Debug)]
pub(crate) struct Ack<T = ()> {
    rx: oneshot::Receiver<Result<T, StoreError>>,
    journal: Arc<Path>,
    spin: Duration,
    /// Yield to the scheduler once before answering; see [`Ack::yield_first`].
    yield_first: bool,
    /// Set for a write answered before its `Ack` was returned; see [`Ack::untaken_in`].
    untaken: Option<Untaken>,
}

/// Holds one in a store's count of answers that their callers have not yet taken (see
/// [`Ack::untaken_in`]), until its [`Ack`] resolves or is dropped.
#[derive(Debug)]
struct Untaken(Arc<AtomicUsize>);

impl Drop for Untaken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sending half of an [`Ack`], kept by the store until the write is durable.
pub(crate) type Replier<T> = oneshot::Sender<Result<T, StoreError>>;

impl<T> Ack<T> {
    /// A reply for a write to the journal at `journal`, and its sender.
    pub(crate) fn channel(journal: &Arc<Path>) -> (Replier<T>, Ack<T>) {
        let (tx, rx) = oneshot::channel();
        let ack = Ack {
            rx,
            journal: journal.clone(),
            spin: Duration::ZERO,
            yield_first: false,
            untaken: None,
        };
        (tx, ack)
    }

    /// Counts this write in `untaken` until its answer is taken (the `Ack` resolves or
    /// is dropped), if the answer is already there: a write committed on its caller's
    /// thread. (A wait that committed there but parked has no answer yet, and may keep
    /// none for hours: it is not counted.) A store reads the count to tell a caller that
    /// awaits each write before it makes the next (a sequential workflow) from one that
    /// makes many before it awaits any, whose writes should share commits.
    pub(crate) fn untaken_in(mut self, untaken: &Arc<AtomicUsize>) -> Self {
        if !self.rx.is_empty() {
            untaken.fetch_add(1, Ordering::Relaxed);
            self.untaken = Some(Untaken(untaken.clone()));
        }
        self
    }

    /// Makes the first poll yield to the scheduler (as `tokio::task::yield_now` does)
    /// even when the reply is there, if `yield_first`. For a write answered before its
    /// `Ack` was returned (committed on the caller's thread), so that a task whose
    /// writes all are does not hold its thread for many of them in a row.
    pub(crate) fn yield_first(mut self, yield_first: bool) -> Self {
        self.yield_first = yield_first;
        self
    }

    /// Asks the waiter to stay runnable for `spin` before it lets its task sleep; see
    /// [`spin`](Ack::spin).
    pub(crate) fn spinning(mut self, spin: Duration) -> Self {
        // A reply that is there needs no spin; one that yields first must not spin, or
        // the driver would poll its task again before the scheduler looked elsewhere.
        if !self.yield_first {
            self.spin = spin;
        }
        self
    }

    /// How long the waiter of this write should stay runnable (re-polled through the
    /// scheduler) before letting its task sleep until the reply wakes it: zero unless
    /// the store expects the reply about that soon. Staying runnable saves a sleep and a
    /// wake-up of a worker thread per sequential step where commits are faster than
    /// those, and costs the scheduler nothing else: the task yields on every poll.
    pub(crate) fn spin(&self) -> Duration {
        self.spin
    }

    /// Blocks the thread until the reply comes: for the benchmarks' entry points and
    /// the store's blocking calls, outside any async context (on a blocking thread).
    pub(crate) fn blocking_wait(self) -> Result<T, StoreError> {
        self.rx
            .blocking_recv()
            .unwrap_or_else(|_| Err(writer_gone(&self.journal)))
    }

    /// The reply, if it has come (without waiting).
    pub(crate) fn try_reply(&mut self) -> Option<Result<T, StoreError>> {
        self.untaken = None;
        match self.rx.try_recv() {
            Ok(reply) => Some(reply),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(writer_gone(&self.journal))),
        }
    }
}

fn writer_gone(journal: &Path) -> StoreError {
    StoreError::new(
        journal,
        StoreErrorKind::Closed,
        "the journal writer stopped before the write was acknowledged",
    )
}

impl<T> Future for Ack<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if std::mem::take(&mut this.yield_first) {
            // `yield_now` defers the wake-up until the scheduler has looked at its other
            // tasks and its timers and I/O (a plain `wake_by_ref` would not).
            let _ = pin!(tokio::task::yield_now()).poll(cx);
            return Poll::Pending;
        }
        let reply = ready!(Pin::new(&mut this.rx).poll(cx));
        this.untaken = None;
        Poll::Ready(match reply {
            Ok(reply) => reply,
            Err(_) => Err(writer_gone(&this.journal)),
        })
    }
}

/// Where workflow runs and step results are journaled: the one seam between the engine
/// (what a workflow means) and a database (how it is kept).
///
/// Writes return at once with an [`Ack`] that resolves when the write is durable, so an
/// implementation can batch concurrent writes into one commit. Each write is atomic: it
/// commits entirely or not at all. Reads block; the runtime calls them from
/// `spawn_blocking`. `docs/journal.md` states the rules each method keeps, and the
/// contract tests (`journal::contract`) check them for every implementation.
pub(crate) trait Store: Send + Sync + Debug + 'static {
    /// The journal's location, for error messages.
    fn path(&self) -> &Path;

    // Writes.

    /// Inserts a workflow run unless one with that id exists; returns the existing one.
    fn create_workflow(&self, workflow: NewWorkflow) -> Ack<Created>;
    /// Records a step's result, with its [`Effect`]. A path is recorded at most once; a
    /// second record for the same path is an error and changes nothing.
    fn record_step(&self, step: StepRecord) -> Ack;
    /// Records a workflow's final outcome, if it is still pending; answers whether it
    /// was (a cancellation that committed first wins).
    fn finish_workflow(&self, finish: Finish) -> Ack<bool>;
    /// A start record at `key` (before a `fail_if_interrupted` step runs its body).
    fn record_started(&self, key: StepKey, at: i64) -> Ack;
    /// Marks that a run took patch `name`'s new path at `path` (the position the next
    /// claim there takes).
    fn record_patch(&self, workflow_id: Arc<str>, path: StepPath, name: &'static str) -> Ack;
    /// Appends a message from outside any workflow to its destination's queue.
    fn send(&self, message: NewMessage) -> Ack;
    /// A wait for a message or an event; see [`Wait`]. Answers what it found (`None`:
    /// nothing, and it did not park).
    fn wait(&self, wait: Wait) -> Ack<Option<Vec<u8>>>;
    /// A parked wait whose deadline passed: records `None` as its answer unless it was
    /// answered already, and answers what it recorded.
    fn expire(&self, wait: WaitRecord) -> Ack<Option<Vec<u8>>>;
    /// A `recv` that may have taken a message and never delivered it: if its record
    /// holds one, deletes the record and puts the message back at the front of its
    /// queue (before any message sent after it).
    fn give_back(&self, key: StepKey, topic: String) -> Ack;
    /// Cancels a pending workflow and its pending descendants; answers every workflow
    /// it cancelled.
    fn cancel(&self, id: String, reason: CancelReason, at: i64) -> Ack<Vec<String>>;
    /// Makes a cancelled or failed workflow, and its cancelled descendants, pending again
    /// (dropping recorded panics and interruptions, and the deadline); answers every
    /// workflow it made pending.
    fn resume(&self, id: String, at: i64) -> Ack<Vec<String>>;
    /// Records that this runtime started `ids` again from the journal at `at` (at its
    /// open), replaying what they recorded before: for each that recorded a step since
    /// it was made (see `docs/journal.md`, `replays`). A journal whose claims record it
    /// already answers at once.
    fn replayed(&self, ids: Vec<Arc<str>>, at: i64) -> Ack;
    /// A transaction step: the application's work and the step's record in one
    /// transaction. A store that cannot run `step`'s flavour of work answers an error.
    fn transaction(&self, step: TxStep) -> Ack;
    /// A run's body is about to be dropped from memory while it waits (see
    /// [`Dormant`]): if every wait of `dormant.waits` is still parked, unanswered, the
    /// store stops answering them (their [`Ack`]s resolve to
    /// [`StoreErrorKind::Closed`]) and keeps a wake-up in their place. A later write
    /// that would have answered one (a message to its queue, the event set) then takes
    /// nothing for it, and, once committed, sends the run's id to `dormant.wakes`, so
    /// that the run is rebuilt by replay and its new wait takes what was written.
    /// Answers whether it did; `false` (one of the waits was answered, or is not parked
    /// yet) changes nothing. Ordered after every write made before it.
    fn dormant(&self, dormant: Dormant) -> Ack<bool>;
    /// A dormant run was woken (or one kept at the last open is replayed): what the
    /// journal kept of its dormancy ([`Dormant::kept`]) no longer holds, and goes in the
    /// commit of its next write at the latest. Needs no commit of its own, and answers
    /// nothing. Ordered after every write made before it.
    fn awake(&self, run: Arc<str>);

    /// At open, before any write: the runs kept dormant (see [`Dormant::kept`]) by the
    /// same build (`builds` has the build of each workflow, by name) that nothing has
    /// answered since (no message is
    /// queued for them, no event they wait for is set, none of their children has
    /// ended, their time has not come). For each, the store keeps its waits as wake-ups
    /// as [`Store::dormant`] does, sending to `wakes`, for as long as its
    /// [`Restored::alive`] is held. What it kept of every other run is dropped, and so
    /// is all of it if `builds` is `None` (dormancy is off): those runs are replayed.
    fn restore_dormant(
        &self,
        builds: Option<&Builds>,
        wakes: Wakes,
    ) -> Result<Vec<Restored>, StoreError>;

    // Reads.

    /// All recorded steps of one workflow run, sorted by path, in one query.
    fn steps(&self, workflow_id: &str) -> Result<Vec<RecordedStep>, StoreError> {
        self.steps_after(workflow_id, None, usize::MAX)
    }
    /// The recorded steps of one workflow run that come after `after` in path order
    /// (all if `None`), sorted by path, at most `limit` of them, in one query: a replay
    /// reads its history in such batches, as its code asks for the steps.
    fn steps_after(
        &self,
        workflow_id: &str,
        after: Option<&StepPath>,
        limit: usize,
    ) -> Result<Vec<RecordedStep>, StoreError>;
    /// What one workflow run recorded beside its steps: start records (of
    /// `fail_if_interrupted` steps, and the deadlines of waits that had to wait) and
    /// patch markers.
    fn side_records(&self, workflow_id: &str) -> Result<SideRecords, StoreError>;
    /// What [`steps_after`](Store::steps_after) (the first `limit` steps) and
    /// [`side_records`](Store::side_records) return, for each run of `ids` in order,
    /// read together (for a store that can, in one read transaction): recovery loads
    /// many small histories at once. An error of one run is that run's; an error of
    /// the read as a whole is the `Err`.
    fn histories(
        &self,
        ids: &[Arc<str>],
        limit: usize,
    ) -> Result<Vec<Result<History, StoreError>>, StoreError>;
    /// One workflow run, if the journal has it.
    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError>;
    /// The runs among `ids` that have finished (not those pending, nor those the
    /// journal does not have).
    fn finished_among(&self, ids: &[Arc<str>]) -> Result<Vec<WorkflowRecord>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.workflow(id)?
                && r.status != RecordStatus::Pending
            {
                out.push(r);
            }
        }
        Ok(out)
    }
    /// Every workflow run that has not finished.
    fn pending_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError>;

    /// How many workflows the journal holds pending, of every runtime, and when the
    /// oldest of them was made (ms since the Unix epoch): one indexed read.
    fn pending_summary(&self) -> Result<(u64, Option<i64>), StoreError>;

    /// Whether the writer that commits this store's writes is running.
    fn writer_alive(&self) -> bool;
    /// Reads the whole journal looking for damage (the store's own consistency check
    /// and every recorded value against its checksum), changing nothing. Empty when
    /// nothing is damaged.
    fn check(&self) -> Result<Vec<Damage>, StoreError>;

    /// Commits what was queued, stops the writer and releases the journal (its lock,
    /// its connections). Blocks until that is done; later writes and reads fail with
    /// [`StoreErrorKind::Closed`].
    fn close(&self) -> Result<(), StoreError>;

    /// Where to send the ids of pending runs this runtime takes over after the open
    /// (from another runtime sharing the journal that stopped, or released them): the
    /// runtime resumes each as it resumes its pending runs at open. Ids taken over
    /// before this is called are sent when it is. A journal that only one runtime opens
    /// at a time sends none. (No default: a store that wraps another must pass it on.)
    fn takeovers(&self, to: tokio::sync::mpsc::UnboundedSender<Arc<str>>);

    /// Where to send what other processes sharing the journal cancelled: the id of
    /// each workflow cancelled with its pending descendants (`None`: any may have
    /// been). The runtime stops its runs of those the journal now records as
    /// cancelled. A journal that only one runtime opens at a time sends none (its
    /// clients' cancellations are applied by the runtime itself). (No default: a store
    /// that wraps another must pass it on.)
    fn cancellations(&self, to: tokio::sync::mpsc::UnboundedSender<Option<Arc<str>>>);

    // Queues (see [`queue`]).

    /// Where to send what dispatches of queued workflows hand this runtime (see
    /// [`QueueNews`](queue::QueueNews)). Nothing is dispatched before this is called;
    /// once it is, every queue is dispatched (in the commit of the next write at the
    /// latest). Only workflows the program has (see [`JournalOptions::workflows`]) are
    /// dispatched to it.
    fn queue_news(&self, to: tokio::sync::mpsc::UnboundedSender<queue::QueueNews>);
    /// Writes a queue's limits; the queue is dispatched in the same commit.
    fn set_queue(&self, set: queue::SetLimits) -> Ack;
    /// Dispatches every queue now (when a [`QueueNews::DueAt`](queue::QueueNews) comes
    /// due, and on a slow safety poll).
    fn dispatch(&self) -> Ack;
    /// A dispatched workflow stopped in this process without an outcome (a divergence,
    /// a value that does not decode): unless it finished meanwhile, it frees its slot,
    /// held until the next open queues it again.
    fn hold(&self, id: Arc<str>) -> Ack;
    /// A queue's counts and limits, as committed.
    fn queue_stats(&self, queue: &str) -> Result<queue::QueueStats, StoreError>;
    /// The workflows waiting in a queue, in the order a dispatch would take them
    /// within a partition (priority, then arrival), at most `limit`.
    fn queued(&self, queue: &str, limit: usize) -> Result<Vec<queue::QueuedRow>, StoreError>;
    /// The queue workflow `id` was enqueued on: `None` if there is no such workflow,
    /// `Some(None)` if it was not enqueued.
    fn queue_of(&self, id: &str) -> Result<Option<Option<String>>, StoreError>;

    // Schedules (see [`schedule`]).

    /// Writes a schedule's state.
    fn set_schedule(&self, write: schedule::ScheduleWrite) -> Ack;
    /// A schedule's state, as committed; `None` if it was never declared.
    fn schedule_state(&self, name: &str) -> Result<Option<schedule::ScheduleState>, StoreError>;

    /// A page of the workflow runs that match `query` (see [`listing`]).
    fn list(&self, query: &listing::ListQuery) -> Result<listing::ListPage, StoreError>;

    /// Workflow run `id` as [`JournalView::workflow`](crate::JournalView::workflow)
    /// shows it.
    fn view(&self, id: &str) -> Result<Option<crate::WorkflowView>, StoreError>;

    /// Makes workflow `spec.new_id` a fork of `spec.origin`: a pending run of the same
    /// workflow and input, with copies of the origin's steps (and patch markers)
    /// before `spec.before`, each checked against its checksum and checksummed anew
    /// under the new id, in one transaction.
    fn fork(&self, spec: ForkSpec) -> Result<Forked, StoreError>;

    // Retention (see [`retention`]).

    /// Deletes one batch of the runs that finished before `cutoff_ms`, starting after
    /// run number `after` (see `sqlite::retention::gc_batch`), in one short write.
    fn gc_batch(&self, cutoff_ms: i64, after: i64) -> Result<retention::GcBatch, StoreError>;
    /// Deletes the client commands applied before `cutoff_ms`.
    fn gc_commands(&self, cutoff_ms: i64) -> Result<u64, StoreError>;
    /// Gives some of the journal's free space back to the file system; answers how
    /// much is left to give (0 when done, or when the journal cannot).
    fn vacuum_step(&self) -> Result<i64, StoreError>;
    /// Whether [`vacuum_step`](Self::vacuum_step) can give space back.
    fn reclaims(&self) -> Result<bool, StoreError>;

    // Commands from other processes (see [`command`]).

    /// The commands not applied yet, oldest first. Empty on a journal that has no
    /// command table (PostgreSQL, so far: every process there opens the journal).
    fn commands(&self) -> Result<Vec<command::PendingCommand>, StoreError>;
    /// Records `outcome` for command `seq`, unless it has one already, and if so (and
    /// `send` is given) sends that message in the same transaction, so a command's
    /// message is sent once however often the owner stops before the outcome commits.
    /// Answers whether this call recorded the outcome.
    fn apply_command(&self, seq: i64, outcome: String, send: Option<NewMessage>) -> Ack<bool>;

    /// How many write transactions have committed so far: a sequential step should
    /// cost one, concurrent steps should share them. Compiled for the benchmarks only.
    #[cfg(any(test, feature = "bench"))]
    fn commits(&self) -> u64;
}

/// A fork to make (see [`Store::fork`]).
#[derive(Debug, Clone)]
pub(crate) struct ForkSpec {
    pub(crate) origin: String,
    /// Steps whose path sorts before this one are copied.
    pub(crate) before: StepPath,
    pub(crate) new_id: String,
    pub(crate) app_version: Option<Arc<str>>,
    pub(crate) at: i64,
}

/// What [`Store::fork`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Forked {
    /// Made: the new run is pending, owned by this runtime; this many steps copied.
    New { steps: usize },
    /// A workflow has the new id already: the workflow it is a fork of, if any.
    Exists { forked_from: Option<String> },
    /// The journal has no workflow `origin`.
    NoOrigin,
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

/// Where a store sends the id of a dormant run that a write may have woken (see
/// [`Store::dormant`]).
pub(crate) type Wakes = tokio::sync::mpsc::UnboundedSender<Arc<str>>;

/// A run going dormant: its body is dropped while it waits, and rebuilt by replay once
/// what it waits for may have come. See [`Store::dormant`].
#[derive(Debug)]
pub(crate) struct Dormant {
    pub(crate) run: Arc<str>,
    /// Its parked waits for messages and events, each with the position it records at.
    pub(crate) waits: Vec<(WaitFor, StepPath)>,
    /// Alive for as long as the run stays dormant: the store forgets the wake-ups of a
    /// run that is not (woken for another reason, cancelled, stopped).
    pub(crate) alive: Weak<()>,
    pub(crate) wakes: Wakes,
    /// What the journal keeps of this dormancy, so that the next open re-parks the run
    /// without replaying it; `None`: nothing (the run is replayed at the next open).
    pub(crate) kept: Option<Kept>,
}

/// What the journal keeps of a dormant run beside its message and event waits: a run
/// is re-parked from it at an open only if the program is the same build, and replayed
/// if not, or if anything it waits for came meanwhile.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    /// Which program put it to sleep (its executable and `app_version`), and which
    /// code of its workflow (see `engine::context::workflow_build`).
    pub(crate) build: Arc<str>,
    /// The children whose ends it waits for.
    pub(crate) children: Vec<Arc<str>>,
    /// When it wakes on its own (a sleep's end, a wait's deadline), in ms since the
    /// epoch; its own deadline is the journal's already.
    pub(crate) until: Option<i64>,
}

/// The build of each workflow of the program (see [`Kept::build`]), by name.
pub(crate) type Builds = HashMap<&'static str, Arc<str>>;

/// A run re-parked at open without replay (see [`Store::restore_dormant`]).
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) id: Arc<str>,
    /// When it wakes on its own: the earliest of its waits' ends and its deadline.
    pub(crate) until: Option<i64>,
    /// Its wake-ups in the store last as long as this.
    pub(crate) alive: Arc<()>,
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
/// answers it in the transaction that sends the message or sets the event (unless its
/// [`Ack`] was dropped by then: a wait nobody waits for takes nothing). Otherwise it
/// answers `None`.
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

/// The encoding of a wait's answer as its step's recorded output.
pub(crate) fn encode_answer(codec: Codec, answer: Option<&[u8]>) -> Vec<u8> {
    // Encoding a byte string cannot fail, and its size is bounded by a row's.
    codec
        .encode(&answer.map(crate::codec::Bytes))
        .unwrap_or_default()
}

/// A wait's recorded answer: the value it took, as a journal value of its own.
pub(crate) fn decode_answer(output: &[u8]) -> Result<Option<Vec<u8>>, crate::codec::CodecError> {
    Codec::decode::<Option<crate::codec::ByteBuf>>(output)
        .map(|o| o.map(|b| crate::codec::nested(output, &b.0).into_owned()))
}

/// What a workflow run recorded beside its steps; see [`Store::side_records`].
#[derive(Debug, Default)]
pub(crate) struct SideRecords {
    pub(crate) started: Vec<StartedRecord>,
    /// `(position, patch name)`: the run went through `patched(name)` at `position`.
    pub(crate) patches: Vec<(StepPath, String)>,
}

/// What earlier executions of a run recorded: its steps, and its side records.
pub(crate) type History = (Vec<RecordedStep>, SideRecords);

/// A record that an operation began, written before its result.
#[derive(Debug, Clone)]
pub(crate) struct StartedRecord {
    pub(crate) path: StepPath,
    /// The deadline of a wait, if it had one.
    pub(crate) wake_at: Option<i64>,
}

/// A transaction step: its record, and the application's work to run in the same
/// transaction.
#[derive(Debug)]
pub(crate) struct TxStep {
    pub(crate) key: StepKey,
    pub(crate) started_at: i64,
    pub(crate) work: TxWork,
}

/// The application's work in a transaction step, in the flavour of one database.
pub(crate) enum TxWork {
    /// Runs on the SQLite journal's writer connection.
    Sqlite(sqlite::TxFn),
    /// Runs on a connection of the PostgreSQL journal's.
    #[cfg(feature = "postgres")]
    Postgres(postgres::PgTxFn),
}

#[cfg(feature = "postgres")]
impl TxWork {
    /// The flavour, as errors name it.
    pub(crate) fn database(&self) -> &'static str {
        match self {
            TxWork::Sqlite(_) => "SQLite",
            #[cfg(feature = "postgres")]
            TxWork::Postgres(_) => "PostgreSQL",
        }
    }
}

/// The error for a transaction step of one database's flavour (`step`) given to a
/// journal on another (`journal`, "SQLite" or "PostgreSQL").
#[cfg(feature = "postgres")]
pub(crate) fn other_database(path: &Path, step: &TxStep, journal: &str) -> StoreError {
    let module = if journal == "SQLite" {
        "sqlite"
    } else {
        "postgres"
    };
    StoreError::new(
        path,
        StoreErrorKind::Invariant,
        format!(
            "step {} (`{}`) is a {} transaction step, and this journal is {journal}: a \
             transaction step runs in the journal's own database. Use \
             `durable_runtime::{module}::transaction`",
            step.key.path,
            step.key.name,
            step.work.database(),
        ),
    )
}

impl Debug for TxWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxWork::Sqlite(_) => f.write_str("TxWork::Sqlite"),
            #[cfg(feature = "postgres")]
            TxWork::Postgres(_) => f.write_str("TxWork::Postgres"),
        }
    }
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
    /// Set for a workflow enqueued rather than started: it runs when a dispatch
    /// picks it (see [`queue`]).
    pub(crate) queued: Option<Box<queue::Enqueued>>,
}

/// The answer to [`Store::create_workflow`].
#[derive(Debug)]
pub(crate) enum Created {
    New,
    Existing(Box<WorkflowRecord>),
    /// Not created: a workflow of the same queue with the same deduplication id is
    /// queued or running (this one).
    Duplicate(Box<WorkflowRecord>),
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
    /// Pending, and run by another runtime sharing the journal (or by none yet: the
    /// next to claim it): this runtime must not run it, only watch for its outcome.
    pub(crate) elsewhere: bool,
    /// Where it stands in its queue, if it was enqueued rather than started.
    pub(crate) queue_state: Option<queue::QueueState>,
}

impl WorkflowRecord {
    /// Whether it waits in its queue (or is held there): no runtime runs it until a
    /// dispatch hands it to one.
    pub(crate) fn waiting(&self) -> bool {
        self.queue_state
            .is_some_and(|s| s != queue::QueueState::Running)
    }

    /// The error for a row whose input or output fails its checksum.
    pub(crate) fn damage(&self) -> Option<crate::error::Error> {
        let (location, message) = self.damaged.clone()?;
        Some(crate::error::Error::Corrupt {
            workflow_id: self.id.clone(),
            location,
            reason: crate::codec::CodecError::malformed(message),
        })
    }
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

impl RecordedOutcome {
    /// The result this outcome stands for, for the operation `name` at `path` of
    /// workflow `workflow_id`: the decoded value, or the recorded failure (a panic, an
    /// interruption) as [`Error::Failed`]. A value that does not decode as `T` is an
    /// error naming where it is ([`Error::Incompatible`] or [`Error::Corrupt`]), never
    /// another value. The one place a recorded outcome becomes a result: replay, step
    /// listings and the journal view all go through it.
    pub(crate) fn result<T: Serialize + DeserializeOwned>(
        &self,
        workflow_id: &str,
        path: &StepPath,
        name: &str,
    ) -> Result<T, Error> {
        let failed = |kind, message: &String| Error::Failed {
            workflow_id: workflow_id.to_owned(),
            kind,
            message: message.clone(),
        };
        match self {
            RecordedOutcome::Output(bytes) => Codec::decode(bytes).map_err(|reason| {
                undecodable::<T>(
                    workflow_id,
                    Location::Step {
                        path: path.clone(),
                        name: name.to_owned(),
                    },
                    reason,
                )
            }),
            RecordedOutcome::Panicked(message) => Err(failed(FailureKind::StepPanicked, message)),
            RecordedOutcome::Interrupted(message) => {
                Err(failed(FailureKind::StepInterrupted, message))
            }
        }
    }
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
    /// Each attempt's start and end, if the step retried (see `durable_steps.attempt_times`).
    pub(crate) attempt_times: Option<String>,
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
    /// Each attempt's start and end, as recorded if the step retried.
    pub(crate) attempt_times: Option<String>,
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

/// Runs blocking journal work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StoreError::new(
            path,
            crate::error::StoreErrorKind::Io,
            format!("journal task failed: {e}"),
        )
    })
}

/// How a journal stores a fingerprint: its bits as a signed 64-bit integer (SQLite's
/// `INTEGER`, PostgreSQL's `bigint`).
pub(crate) fn fingerprint_column(f: Option<Fingerprint>) -> Option<i64> {
    f.map(|f| f.as_u64() as i64)
}

/// Whether two waits record the same step.
pub(crate) fn same_step(a: Option<&WaitRecord>, b: Option<&WaitRecord>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.key.workflow_id == b.key.workflow_id && a.key.path == b.key.path,
        _ => false,
    }
}

/// The error for a record at a step that is recorded already.
pub(crate) fn already_recorded(path: &Path, key: &StepKey) -> StoreError {
    StoreError::new(
        path,
        StoreErrorKind::Invariant,
        format!(
            "step {} of workflow {} is already recorded; a recorded step is never overwritten",
            key.path, key.workflow_id
        ),
    )
}

/// The error for a record made for a workflow the journal does not hold.
pub(crate) fn no_such_run(path: &Path, workflow_id: &str) -> StoreError {
    StoreError::new(
        path,
        StoreErrorKind::Invariant,
        format!(
            "workflow {workflow_id} is not in the journal, so nothing can be recorded for it \
             (its row was deleted outside durable?)"
        ),
    )
}

/// The `error_kind` of a step record that holds an interruption (NULL: a panic).
pub(crate) const INTERRUPTED: &str = "interrupted";

impl RecordedOutcome {
    /// The output, error and error kind columns a step's row holds for this outcome.
    pub(crate) fn columns(&self) -> (Option<&[u8]>, Option<&str>, Option<&str>) {
        match self {
            RecordedOutcome::Output(bytes) => (Some(bytes.as_slice()), None, None),
            RecordedOutcome::Panicked(message) => (None, Some(message.as_str()), None),
            RecordedOutcome::Interrupted(message) => {
                (None, Some(message.as_str()), Some(INTERRUPTED))
            }
        }
    }
}

impl Finished {
    /// The status, output, error kind and error columns a workflow's row holds for
    /// this outcome.
    pub(crate) fn columns(&self) -> (RecordStatus, Option<&[u8]>, Option<&str>, Option<&str>) {
        match self {
            Finished::Completed(bytes) => {
                (RecordStatus::Completed, Some(bytes.as_slice()), None, None)
            }
            Finished::Failed(kind, message) => (
                RecordStatus::Failed,
                None,
                Some(kind.as_str()),
                Some(message.as_str()),
            ),
        }
    }
}
