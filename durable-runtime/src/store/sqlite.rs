//! The SQLite journal.
//!
//! One writer thread owns the only connection that writes. It takes write requests from
//! a channel and commits them in batches (group commit): it waits for the first
//! request, then takes every request already queued (up to [`MAX_BATCH`]) into the same
//! transaction, commits once, and acknowledges them all. It never waits for company, so
//! a lone sequential step pays exactly one commit with no added latency, while steps
//! that finish during a commit share the next one. After a batch the writer spins for
//! [`WRITER_SPIN`] before it sleeps, and a lone write's waiter may stay runnable for a
//! while ([`Store::ack_spin`]), so that where commits are fast a sequential step does
//! not also pay two thread sleeps and wake-ups. `docs/journal.md` ("The writer")
//! explains the policy for users.
//!
//! Reads use a separate connection (WAL readers do not block the writer).
//!
//! The schema is created and changed only by the numbered [`MIGRATIONS`]; the applied
//! number is kept in `durable_meta` (not `PRAGMA user_version`, which belongs to the
//! application if it shares the file). Tables are prefixed `durable_` for the same reason.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Statement, params};
use tokio::sync::oneshot;

use super::crc::crc32;
use super::{
    Ack, Created, Finish, Finished, NewWorkflow, RecordStatus, RecordedOutcome, RecordedStep,
    StepRecord, Store, WorkflowRecord,
};
use crate::context::lock;
use crate::error::{Error, FailureKind, Location, StoreError, StoreErrorKind};
use crate::path::StepPath;

/// The most writes one commit takes.
pub(crate) const MAX_BATCH: usize = 1024;

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

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        }
    }
}

/// The journal schema. Entry `n` (0-based) moves the schema from version `n` to `n + 1`.
/// Never edit an entry that has shipped: add one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: workflows, steps and the meta table.
    "CREATE TABLE durable_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;
    CREATE TABLE durable_workflows (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
        input       BLOB NOT NULL,
        output      BLOB,
        error_kind  TEXT,
        error       TEXT,
        executor    TEXT NOT NULL,
        app_version TEXT,
        parent_id   TEXT,
        queue       TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX durable_workflows_pending ON durable_workflows (created_at)
        WHERE status = 'pending';
    CREATE TABLE durable_steps (
        workflow_id TEXT NOT NULL,
        path        TEXT NOT NULL,
        name        TEXT NOT NULL,
        output      BLOB,
        error       TEXT,
        attempts    INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (workflow_id, path),
        CHECK ((output IS NULL) <> (error IS NULL))
    ) STRICT, WITHOUT ROWID;",
    // 2: CRC-32 checksums of recorded values, so damage is reported, not decoded. NULL
    // in rows written before version 2 (not checked).
    "ALTER TABLE durable_workflows ADD COLUMN input_crc32 INTEGER;
    ALTER TABLE durable_workflows ADD COLUMN output_crc32 INTEGER;
    ALTER TABLE durable_steps ADD COLUMN crc32 INTEGER;",
];

/// The executor name recorded for workflows this process starts.
const EXECUTOR: &str = "local";

enum Command {
    Create(NewWorkflow, oneshot::Sender<Result<Created, StoreError>>),
    Step(StepRecord, oneshot::Sender<Result<(), StoreError>>),
    Finish(Finish, oneshot::Sender<Result<(), StoreError>>),
}

/// The SQLite journal: a writer thread, a reader connection and the file lock.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    path: PathBuf,
    // `Sender` is `Sync`: concurrent steps enqueue without a lock of ours.
    writes: mpsc::Sender<Command>,
    reader: Mutex<Connection>,
    stats: Arc<WriterStats>,
}

