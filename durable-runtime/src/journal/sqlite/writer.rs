//! The writer thread: the commands it takes from its channel, its loop, and how it
//! commits a batch of them in one transaction and answers each.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
#[cfg(feature = "testkit")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

use super::ops::step_error;
use super::sql_error;
use super::waits::{Parked, Sweeps, Token};
use crate::codec::Codec;
use crate::error::{CancelReason, StoreError};
use crate::journal::queue::{QueueNews, SetLimits};
use crate::journal::{
    Created, Dormant, Finish, NewMessage, NewWorkflow, Replier, StepKey, StepRecord, TxStep, Wait,
    WaitFor, WaitRecord, Wakes,
};
use crate::path::StepPath;
use crate::util::lock;

/// The most writes one commit takes.
pub(crate) const MAX_BATCH: usize = 1024;

/// A request to the writer thread.
pub(super) enum Command {
    Create(NewWorkflow, Replier<Created>),
    Step(StepRecord, Replier<()>),
    Finish(Finish, Replier<bool>),
    /// Boxed: the primitives' writes are rare and large, and every command moves
    /// through the channel and the batch.
    Write(Box<Write>),
    /// Commit what came before, then stop (releasing the journal's lock).
    Close,
    /// A dormant run woke: what the journal kept of it goes (see
    /// [`Writer::forget_dormant`]). Taken out of its batch before the batch's
    /// transaction begins, and needs none of its own.
    Awake(Arc<str>),
    /// Copy the WAL back into the journal file, if it has grown past
    /// [`CHECKPOINT_PAGES`]: sent by a write that committed on its caller's thread, so
    /// that the copy (and, at `synchronous=NORMAL`, its fsync) runs on the writer
    /// thread instead.
    Checkpoint,
}

/// The writes of the workflow primitives, each with its typed reply.
pub(super) enum Write {
    Wait(Wait, Replier<Option<Vec<u8>>>),
    Expire(WaitRecord, Replier<Option<Vec<u8>>>),
    Started(StepKey, i64, Replier<()>),
    Send(NewMessage, Replier<()>),
    /// One batch of a garbage collection: runs finished before the cutoff, after a run.
    Gc {
        cutoff: i64,
        after: i64,
        reply: Replier<crate::journal::retention::GcBatch>,
    },
    /// Deletes the commands applied before the cutoff.
    GcCommands(i64, Replier<i64>),
    /// Gives free pages back to the file system; answers how many are left.
    Vacuum(Replier<i64>),
    /// Makes a fork.
    Fork(crate::journal::ForkSpec, Replier<crate::journal::Forked>),
    /// A client's command applied: its outcome, and the message it sends.
    Command {
        seq: i64,
        outcome: String,
        send: Option<NewMessage>,
        at: i64,
        reply: Replier<bool>,
    },
    Patch(Arc<str>, StepPath, &'static str, Replier<()>),
    GiveBack(StepKey, String, Replier<()>),
    Cancel(String, CancelReason, i64, Replier<Vec<String>>),
    Resume(String, i64, Replier<Vec<String>>),
    Transaction(TxStep, Replier<()>),
    /// Never batched: it looks at what earlier batches parked.
    Dormant(Dormant, Replier<bool>),
    /// Start dispatching queues to the runtime.
    QueueNews(tokio::sync::mpsc::UnboundedSender<QueueNews>, Replier<()>),
    SetQueue(SetLimits, i64, Replier<()>),
    /// Dispatch every queue.
    Dispatch(Replier<()>),
    Hold(Arc<str>, i64, Replier<()>),
    Schedule(crate::journal::schedule::ScheduleWrite, i64, Replier<()>),
}

impl Command {
    /// Whether the writer thread runs this command on its own, outside any batch: a
    /// dormant run's waits must have been parked by the batches before it.
    fn is_alone(&self) -> bool {
        matches!(self, Command::Close | Command::Checkpoint)
            || matches!(self, Command::Write(w) if matches!(**w, Write::Transaction(..) | Write::Dormant(..)))
    }

