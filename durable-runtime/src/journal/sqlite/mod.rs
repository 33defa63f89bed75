//! The SQLite journal.
//!
//! One connection writes. A writer thread takes write requests from a channel and
//! commits them through it in batches (group commit): it waits for the first request,
//! then takes every request already queued (up to [`MAX_BATCH`](writer::MAX_BATCH)) into
//! the same transaction, commits once, and acknowledges them all. It never waits for
//! company, so a lone sequential step pays exactly one commit with no added latency,
//! while steps that finish during a commit share the next one. Where commits are fast,
//! a lone sequential step's checkpoint commits on its caller's thread instead
//! ([`SqliteStore::send`]), which saves two thread hand-offs; after a batch the writer
//! thread spins for [`WRITER_SPIN`](writer::WRITER_SPIN) before it sleeps, and a lone
//! write handed to it may keep its workflow runnable for a while
//! ([`SqliteStore::ack_spin`]). `docs/journal.md` ("The writer") explains the policy
//! for users.
//!
//! Small reads go through the writing connection while it is idle, and through a
//! second connection, opened the first time a read finds the writer busy (or holds up
//! a write), from then on; reads of unbounded size always use the second one (WAL
//! readers do not block the writer). A journal opened to finish a few workflows opens
//! one connection, not two ([`SqliteStore::read`]).
//!
//! The schema is created and changed only by the numbered
//! [`MIGRATIONS`](migrate::MIGRATIONS); the applied number is kept in `durable_meta` (not
//! `PRAGMA user_version`, which belongs to the application if it shares the file).
//! Tables are prefixed `durable_` for the same reason.
//!
//! The files: `open` (the lock file, creating and opening a journal), `migrate` (the
//! schema), `writer` (the writer thread and its batches), `ops` (what each write does),
//! `waits` (parked waits), `rows` (reading rows back and checking them), `crc`, and
//! `view` ([`JournalView`](view::JournalView), which reads a journal without opening
//! it for writing).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

/// The SQL that finds the number of the run whose workflow id is the statement's first
/// parameter (NULL if the journal holds no such workflow): every row recorded for a run
/// is keyed by that number (schema 7), found this way in the statement that reads or
/// writes the row. For `concat!`.
macro_rules! run_of_first_parameter {
    () => {
        "(SELECT run FROM durable_workflows WHERE id = ?1)"
    };
}

/// A workflow row's `replays` with the time `?2` appended (see `docs/journal.md`).
macro_rules! replays_appended {
    () => {
        "coalesce(replays || ',', '') || ?2"
    };
}

/// Whether the `durable_workflows` row being updated recorded a step since it was made
/// (a fork's copies are older): only then does starting it again replay anything.
macro_rules! replays_recorded {
    () => {
        "EXISTS (SELECT 1 FROM durable_steps x WHERE x.run = durable_workflows.run
                 AND x.finished_at >= durable_workflows.created_at)"
    };
}

pub(crate) mod commands;
mod dormant;
mod fork;
pub(crate) mod identity;
mod integrity;
mod migrate;
pub(crate) mod open;
mod ops;
mod queues;
pub(crate) mod retention;
mod rows;
mod schedules;
pub(crate) mod view;
mod waits;
pub(crate) mod wake;
mod writer;

use super::{
    Ack, Created, Damage, Dormant, Finish, History, NewMessage, NewWorkflow, REPLAY_BATCH,
    RecordedOutcome, RecordedStep, Replier, SideRecords, StepKey, StepRecord, Store, TxStep, Wait,
    WaitRecord, WorkflowRecord, may_commit_here,
};
use crate::error::{CancelReason, StoreError, StoreErrorKind};
use crate::path::StepPath;
use crate::util::lock;
use writer::{Command, Write, WriterStats};

/// The work of a transaction step on SQLite: runs on the writer's connection, inside a
/// transaction that also records the step. Returns what to record, and whether the
/// application's writes are kept (`false`: they are rolled back, and the outcome, an
/// `Err` or a panic, is still recorded); `Err` records nothing and fails the write.
pub(crate) type TxFn =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<(RecordedOutcome, bool), String> + Send>;

/// The SQLite journal: a writer thread, a reader connection (once one is needed) and
/// the file lock.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    path: Arc<Path>,
    /// Declared before `writes`, so that a store dropped without `close` closes the
    /// reader before the writer thread (which `writes` ending stops) releases the file,
    /// and the POSIX locks with it.
    reader: Mutex<Reader>,
    /// The file the reader's connection opens.
    reader_at: ReaderAt,
    /// What the reader's connection is opened with (the testkit's VFS).
    options: crate::journal::JournalOptions,
    // `Sender` is `Sync`: concurrent steps enqueue without a lock of ours.
    writes: mpsc::Sender<Command>,
    /// The writing connection, shared with the writer thread: a lone write on an idle
    /// journal commits through it on its caller's thread (see [`SqliteStore::send`]).
    /// `None` once the writer thread has ended.
    core: Arc<Mutex<Option<writer::Writer>>>,
    stats: Arc<WriterStats>,
    /// Whether a lone write may commit on its caller's thread at all: not at
    /// `synchronous=FULL`, where every commit waits for an fsync (see
    /// [`SqliteStore::may_commit_inline`]).
    inline: bool,
    /// Writes committed on their caller's thread whose [`Ack`] the caller still holds
    /// (see [`Ack::untaken_in`]): while there are any, the caller is making writes
    /// without awaiting them, and they go to the writer thread to share its commits.
    untaken: Arc<AtomicUsize>,
    /// The writer thread, which holds the lock; joined by [`Store::close`].
    writer: Mutex<Option<thread::JoinHandle<()>>>,
}

/// At most how many runs' histories [`Store::histories`] reads through the writer's
/// connection (see [`SqliteStore::read`]).
const SMALL_READ_RUNS: usize = 16;

/// The connection reads go through when the writer's is busy.
#[derive(Debug)]
enum Reader {
    /// Not opened yet: every read so far found the writer idle.
    Unopened,
    /// Not opened yet, but a write waited for a read on the writer's connection: the
    /// next read opens it.
    Wanted,
    Open(Connection),
    /// It could not be opened: reads wait for the writer's connection.
    Unavailable,
    /// The store is closed.
    Closed,
}