/// What the writer thread tells the rest of the runtime about its work.
#[derive(Debug, Default)]
struct WriterStats {
    /// Transactions committed so far.
    commits: AtomicU64,
    /// Writes enqueued and not yet answered.
    in_flight: AtomicUsize,
    /// How long the last commit took (from `BEGIN` to the end of `COMMIT`), in ns.
    last_commit_ns: AtomicU64,
    /// Set by [`Store::halt`]: commit nothing more.
    halted: AtomicBool,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(path, StoreErrorKind::Io, e.to_string())
}

fn sql_error(path: &Path, e: rusqlite::Error) -> StoreError {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreErrorKind::NotAJournal,
        Some(ErrorCode::ConstraintViolation) => StoreErrorKind::Invariant,
        _ if matches!(
            e,
            rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..)
        ) =>
        {
            StoreErrorKind::Invariant
        }
        _ => StoreErrorKind::Io,
    };
    let message = match kind {
        StoreErrorKind::NotAJournal => format!("not a durable journal (SQLite says: {e})"),
        _ => e.to_string(),
    };
    StoreError::new(path, kind, message)
}

/// Creates `path` with owner-only permissions if it does not exist yet.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The lock file beside the journal: `shop.db` is locked through `shop.db.lock`.
///
/// A separate file, because SQLite's own POSIX locks on the journal are dropped when any
/// descriptor of that file is closed by this process; a lock on another file cannot
/// interfere with them.
fn lock_path(path: &Path) -> PathBuf {
    with_suffix(path, ".lock")
}

impl SqliteStore {
    /// Opens (creating if needed) the journal at `path`, takes its lock, migrates it and
    /// starts the writer thread.
    pub(crate) fn open(path: &Path, durability: Durability, codec: &str) -> Result<Self, Error> {
        if path.is_dir() {
            return Err(StoreError::new(
                path,
                StoreErrorKind::NotAJournal,
                "this is a directory; give the path of a journal file in it, such as `journal.db`",
            )
            .into());
        }
        let lock = lock_path(path);
        create_private(&lock).map_err(|e| {
            io_error(
                path,
                format!("cannot create lock file {}: {e}", lock.display()),
            )
        })?;
        let lock_file = OpenOptions::new().write(true).open(&lock).map_err(|e| {
            io_error(
                path,
                format!("cannot open lock file {}: {e}", lock.display()),
            )
        })?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: path.to_owned(),
                    lock,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(path, format!("cannot lock {}: {e}", lock.display())).into());
            }
        }
        if !path.exists() {
            create_journal(path, codec)?;
        }

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer =
            Connection::open_with_flags(path, flags).map_err(|e| sql_error(path, e))?;
        configure(&writer, durability).map_err(|e| sql_error(path, e))?;
        migrate(&mut writer, path, codec)?;

        let reader = Connection::open_with_flags(path, flags).map_err(|e| sql_error(path, e))?;
        reader
            .execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")
            .map_err(|e| sql_error(path, e))?;

        let (tx, rx) = mpsc::channel();
        let writer_path = path.to_owned();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        thread::Builder::new()
            .name("durable-journal-writer".into())
            // The writer thread holds the lock: it is released only after the last
            // queued write has committed and the thread has exited.
            .spawn(move || {
                write_loop(writer, &writer_path, &rx, &writer_stats);
                drop(lock_file);
            })
            .map_err(|e| io_error(path, format!("cannot start the writer thread: {e}")))?;

        Ok(SqliteStore {
            path: path.to_owned(),
            writes: tx,
            reader: Mutex::new(reader),
            stats,
        })
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Ack<T> {
        let (tx, rx) = oneshot::channel();
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // If the writer thread is gone the command (and its reply sender) is dropped,
        // and the caller sees a closed channel: `StoreErrorKind::Closed`.
        if self.writes.send(make(tx)).is_err() {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        rx
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = lock(&self.reader);
        f(&conn).map_err(|e| sql_error(&self.path, e))
    }
}