    /// The bytes of values this command writes, if it is a write small and simple
    /// enough to commit on its caller's thread (see `SqliteStore::commit_inline`):
    /// `None` for a transaction step (user code), a cancel or a resume (a whole tree of
    /// workflows), and the commands that are not writes.
    pub(super) fn inline_bytes(&self) -> Option<usize> {
        let effect = |e: &crate::journal::Effect| match e {
            crate::journal::Effect::None => 0,
            crate::journal::Effect::Send(m) => m.payload.len(),
            crate::journal::Effect::SetEvent(e) => e.1.len(),
        };
        Some(match self {
            Command::Create(w, _) => w.input.len(),
            Command::Step(s, _) => {
                effect(&s.effect)
                    + match &s.outcome {
                        crate::journal::RecordedOutcome::Output(b) => b.len(),
                        crate::journal::RecordedOutcome::Panicked(m)
                        | crate::journal::RecordedOutcome::Interrupted(m) => m.len(),
                    }
            }
            Command::Finish(f, _) => match &f.outcome {
                crate::journal::Finished::Completed(b) => b.len(),
                crate::journal::Finished::Failed(_, m) => m.len(),
            },
            Command::Write(w) => match &**w {
                Write::Wait(..) | Write::Expire(..) | Write::Started(..) | Write::Patch(..) => 0,
                Write::GiveBack(..) => 0,
                Write::QueueNews(..)
                | Write::SetQueue(..)
                | Write::Dispatch(_)
                | Write::Hold(..)
                | Write::Schedule(..) => 0,
                Write::Send(m, _) => m.payload.len(),
                Write::Command { send, .. } => send.as_ref().map_or(0, |m| m.payload.len()),
                Write::Gc { .. } | Write::GcCommands(..) | Write::Vacuum(_) | Write::Fork(..) => {
                    return None;
                }
                Write::Cancel(..)
                | Write::Resume(..)
                | Write::Transaction(..)
                | Write::Dormant(..) => return None,
            },
            Command::Awake(_) => 0,
            Command::Close | Command::Checkpoint => return None,
        })
    }
}

/// The WAL size, in pages, past which the writer copies it back into the journal file
/// (SQLite's own default for its automatic checkpoints, which the writer replaces: see
/// [`Writer::new`]).
pub(super) const CHECKPOINT_PAGES: i32 = 1000;

thread_local! {
    /// The WAL's size in pages after the last commit made on this thread (set by
    /// SQLite's WAL hook, during the `COMMIT`).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The writer's WAL hook: notes the WAL's size for [`Writer::commit_batch`], instead of
/// checkpointing on the committing thread as SQLite's automatic checkpoint would.
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// What the writer thread tells the rest of the runtime about its work.
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    /// Transactions committed so far.
    pub(super) commits: AtomicU64,
    /// Writes enqueued and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// How long the last commit took (from `BEGIN` to the end of `COMMIT`), in ns.
    pub(super) last_commit_ns: AtomicU64,
    /// How many writes the last commit took.
    pub(super) last_batch: AtomicUsize,
    /// Commits made on a caller's thread rather than the writer thread's.
    #[cfg(test)]
    pub(super) inline_commits: AtomicU64,
    /// Set by the testkit's simulated crash: commit nothing more.
    #[cfg(feature = "testkit")]
    pub(super) halted: Option<Arc<AtomicBool>>,
}

impl WriterStats {
    /// Whether a simulated crash happened (never, outside the testkit's builds).
    #[inline]
    pub(super) fn halted(&self) -> bool {
        #[cfg(feature = "testkit")]
        if let Some(h) = &self.halted {
            return h.load(Ordering::SeqCst);
        }
        false
    }
}

/// The writer thread: takes the commands from `rx` and commits them in batches through
/// `core`, until a close or until every sender is gone. It does not hold `core` while
/// it waits, so that a lone write on an idle journal can commit on its caller's thread.
pub(super) fn write_loop(
    core: &Mutex<Option<Writer>>,
    path: &Path,
    rx: &mpsc::Receiver<Command>,
    stats: &WriterStats,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Parked waits that a committed batch answered, to run before anything new.
    let mut woken: VecDeque<Command> = VecDeque::new();
    // Waits for the first request; ends when every sender is gone, or at a close.
    // Whether a run went dormant since the rows were last written (known here: the
    // hand-overs run on this thread). Read without the writer's lock, which a lone
    // write on its caller's thread must find free.
    let rows_due = std::cell::Cell::new(false);
    // Writes what the writer keeps of runs gone dormant, if no commit took it yet.
    let write_rows = || {
        if !rows_due.replace(false) {
            return;
        }
        if let Some(writer) = lock(core).as_mut()
            && writer.dormant_rows_due()
        {
            let answers = writer.commit_batch(path, &mut Vec::new(), stats, &mut VecDeque::new());
            if answers.checkpoint {
                writer.checkpoint_if_due();
            }
        }
    };
    while let Some(first) = woken
        .pop_front()
        .or_else(|| next_command(rx, rows_due.get(), write_rows))
    {
        if stats.halted() {
            // A simulated crash: what is queued is dropped unanswered, like the
            // process's memory, and the thread exits (releasing the lock).
            return;
        }
        // A transaction step runs user code inside the transaction, so it gets a
        // transaction of its own; the writes around it keep their order. A close ends
        // the batch before it, and the loop after it.
        let mut alone = None;
        if first.is_alone() {
            alone = Some(first);
        } else {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match woken.pop_front().map_or_else(|| rx.try_recv().ok(), Some) {
                    Some(c) if c.is_alone() => {
                        alone = Some(c);
                        break;
                    }
                    Some(c) => batch.push(c),
                    None => break,
                }
            }
            let answers = match lock(core).as_mut() {
                Some(writer) => writer.commit_batch(path, &mut batch, stats, &mut woken),
                None => return,
            };
            let checkpoint = answers.checkpoint;
            answers.send();
            if checkpoint {
                match lock(core).as_mut() {
                    Some(writer) => writer.checkpoint_if_due(),
                    None => return,
                }
            }
        }
        match alone {
            Some(Command::Close) => {
                write_rows();
                return;
            }
            Some(Command::Checkpoint) => {
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                match lock(core).as_mut() {
                    Some(writer) => writer.checkpoint_if_due(),
                    None => return,
                }
            }
            Some(Command::Write(w)) => match *w {
                Write::Transaction(step, reply) => match lock(core).as_mut() {
                    Some(writer) => {
                        writer.transaction(path, step, reply, stats);
                        writer.checkpoint_if_due();
                    }
                    None => return,
                },
                Write::Dormant(dormant, reply) => {
                    let done = match lock(core).as_mut() {
                        Some(writer) => writer.go_dormant(dormant),
                        None => return,
                    };
                    if done {
                        rows_due.set(true);
                    }
                    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    drop(reply.send(Ok(done)));
                }
                // Only the two above are ever alone.
                _ => {}
            },
            _ => {}
        }
    }
}