/// The journal file as the open found it, for a reader opened later.
#[derive(Debug)]
struct ReaderAt {
    /// Its real, absolute path.
    path: std::path::PathBuf,
    /// Its device and inode (`None` where they are not known).
    id: Option<(u64, u64)>,
}

/// How long a read waits for the writer's connection when the reader could not be
/// opened: as long as SQLite's own busy timeout.
const WRITER_READ_WAIT: Duration = Duration::from_secs(5);

/// A file system failure at the journal `path`.
fn io_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(path, StoreErrorKind::Io, e.to_string())
}

/// An SQLite failure at the journal `path`, with the kind and message a user needs.
pub(crate) fn sql_error(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    const RESTORE: &str = "the journal was changed outside durable, or damaged; restore it \
                           from a backup";
    // A statement SQLite refused to prepare ("no such column", where damage changed a
    // table's definition) carries its code apart, and its message without the SQL,
    // which is durable's, not the user's.
    let (code, said) = match &e {
        E::SqlInputError { error, msg, .. } => (Some(error.code), msg.clone()),
        _ => (e.sqlite_error_code(), e.to_string()),
    };
    let (kind, message) = match (code, &e) {
        (Some(ErrorCode::NotADatabase), _) => (
            StoreErrorKind::NotAJournal,
            format!(
                "not a durable journal: it is not an SQLite database, or its first page is \
                 destroyed (SQLite says: {e})"
            ),
        ),
        (Some(ErrorCode::DatabaseCorrupt), _) => (
            StoreErrorKind::Damaged,
            format!(
                "the journal is damaged: SQLite found a malformed page ({e}); restore it from a backup"
            ),
        ),
        (Some(ErrorCode::ConstraintViolation), _) => (StoreErrorKind::Invariant, e.to_string()),
        // SQLite's plain SQLITE_ERROR on one of durable's own statements, which the open
        // found fitting the schema: an unknown function or column in a constraint, a
        // table gone, or an application's trigger on durable's tables that fails. The
        // schema was changed since, by hand or by damage.
        (Some(ErrorCode::Unknown), _) => (
            StoreErrorKind::Damaged,
            format!(
                "a statement of durable no longer fits the journal's schema (SQLite says: \
                 {said}): one of durable's tables, or an application's trigger or view on \
                 one, was changed outside durable, or the file is damaged; undo that \
                 change, or restore the file from a backup"
            ),
        ),
        (_, E::Utf8Error(_)) => (StoreErrorKind::Damaged, not_utf8(&e)),
        (_, E::FromSqlConversionFailure(_, _, inner)) if inner.is::<std::str::Utf8Error>() => {
            (StoreErrorKind::Damaged, not_utf8(inner))
        }
        (_, E::FromSqlConversionFailure(_, _, inner)) if inner.is::<rows::DamagedRow>() => {
            (StoreErrorKind::Damaged, inner.to_string())
        }
        // Our own findings about a row, carried through rusqlite's conversion error:
        // the message alone (rusqlite would prefix "Conversion error from type Text at
        // index: 0").
        (_, E::FromSqlConversionFailure(_, _, inner)) => {
            (StoreErrorKind::Invariant, inner.to_string())
        }
        (_, E::InvalidColumnType(_, column, found)) => (
            StoreErrorKind::Invariant,
            format!("column `{column}` holds {found} where durable wrote another type: {RESTORE}"),
        ),
        (_, E::IntegralValueOutOfRange(_, value)) => (
            StoreErrorKind::Invariant,
            format!(
                "a number in the journal ({value}) is out of the range durable writes: {RESTORE}"
            ),
        ),
        _ => (StoreErrorKind::Io, e.to_string()),
    };
    StoreError::new(path, kind, message)
}

/// The message for a text in the journal that is not UTF-8 (`e` says where).
fn not_utf8(e: &dyn std::fmt::Display) -> String {
    format!(
        "the journal is damaged: a text it holds is not UTF-8 ({e}), and durable writes only \
         UTF-8; restore it from a backup"
    )
}

/// How long a lone write's waiter stays runnable before it sleeps; see
/// [`SqliteStore::ack_spin`].
const MIN_ACK_SPIN_NS: u64 = 20_000;
/// The longest last commit after which a lone write still commits on its caller's
/// thread; see [`SqliteStore::may_commit_inline`].
const MAX_INLINE_COMMIT_NS: u64 = 100_000;
/// The most bytes of values a write that commits on its caller's thread may hold;
/// larger ones go to the writer thread, whose copy of them blocks no async worker.
const MAX_INLINE_BYTES: usize = 16 * 1024;
/// How long writes may commit one after another on a thread's callers before the next
/// one yields to the scheduler (see [`Ack::yield_first`]): about a tenth of what
/// SQLite's own slowest commits here take, and what tokio asks of a task between two
/// yields.
const INLINE_YIELD_AFTER: Duration = Duration::from_micros(200);