fn configure(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required"
        )));
    }
    conn.execute_batch(&format!("PRAGMA synchronous = {};", durability.pragma()))
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Creates a new journal at `path`: built complete (WAL mode set, schema migrated) under
/// a temporary name, then renamed into place. Switching a new file to WAL goes through
/// a rollback journal; built in place, a crash at that moment would leave a hot
/// `-journal` beside the journal, which read-only tools refuse to open. Called with the
/// lock held, so a leftover temporary file is from a crash and can be removed.
fn create_journal(path: &Path, codec: &str) -> Result<(), Error> {
    let tmp = with_suffix(path, ".creating");
    for leftover in ["", "-journal", "-wal", "-shm"] {
        let file = with_suffix(&tmp, leftover);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(
                    io_error(path, format!("cannot remove {}: {e}", file.display())).into(),
                );
            }
            _ => {}
        }
    }
    let cannot = |e: std::io::Error| io_error(path, format!("cannot create the journal: {e}"));
    create_private(&tmp).map_err(cannot)?;
    {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&tmp, flags).map_err(|e| sql_error(path, e))?;
        configure(&conn, Durability::Full).map_err(|e| sql_error(path, e))?;
        migrate(&mut conn, path, codec)?;
        // Closing the only connection checkpoints the WAL into the file and removes it.
        conn.close().map_err(|(_, e)| sql_error(path, e))?;
    }
    OpenOptions::new()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(cannot)?;
    std::fs::rename(&tmp, path).map_err(cannot)?;
    // Make the rename itself durable.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(cannot)?;
    }
    Ok(())
}

/// Brings the schema to the newest version and checks the codec, in one transaction.
fn migrate(conn: &mut Connection, path: &Path, codec: &str) -> Result<(), Error> {
    let err = |e| Error::from(sql_error(path, e));
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let has_meta: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'durable_meta')",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    let version: usize = if has_meta {
        let v: Option<String> = tx
            .query_row(
                "SELECT value FROM durable_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        match v.as_deref().map(str::parse::<usize>) {
            Some(Ok(v)) => v,
            _ => {
                return Err(StoreError::new(
                    path,
                    StoreErrorKind::NotAJournal,
                    "durable_meta has no valid schema_version; the journal is damaged",
                )
                .into());
            }
        }
    } else {
        0
    };
    if version > MIGRATIONS.len() {
        return Err(StoreError::new(
            path,
            StoreErrorKind::NewerSchema,
            format!(
                "journal schema version {version} is newer than this build of durable understands ({}); upgrade durable-runtime",
                MIGRATIONS.len()
            ),
        )
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql).map_err(err)?;
        tx.execute(
            "INSERT INTO durable_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(i + 1).to_string()],
        )
        .map_err(err)?;
    }
    check_schema(&tx, path)?;
    let recorded: Option<String> = tx
        .query_row(
            "SELECT value FROM durable_meta WHERE key = 'codec'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    match recorded {
        None => {
            tx.execute(
                "INSERT INTO durable_meta (key, value) VALUES ('codec', ?1)",
                [codec],
            )
            .map_err(err)?;
        }
        Some(c) if c == codec => {}
        Some(c) => {
            return Err(StoreError::new(
                path,
                StoreErrorKind::CodecMismatch,
                format!("journal was written with codec `{c}`, this runtime uses `{codec}`"),
            )
            .into());
        }
    }
    tx.commit().map_err(err)
}

/// Every column the runtime reads or writes, per table: a journal whose tables were
/// dropped or altered by hand is refused at open, not found out by each workflow later.
const SCHEMA: &[(&str, &str)] = &[
    ("durable_meta", "key, value"),
    (
        "durable_workflows",
        "id, name, status, input, output, error_kind, error, executor, app_version, parent_id, queue, created_at, updated_at, input_crc32, output_crc32",
    ),
    (
        "durable_steps",
        "workflow_id, path, name, output, error, attempts, started_at, finished_at, crc32",
    ),
];