/// How long the writer spins for the next write before it sleeps.
pub(crate) const WRITER_SPIN: Duration = Duration::from_micros(50);

/// How long rows of dormant runs wait for a commit to ride with before the writer,
/// idle, commits them on their own: a lost row only costs a replay at the next open,
/// and a commit per run going dormant would cost an fsync each at `FULL`.
const ROWS_WAIT: Duration = Duration::from_secs(1);

/// Waits for the next write: spins for up to [`WRITER_SPIN`], then sleeps until one
/// comes; if `rows_due`, for at most [`ROWS_WAIT`] before it runs `write_rows`. `None`
/// once every sender is gone.
fn next_command(
    rx: &mpsc::Receiver<Command>,
    rows_due: bool,
    write_rows: impl Fn(),
) -> Option<Command> {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(c) => return Some(c),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if start.elapsed() < WRITER_SPIN => {
                // Give the core to a runnable thread (a worker about to enqueue the next
                // write, on a machine with few cores) rather than burn it.
                thread::yield_now();
            }
            Err(mpsc::TryRecvError::Empty) => {
                if rows_due {
                    match rx.recv_timeout(ROWS_WAIT) {
                        Ok(c) => return Some(c),
                        Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                        Err(mpsc::RecvTimeoutError::Timeout) => write_rows(),
                    }
                }
                return rx.recv().ok();
            }
        }
    }
}