thread_local! {
    /// When the writes that committed one after another on this thread's callers began
    /// (`None` after a write that went to the writer thread, or a yield).
    static INLINE_SINCE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Whether a write that just committed on this thread should yield before it answers:
/// the writes committed here since the last yield, or the last write that went to the
/// writer thread, took [`INLINE_YIELD_AFTER`] or more.
fn inline_commit_yields() -> bool {
    INLINE_SINCE.with(|since| {
        let now = Instant::now();
        match since.get() {
            Some(start) if now.duration_since(start) >= INLINE_YIELD_AFTER => {
                since.set(None);
                true
            }
            Some(_) => false,
            None => {
                since.set(Some(now));
                false
            }
        }
    })
}
const MAX_ACK_SPIN_NS: u64 = 100_000;

impl SqliteStore {
    /// Every workflow run, finished or not, oldest first.
    #[cfg(feature = "testkit")]
    pub(crate) fn workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|c| rows::workflow_rows(c, ""))
    }

    /// How long the waiter of a step's checkpoint should stay runnable; see
    /// [`Ack::spin`].
    fn ack_spin(&self) -> Duration {
        // Worth it only for a lone write (concurrent ones would spin against each other
        // and the writer on few cores) on a journal whose commits take about as long as
        // a sleep and a wake-up (not an fsync at `synchronous=FULL`).
        if self.stats.in_flight.load(Ordering::Relaxed) > 1 {
            return Duration::ZERO;
        }
        let last = self.stats.last_commit_ns.load(Ordering::Relaxed);
        if last > MAX_ACK_SPIN_NS {
            return Duration::ZERO;
        }
        Duration::from_nanos((2 * last).clamp(MIN_ACK_SPIN_NS, MAX_ACK_SPIN_NS))
    }

    /// Makes a write: committed here and now if it is alone and may be (see
    /// [`SqliteStore::commit_inline`]), otherwise queued for the writer thread.
    fn send<T>(&self, make: impl FnOnce(Replier<T>) -> Command) -> Ack<T> {
        let (tx, ack) = Ack::channel(&self.path);
        let before = self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut command = make(tx);
        if before == 0
            && self.inline
            && self.untaken.load(Ordering::Relaxed) == 0
            && may_commit_here()
            && self.may_commit_inline()
        {
            match self.commit_inline(command) {
                // A workflow whose every step commits here would otherwise run step
                // after step in one poll of its task, starving the tasks beside it (and
                // the timers) for as long as the scheduler's budget lasts.
                None => {
                    return ack
                        .untaken_in(&self.untaken)
                        .yield_first(inline_commit_yields());
                }
                Some(c) => command = c,
            }
        }
        INLINE_SINCE.with(|since| since.set(None));
        // If the writer thread is gone the command (and its reply sender) is dropped,
        // and the ack resolves to `StoreErrorKind::Closed`.
        if self.writes.send(command).is_err() {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        ack
    }

    /// Whether a lone write (see [`may_commit_here`]) may commit on its caller's thread:
    /// - the last commit took less than [`MAX_INLINE_COMMIT_NS`], so never where a commit
    ///   waits for an fsync to a disk. A commit that short costs less than handing the
    ///   write to the writer thread and its answer back (two sleeps and wake-ups of
    ///   threads), and blocks the caller's thread no longer than a scheduler's slice;
    /// - and it was a commit of one write. Where writes come from many workflows at
    ///   once, the writer thread's batches share commits among them, and single commits
    ///   on callers' threads would only split those batches.
    ///
    /// Before the first commit there is no evidence (`last_commit_ns` starts at its
    /// maximum), and at `synchronous=FULL` never (see [`SqliteStore::inline`]): a
    /// commit that wrote nothing (a wait that parked, an existing workflow's create)
    /// is quick even there, and would let the next write's fsync block its caller.
    fn may_commit_inline(&self) -> bool {
        self.stats.last_commit_ns.load(Ordering::Relaxed) <= MAX_INLINE_COMMIT_NS
            && self.stats.last_batch.load(Ordering::Relaxed) <= 1
    }

    /// Commits `command` alone, here and now, if the writer is idle (nothing queued or
    /// being written: the caller counted its write in `in_flight` and found none before
    /// it, and the writer thread does not hold the connection) and the write is small
    /// and simple (see [`Command::inline_bytes`]). Hands `command` back if not. Waits
    /// the commit answers go to the writer thread, to run next, and so does the WAL
    /// checkpoint the commit may have made due.
    fn commit_inline(&self, command: Command) -> Option<Command> {
        if command
            .inline_bytes()
            .is_none_or(|bytes| bytes > MAX_INLINE_BYTES)
        {
            return Some(command);
        }
        let mut core = match self.core.try_lock() {
            Ok(core) => core,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Some(command),
        };
        let Some(writer) = core.as_mut() else {
            return Some(command);
        };
        let mut batch = vec![command];
        let mut woken = std::collections::VecDeque::new();
        let answers = writer.commit_batch(&self.path, &mut batch, &self.stats, &mut woken);
        drop(core);
        if answers.checkpoint {
            woken.push_back(Command::Checkpoint);
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        answers.send();
        #[cfg(test)]
        self.stats.inline_commits.fetch_add(1, Ordering::Relaxed);
        for c in woken {
            // Counted in `in_flight` when it was woken.
            if self.writes.send(c).is_err() {
                self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
        None
    }

    fn write<T>(&self, make: impl FnOnce(Replier<T>) -> Write) -> Ack<T> {
        self.send(|tx| Command::Write(Box::new(make(tx))))
    }

    /// Runs the read `f`, of a size known to be bounded (one workflow's row, a batch of
    /// [`REPLAY_BATCH`] steps of a few runs and their side records, or the pending
    /// workflows at the open, before anything writes):
    /// - through the reader's connection, once it is open;
    /// - before that, through the writer's connection if the writer is idle (no write
    ///   queued or being made, no transaction open). A journal opened to finish a few
    ///   workflows then never opens a second connection, which costs an open and a
    ///   parse of the whole schema (29% of the instructions of an open and close).
    ///
    /// A write that comes during such a read waits for it, and the reader is opened for
    /// every read after it: writes wait for at most one read per open. Both
    /// connections read only what was committed: the writer's is used only between
    /// transactions. Reads of unbounded size go through [`SqliteStore::read_apart`].
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.read_on(true, f)
    }

    /// Runs the read `f` through the reader's connection, opening it if need be: for a
    /// read of unbounded size (a whole history, an integrity check), which would hold
    /// the writer up for as long.
    fn read_apart<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.read_on(false, f)
    }

    /// Runs the read `f`, through the writer's connection if `writer_may` (a read of
    /// bounded size) and the rules of [`SqliteStore::read`] allow it.
    fn read_on<T>(
        &self,
        writer_may: bool,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut reader = lock(&self.reader);
        if writer_may
            && matches!(*reader, Reader::Unopened)
            && self.stats.in_flight.load(Ordering::Relaxed) == 0
            && let Ok(core) = self.core.try_lock()
            && let Some(writer) = core.as_ref()
            && writer.conn.is_autocommit()
        {
            drop(reader);
            let read = f(&writer.conn).map_err(|e| sql_error(&self.path, e));
            // Read while the connection is still held: every write made meanwhile is
            // counted, and none has finished.
            let waited = self.stats.in_flight.load(Ordering::Relaxed) > 0;
            drop(core);
            if waited {
                // A write waited for this read: none will again.
                let mut reader = lock(&self.reader);
                if matches!(*reader, Reader::Unopened) {
                    *reader = Reader::Wanted;
                }
            }
            return read;
        }
        if matches!(*reader, Reader::Unopened | Reader::Wanted) {
            *reader = match open::reader(&self.reader_at, &self.options) {
                Ok(conn) => Reader::Open(conn),
                Err(e) => {
                    tracing::warn!(
                        journal = %self.path.display(),
                        "cannot open the journal's read connection ({e}); reads wait for \
                         the writer's"
                    );
                    Reader::Unavailable
                }
            };
        }
        match &*reader {
            Reader::Open(conn) => f(conn).map_err(|e| sql_error(&self.path, e)),
            Reader::Unavailable => {
                drop(reader);
                self.read_on_writer(f)
            }
            _ => Err(self.closed()),
        }
    }

    /// Runs the read `f` through the writer's connection, waiting for it (at most
    /// [`WRITER_READ_WAIT`]): for a journal whose reader could not be opened. Never
    /// blocks on the lock, which the caller's own thread may hold (a transaction step's
    /// code reading the journal).
    fn read_on_writer<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            match self.core.try_lock() {
                Ok(core) => match core.as_ref() {
                    Some(writer) if writer.conn.is_autocommit() => {
                        return f(&writer.conn).map_err(|e| sql_error(&self.path, e));
                    }
                    Some(_) => {}
                    None => return Err(self.closed()),
                },
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(self.closed()),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
            if start.elapsed() >= WRITER_READ_WAIT {
                return Err(io_error(
                    &self.path,
                    "the journal's read connection could not be opened (see the log), and \
                     its writer stayed busy for 5 s",
                ));
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// The error of a call made after the journal was closed.
    fn closed(&self) -> StoreError {
        StoreError::new(
            &*self.path,
            StoreErrorKind::Closed,
            "the journal was closed",
        )
    }
}

impl Store for SqliteStore {
    fn takeovers(&self, _to: tokio::sync::mpsc::UnboundedSender<Arc<str>>) {
        // One runtime holds a SQLite journal: nothing is ever taken over.
    }

    fn cancellations(&self, _to: tokio::sync::mpsc::UnboundedSender<Option<Arc<str>>>) {
        // One runtime holds a SQLite journal, and applies its clients' cancellations.
    }

    fn queue_news(&self, to: tokio::sync::mpsc::UnboundedSender<super::queue::QueueNews>) {
        // Answered by nobody: dispatching starts with the batch it lands in.
        drop(self.write(|tx| Write::QueueNews(to, tx)));
    }

    fn set_queue(&self, set: super::queue::SetLimits) -> Ack {
        self.write(|tx| Write::SetQueue(set, crate::util::now_ms(), tx))
    }

    fn dispatch(&self) -> Ack {
        self.write(Write::Dispatch)
    }

    fn hold(&self, id: Arc<str>) -> Ack {
        self.write(|tx| Write::Hold(id, crate::util::now_ms(), tx))
    }

    fn queue_stats(&self, queue: &str) -> Result<super::queue::QueueStats, StoreError> {
        self.read(|c| queues::stats(c, queue))
    }

    fn pending_summary(&self) -> Result<(u64, Option<i64>), StoreError> {
        // A journal deleted or replaced under the runtime still answers through the
        // open descriptor, while what it commits is lost to the next open.
        if let Some(held) = self.reader_at.id
            && identity::file_id(&self.reader_at.path) != Some(held)
        {
            return Err(StoreError::new(
                &*self.path,
                StoreErrorKind::Io,
                format!(
                    "the journal file {} was deleted or replaced while this runtime holds it: \
                     what it commits now is lost to the next open; stop the process and \
                     restore the file",
                    self.reader_at.path.display()
                ),
            ));
        }
        // `durable_workflows_pending` covers it: a scan of the pending rows only.
        self.read_apart(|c| {
            c.query_row(
                "SELECT count(*), min(created_at) FROM durable_workflows \
                 WHERE status = 'pending'",
                [],
                |r| Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?)),
            )
        })
    }

    fn writer_alive(&self) -> bool {
        lock(&self.writer)
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    fn queued(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<super::queue::QueuedRow>, StoreError> {
        self.read_apart(|c| queues::queued(c, queue, limit))
    }

    fn queue_of(&self, id: &str) -> Result<Option<Option<String>>, StoreError> {
        self.read_apart(|c| queues::queue_of(c, id))
    }

    fn commands(&self) -> Result<Vec<super::command::PendingCommand>, StoreError> {
        self.read_apart(commands::pending)
    }

    fn list(
        &self,
        query: &super::listing::ListQuery,
    ) -> Result<super::listing::ListPage, StoreError> {
        self.read_apart(|c| view::list(c, query))
    }

    fn view(&self, id: &str) -> Result<Option<super::sqlite::view::WorkflowView>, StoreError> {
        self.read_apart(|c| view::workflow_on(c, id))
    }

    fn fork(&self, spec: super::ForkSpec) -> Result<super::Forked, StoreError> {
        self.write(|reply| Write::Fork(spec, reply)).blocking_wait()
    }

    fn gc_batch(&self, cutoff: i64, after: i64) -> Result<super::retention::GcBatch, StoreError> {
        self.write(|reply| Write::Gc {
            cutoff,
            after,
            reply,
        })
        .blocking_wait()
    }

    fn gc_commands(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        self.write(|reply| Write::GcCommands(cutoff_ms, reply))
            .blocking_wait()
            .map(|n| u64::try_from(n).unwrap_or(0))
    }

    fn vacuum_step(&self) -> Result<i64, StoreError> {
        self.write(Write::Vacuum).blocking_wait()
    }

    fn reclaims(&self) -> Result<bool, StoreError> {
        self.read(|c| c.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0)))
            .map(|mode| mode == 2)
    }

    fn apply_command(&self, seq: i64, outcome: String, send: Option<NewMessage>) -> Ack<bool> {
        self.write(|reply| Write::Command {
            seq,
            outcome,
            send,
            at: crate::util::now_ms(),
            reply,
        })
    }

    fn set_schedule(&self, write: super::schedule::ScheduleWrite) -> Ack {
        self.write(|tx| Write::Schedule(write, crate::util::now_ms(), tx))
    }

    fn schedule_state(
        &self,
        name: &str,
    ) -> Result<Option<super::schedule::ScheduleState>, StoreError> {
        self.read(|c| schedules::state(c, name))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn create_workflow(&self, workflow: NewWorkflow) -> Ack<Created> {
        self.send(|tx| Command::Create(workflow, tx))
    }

    fn record_step(&self, step: StepRecord) -> Ack {
        let ack = self.send(|tx| Command::Step(step, tx));
        let spin = self.ack_spin();
        ack.spinning(spin)
    }

    fn finish_workflow(&self, finish: Finish) -> Ack<bool> {
        self.send(|tx| Command::Finish(finish, tx))
    }

    fn record_started(&self, key: StepKey, at: i64) -> Ack {
        self.write(|tx| Write::Started(key, at, tx))
    }

    fn record_patch(&self, workflow_id: Arc<str>, path: StepPath, name: &'static str) -> Ack {
        self.write(|tx| Write::Patch(workflow_id, path, name, tx))
    }

    fn send(&self, message: NewMessage) -> Ack {
        self.write(|tx| Write::Send(message, tx))
    }

    fn wait(&self, wait: Wait) -> Ack<Option<Vec<u8>>> {
        self.write(|tx| Write::Wait(wait, tx))
    }

    fn expire(&self, wait: WaitRecord) -> Ack<Option<Vec<u8>>> {
        self.write(|tx| Write::Expire(wait, tx))
    }

    fn give_back(&self, key: StepKey, topic: String) -> Ack {
        self.write(|tx| Write::GiveBack(key, topic, tx))
    }

    fn cancel(&self, id: String, reason: CancelReason, at: i64) -> Ack<Vec<String>> {
        self.write(|tx| Write::Cancel(id, reason, at, tx))
    }

    fn replayed(&self, ids: Vec<Arc<str>>, at: i64) -> Ack {
        // Marked with each run's first write (see `Writer::replay_marks`).
        if let Some(writer) = lock(&self.core).as_mut() {
            writer
                .replay_marks
                .extend(ids.into_iter().map(|id| (id, at)));
        }
        let (reply, ack) = Ack::channel(&self.path);
        let _ = reply.send(Ok(()));
        ack
    }

    fn resume(&self, id: String, at: i64) -> Ack<Vec<String>> {
        self.write(|tx| Write::Resume(id, at, tx))
    }

    fn transaction(&self, step: TxStep) -> Ack {
        #[cfg(feature = "postgres")]
        if !matches!(step.work, super::TxWork::Sqlite(_)) {
            let (tx, ack) = Ack::channel(&self.path);
            let _ = tx.send(Err(super::other_database(&self.path, &step, "SQLite")));
            return ack;
        }
        self.write(|tx| Write::Transaction(step, tx))
    }

    fn dormant(&self, dormant: Dormant) -> Ack<bool> {
        self.write(|tx| Write::Dormant(dormant, tx))
    }

    fn awake(&self, run: Arc<str>) {
        // Answered by nobody: the reply is dropped at once.
        drop(self.send::<()>(|_| Command::Awake(run)));
    }

    fn restore_dormant(
        &self,
        builds: Option<&crate::journal::Builds>,
        wakes: crate::journal::Wakes,
    ) -> Result<Vec<crate::journal::Restored>, StoreError> {
        match lock(&self.core).as_mut() {
            Some(writer) => writer.restore_dormant(&self.path, builds, wakes),
            None => Err(self.closed()),
        }
    }

    fn side_records(&self, workflow_id: &str) -> Result<SideRecords, StoreError> {
        // A run's start records grow with its waits (until a resume): unbounded.
        self.read_apart(|c| rows::side_records(c, workflow_id))
    }

    fn histories(
        &self,
        ids: &[Arc<str>],
        limit: usize,
    ) -> Result<Vec<Result<History, StoreError>>, StoreError> {
        let read = |c: &Connection| {
            // One read transaction: one snapshot, and SQLite takes its locks once for
            // all the runs rather than twice per run.
            let tx = c.unchecked_transaction()?;
            let loaded = ids
                .iter()
                .map(|id| {
                    let steps =
                        rows::steps(c, id, None, limit).map_err(|e| sql_error(&self.path, e))?;
                    let side = rows::side_records(c, id).map_err(|e| sql_error(&self.path, e))?;
                    Ok((steps, side))
                })
                .collect();
            // Nothing was written: ending the read cannot lose anything.
            tx.commit()?;
            Ok(loaded)
        };
        // The histories of a few runs (a journal opened to finish a few workflows) are
        // a small read; those of a whole chunk of runs resumed at an open are not.
        self.read_on(ids.len() <= SMALL_READ_RUNS && limit <= REPLAY_BATCH, read)
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.read(|c| rows::workflow(c, id))
    }

    fn steps_after(
        &self,
        workflow_id: &str,
        after: Option<&StepPath>,
        limit: usize,
    ) -> Result<Vec<RecordedStep>, StoreError> {
        self.read_on(limit <= REPLAY_BATCH, |c| {
            rows::steps(c, workflow_id, after, limit)
        })
    }

    #[cfg(any(test, feature = "bench"))]
    fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    fn pending_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        // Unbounded, but read once, at the open, before anything writes.
        // Not those waiting in a queue: a dispatch hands them over.
        self.read(|c| {
            rows::workflow_rows(
                c,
                "WHERE status = 'pending' AND (queue_state IS NULL OR queue_state = 'running')",
            )
        })
    }

    fn check(&self) -> Result<Vec<Damage>, StoreError> {
        self.read_apart(|c| Ok(integrity::check(c)))
    }

    fn close(&self) -> Result<(), StoreError> {
        // The reader closes first, before the writer thread is told to stop:
        // - the writing connection must be the last one, because only the last
        //   connection to close checkpoints the WAL into the file and deletes it (while
        //   the reader is open it holds a shared lock that makes the writer's close
        //   leave the `-wal` behind);
        // - the writer thread, on its way out, closes the descriptor that holds the
        //   journal's lock, which drops every POSIX lock of this process on the file,
        //   the reader's too.
        *lock(&self.reader) = Reader::Closed;
        // The writer commits what was queued before the close, then exits and releases
        // the lock; a write enqueued after it finds the channel closed. Counted in
        // `in_flight`, and never taken off: no write after the close finds the writer
        // idle and commits on its own thread.
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let _ = self.writes.send(Command::Close);
        let writer = lock(&self.writer).take();
        let joined = writer.map(thread::JoinHandle::join);
        match joined {
            Some(Err(_)) => Err(io_error(&self.path, "the journal writer panicked")),
            _ => Ok(()),
        }
    }
}

/// Changes every recorded value of the (closed) journal at `path`, behind the store's
/// back, so that none matches its checksum: for the store contract's checksum rule.
#[cfg(test)]
pub(crate) fn damage_every_value(path: &Path) {
    let conn = Connection::open(path).expect("open the journal to damage it");
    conn.execute_batch(
        "UPDATE durable_workflows SET input = CAST(input || x'00' AS BLOB),
                                      output = CAST(output || x'00' AS BLOB);
         UPDATE durable_steps SET output = CAST(output || x'00' AS BLOB)
          WHERE output IS NOT NULL;
         UPDATE durable_messages SET payload = CAST(payload || x'00' AS BLOB);
         UPDATE durable_events SET value = CAST(value || x'00' AS BLOB);
         UPDATE durable_started SET wake_at = wake_at + 1;
         UPDATE durable_patches SET name = name || '!';",
    )
    .expect("damage the journal");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Durability, Effect};

    fn step(id: &Arc<str>, i: u32) -> StepRecord {
        StepRecord {
            workflow_id: id.clone(),
            path: StepPath::child(&[], i),
            name: "s",
            args: None,
            outcome: RecordedOutcome::Output(vec![1]),
            attempts: 1,
            started_at: 0,
            finished_at: 0,
            attempt_times: None,
            effect: Effect::None,
        }
    }

    /// None of the statements a workflow's writes run makes SQLite build a temporary
    /// b-tree (`OpenEphemeral`) each time it runs, as the status check's `IN` list
    /// did before schema 9: 36% of the instructions a one-step workflow cost.
    #[test]
    fn the_writers_statements_build_no_temporary_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        drop(SqliteStore::open(&path, &super::super::JournalOptions::default()).expect("open"));
        let conn = Connection::open(&path).expect("connection");
        for sql in [
            writer::SQL_CREATE,
            writer::SQL_RECORD,
            writer::SQL_FINISH,
            ops::SQL_STARTED,
            ops::SQL_INSERT_MESSAGE,
            ops::SQL_OLDEST_MESSAGE,
            ops::SQL_DELETE_MESSAGE,
            ops::SQL_SET_EVENT,
            ops::SQL_EVENT,
            ops::SQL_RECORDED_OUTPUT,
        ] {
            let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).expect(sql);
            // Unbound parameters are NULL: EXPLAIN only lists the program.
            let mut rows = explain.raw_query();
            let mut opcodes: Vec<String> = Vec::new();
            while let Some(row) = rows.next().expect(sql) {
                opcodes.push(row.get(1).expect(sql));
            }
            assert!(
                !opcodes.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: {opcodes:?}"
            );
        }
    }

    /// A fresh journal at `OFF`, with workflow `w` created.
    async fn journal_with_w(dir: &Path) -> (SqliteStore, Arc<str>) {
        journal_at(dir, Durability::Off).await
    }

    /// A fresh journal at `durability`, with workflow `w` created.
    async fn journal_at(dir: &Path, durability: Durability) -> (SqliteStore, Arc<str>) {
        let options = super::super::JournalOptions {
            durability,
            ..Default::default()
        };
        let store = SqliteStore::open(&dir.join("j.db"), &options).expect("open");
        let id: Arc<str> = Arc::from("w");
        let created = store.create_workflow(NewWorkflow {
            id: id.clone(),
            name: "w",
            input: vec![],
            app_version: None,
            created_at: 0,
            parent_id: None,
            deadline_at: None,
            queued: None,
        });
        assert!(matches!(created.await, Ok(Created::New)));
        (store, id)
    }

    #[tokio::test]
    async fn only_a_lone_sequential_write_after_a_short_single_commit_commits_here() {
        use crate::journal::sequential_write;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        let inline = || store.stats.inline_commits.load(Ordering::Relaxed);
        // Each case starts from an idle writer whose last commit was short and single.
        let idle = |ns: u64, batch: usize| {
            store.stats.last_commit_ns.store(ns, Ordering::Relaxed);
            store.stats.last_batch.store(batch, Ordering::Relaxed);
        };
        let mut path = 100;
        let mut record = |sequential: bool| {
            path += 1;
            sequential_write(sequential, || store.record_step(step(&id, path)))
        };

        idle(10_000, 1);
        let before = inline();
        let mut ack = record(true);
        assert_eq!(inline(), before + 1);

        // Made while its caller still holds that answered write's `Ack`: a caller making
        // writes before it awaits any, whose writes share the writer thread's commits.
        idle(10_000, 1);
        let before = inline();
        let second = record(true);
        assert_eq!(inline(), before, "a write made before the last was taken");
        // Committed before `record_step` returned: the answer is there without a wait,
        // and taking it releases the count.
        assert!(matches!(ack.try_reply(), Some(Ok(()))));
        assert_eq!(store.untaken.load(Ordering::Relaxed), 0);
        assert!(matches!(second.await, Ok(())));
        drop(ack);

        // A wait that commits here but parks has no answer yet (and may wait for hours):
        // it does not hold the next write off this thread.
        idle(10_000, 1);
        let before = inline();
        let parked = store.wait(crate::journal::Wait {
            what: crate::journal::WaitFor::Message {
                destination: id.to_string(),
                topic: "never".to_owned(),
            },
            record: None,
            park: true,
        });
        assert_eq!(inline(), before + 1, "the wait committed here");
        assert_eq!(store.untaken.load(Ordering::Relaxed), 0);
        idle(10_000, 1);
        let before = inline();
        drop(record(true));
        assert_eq!(inline(), before + 1, "a parked wait holds nothing off");
        drop(parked);
        // Once it is taken, the next lone write commits here again.
        idle(10_000, 1);
        let before = inline();
        drop(record(true));
        assert_eq!(inline(), before + 1);

        // A step of a fan-out, after a long commit, after a commit of many writes: each
        // goes to the writer thread.
        for (sequential, ns, batch) in [(false, 10_000, 1), (true, 1_000_000, 1), (true, 10_000, 7)]
        {
            idle(ns, batch);
            let before = inline();
            let ack = record(sequential);
            assert!(matches!(ack.await, Ok(())));
            assert_eq!(inline(), before, "{sequential} {ns} {batch}");
        }

        // Not alone (another write in flight): queued behind it.
        idle(10_000, 1);
        let before = inline();
        store.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let ack = record(true);
        store.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        assert!(matches!(ack.await, Ok(())));
        assert_eq!(inline(), before);

        // A large value: its copy would block the caller's thread.
        idle(10_000, 1);
        let before = inline();
        let mut big = step(&id, 99);
        big.outcome = RecordedOutcome::Output(vec![7; MAX_INLINE_BYTES + 1]);
        assert!(matches!(store.record_step(big).await, Ok(())));
        assert_eq!(inline(), before);

        // After a close, nothing commits, here or anywhere.
        idle(10_000, 1);
        store.close().expect("close");
        let before = inline();
        let after_close = record(true).await;
        assert_eq!(inline(), before);
        assert!(
            after_close.is_err_and(|e| e.kind() == StoreErrorKind::Closed),
            "a write after the close must fail"
        );
    }

    /// At `FULL` every commit waits for an fsync, and a quick one (a write that changed
    /// nothing) says nothing about the next: nothing commits on a caller's thread. Nor
    /// does anything before the first commit, at any durability.
    #[tokio::test]
    async fn nothing_commits_here_at_full_or_before_a_first_commit() {
        use crate::journal::sequential_write;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_at(dir.path(), Durability::Full).await;
        for i in 0..50 {
            store.stats.last_commit_ns.store(1_000, Ordering::Relaxed);
            store.stats.last_batch.store(1, Ordering::Relaxed);
            let ack = sequential_write(true, || store.record_step(step(&id, i)));
            assert!(matches!(ack.await, Ok(())));
        }
        assert_eq!(store.stats.inline_commits.load(Ordering::Relaxed), 0);
        store.close().expect("close");

        // A journal's first write (the create in `journal_at`), at `OFF`.
        let other = tempfile::tempdir().expect("tempdir");
        let (store, _) = journal_at(other.path(), Durability::Off).await;
        assert_eq!(store.stats.inline_commits.load(Ordering::Relaxed), 0);
        store.close().expect("close");
    }

    /// A task whose writes all commit on its own thread still yields to the scheduler
    /// now and then: a write answers only on its second poll once the writes before it
    /// have held the thread for [`INLINE_YIELD_AFTER`], and never sooner. A yielding
    /// write never asks to spin.
    #[tokio::test]
    async fn writes_that_commit_here_yield_now_and_then() {
        use std::future::Future;
        use std::pin::Pin;
        use std::task::{Context, Poll, Waker};
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        let mut cx = Context::from_waker(Waker::noop());
        let started = Instant::now();
        let mut yields = vec![started];
        let mut i = 0;
        while started.elapsed() < 10 * INLINE_YIELD_AFTER {
            i += 1;
            store.stats.last_commit_ns.store(1_000, Ordering::Relaxed);
            store.stats.last_batch.store(1, Ordering::Relaxed);
            let before = store.stats.inline_commits.load(Ordering::Relaxed);
            let mut ack = store.record_step(step(&id, i));
            assert_eq!(
                store.stats.inline_commits.load(Ordering::Relaxed),
                before + 1
            );
            match Pin::new(&mut ack).poll(&mut cx) {
                Poll::Ready(r) => assert!(r.is_ok()),
                Poll::Pending => {
                    yields.push(Instant::now());
                    assert_eq!(ack.spin(), Duration::ZERO);
                    assert!(matches!(
                        Pin::new(&mut ack).poll(&mut cx),
                        Poll::Ready(Ok(()))
                    ));
                }
            }
        }
        assert!(yields.len() > 1, "{i} writes in a row never yielded");
        for pair in yields.windows(2) {
            assert!(pair[1] - pair[0] >= INLINE_YIELD_AFTER, "yielded too soon");
        }
        store.close().expect("close");
    }

    /// The writer replaces SQLite's automatic checkpoints: however the writes commit
    /// (here on the callers' threads), the WAL is still copied back into the file and
    /// stays about [`CHECKPOINT_PAGES`] long.
    #[tokio::test]
    async fn the_wal_is_checkpointed_when_writes_commit_here() {
        use super::writer::CHECKPOINT_PAGES;
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        let wal = dir.path().join("j.db-wal");
        let mut largest = 0;
        for i in 0..3_000 {
            store.stats.last_commit_ns.store(1_000, Ordering::Relaxed);
            store.stats.last_batch.store(1, Ordering::Relaxed);
            let mut s = step(&id, i);
            s.outcome = RecordedOutcome::Output(vec![3; 4_000]);
            assert!(matches!(store.record_step(s).await, Ok(())));
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(store.stats.inline_commits.load(Ordering::Relaxed) > 2_000);
        // 3,000 commits of a page or two each: without checkpoints, about 5,000 pages.
        let page = 4096 + 24;
        let limit = u64::try_from(CHECKPOINT_PAGES).expect("positive") * 3 / 2 * page;
        assert!(
            largest < limit,
            "the WAL grew to {largest} bytes (limit {limit})"
        );
        store.close().expect("close");
    }

    #[tokio::test]
    async fn answered_writes_leave_nothing_in_flight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = super::super::JournalOptions {
            durability: Durability::Off,
            ..Default::default()
        };
        let store = SqliteStore::open(&dir.path().join("j.db"), &options).expect("open");
        let id: Arc<str> = Arc::from("w");
        let created = store.create_workflow(NewWorkflow {
            id: id.clone(),
            name: "w",
            input: vec![],
            app_version: None,
            created_at: 0,
            parent_id: None,
            deadline_at: None,
            queued: None,
        });
        assert!(matches!(created.await, Ok(Created::New)));
        let acks: Vec<_> = (0..200).map(|i| store.record_step(step(&id, i))).collect();
        // A duplicate fails alone; it must still be counted as answered.
        let duplicate = store.record_step(step(&id, 0));
        for ack in acks {
            assert!(matches!(ack.await, Ok(())));
        }
        assert!(duplicate.await.is_err());
        assert_eq!(store.stats.in_flight.load(Ordering::Relaxed), 0);

        // A write that is not alone never makes its waiter spin.
        store.stats.in_flight.store(2, Ordering::Relaxed);
        store.stats.last_commit_ns.store(1, Ordering::Relaxed);
        assert_eq!(store.ack_spin(), Duration::ZERO);
        // Nor does a journal whose commits are slow (an fsync).
        store.stats.in_flight.store(1, Ordering::Relaxed);
        store
            .stats
            .last_commit_ns
            .store(MAX_ACK_SPIN_NS + 1, Ordering::Relaxed);
        assert_eq!(store.ack_spin(), Duration::ZERO);
        // A lone write on a fast journal spins for about two commits, within bounds.
        store.stats.last_commit_ns.store(30_000, Ordering::Relaxed);
        assert_eq!(store.ack_spin(), Duration::from_micros(60));
        store.stats.last_commit_ns.store(1, Ordering::Relaxed);
        assert_eq!(store.ack_spin(), Duration::from_nanos(MIN_ACK_SPIN_NS));
    }

    fn reader_opened(store: &SqliteStore) -> bool {
        matches!(*lock(&store.reader), Reader::Open(_))
    }

    /// Reads on an idle journal go through the writer's connection, so a journal that
    /// only finishes a few workflows opens one connection; the first read that finds
    /// the writer busy opens the reader, and gets the same rows.
    #[tokio::test]
    async fn reads_use_the_idle_writer_until_one_finds_it_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        for i in 1..=5 {
            assert!(matches!(store.record_step(step(&id, i)).await, Ok(())));
        }
        let read_all = |store: &SqliteStore| {
            let steps = store.steps_after(&id, None, 100).expect("steps");
            let pending = store.pending_workflows().expect("pending");
            let histories = store
                .histories(std::slice::from_ref(&id), 100)
                .expect("histories");
            let workflow = store.workflow(&id).expect("workflow").expect("w");
            (
                steps.len(),
                pending.len(),
                histories
                    .into_iter()
                    .map(|h| h.expect("history").0.len())
                    .sum::<usize>(),
                workflow.name,
            )
        };
        let idle = read_all(&store);
        assert_eq!(idle, (5, 1, 5, "w".to_owned()));
        assert!(
            !reader_opened(&store),
            "an idle writer's connection was not used"
        );

        // The writer busy (its connection held, as a commit holds it).
        let held = lock(&store.core);
        let busy = read_all(&store);
        drop(held);
        assert_eq!(busy, idle);
        assert!(reader_opened(&store));
        assert_eq!(read_all(&store), idle);
        store.close().expect("close");
        // With the reader opened late too, the close copied the WAL into the file and
        // removed it.
        assert!(!dir.path().join("j.db-wal").exists());
        assert!(matches!(
            store.steps_after(&id, None, 1),
            Err(e) if e.kind() == StoreErrorKind::Closed
        ));
    }

    /// A write that waited for a read on the writer's connection is the last to: the
    /// next read opens the reader.
    #[tokio::test]
    async fn a_write_waits_for_a_read_at_most_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        let read = store.read(|c| {
            // A write made while this read holds the writer's connection.
            store.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            rows::workflow(c, &id)
        });
        assert!(read.expect("read").is_some());
        assert!(matches!(*lock(&store.reader), Reader::Wanted));
        store.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        assert!(store.workflow(&id).expect("read").is_some());
        assert!(matches!(*lock(&store.reader), Reader::Open(_)));
    }

    /// Reads of unbounded size never hold the writer up: a whole history, and the
    /// histories of more than a few runs, go through the reader.
    #[tokio::test]
    async fn reads_of_unbounded_size_go_through_the_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        assert!(matches!(store.record_step(step(&id, 1)).await, Ok(())));
        assert_eq!(store.steps(&id).expect("steps").len(), 1);
        assert!(reader_opened(&store));

        // A run's side records grow with its waits.
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        store.side_records(&id).expect("side records");
        assert!(reader_opened(&store));

        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        let few = vec![id.clone(); SMALL_READ_RUNS];
        assert_eq!(
            store.histories(&few, 10).expect("histories").len(),
            few.len()
        );
        assert!(!reader_opened(&store));
        let many = vec![id.clone(); SMALL_READ_RUNS + 1];
        assert_eq!(
            store.histories(&many, 10).expect("histories").len(),
            many.len()
        );
        assert!(reader_opened(&store));
    }

    /// A reader opened after another file took the journal's name (a backup restored
    /// while the runtime runs) is refused: reads go on through the writer's
    /// connection, on the file the store holds, and return its rows.
    #[tokio::test]
    async fn a_late_reader_refuses_a_file_put_in_the_journals_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        for i in 1..=3 {
            assert!(matches!(store.record_step(step(&id, i)).await, Ok(())));
        }
        // Another journal, closed, with no workflow `w`, renamed over this one.
        let other = tempfile::tempdir().expect("tempdir");
        let (elsewhere, _) = journal_with_w(other.path()).await;
        elsewhere.close().expect("close");
        drop(elsewhere);
        let conn = Connection::open(other.path().join("j.db")).expect("open");
        conn.execute_batch("DELETE FROM durable_workflows")
            .expect("empty it");
        drop(conn);
        std::fs::rename(other.path().join("j.db"), dir.path().join("j.db")).expect("rename");

        // Unbounded: it needs the reader.
        let steps = store.steps(&id).expect("steps");
        assert_eq!(steps.len(), 3);
        assert!(matches!(*lock(&store.reader), Reader::Unavailable));
        assert_eq!(store.workflow(&id).expect("read").expect("w").name, "w");
    }

    /// A read never goes through the writer's connection while a transaction is open on
    /// it: it would see writes that may yet roll back.
    #[tokio::test]
    async fn a_read_never_sees_an_open_transactions_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = journal_with_w(dir.path()).await;
        {
            let core = lock(&store.core);
            let conn = &core.as_ref().expect("writer").conn;
            conn.execute_batch(
                "BEGIN IMMEDIATE; UPDATE durable_workflows SET name = 'uncommitted';",
            )
            .expect("an open transaction");
        }
        let read = store.workflow(&id).expect("workflow").expect("w");
        assert_eq!(read.name, "w");
        let core = lock(&store.core);
        core.as_ref().expect("writer").end_open_transaction();
    }

    /// An integrity check, which reads the whole journal, never holds the writer up: it
    /// reads through the reader's connection.
    #[tokio::test]
    async fn a_check_reads_apart_from_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = journal_with_w(dir.path()).await;
        assert!(store.check().expect("check").is_empty());
        assert!(reader_opened(&store));
    }
}