fn check_schema(conn: &Connection, path: &Path) -> Result<(), Error> {
    for (table, columns) in SCHEMA {
        if let Err(e) = conn.prepare(&format!("SELECT {columns} FROM {table} LIMIT 0")) {
            return Err(StoreError::new(
                path,
                StoreErrorKind::NotAJournal,
                format!(
                    "the journal's schema is damaged ({e}); it was changed outside durable: restore the file from a backup"
                ),
            )
            .into());
        }
    }
    Ok(())
}

fn write_loop(conn: Connection, path: &Path, rx: &mpsc::Receiver<Command>, stats: &WriterStats) {
    let mut writer = match Writer::prepare(&conn) {
        Ok(w) => w,
        Err(e) => {
            // Nothing can be written: answer every write with the reason, until the
            // runtime is dropped.
            let e = sql_error(path, e);
            while let Ok(c) = rx.recv() {
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                fail(c, e.clone());
            }
            return;
        }
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Waits for the first request; ends when every sender is gone.
    while let Some(first) = next_command(rx) {
        if stats.halted.load(Ordering::SeqCst) {
            // A simulated crash: what is queued is dropped unanswered, like the
            // process's memory, and the thread exits (releasing the lock).
            return;
        }
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        writer.commit_batch(path, &mut batch, stats);
    }
}

/// How long the writer spins for the next write before it sleeps.
pub(crate) const WRITER_SPIN: Duration = Duration::from_micros(50);

/// How long a lone write's waiter stays runnable before it sleeps; see
/// [`Store::ack_spin`].
const MIN_ACK_SPIN_NS: u64 = 20_000;
const MAX_ACK_SPIN_NS: u64 = 100_000;

/// Waits for the next write: spins for up to [`WRITER_SPIN`], then sleeps until one comes.
/// `None` once every sender is gone.
fn next_command(rx: &mpsc::Receiver<Command>) -> Option<Command> {
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
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// A finished write waiting for its commit before its reply is sent.
enum Reply {
    Create(
        oneshot::Sender<Result<Created, StoreError>>,
        Result<Created, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
}

/// The writer connection's statements, prepared once: the writer runs the same few
/// statements for ever, and a statement cache lookup per write costs more than binding.
struct Writer<'c> {
    conn: &'c Connection,
    begin: Statement<'c>,
    commit: Statement<'c>,
    rollback: Statement<'c>,
    create: Statement<'c>,
    existing: Statement<'c>,
    record: Statement<'c>,
    finish: Statement<'c>,
}

impl<'c> Writer<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Writer {
            conn,
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            rollback: conn.prepare("ROLLBACK")?,
            create: conn.prepare(
                "INSERT INTO durable_workflows
                     (id, name, status, input, executor, app_version, created_at, updated_at,
                      input_crc32)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6, ?7)
                 ON CONFLICT (id) DO NOTHING",
            )?,
            existing: conn.prepare(&format!(
                "SELECT {WORKFLOW_COLUMNS} FROM durable_workflows WHERE id = ?1"
            ))?,
            record: conn.prepare(
                "INSERT INTO durable_steps
                     (workflow_id, path, name, output, error, attempts, started_at, finished_at,
                      crc32)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?,
            finish: conn.prepare(
                "UPDATE durable_workflows
                 SET status = ?2, output = ?3, error_kind = ?4, error = ?5, updated_at = ?6,
                     output_crc32 = ?7
                 WHERE id = ?1 AND status = 'pending'",
            )?,
        })
    }

    /// Applies and commits one batch, then replies to every write in it.
    fn commit_batch(&mut self, path: &Path, batch: &mut Vec<Command>, stats: &WriterStats) {
        let started = std::time::Instant::now();
        let size = batch.len();
        if !self.conn.is_autocommit() {
            // A transaction left open by a failed ROLLBACK would make every BEGIN fail.
            let _ = self.rollback.execute([]);
        }
        if let Err(e) = self.begin.execute([]) {
            let e = sql_error(path, e);
            stats.in_flight.fetch_sub(size, Ordering::Relaxed);
            for c in batch.drain(..) {
                fail(c, e.clone());
            }
            return;
        }
        // A failing statement rolls back only itself (SQLite's default `ABORT`), so one
        // bad write fails alone and the rest of the batch still commits.
        let mut replies = Vec::with_capacity(batch.len());
        let mut aborted = None;
        for c in batch.drain(..) {
            if let Some(e) = &aborted {
                fail(c, StoreError::clone(e));
                continue;
            }
            let reply = match c {
                Command::Create(w, reply) => {
                    Reply::Create(reply, self.create(&w).map_err(|e| sql_error(path, e)))
                }
                Command::Step(s, reply) => {
                    Reply::Unit(reply, self.record(&s).map_err(|e| step_error(path, &s, e)))
                }
                Command::Finish(f, reply) => {
                    Reply::Unit(reply, self.finish(&f).map_err(|e| sql_error(path, e)))
                }
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
        if stats.halted.load(Ordering::SeqCst) {
            // A simulated crash before this batch committed: none of it is written,
            // and nobody hears back.
            let _ = self.rollback.execute([]);
            batch.clear();
            return;
        }
        let committed = match aborted {
            Some(e) => Err(e),
            None => self.commit.execute([]).map(drop).map_err(|e| {
                // A failed COMMIT can leave the transaction open (SQLITE_BUSY, a full
                // disk); end it so the next batch starts clean. Its writes are reported
                // as failed (at `FULL`, an fsync failing after the commit frame was
                // written can still surface them after a crash, as in SQLite itself).
                let _ = self.rollback.execute([]);
                sql_error(path, e)
            }),
        };
        if committed.is_ok() {
            // Counted before anyone hears of the commit.
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.last_commit_ns.store(took, Ordering::Relaxed);
        // Before the replies: a woken step that enqueues its next write at once must find
        // the writer idle, not counting this batch.
        stats.in_flight.fetch_sub(size, Ordering::Relaxed);
        for r in replies {
            match &committed {
                Ok(()) => r.send(),
                Err(e) => r.fail(e.clone()),
            }
        }
    }

    fn create(&mut self, w: &NewWorkflow) -> rusqlite::Result<Created> {
        let inserted = self.create.execute(params![
            &*w.id,
            w.name,
            w.input,
            EXECUTOR,
            w.app_version.as_deref(),
            w.created_at,
            crc32(&w.input)
        ])?;
        if inserted == 1 {
            return Ok(Created::New);
        }
        let existing = self.existing.query_row([&*w.id], workflow_row)??;
        Ok(Created::Existing(existing))
    }

    fn record(&mut self, s: &StepRecord) -> rusqlite::Result<()> {
        let (output, error) = match &s.outcome {
            RecordedOutcome::Output(bytes) => (Some(bytes.as_slice()), None),
            RecordedOutcome::Panicked(message) => (None, Some(message.as_str())),
        };
        let crc = crc32(output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()));
        self.record.execute(params![
            &*s.workflow_id,
            s.path.to_string(),
            s.name,
            output,
            error,
            s.attempts,
            s.started_at,
            s.finished_at,
            crc
        ])?;
        Ok(())
    }

    fn finish(&mut self, f: &Finish) -> rusqlite::Result<()> {
        let (status, output, kind, error) = match &f.outcome {
            Finished::Completed(bytes) => {
                (RecordStatus::Completed, Some(bytes.as_slice()), None, None)
            }
            Finished::Failed(kind, message) => (
                RecordStatus::Failed,
                None,
                Some(kind.as_str()),
                Some(message.as_str()),
            ),
        };
        let crc = output.map(crc32);
        self.finish.execute(params![
            &*f.id,
            status.as_str(),
            output,
            kind,
            error,
            f.at,
            crc
        ])?;
        Ok(())
    }
}

impl Reply {
    /// Sends the write's own result (its batch committed).
    fn send(self) {
        match self {
            Reply::Create(s, r) => drop(s.send(r)),
            Reply::Unit(s, r) => drop(s.send(r)),
        }
    }

    fn error(&self) -> Option<&StoreError> {
        match self {
            Reply::Create(_, r) => r.as_ref().err(),
            Reply::Unit(_, r) => r.as_ref().err(),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Reply::Create(s, _) => drop(s.send(Err(e))),
            Reply::Unit(s, _) => drop(s.send(Err(e))),
        }
    }
}

fn fail(c: Command, e: StoreError) {
    match c {
        Command::Create(_, s) => drop(s.send(Err(e))),
        Command::Step(_, s) | Command::Finish(_, s) => drop(s.send(Err(e))),
    }
}

fn step_error(path: &Path, s: &StepRecord, e: rusqlite::Error) -> StoreError {
    if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
        StoreError::new(
            path,
            StoreErrorKind::Invariant,
            format!(
                "step {} of workflow {} is already recorded; a recorded step is never overwritten",
                s.path, s.workflow_id
            ),
        )
    } else {
        sql_error(path, e)
    }
}