/// A finished write waiting for its commit before its reply is sent.
pub(super) enum Reply {
    Create(Replier<Created>, Result<Created, StoreError>),
    Unit(Replier<()>, Result<(), StoreError>),
    Finish(Replier<bool>, Result<bool, StoreError>),
    Value(
        Replier<Option<Vec<u8>>>,
        Result<Option<Vec<u8>>, StoreError>,
    ),
    Ids(Replier<Vec<String>>, Result<Vec<String>, StoreError>),
    Gc(
        Replier<crate::journal::retention::GcBatch>,
        Result<crate::journal::retention::GcBatch, StoreError>,
    ),
    Count(Replier<i64>, Result<i64, StoreError>),
    Fork(
        Replier<crate::journal::Forked>,
        Result<crate::journal::Forked, StoreError>,
    ),
    /// A wait that found nothing: parked once its batch commits.
    Park(WaitFor, Parked),
}

/// The SQL of the writer's hot statements, prepared once and then taken from the
/// connection's statement cache.
const SQL_BEGIN: &str = "BEGIN IMMEDIATE";
const SQL_COMMIT: &str = "COMMIT";
pub(super) const SQL_ROLLBACK: &str = "ROLLBACK";
pub(super) const SQL_CREATE: &str = "INSERT INTO durable_workflows
         (id, name, status, input, executor, app_version, created_at, updated_at,
          input_crc32, parent_id, deadline_at)
     VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9)
     ON CONFLICT (id) DO NOTHING";