const WORKFLOW_COLUMNS: &str =
    "id, name, status, input, output, error_kind, error, input_crc32, output_crc32";

/// Why a damaged value cannot be used.
const DAMAGED: &str = "the value does not match its checksum: the journal is damaged";

/// Whether a recorded value matches its checksum (rows older than schema 2 have none).
fn checks(bytes: &[u8], crc: Option<u32>) -> bool {
    crc.is_none_or(|crc| crc == crc32(bytes))
}

/// Checks a recorded value against its checksum (none in rows older than schema 2).
fn verify(bytes: &[u8], crc: Option<u32>, what: impl FnOnce() -> String) -> rusqlite::Result<()> {
    match crc {
        Some(crc) if crc != crc32(bytes) => Err(invalid(format!(
            "{} does not match its checksum: the journal is damaged (restore it from a backup, \
             or remove the workflow's rows to give it up)",
            what()
        ))),
        _ => Ok(()),
    }
}

/// Reads a workflow row. The inner `Result` rejects rows no runtime could have written
/// (an unknown status), which point at a damaged or hand-edited journal.
fn workflow_row(r: &Row<'_>) -> rusqlite::Result<rusqlite::Result<WorkflowRecord>> {
    let id: String = r.get(0)?;
    let status: String = r.get(2)?;
    let status = match status.as_str() {
        "pending" => RecordStatus::Pending,
        "completed" => RecordStatus::Completed,
        "failed" => RecordStatus::Failed,
        other => {
            return Ok(Err(invalid(format!(
                "workflow {id} has unknown status `{other}`"
            ))));
        }
    };
    let kind: Option<String> = r.get(5)?;
    let error: Option<String> = r.get(6)?;
    let failure = match (status, kind, error) {
        (RecordStatus::Failed, Some(k), m) => match FailureKind::parse(&k) {
            Some(k) => Some((k, m.unwrap_or_default())),
            None => {
                return Ok(Err(invalid(format!(
                    "workflow {id} has unknown error kind `{k}`"
                ))));
            }
        },
        (RecordStatus::Failed, None, _) => {
            return Ok(Err(invalid(format!(
                "workflow {id} is failed but records no error kind"
            ))));
        }
        _ => None,
    };
    let input: Vec<u8> = r.get(3)?;
    let output: Option<Vec<u8>> = r.get(4)?;
    // A damaged value is reported for this workflow alone, when it is resumed or asked
    // for: the other workflows of the journal are not held up by it.
    let crc_output: Option<u32> = r.get(8)?;
    let damaged = if !checks(&input, r.get(7)?) {
        Some((Location::Input, DAMAGED.to_owned()))
    } else if !output.as_ref().is_none_or(|o| checks(o, crc_output)) {
        Some((Location::Output, DAMAGED.to_owned()))
    } else {
        None
    };
    Ok(Ok(WorkflowRecord {
        damaged,
        name: r.get(1)?,
        status,
        input,
        output,
        failure,
        id,
    }))
}

fn invalid(message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, message.into())
}

impl Store for SqliteStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn create_workflow(&self, workflow: NewWorkflow) -> Ack<Created> {
        self.send(|tx| Command::Create(workflow, tx))
    }

    fn record_step(&self, step: StepRecord) -> Ack {
        self.send(|tx| Command::Step(step, tx))
    }

    fn finish_workflow(&self, finish: Finish) -> Ack {
        self.send(|tx| Command::Finish(finish, tx))
    }

    fn steps(&self, workflow_id: &str) -> Result<Vec<RecordedStep>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT path, name, output, error, attempts, started_at, finished_at, crc32
                 FROM durable_steps WHERE workflow_id = ?1",
            )?;
            let rows = stmt.query_map([workflow_id], |r| {
                let path: String = r.get(0)?;
                let output: Option<Vec<u8>> = r.get(2)?;
                let error: Option<String> = r.get(3)?;
                let Ok(parsed) = path.parse::<StepPath>() else {
                    return Ok(Err(invalid(format!("workflow {workflow_id} has a step at `{path}`, which is not a step path"))));
                };
                let value = output.as_deref().or(error.as_ref().map(String::as_bytes));
                if let Err(e) = verify(value.unwrap_or_default(), r.get(7)?, || {
                    format!("the recorded result of step {path} of workflow {workflow_id}")
                }) {
                    return Ok(Err(e));
                }
                let outcome = match (output, error) {
                    (Some(o), None) => RecordedOutcome::Output(o),
                    (None, Some(e)) => RecordedOutcome::Panicked(e),
                    _ => {
                        return Ok(Err(invalid(format!(
                            "step {path} of workflow {workflow_id} records both or neither of output and error"
                        ))));
                    }
                };
                Ok(Ok(RecordedStep {
                    path: parsed,
                    name: r.get(1)?,
                    outcome,
                    attempts: r.get(4)?,
                    started_at: r.get(5)?,
                    finished_at: r.get(6)?,
                }))
            })?;
            let mut steps = Vec::new();
            for row in rows {
                steps.push(row??);
            }
            steps.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(steps)
        })
    }

    fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

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

    fn pending_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.workflow_rows("WHERE status = 'pending'")
    }

    fn workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.workflow_rows("")
    }

    fn halt(&self) {
        self.stats.halted.store(true, Ordering::SeqCst);
    }

    fn is_halted(&self) -> bool {
        self.stats.halted.load(Ordering::Relaxed)
    }
}