pub(super) const SQL_RECORD: &str = concat!(
    "INSERT INTO durable_steps
         (run, path, name, output, error, attempts, started_at, finished_at,
          crc32, error_kind, args_fingerprint, attempt_times)
     VALUES (",
    run_of_first_parameter!(),
    ", ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
);
pub(super) const SQL_FINISH: &str = "UPDATE durable_workflows
     SET status = ?2, output = ?3, error_kind = ?4, error = ?5, updated_at = ?6,
         output_crc32 = ?7
     WHERE id = ?1 AND status = 'pending'";

/// The connection's statement cache holds every statement the writer runs, so that
/// none is prepared twice.
const STATEMENT_CACHE: usize = 64;

/// The journal's one writing connection and what the writes share: the waits parked on
/// it. Behind a mutex: the writer thread commits batches through it, and a lone write
/// on an idle journal commits through it on its caller's thread (see
/// [`SqliteStore::send`](super::SqliteStore)).
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// Waits that found nothing, by what they wait for.
    pub(super) parked: HashMap<WaitFor, VecDeque<Parked>>,
    /// The waits of dormant runs, by what they wait for: a write of that wakes the run.
    pub(super) dormant: HashMap<WaitFor, Vec<Token>>,
    /// Where wake-ups of dormant runs go (given with the first run that went dormant).
    pub(super) wakes: Option<Wakes>,
    /// When to sweep the wake-ups of runs that are not dormant any more.
    pub(super) dormant_sweeps: Sweeps,
    /// The rows of `durable_dormant` to write (or delete: `None`) with the next commit.
    pub(super) dormant_rows: super::dormant::PendingRows,
    /// What the batch being written sends or sets, to answer parked waits once it
    /// commits.
    pub(super) touched: Vec<WaitFor>,
    /// When to sweep the parked waits nobody waits for any more.
    pub(super) park_sweeps: Sweeps,
    /// How the writer encodes the answers of waits it records.
    pub(super) codec: Codec,
    /// Whether the WAL has grown past [`CHECKPOINT_PAGES`] since the last checkpoint.
    pub(super) checkpoint_due: bool,
    /// What dispatching queued workflows keeps (see `queues`).
    pub(super) queues: super::queues::Queues,
    /// Runs started again from the journal at the open, and when (see
    /// `Store::replayed`): each is marked in the transaction of its first write, so
    /// that a run that writes nothing (one a new build cannot replay) leaves the
    /// journal as it was.
    pub(super) replay_marks: HashMap<Arc<str>, i64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("parked", &self.parked.len())
            .field("parks", &self.park_sweeps.added())
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// The writer of `conn`, its hot statements prepared (so a journal whose schema
    /// lacks what they use fails here, at open).
    ///
    /// Its WAL hook replaces SQLite's automatic checkpoints, which run inside the
    /// `COMMIT` that grows the WAL past its limit: on a caller's thread, that would block
    /// an async worker for the copy and its fsync. The writer thread checkpoints instead
    /// (see [`Writer::checkpoint_if_due`]).
    pub(super) fn new(conn: Connection, codec: Codec) -> rusqlite::Result<Self> {
        conn.wal_hook(Some(note_wal_pages));
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        for sql in [
            SQL_BEGIN,
            SQL_COMMIT,
            SQL_ROLLBACK,
            SQL_CREATE,
            SQL_RECORD,
            SQL_FINISH,
        ] {
            conn.prepare_cached(sql)?;
        }
        Ok(Writer {
            codec,
            conn,
            parked: HashMap::new(),
            dormant: HashMap::new(),
            wakes: None,
            dormant_sweeps: Sweeps::new(),
            dormant_rows: super::dormant::PendingRows::default(),
            touched: Vec::new(),
            park_sweeps: Sweeps::new(),
            checkpoint_due: false,
            queues: super::queues::Queues::default(),
            replay_marks: HashMap::new(),
        })
    }

    /// Marks run `id` as started again from the journal, if the open noted it and
    /// this is its first write since.
    fn mark_replayed(&mut self, id: &str) {
        let Some(at) = self.replay_marks.remove(id) else {
            return;
        };
        let marked = self.conn.prepare_cached(concat!(
            "UPDATE durable_workflows SET replays = ",
            replays_appended!(),
            " WHERE id = ?1 AND ",
            replays_recorded!()
        ));
        if let Err(e) = marked.and_then(|mut stmt| stmt.execute(rusqlite::params![id, at])) {
            tracing::debug!(workflow = id, error = %e, "could not mark the run as replayed");
        }
    }

    /// Notes the WAL's size after a commit made through this writer.
    pub(super) fn note_commit(&mut self) {
        self.checkpoint_due |= WAL_PAGES.with(std::cell::Cell::take) >= CHECKPOINT_PAGES;
    }

    /// Copies the WAL back into the journal file if it has grown past
    /// [`CHECKPOINT_PAGES`] (what SQLite's automatic checkpoint would have done, at the
    /// same point). Passive: it never waits for the reader, and a checkpoint that could
    /// not finish is tried again after the next commit.
    pub(super) fn checkpoint_if_due(&mut self) {
        if std::mem::take(&mut self.checkpoint_due) {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }

    /// Runs `sql` (from the statement cache) with no parameters.
    pub(super) fn run(&self, sql: &str) -> rusqlite::Result<usize> {
        self.conn.prepare_cached(sql)?.execute([])
    }

    /// Rolls back the open transaction, if any: one left open by a failed `ROLLBACK`
    /// or `COMMIT` would make every `BEGIN` fail.
    pub(super) fn end_open_transaction(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.run(SQL_ROLLBACK);
        }
    }

    /// Applies and commits one batch, and parks the waits in it that found nothing.
    /// Returns the answers to every other write, for the caller to send once it has let
    /// go of the writer: a step woken by its answer may then commit its next write on
    /// its own thread at once. Waits that parked in this same batch before what they
    /// wait for was written are put in `woken`, to run next.
    pub(super) fn commit_batch(
        &mut self,
        path: &Path,
        batch: &mut Vec<Command>,
        stats: &WriterStats,
        woken: &mut VecDeque<Command>,
    ) -> Answers {
        let started = std::time::Instant::now();
        self.take_awake(batch, stats);
        if batch.is_empty() && !self.dormant_rows_due() {
            return Answers::default();
        }
        let size = batch.len();
        self.touched.clear();
        self.end_open_transaction();
        if let Err(e) = self.run(SQL_BEGIN) {
            let e = sql_error(path, e);
            stats.in_flight.fetch_sub(size, Ordering::Relaxed);
            for c in batch.drain(..) {
                fail(c, e.clone());
            }
            return Answers::default();
        }
        // First what the journal keeps of dormant runs: a woken run's row goes in the
        // commit of its next write at the latest (see `sqlite::dormant`).
        if let Err(e) = self.flush_dormant() {
            let e = sql_error(path, e);
            self.end_open_transaction();
            stats.in_flight.fetch_sub(size, Ordering::Relaxed);
            for c in batch.drain(..) {
                fail(c, e.clone());
            }
            return Answers::default();
        }
        let (mut replies, aborted) = self.apply_batch(path, batch);
        if aborted.is_none() {
            self.answer_parked(path, &mut replies);
            // Last: a slot freed or a workflow queued in this batch is taken in its
            // commit.
            self.dispatch_touched();
        }
        if stats.halted() {
            // A simulated crash before this batch committed: none of it is written,
            // and nobody hears back.
            let _ = self.run(SQL_ROLLBACK);
            self.dispatches_failed();
            batch.clear();
            return Answers::default();
        }
        let committed = self.commit(path, aborted);
        if committed.is_ok() {
            // Counted before anyone hears of the commit.
            stats.commits.fetch_add(1, Ordering::Relaxed);
            self.note_commit();
            self.dormant_rows_committed();
            self.dispatches_committed();
        } else {
            self.touched.clear();
            self.dispatches_failed();
        }
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.last_commit_ns.store(took, Ordering::Relaxed);
        stats.last_batch.store(size, Ordering::Relaxed);
        // Before the replies: a woken step that enqueues its next write at once must find
        // the writer idle, not counting this batch.
        stats.in_flight.fetch_sub(size, Ordering::Relaxed);
        self.settle(committed, replies, stats, woken)
    }

    /// Takes the wake-ups of dormant runs out of `batch`: each only notes that the
    /// run's row goes with the next commit.
    fn take_awake(&mut self, batch: &mut Vec<Command>, stats: &WriterStats) {
        let before = batch.len();
        batch.retain(|c| match c {
            Command::Awake(run) => {
                self.forget_dormant(run.clone());
                false
            }
            _ => true,
        });
        let taken = before - batch.len();
        if taken > 0 {
            stats.in_flight.fetch_sub(taken, Ordering::Relaxed);
        }
    }

    /// Runs every write of `batch` (emptying it) in the open transaction. Returns their
    /// replies, to send once the batch commits, and the error of a write that rolled
    /// back the whole transaction, if one did (the writes after it are failed at once).
    fn apply_batch(
        &mut self,
        path: &Path,
        batch: &mut Vec<Command>,
    ) -> (Vec<Reply>, Option<StoreError>) {
        // A failing statement rolls back only itself (SQLite's default `ABORT`), so one
        // bad write fails alone and the rest of the batch still commits.
        let mut replies = Vec::with_capacity(batch.len());
        let mut aborted = None;
        for c in batch.drain(..) {
            if let Some(e) = &aborted {
                fail(c, StoreError::clone(e));
                continue;
            }
            if !self.replay_marks.is_empty() {
                let id = match &c {
                    Command::Step(s, _) => Some(s.workflow_id.clone()),
                    Command::Finish(f, _) => Some(f.id.clone()),
                    Command::Write(w) => match &**w {
                        Write::Wait(wait, _) => {
                            wait.record.as_ref().map(|r| r.key.workflow_id.clone())
                        }
                        Write::Started(key, ..) => Some(key.workflow_id.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(id) = id {
                    self.mark_replayed(&id);
                }
            }
            let reply = match c {
                Command::Create(w, reply) => {
                    Reply::Create(reply, self.create(&w).map_err(|e| sql_error(path, e)))
                }
                Command::Step(s, reply) => {
                    Reply::Unit(reply, self.record(&s).map_err(|e| step_error(path, &s, e)))
                }
                Command::Finish(f, reply) => {
                    Reply::Finish(reply, self.finish(&f).map_err(|e| sql_error(path, e)))
                }
                Command::Write(w) => self.write(path, *w),
                // Never batched: `write_loop` takes them apart, and `commit_batch`
                // takes out the wake-ups.
                Command::Awake(_) | Command::Close | Command::Checkpoint => continue,
            };
            if let Some(e) = reply.error()
                && self.conn.is_autocommit()
            {
                // Some errors (a full disk, an I/O error) roll back the whole
                // transaction; the writes after it would each commit on their own.
                // Fail them instead, and everything before: none of it is written.
                aborted = Some(e.clone());
            }
            replies.push(reply);
        }
        (replies, aborted)
    }

    /// Commits the batch's transaction, unless a write in it rolled it back
    /// (`aborted`): then the batch fails with that write's error.
    fn commit(&mut self, path: &Path, aborted: Option<StoreError>) -> Result<(), StoreError> {
        match aborted {
            Some(e) => Err(e),
            None => self.run(SQL_COMMIT).map(drop).map_err(|e| {
                // A failed COMMIT can leave the transaction open (SQLITE_BUSY, a full
                // disk); end it so the next batch starts clean. Its writes are reported
                // as failed (at `FULL`, an fsync failing after the commit frame was
                // written can still surface them after a crash, as in SQLite itself).
                let _ = self.run(SQL_ROLLBACK);
                sql_error(path, e)
            }),
        }
    }

    /// Settles every write of a batch once it `committed` or failed: a wait that found
    /// nothing is parked (see [`Writer::park`]), or run again next (in `woken`) if the
    /// batch also wrote what it waits for; the rest are answered (by the caller, from
    /// what this returns).
    fn settle(
        &mut self,
        committed: Result<(), StoreError>,
        mut replies: Vec<Reply>,
        stats: &WriterStats,
        woken: &mut VecDeque<Command>,
    ) -> Answers {
        if let Err(failed) = committed {
            return Answers {
                replies,
                failed: Some(failed),
                checkpoint: self.checkpoint_due,
            };
        }
        self.wake_dormant();
        let mut answers = Vec::with_capacity(replies.len());
        for r in replies.drain(..) {
            match r {
                Reply::Park(what, parked) if self.touched.contains(&what) => {
                    // Parked in the batch that also sent its message (after the send,
                    // or `answer_parked` would have answered it): run it again next.
                    stats.in_flight.fetch_add(1, Ordering::Relaxed);
                    woken.push_back(Command::Write(Box::new(Write::Wait(
                        Wait {
                            what,
                            record: parked.record,
                            park: true,
                        },
                        parked.reply,
                    ))));
                }
                Reply::Park(what, parked) => self.park(what, parked),
                r => answers.push(r),
            }
        }
        Answers {
            replies: answers,
            failed: None,
            checkpoint: self.checkpoint_due,
        }
    }
}

/// The answers to a batch's writes, to send once the writer is let go of (see
/// [`Writer::commit_batch`]).
#[derive(Default)]
#[must_use = "the writes wait for their answers"]
pub(super) struct Answers {
    replies: Vec<Reply>,
    /// Why the whole batch failed, if it did: then every write is answered with it.
    failed: Option<StoreError>,
    /// Whether the WAL is due a checkpoint (see [`Writer::checkpoint_if_due`]).
    pub(super) checkpoint: bool,
}

impl Answers {
    /// Sends every answer.
    pub(super) fn send(self) {
        for r in self.replies {
            match &self.failed {
                None => r.send(),
                Some(e) => r.fail(e.clone()),
            }
        }
    }
}

impl Reply {
    /// Sends the write's own result (its batch committed).
    pub(super) fn send(self) {
        match self {
            Reply::Create(s, r) => drop(s.send(r)),
            Reply::Unit(s, r) => drop(s.send(r)),
            Reply::Finish(s, r) => drop(s.send(r)),
            Reply::Value(s, r) => drop(s.send(r)),
            Reply::Ids(s, r) => drop(s.send(r)),
            Reply::Gc(s, r) => drop(s.send(r)),
            Reply::Count(s, r) => drop(s.send(r)),
            Reply::Fork(s, r) => drop(s.send(r)),
            // Parked by `commit_batch`, never sent from here.
            Reply::Park(_, p) => drop(p),
        }
    }

    fn error(&self) -> Option<&StoreError> {
        match self {
            Reply::Create(_, r) => r.as_ref().err(),
            Reply::Unit(_, r) => r.as_ref().err(),
            Reply::Finish(_, r) => r.as_ref().err(),
            Reply::Value(_, r) => r.as_ref().err(),
            Reply::Ids(_, r) => r.as_ref().err(),
            Reply::Gc(_, r) => r.as_ref().err(),
            Reply::Count(_, r) => r.as_ref().err(),
            Reply::Fork(_, r) => r.as_ref().err(),
            Reply::Park(..) => None,
        }
    }

    pub(super) fn fail(self, e: StoreError) {
        match self {
            Reply::Create(s, _) => drop(s.send(Err(e))),
            Reply::Unit(s, _) => drop(s.send(Err(e))),
            Reply::Finish(s, _) => drop(s.send(Err(e))),
            Reply::Value(s, _) => drop(s.send(Err(e))),
            Reply::Ids(s, _) => drop(s.send(Err(e))),
            Reply::Gc(s, _) => drop(s.send(Err(e))),
            Reply::Count(s, _) => drop(s.send(Err(e))),
            Reply::Fork(s, _) => drop(s.send(Err(e))),
            Reply::Park(_, p) => drop(p.reply.send(Err(e))),
        }
    }
}

/// Answers a write that will not be written with `e`.
pub(super) fn fail(c: Command, e: StoreError) {
    match c {
        Command::Create(_, s) => drop(s.send(Err(e))),
        Command::Step(_, s) => drop(s.send(Err(e))),
        Command::Finish(_, s) => drop(s.send(Err(e))),
        Command::Write(w) => match *w {
            Write::Wait(_, s) | Write::Expire(_, s) => drop(s.send(Err(e))),
            Write::Cancel(.., s) | Write::Resume(.., s) => drop(s.send(Err(e))),
            Write::Dormant(_, s) | Write::Command { reply: s, .. } => drop(s.send(Err(e))),
            Write::Gc { reply, .. } => drop(reply.send(Err(e))),
            Write::GcCommands(_, s) | Write::Vacuum(s) => drop(s.send(Err(e))),
            Write::Fork(_, s) => drop(s.send(Err(e))),
            Write::QueueNews(_, s)
            | Write::SetQueue(_, _, s)
            | Write::Dispatch(s)
            | Write::Hold(_, _, s)
            | Write::Schedule(_, _, s) => drop(s.send(Err(e))),
            Write::Started(.., s)
            | Write::Send(_, s)
            | Write::Patch(.., s)
            | Write::GiveBack(.., s)
            | Write::Transaction(_, s) => drop(s.send(Err(e))),
        },
        Command::Awake(_) | Command::Close | Command::Checkpoint => {}
    }
}