impl SqliteStore {
    /// The workflow rows matching `filter` (a `WHERE` clause or nothing), oldest first.
    fn workflow_rows(&self, filter: &str) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {WORKFLOW_COLUMNS} FROM durable_workflows {filter} ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], workflow_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row??);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &Arc<str>, i: u32) -> StepRecord {
        StepRecord {
            workflow_id: id.clone(),
            path: StepPath::child(&[], i),
            name: "s",
            outcome: RecordedOutcome::Output(vec![1]),
            attempts: 1,
            started_at: 0,
            finished_at: 0,
        }
    }

    #[tokio::test]
    async fn answered_writes_leave_nothing_in_flight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            SqliteStore::open(&dir.path().join("j.db"), Durability::Off, "bincode").expect("open");
        let id: Arc<str> = Arc::from("w");
        let created = store.create_workflow(NewWorkflow {
            id: id.clone(),
            name: "w",
            input: vec![],
            app_version: None,
            created_at: 0,
        });
        assert!(matches!(created.await, Ok(Ok(Created::New))));
        let acks: Vec<_> = (0..200).map(|i| store.record_step(step(&id, i))).collect();
        // A duplicate fails alone; it must still be counted as answered.
        let duplicate = store.record_step(step(&id, 0));
        for ack in acks {
            assert!(matches!(ack.await, Ok(Ok(()))));
        }
        assert!(matches!(duplicate.await, Ok(Err(_))));
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
}
