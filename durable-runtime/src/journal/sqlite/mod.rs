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

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
#[cfg(feature = "testkit")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Statement, params};

mod crc;

use super::Durability;
use super::{
    Ack, Created, Effect, Finish, Finished, NewMessage, NewWorkflow, RecordStatus, RecordedOutcome,
    RecordedStep, Replier, SideRecords, StartedRecord, StepKey, StepRecord, Store, TxStep, TxWork,
    Wait, WaitFor, WaitRecord, WorkflowRecord,
};
use crate::codec::{ByteBuf, Bytes, Codec, Fingerprint, nested};
use crate::error::{CancelReason, Error, FailureKind, Location, StoreError, StoreErrorKind};
use crate::path::StepPath;
use crate::util::lock;
use crc::crc32;

/// The most writes one commit takes.
pub(crate) const MAX_BATCH: usize = 1024;

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
    // 3: the workflow primitives. Workflows can be cancelled (a status the CHECK of
    // version 1 refuses, so the table is rebuilt) and have a deadline; step records say
    // what kind of error they hold; messages, events and start records get tables.
    "CREATE TABLE durable_workflows_v3 (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        status       TEXT NOT NULL
                     CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
        input        BLOB NOT NULL,
        output       BLOB,
        error_kind   TEXT,
        error        TEXT,
        executor     TEXT NOT NULL,
        app_version  TEXT,
        parent_id    TEXT,
        queue        TEXT,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        input_crc32  INTEGER,
        output_crc32 INTEGER,
        deadline_at  INTEGER
    ) STRICT;
    INSERT INTO durable_workflows_v3
        (id, name, status, input, output, error_kind, error, executor, app_version,
         parent_id, queue, created_at, updated_at, input_crc32, output_crc32)
        SELECT id, name, status, input, output, error_kind, error, executor, app_version,
               parent_id, queue, created_at, updated_at, input_crc32, output_crc32
        FROM durable_workflows;
    DROP TABLE durable_workflows;
    ALTER TABLE durable_workflows_v3 RENAME TO durable_workflows;
    CREATE INDEX durable_workflows_pending ON durable_workflows (created_at)
        WHERE status = 'pending';
    ALTER TABLE durable_steps ADD COLUMN error_kind TEXT;
    CREATE TABLE durable_messages (
        seq         INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        topic       TEXT NOT NULL,
        payload     BLOB NOT NULL,
        crc32       INTEGER NOT NULL,
        sent_at     INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX durable_messages_queue ON durable_messages (destination, topic, seq);
    CREATE TABLE durable_events (
        workflow_id TEXT NOT NULL,
        key         TEXT NOT NULL,
        value       BLOB NOT NULL,
        crc32       INTEGER NOT NULL,
        set_at      INTEGER NOT NULL,
        PRIMARY KEY (workflow_id, key)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE durable_started (
        workflow_id TEXT NOT NULL,
        path        TEXT NOT NULL,
        name        TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        wake_at     INTEGER,
        PRIMARY KEY (workflow_id, path)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE durable_patches (
        workflow_id TEXT NOT NULL,
        path        TEXT NOT NULL,
        name        TEXT NOT NULL,
        PRIMARY KEY (workflow_id, path, name)
    ) STRICT, WITHOUT ROWID;",
    // 4: every value says its format in its first byte, so journals can hold values of
    // several codecs; the values written so far get the legacy one (bincode, 0x01), and
    // their checksums are recomputed where they matched (a damaged value stays
    // damaged). Steps record a fingerprint of the arguments they were called with.
    "UPDATE durable_workflows SET
         input = durable_legacy_value(input),
         input_crc32 = durable_legacy_crc(input, input_crc32);
    UPDATE durable_workflows SET
         output = durable_legacy_value(output),
         output_crc32 = durable_legacy_crc(output, output_crc32)
     WHERE output IS NOT NULL;
    UPDATE durable_steps SET
         output = durable_legacy_value(output),
         crc32 = durable_legacy_crc(output, crc32)
     WHERE output IS NOT NULL;
    UPDATE durable_messages SET
         payload = durable_legacy_value(payload),
         crc32 = durable_legacy_crc(payload, crc32);
    UPDATE durable_events SET
         value = durable_legacy_value(value),
         crc32 = durable_legacy_crc(value, crc32);
    DELETE FROM durable_meta WHERE key = 'codec';
    ALTER TABLE durable_steps ADD COLUMN args_fingerprint INTEGER;",
];

/// The executor name recorded for workflows this process starts.
const EXECUTOR: &str = "local";

/// The work of a transaction step on SQLite: runs on the writer's connection, inside a
/// transaction that also records the step. Returns what to record, and whether the
/// application's writes are kept (`false`: they are rolled back, and the outcome, an
/// `Err` or a panic, is still recorded); `Err` records nothing and fails the write.
pub(crate) type TxFn =
    Box<dyn FnOnce(&rusqlite::Transaction<'_>) -> Result<(RecordedOutcome, bool), String> + Send>;

enum Command {
    Create(NewWorkflow, Replier<Created>),
    Step(StepRecord, Replier<()>),
    Finish(Finish, Replier<bool>),
    /// Boxed: the primitives' writes are rare and large, and every command moves
    /// through the channel and the batch.
    Write(Box<Write>),
    /// Commit what came before, then stop (releasing the journal's lock).
    Close,
}

/// The writes of the workflow primitives, each with its typed reply.
enum Write {
    Wait(Wait, Replier<Option<Vec<u8>>>),
    Expire(WaitRecord, Replier<Option<Vec<u8>>>),
    Started(StepKey, i64, Replier<()>),
    Send(NewMessage, Replier<()>),
    Patch(Arc<str>, StepPath, &'static str, Replier<()>),
    GiveBack(StepKey, String, Replier<()>),
    Cancel(String, CancelReason, i64, Replier<Vec<String>>),
    Resume(String, i64, Replier<Vec<String>>),
    Transaction(TxStep, Replier<()>),
}

impl Command {
    fn is_transaction(&self) -> bool {
        matches!(self, Command::Write(w) if matches!(**w, Write::Transaction(..)))
    }
}

/// The SQLite journal: a writer thread, a reader connection and the file lock.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    path: Arc<Path>,
    // `Sender` is `Sync`: concurrent steps enqueue without a lock of ours.
    writes: mpsc::Sender<Command>,
    /// `None` once the store is closed.
    reader: Mutex<Option<Connection>>,
    stats: Arc<WriterStats>,
    /// The writer thread, which holds the lock; joined by [`Store::close`].
    writer: Mutex<Option<thread::JoinHandle<()>>>,
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
    /// Set by the testkit's simulated crash: commit nothing more.
    #[cfg(feature = "testkit")]
    halted: Option<Arc<AtomicBool>>,
}

impl WriterStats {
    /// Whether a simulated crash happened (never, outside the testkit's builds).
    #[inline]
    fn halted(&self) -> bool {
        #[cfg(feature = "testkit")]
        if let Some(h) = &self.halted {
            return h.load(Ordering::SeqCst);
        }
        false
    }
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
    let message = match (kind, &e) {
        (StoreErrorKind::NotAJournal, _) => format!("not a durable journal (SQLite says: {e})"),
        // Our own findings about a row, carried through rusqlite's conversion error:
        // the message alone (rusqlite would prefix "Conversion error from type Text at
        // index: 0").
        (_, rusqlite::Error::FromSqlConversionFailure(_, _, inner)) => inner.to_string(),
        (_, rusqlite::Error::InvalidColumnType(_, column, found)) => format!(
            "column `{column}` holds {found} where durable wrote another type: the journal was \
             changed outside durable; restore it from a backup"
        ),
        (_, rusqlite::Error::IntegralValueOutOfRange(_, value)) => format!(
            "a number in the journal ({value}) is out of the range durable writes: the journal \
             was changed outside durable; restore it from a backup"
        ),
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
    /// Every workflow run, finished or not, oldest first.
    #[cfg(feature = "testkit")]
    pub(crate) fn workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.workflow_rows("")
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

    /// Opens (creating if needed) the journal at `path`, takes its lock, migrates it and
    /// starts the writer thread.
    pub(crate) fn open(path: &Path, options: &super::JournalOptions) -> Result<Self, Error> {
        let (durability, codec) = (options.durability, options.codec);
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
            create_journal(path)?;
        }

        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer =
            Connection::open_with_flags(path, flags).map_err(|e| sql_error(path, e))?;
        configure(&writer, durability).map_err(|e| sql_error(path, e))?;
        migrate(&mut writer, path)?;

        let reader = Connection::open_with_flags(path, flags).map_err(|e| sql_error(path, e))?;
        reader
            .execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")
            .map_err(|e| sql_error(path, e))?;

        let (tx, rx) = mpsc::channel();
        let writer_path = path.to_owned();
        let stats = Arc::new(WriterStats {
            #[cfg(feature = "testkit")]
            halted: options.halt.clone(),
            ..WriterStats::default()
        });
        let writer_stats = stats.clone();
        let writer = thread::Builder::new()
            .name("durable-journal-writer".into())
            // The writer thread holds the lock: it is released only after the last
            // queued write has committed and the thread has exited.
            .spawn(move || {
                write_loop(writer, &writer_path, &rx, &writer_stats, codec);
                drop(lock_file);
            })
            .map_err(|e| io_error(path, format!("cannot start the writer thread: {e}")))?;

        Ok(SqliteStore {
            path: Arc::from(path),
            writes: tx,
            reader: Mutex::new(Some(reader)),
            stats,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn send<T>(&self, make: impl FnOnce(Replier<T>) -> Command) -> Ack<T> {
        let (tx, ack) = Ack::channel(&self.path);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // If the writer thread is gone the command (and its reply sender) is dropped,
        // and the ack resolves to `StoreErrorKind::Closed`.
        if self.writes.send(make(tx)).is_err() {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        ack
    }

    fn write<T>(&self, make: impl FnOnce(Replier<T>) -> Write) -> Ack<T> {
        self.send(|tx| Command::Write(Box::new(make(tx))))
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = lock(&self.reader);
        let Some(conn) = conn.as_ref() else {
            return Err(StoreError::new(
                &*self.path,
                StoreErrorKind::Closed,
                "the journal was closed",
            ));
        };
        f(conn).map_err(|e| sql_error(&self.path, e))
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
fn create_journal(path: &Path) -> Result<(), Error> {
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
        migrate(&mut conn, path)?;
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

/// Brings the schema to the newest version, in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let err = |e| Error::from(sql_error(path, e));
    register_functions(conn).map_err(err)?;
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
        if i + 1 == 4 {
            before_migration_4(&tx, path)?;
        }
        tx.execute_batch(sql).map_err(err)?;
        tx.execute(
            "INSERT INTO durable_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(i + 1).to_string()],
        )
        .map_err(err)?;
    }
    check_schema(&tx, path)?;
    tx.commit().map_err(err)
}

/// The codec that wrote every value of a journal older than schema 4.
const LEGACY_CODEC: &str = "bincode-2/serde/standard";

/// Migration 4 gives every recorded value a format byte; before it, a journal named one
/// codec for all its values, and only one ever existed.
fn before_migration_4(tx: &Connection, path: &Path) -> Result<(), Error> {
    let codec: Option<String> = tx
        .query_row(
            "SELECT value FROM durable_meta WHERE key = 'codec'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_error(path, e))?;
    match codec.as_deref() {
        None | Some(LEGACY_CODEC) => Ok(()),
        Some(other) => Err(StoreError::new(
            path,
            StoreErrorKind::NotAJournal,
            format!(
                "the journal says its values are encoded with `{other}`, which no version of \
                 durable wrote; it is left untouched"
            ),
        )
        .into()),
    }
}

/// SQL functions the migrations use.
fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    // `durable_legacy_value(value)`: `value` with the legacy format byte in front. (SQL's
    // `||` would make it text.)
    conn.create_scalar_function(
        "durable_legacy_value",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let value: Vec<u8> = ctx.get(0)?;
            Ok(legacy_value(&value))
        },
    )?;
    // `durable_legacy_crc(value, crc)`: the checksum of `value` once it carries the
    // legacy format byte, if `crc` was its checksum before; otherwise `crc` unchanged,
    // so a damaged value stays damaged (and a NULL, unchecked one stays unchecked).
    conn.create_scalar_function(
        "durable_legacy_crc",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let value: Vec<u8> = ctx.get(0)?;
            let crc: Option<i64> = ctx.get(1)?;
            Ok(crc.map(|crc| {
                if crc == i64::from(crc32(&value)) {
                    i64::from(crc32(&legacy_value(&value)))
                } else {
                    crc
                }
            }))
        },
    )
}

/// The format byte of values written before migration 4 (see `crate::codec`).
const LEGACY_FORMAT: u8 = 1;

fn legacy_value(value: &[u8]) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(value.len() + 1);
    tagged.push(LEGACY_FORMAT);
    tagged.extend_from_slice(value);
    tagged
}

/// Every column the runtime reads or writes, per table: a journal whose tables were
/// dropped or altered by hand is refused at open, not found out by each workflow later.
const SCHEMA: &[(&str, &str)] = &[
    ("durable_meta", "key, value"),
    (
        "durable_workflows",
        "id, name, status, input, output, error_kind, error, executor, app_version, parent_id, queue, created_at, updated_at, input_crc32, output_crc32, deadline_at",
    ),
    (
        "durable_steps",
        "workflow_id, path, name, output, error, attempts, started_at, finished_at, crc32, error_kind, args_fingerprint",
    ),
    (
        "durable_messages",
        "seq, destination, topic, payload, crc32, sent_at",
    ),
    ("durable_events", "workflow_id, key, value, crc32, set_at"),
    (
        "durable_started",
        "workflow_id, path, name, started_at, wake_at",
    ),
    ("durable_patches", "workflow_id, path, name"),
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

fn write_loop(
    conn: Connection,
    path: &Path,
    rx: &mpsc::Receiver<Command>,
    stats: &WriterStats,
    codec: Codec,
) {
    let mut writer = match Writer::prepare(&conn, codec) {
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
    // Parked waits that a committed batch answered, to run before anything new.
    let mut woken: VecDeque<Command> = VecDeque::new();
    // Waits for the first request; ends when every sender is gone, or at a close.
    while let Some(first) = woken.pop_front().or_else(|| next_command(rx)) {
        if stats.halted() {
            // A simulated crash: what is queued is dropped unanswered, like the
            // process's memory, and the thread exits (releasing the lock).
            return;
        }
        // A transaction step runs user code inside the transaction, so it gets a
        // transaction of its own; the writes around it keep their order. A close ends
        // the batch before it, and the loop after it.
        let mut alone = None;
        if first.is_transaction() || matches!(first, Command::Close) {
            alone = Some(first);
        } else {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match woken.pop_front().map_or_else(|| rx.try_recv().ok(), Some) {
                    Some(c) if c.is_transaction() || matches!(c, Command::Close) => {
                        alone = Some(c);
                        break;
                    }
                    Some(c) => batch.push(c),
                    None => break,
                }
            }
            writer.commit_batch(path, &mut batch, stats, &mut woken);
        }
        match alone {
            Some(Command::Close) => return,
            Some(Command::Write(w)) => {
                if let Write::Transaction(step, reply) = *w {
                    writer.transaction(path, step, reply, stats);
                }
            }
            _ => {}
        }
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
    Create(Replier<Created>, Result<Created, StoreError>),
    Unit(Replier<()>, Result<(), StoreError>),
    Finish(Replier<bool>, Result<bool, StoreError>),
    Value(
        Replier<Option<Vec<u8>>>,
        Result<Option<Vec<u8>>, StoreError>,
    ),
    Ids(Replier<Vec<String>>, Result<Vec<String>, StoreError>),
    /// A wait that found nothing: parked once its batch commits.
    Park(WaitFor, Parked),
}

/// A wait kept by the writer until what it waits for is written.
struct Parked {
    record: Option<WaitRecord>,
    reply: Replier<Option<Vec<u8>>>,
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
    /// Waits that found nothing, by what they wait for.
    parked: HashMap<WaitFor, VecDeque<Parked>>,
    /// What the batch being written sends or sets, to answer parked waits once it
    /// commits.
    touched: Vec<WaitFor>,
    /// Waits parked so far, to sweep abandoned ones now and then.
    parks: u64,
    /// How the writer encodes the answers of waits it records.
    codec: Codec,
}

/// How often (in parked waits) the writer drops the parked waits nobody waits for.
const SWEEP_EVERY: u64 = 1024;

/// The encoding of a wait's answer as its step's recorded output.
fn encode_answer(codec: Codec, answer: Option<&[u8]>) -> Vec<u8> {
    // Encoding a byte string cannot fail, and its size is bounded by a row's.
    codec.encode(&answer.map(Bytes)).unwrap_or_default()
}

/// A wait's recorded answer: the value it took, as a journal value of its own.
fn decode_answer(output: &[u8]) -> Result<Option<Vec<u8>>, crate::codec::CodecError> {
    Codec::decode::<Option<ByteBuf>>(output).map(|o| o.map(|b| nested(output, &b.0).into_owned()))
}

impl<'c> Writer<'c> {
    fn prepare(conn: &'c Connection, codec: Codec) -> rusqlite::Result<Self> {
        Ok(Writer {
            codec,
            conn,
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            rollback: conn.prepare("ROLLBACK")?,
            create: conn.prepare(
                "INSERT INTO durable_workflows
                     (id, name, status, input, executor, app_version, created_at, updated_at,
                      input_crc32, parent_id, deadline_at)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO NOTHING",
            )?,
            existing: conn.prepare(&format!(
                "SELECT {WORKFLOW_COLUMNS} FROM durable_workflows WHERE id = ?1"
            ))?,
            record: conn.prepare(
                "INSERT INTO durable_steps
                     (workflow_id, path, name, output, error, attempts, started_at, finished_at,
                      crc32, error_kind, args_fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?,
            finish: conn.prepare(
                "UPDATE durable_workflows
                 SET status = ?2, output = ?3, error_kind = ?4, error = ?5, updated_at = ?6,
                     output_crc32 = ?7
                 WHERE id = ?1 AND status = 'pending'",
            )?,
            parked: HashMap::new(),
            touched: Vec::new(),
            parks: 0,
        })
    }

    /// Applies and commits one batch, then replies to every write in it. Waits that
    /// parked in this same batch before what they wait for was written are put in
    /// `woken`, to run next.
    fn commit_batch(
        &mut self,
        path: &Path,
        batch: &mut Vec<Command>,
        stats: &WriterStats,
        woken: &mut VecDeque<Command>,
    ) {
        let started = std::time::Instant::now();
        let size = batch.len();
        self.touched.clear();
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
                    Reply::Finish(reply, self.finish(&f).map_err(|e| sql_error(path, e)))
                }
                Command::Write(w) => self.write(path, *w),
                // Never batched: `write_loop` takes it apart.
                Command::Close => continue,
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
        if aborted.is_none() {
            self.answer_parked(path, &mut replies);
        }
        if stats.halted() {
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
        } else {
            self.touched.clear();
        }
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.last_commit_ns.store(took, Ordering::Relaxed);
        // Before the replies: a woken step that enqueues its next write at once must find
        // the writer idle, not counting this batch.
        stats.in_flight.fetch_sub(size, Ordering::Relaxed);
        for r in replies {
            match (&committed, r) {
                (Ok(()), Reply::Park(what, parked)) if self.touched.contains(&what) => {
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
                (Ok(()), Reply::Park(what, parked)) => {
                    self.parks += 1;
                    if self.parks.is_multiple_of(SWEEP_EVERY) {
                        // Outside callers that gave up (`Runtime::get_event` with a
                        // timeout) on keys nobody sets would otherwise stay for ever.
                        self.parked.retain(|_, q| {
                            q.retain(|p| !p.reply.is_closed());
                            !q.is_empty()
                        });
                    }
                    let queue = self.parked.entry(what).or_default();
                    // Waiters that gave up (a timeout, a stopped workflow) are dropped
                    // here rather than kept for ever, and so is an earlier execution's
                    // wait for the same step: this one replaces it.
                    queue.retain(|p| {
                        !p.reply.is_closed()
                            && !same_step(p.record.as_ref(), parked.record.as_ref())
                    });
                    queue.push_back(parked);
                }
                (Ok(()), r) => r.send(),
                (Err(e), r) => r.fail(e.clone()),
            }
        }
    }

    /// Answers the parked waits for what this batch sent or set, in this same
    /// transaction: a waiting `recv` takes its message and records it in the commit that
    /// sends it, so it is answered when the send is.
    fn answer_parked(&mut self, path: &Path, replies: &mut Vec<Reply>) {
        let mut touched = std::mem::take(&mut self.touched);
        let mut seen = std::collections::HashSet::new();
        touched.retain(|w| seen.insert(w.clone()));
        for what in &touched {
            let Some(mut queue) = self.parked.remove(what) else {
                continue;
            };
            while let Some(p) = queue.pop_front() {
                if p.reply.is_closed() {
                    // Nobody waits any more (a timeout, a cancelled or stopped workflow):
                    // the message stays for a later `recv`.
                    continue;
                }
                let wait = Wait {
                    what: what.clone(),
                    record: p.record,
                    park: true,
                };
                match self.wait(path, &wait) {
                    Ok(Some(answer)) => replies.push(Reply::Value(p.reply, Ok(Some(answer)))),
                    Ok(None) => {
                        // Nothing left for it (an earlier waiter took it): it and the
                        // ones behind it stay parked.
                        queue.push_front(Parked {
                            record: wait.record,
                            reply: p.reply,
                        });
                        break;
                    }
                    Err(e) => replies.push(Reply::Value(p.reply, Err(e))),
                }
            }
            if !queue.is_empty() {
                self.parked.insert(what.clone(), queue);
            }
        }
        // Kept until the replies are sent: a wait parked earlier in this batch is run
        // again after the commit.
        self.touched = touched;
    }

    fn write(&mut self, path: &Path, w: Write) -> Reply {
        let sql = |e| sql_error(path, e);
        match w {
            // Nobody waits for it any more (a wait woken to run again whose workflow
            // stopped meanwhile): take nothing.
            Write::Wait(_, reply) if reply.is_closed() => Reply::Value(reply, Ok(None)),
            Write::Wait(wait, reply) => match self.wait(path, &wait) {
                Ok(Some(answer)) => Reply::Value(reply, Ok(Some(answer))),
                Ok(None) if wait.park => {
                    if let Some(r) = &wait.record
                        && r.deadline_at.is_some()
                        && let Err(e) = self.start_record(&r.key, r.started_at, r.deadline_at)
                    {
                        return Reply::Value(reply, Err(sql(e)));
                    }
                    Reply::Park(
                        wait.what,
                        Parked {
                            record: wait.record,
                            reply,
                        },
                    )
                }
                Ok(None) => {
                    let recorded = match &wait.record {
                        Some(r) => self.record_answer(r, None).map_err(sql),
                        None => Ok(()),
                    };
                    Reply::Value(reply, recorded.map(|()| None))
                }
                Err(e) => Reply::Value(reply, Err(e)),
            },
            Write::Expire(record, reply) => Reply::Value(reply, self.expire(path, &record)),
            Write::Started(key, at, reply) => {
                Reply::Unit(reply, self.start_record(&key, at, None).map_err(sql))
            }
            Write::Send(m, reply) => Reply::Unit(reply, self.insert_message(&m).map_err(sql)),
            Write::Patch(workflow_id, at, name, reply) => Reply::Unit(
                reply,
                self.conn
                    .prepare_cached(
                        "INSERT INTO durable_patches (workflow_id, path, name) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                    )
                    .and_then(|mut stmt| stmt.execute(params![&*workflow_id, at.to_string(), name]))
                    .map(|_| ())
                    .map_err(sql),
            ),
            Write::GiveBack(key, topic, reply) => {
                Reply::Unit(reply, self.give_back(path, &key, topic))
            }
            Write::Cancel(id, reason, at, reply) => {
                Reply::Ids(reply, self.cancel(&id, reason, at).map_err(sql))
            }
            Write::Resume(id, at, reply) => Reply::Ids(reply, self.resume(&id, at).map_err(sql)),
            Write::Transaction(_, reply) => Reply::Unit(
                reply,
                Err(StoreError::new(
                    path,
                    StoreErrorKind::Invariant,
                    "a transaction step reached a shared batch",
                )),
            ),
        }
    }

    fn wait(&mut self, path: &Path, wait: &Wait) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = |e| sql_error(path, e);
        let damaged = |what: String| {
            StoreError::new(
                path,
                StoreErrorKind::Invariant,
                format!("{what} does not match its checksum: the journal is damaged"),
            )
        };
        // The message to take once the answer is recorded.
        let mut take = None;
        let answer = match &wait.what {
            WaitFor::Message { destination, topic } => {
                let row = self
                    .conn
                    .prepare_cached(SQL_OLDEST_MESSAGE)
                    .map_err(sql)?
                    .query_row(params![destination, topic], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?))
                    })
                    .optional()
                    .map_err(sql)?;
                let Some((seq, payload, crc)) = row else {
                    return Ok(None);
                };
                if !checks(&payload, Some(crc)) {
                    return Err(damaged(format!(
                        "message {seq} for workflow {destination} on topic `{topic}`"
                    )));
                }
                take = Some(seq);
                payload
            }
            WaitFor::Event { workflow_id, key } => {
                let row = self
                    .conn
                    .prepare_cached(SQL_EVENT)
                    .map_err(sql)?
                    .query_row(params![workflow_id, key], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?))
                    })
                    .optional()
                    .map_err(sql)?;
                let Some((value, crc)) = row else {
                    return Ok(None);
                };
                if !checks(&value, Some(crc)) {
                    return Err(damaged(format!("event `{key}` of workflow {workflow_id}")));
                }
                value
            }
        };
        if let Some(r) = &wait.record {
            // The record and the taking of the message stand or fall together: a record
            // that fails (the path is taken) must not consume a message, and a message
            // taken must be recorded.
            let answered = all_or_nothing(self.conn, || {
                self.record_answer(r, Some(&answer))?;
                if let Some(seq) = take {
                    self.conn
                        .prepare_cached(SQL_DELETE_MESSAGE)?
                        .execute([seq])?;
                }
                Ok(())
            });
            answered.map_err(|e| {
                if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
                    already_recorded(path, &r.key)
                } else {
                    sql(e)
                }
            })?;
        }
        Ok(Some(answer))
    }

    /// Gives up a parked wait: records `None` unless it was answered already, and
    /// returns what it recorded.
    fn expire(&mut self, path: &Path, r: &WaitRecord) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = |e| sql_error(path, e);
        let mut was_parked = false;
        for queue in self.parked.values_mut() {
            let before = queue.len();
            queue.retain(|p| {
                p.record.as_ref().is_none_or(|q| {
                    q.key.workflow_id != r.key.workflow_id || q.key.path != r.key.path
                })
            });
            was_parked |= queue.len() != before;
        }
        self.parked.retain(|_, q| !q.is_empty());
        let recorded: Option<(Option<Vec<u8>>, Option<u32>)> = self
            .conn
            .prepare_cached(SQL_RECORDED_OUTPUT)
            .map_err(sql)?
            .query_row(
                params![&*r.key.workflow_id, r.key.path.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        match recorded {
            // Answered before the deadline was noticed: that answer stands.
            Some((Some(output), crc)) if !was_parked => {
                if !checks(&output, crc) {
                    return Err(StoreError::new(
                        path,
                        StoreErrorKind::Invariant,
                        format!(
                            "the recorded answer of step {} of workflow {} {DAMAGED}",
                            r.key.path, r.key.workflow_id
                        ),
                    ));
                }
                let answer = decode_answer(&output)
                    .map_err(|e| StoreError::new(path, StoreErrorKind::Invariant, e.to_string()))?;
                Ok(answer)
            }
            Some(_) => Err(already_recorded(path, &r.key)),
            None => {
                self.record_answer(r, None).map_err(sql)?;
                Ok(None)
            }
        }
    }

    fn record_answer(&mut self, r: &WaitRecord, answer: Option<&[u8]>) -> rusqlite::Result<()> {
        let output = encode_answer(self.codec, answer);
        self.record.execute(params![
            &*r.key.workflow_id,
            r.key.path.to_string(),
            r.key.name,
            output,
            None::<&str>,
            1,
            r.started_at,
            crate::util::now_ms(),
            crc32(&output),
            None::<&str>,
            fingerprint_column(r.key.args)
        ])?;
        Ok(())
    }

    fn start_record(
        &mut self,
        key: &StepKey,
        at: i64,
        wake_at: Option<i64>,
    ) -> rusqlite::Result<()> {
        self.conn.prepare_cached(SQL_STARTED)?.execute(params![
            &*key.workflow_id,
            key.path.to_string(),
            key.name,
            at,
            wake_at
        ])?;
        Ok(())
    }

    fn insert_message(&mut self, m: &NewMessage) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(SQL_INSERT_MESSAGE)?
            .execute(params![
                m.destination,
                m.topic,
                m.payload,
                crc32(&m.payload),
                m.sent_at
            ])?;
        self.touched.push(WaitFor::Message {
            destination: m.destination.clone(),
            topic: m.topic.clone(),
        });
        Ok(())
    }

    /// Undoes a `recv` that never delivered its message: its record goes, and the
    /// message goes back before every other (so the queue's order is as it was).
    fn give_back(&mut self, path: &Path, key: &StepKey, topic: String) -> Result<(), StoreError> {
        let sql = |e| sql_error(path, e);
        let recorded: Option<(Option<Vec<u8>>, Option<u32>)> = self
            .conn
            .prepare_cached(SQL_RECORDED_OUTPUT)
            .map_err(sql)?
            .query_row(params![&*key.workflow_id, key.path.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql)?;
        let Some((Some(output), crc)) = recorded else {
            // Never answered (the wait was dropped first), or given back already.
            return Ok(());
        };
        if !checks(&output, crc) {
            return Err(StoreError::new(
                path,
                StoreErrorKind::Invariant,
                format!(
                    "the recorded answer of step {} of workflow {} {DAMAGED}",
                    key.path, key.workflow_id
                ),
            ));
        }
        let Ok(Some(payload)) = decode_answer(&output) else {
            // A recorded timeout: nothing was taken.
            return Ok(());
        };
        let done = all_or_nothing(self.conn, || {
            let deleted = self
                .conn
                .prepare_cached(
                    "DELETE FROM durable_steps WHERE workflow_id = ?1 AND path = ?2 AND name = ?3",
                )?
                .execute(params![&*key.workflow_id, key.path.to_string(), key.name])?;
            if deleted != 1 {
                // Not a recv's record: nothing of ours to give back.
                return Ok(false);
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO durable_messages (seq, destination, topic, payload, crc32, sent_at)
                     VALUES ((SELECT COALESCE(MIN(seq), 1) - 1 FROM durable_messages),
                             ?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    &*key.workflow_id,
                    topic,
                    payload,
                    crc32(&payload),
                    crate::util::now_ms()
                ])?;
            Ok(true)
        });
        if done.map_err(sql)? {
            self.touched.push(WaitFor::Message {
                destination: key.workflow_id.to_string(),
                topic,
            });
        }
        Ok(())
    }

    /// Cancels `id` and its pending descendants. Descendants are found through
    /// `parent_id`, within the primary key's range of ids that start with `<id>/` (every
    /// descendant's id does): no index on `parent_id` is kept, which would cost every
    /// start and finish a cursor for a rare operation.
    fn cancel(&mut self, id: &str, reason: CancelReason, at: i64) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE tree(id) AS (
                 SELECT ?1
                 UNION SELECT w.id FROM durable_workflows w JOIN tree t ON w.parent_id = t.id
                 WHERE w.id >= ?1 || '/' AND w.id < ?1 || '0'
             )
             UPDATE durable_workflows
             SET status = 'cancelled', error_kind = ?2, error = ?3, updated_at = ?4
             WHERE status = 'pending' AND id IN tree
             RETURNING id",
        )?;
        let ids = stmt.query_map(params![id, reason.as_str(), reason.to_string(), at], |r| {
            r.get(0)
        })?;
        ids.collect()
    }

    fn resume(&mut self, id: &str, at: i64) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE tree(id) AS (
                 SELECT ?1
                 UNION SELECT w.id FROM durable_workflows w JOIN tree t ON w.parent_id = t.id
                 WHERE w.id >= ?1 || '/' AND w.id < ?1 || '0'
             )
             UPDATE durable_workflows
             SET status = 'pending', output = NULL, output_crc32 = NULL, error_kind = NULL,
                 error = NULL, deadline_at = NULL, updated_at = ?2
             WHERE id IN tree AND (status = 'cancelled' OR (id = ?1 AND status = 'failed'))
             RETURNING id",
        )?;
        let ids: Vec<String> = stmt
            .query_map(params![id, at], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // A recorded panic or interruption is not an output: resuming runs those steps
        // again (an interrupted step also loses its start record, or it would be
        // found interrupted once more).
        let mut forget_started = self.conn.prepare_cached(
            "DELETE FROM durable_started WHERE workflow_id = ?1 AND path IN
                 (SELECT path FROM durable_steps WHERE workflow_id = ?1 AND error IS NOT NULL)",
        )?;
        let mut forget_errors = self.conn.prepare_cached(
            "DELETE FROM durable_steps WHERE workflow_id = ?1 AND error IS NOT NULL",
        )?;
        for w in &ids {
            forget_started.execute([w])?;
            forget_errors.execute([w])?;
        }
        Ok(ids)
    }

    /// Runs a transaction step in a transaction of its own: the application's writes,
    /// then the step's record, committed together.
    fn transaction(
        &mut self,
        path: &Path,
        TxStep {
            key,
            started_at,
            work,
        }: TxStep,
        reply: Replier<()>,
        stats: &WriterStats,
    ) {
        let TxWork::Sqlite(work) = work;
        let started = std::time::Instant::now();
        if !self.conn.is_autocommit() {
            let _ = self.rollback.execute([]);
        }
        let result = self.run_transaction(path, &key, started_at, work, stats);
        if stats.halted() {
            // A simulated crash: nothing committed, nobody hears back.
            return;
        }
        if result.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.last_commit_ns.store(took, Ordering::Relaxed);
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let _ = reply.send(result);
    }

    fn run_transaction(
        &mut self,
        path: &Path,
        key: &StepKey,
        started_at: i64,
        work: TxFn,
        stats: &WriterStats,
    ) -> Result<(), StoreError> {
        let sql = |e| sql_error(path, e);
        let tx = rusqlite::Transaction::new_unchecked(
            self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(sql)?;
        tx.execute_batch("SAVEPOINT durable_transaction_step")
            .map_err(sql)?;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&tx)));
        let (outcome, keep) = match ran {
            Ok(Ok((outcome, keep))) => (outcome, keep),
            Ok(Err(message)) => {
                return Err(StoreError::new(path, StoreErrorKind::Invariant, message));
            }
            Err(payload) => (
                RecordedOutcome::Panicked(format!(
                    "step {} (`{}`) panicked: {}",
                    key.path,
                    key.name,
                    crate::util::panic_message(&*payload)
                )),
                false,
            ),
        };
        if self.conn.is_autocommit() {
            return Err(StoreError::new(
                path,
                StoreErrorKind::Invariant,
                format!(
                    "transaction step {} (`{}`) ended the transaction it was given (COMMIT or \
                     ROLLBACK); its writes may have committed without its record",
                    key.path, key.name
                ),
            ));
        }
        let end = if keep {
            "RELEASE durable_transaction_step"
        } else {
            "ROLLBACK TO durable_transaction_step; RELEASE durable_transaction_step"
        };
        tx.execute_batch(end).map_err(sql)?;
        let record = StepRecord {
            workflow_id: key.workflow_id.clone(),
            path: key.path.clone(),
            name: key.name,
            args: key.args,
            outcome,
            attempts: 1,
            started_at,
            finished_at: crate::util::now_ms(),
            effect: Effect::None,
        };
        self.record(&record)
            .map_err(|e| step_error(path, &record, e))?;
        if stats.halted() {
            return Ok(()); // dropped: rolled back
        }
        tx.commit().map_err(sql)
    }

    fn create(&mut self, w: &NewWorkflow) -> rusqlite::Result<Created> {
        let inserted = self.create.execute(params![
            &*w.id,
            w.name,
            w.input,
            EXECUTOR,
            w.app_version.as_deref(),
            w.created_at,
            crc32(&w.input),
            w.parent_id.as_deref(),
            w.deadline_at
        ])?;
        if inserted == 1 {
            return Ok(Created::New);
        }
        let existing = self.existing.query_row([&*w.id], workflow_row)??;
        Ok(Created::Existing(Box::new(existing)))
    }

    fn record(&mut self, s: &StepRecord) -> rusqlite::Result<()> {
        let (output, error, kind) = match &s.outcome {
            RecordedOutcome::Output(bytes) => (Some(bytes.as_slice()), None, None),
            RecordedOutcome::Panicked(message) => (None, Some(message.as_str()), None),
            RecordedOutcome::Interrupted(message) => {
                (None, Some(message.as_str()), Some(INTERRUPTED))
            }
        };
        let crc = crc32(output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()));
        let insert = |w: &mut Self| {
            w.record.execute(params![
                &*s.workflow_id,
                s.path.to_string(),
                s.name,
                output,
                error,
                s.attempts,
                s.started_at,
                s.finished_at,
                crc,
                kind,
                fingerprint_column(s.args)
            ])
        };
        if let Effect::None = s.effect {
            return insert(self).map(drop);
        }
        // The record and its effect stand or fall together.
        all_or_nothing(self.conn, || {
            insert(self)?;
            self.apply(s)
        })
    }

    /// Writes what a step's record also does.
    fn apply(&mut self, s: &StepRecord) -> rusqlite::Result<()> {
        match &s.effect {
            Effect::None => {}
            Effect::Send(m) => self.insert_message(m)?,
            Effect::SetEvent(event) => {
                let (key, value) = &**event;
                self.conn.prepare_cached(SQL_SET_EVENT)?.execute(params![
                    &*s.workflow_id,
                    key,
                    value,
                    crc32(value),
                    s.finished_at
                ])?;
                self.touched.push(WaitFor::Event {
                    workflow_id: s.workflow_id.to_string(),
                    key: key.clone(),
                });
            }
        }
        Ok(())
    }

    fn finish(&mut self, f: &Finish) -> rusqlite::Result<bool> {
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
        let updated = self.finish.execute(params![
            &*f.id,
            status.as_str(),
            output,
            kind,
            error,
            f.at,
            crc
        ])?;
        Ok(updated == 1)
    }
}

// The statements of the workflow primitives, prepared on first use (through the
// connection's statement cache), not with the writer: a workload that never uses them
// should not pay for them, and statements held prepared take the connection's lookaside
// memory that the hot statements' executions would otherwise use.
const SQL_OLDEST_MESSAGE: &str = "\
    SELECT seq, payload, crc32 FROM durable_messages WHERE destination = ?1 AND \
     topic = ?2 ORDER BY seq LIMIT 1";
const SQL_DELETE_MESSAGE: &str = "DELETE FROM durable_messages WHERE seq = ?1";
const SQL_INSERT_MESSAGE: &str = "\
    INSERT INTO durable_messages (destination, topic, payload, crc32, sent_at) \
     VALUES (?1, ?2, ?3, ?4, ?5)";
const SQL_EVENT: &str = "\
    SELECT value, crc32 FROM durable_events WHERE workflow_id = ?1 AND key = ?2";
const SQL_SET_EVENT: &str = "\
    INSERT INTO durable_events (workflow_id, key, value, crc32, set_at) VALUES (?1, \
     ?2, ?3, ?4, ?5) ON CONFLICT (workflow_id, key) DO UPDATE SET value = \
     excluded.value, crc32 = excluded.crc32, set_at = excluded.set_at";
const SQL_STARTED: &str = "\
    INSERT INTO durable_started (workflow_id, path, name, started_at, wake_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (workflow_id, path) DO NOTHING";
const SQL_RECORDED_OUTPUT: &str = "\
    SELECT output, crc32 FROM durable_steps WHERE workflow_id = ?1 AND path = ?2";

/// How the journal stores a fingerprint: its bits as an `INTEGER` (SQLite's are signed).
fn fingerprint_column(f: Option<Fingerprint>) -> Option<i64> {
    f.map(|f| f.as_u64() as i64)
}

/// The `error_kind` of a step record that holds an interruption (NULL: a panic).
const INTERRUPTED: &str = "interrupted";

/// Runs `f` inside a savepoint, so that its writes stand or fall together (a failing
/// statement otherwise rolls back only itself, and the batch goes on).
fn all_or_nothing<T>(
    conn: &Connection,
    f: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("SAVEPOINT durable_all_or_nothing")?;
    let done = f();
    conn.execute_batch(if done.is_ok() {
        "RELEASE durable_all_or_nothing"
    } else {
        "ROLLBACK TO durable_all_or_nothing; RELEASE durable_all_or_nothing"
    })?;
    done
}

/// Whether two waits record the same step.
fn same_step(a: Option<&WaitRecord>, b: Option<&WaitRecord>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.key.workflow_id == b.key.workflow_id && a.key.path == b.key.path,
        _ => false,
    }
}

fn already_recorded(path: &Path, key: &StepKey) -> StoreError {
    StoreError::new(
        path,
        StoreErrorKind::Invariant,
        format!(
            "step {} of workflow {} is already recorded; a recorded step is never overwritten",
            key.path, key.workflow_id
        ),
    )
}

impl Reply {
    /// Sends the write's own result (its batch committed).
    fn send(self) {
        match self {
            Reply::Create(s, r) => drop(s.send(r)),
            Reply::Unit(s, r) => drop(s.send(r)),
            Reply::Finish(s, r) => drop(s.send(r)),
            Reply::Value(s, r) => drop(s.send(r)),
            Reply::Ids(s, r) => drop(s.send(r)),
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
            Reply::Park(..) => None,
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Reply::Create(s, _) => drop(s.send(Err(e))),
            Reply::Unit(s, _) => drop(s.send(Err(e))),
            Reply::Finish(s, _) => drop(s.send(Err(e))),
            Reply::Value(s, _) => drop(s.send(Err(e))),
            Reply::Ids(s, _) => drop(s.send(Err(e))),
            Reply::Park(_, p) => drop(p.reply.send(Err(e))),
        }
    }
}

fn fail(c: Command, e: StoreError) {
    match c {
        Command::Create(_, s) => drop(s.send(Err(e))),
        Command::Step(_, s) => drop(s.send(Err(e))),
        Command::Finish(_, s) => drop(s.send(Err(e))),
        Command::Write(w) => match *w {
            Write::Wait(_, s) | Write::Expire(_, s) => drop(s.send(Err(e))),
            Write::Cancel(.., s) | Write::Resume(.., s) => drop(s.send(Err(e))),
            Write::Started(.., s)
            | Write::Send(_, s)
            | Write::Patch(.., s)
            | Write::GiveBack(.., s)
            | Write::Transaction(_, s) => drop(s.send(Err(e))),
        },
        Command::Close => {}
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

const WORKFLOW_COLUMNS: &str = "id, name, status, input, output, error_kind, error, input_crc32, \
     output_crc32, deadline_at, parent_id";

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
        "cancelled" => RecordStatus::Cancelled,
        other => {
            return Ok(Err(invalid(format!(
                "workflow {id} has unknown status `{other}`"
            ))));
        }
    };
    let kind: Option<String> = r.get(5)?;
    let error: Option<String> = r.get(6)?;
    let cancelled = match (status, kind.as_deref().map(CancelReason::parse)) {
        (RecordStatus::Cancelled, Some(Some(reason))) => Some(reason),
        (RecordStatus::Cancelled, _) => {
            return Ok(Err(invalid(format!(
                "workflow {id} is cancelled but records no known reason"
            ))));
        }
        _ => None,
    };
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
        cancelled,
        deadline_at: r.get(9)?,
        parent_id: r.get(10)?,
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

    fn resume(&self, id: String, at: i64) -> Ack<Vec<String>> {
        self.write(|tx| Write::Resume(id, at, tx))
    }

    fn transaction(&self, step: TxStep) -> Ack {
        self.write(|tx| Write::Transaction(step, tx))
    }

    fn side_records(&self, workflow_id: &str) -> Result<SideRecords, StoreError> {
        let parse = |path: String, what: &str| {
            path.parse::<StepPath>().map_err(|_| {
                invalid(format!(
                    "workflow {workflow_id} has a {what} at `{path}`, which is not a step path"
                ))
            })
        };
        self.read(|c| {
            let mut out = SideRecords::default();
            let mut stmt = c.prepare_cached(
                "SELECT path, wake_at FROM durable_started WHERE workflow_id = ?1",
            )?;
            let rows = stmt.query_map([workflow_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })?;
            for row in rows {
                let (path, wake_at) = row?;
                out.started.push(StartedRecord {
                    path: parse(path, "start record")?,
                    wake_at,
                });
            }
            let mut stmt =
                c.prepare_cached("SELECT path, name FROM durable_patches WHERE workflow_id = ?1")?;
            let rows = stmt.query_map([workflow_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (path, name) = row?;
                out.patches.push((parse(path, "patch marker")?, name));
            }
            Ok(out)
        })
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {WORKFLOW_COLUMNS} FROM durable_workflows WHERE id = ?1"
            ))?;
            stmt.query_row([id], workflow_row).optional()?.transpose()
        })
    }

    fn steps(&self, workflow_id: &str) -> Result<Vec<RecordedStep>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT path, name, output, error, attempts, started_at, finished_at, crc32,
                        error_kind, args_fingerprint
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
                let kind: Option<String> = r.get(8)?;
                let outcome = match (output, error) {
                    (Some(o), None) => RecordedOutcome::Output(o),
                    (None, Some(e)) if kind.as_deref() == Some(INTERRUPTED) => {
                        RecordedOutcome::Interrupted(e)
                    }
                    (None, Some(e)) => RecordedOutcome::Panicked(e),
                    _ => {
                        return Ok(Err(invalid(format!(
                            "step {path} of workflow {workflow_id} records both or neither of output and error"
                        ))));
                    }
                };
                let args: Option<i64> = r.get(9)?;
                Ok(Ok(RecordedStep {
                    path: parsed,
                    name: r.get(1)?,
                    args: args.map(|a| Fingerprint(a as u64)),
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

    #[cfg(any(test, feature = "bench"))]
    fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    fn pending_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.workflow_rows("WHERE status = 'pending'")
    }

    fn close(&self) -> Result<(), StoreError> {
        // The writer commits what was queued before the close, then exits and releases
        // the lock; a write enqueued after it finds the channel closed.
        let _ = self.writes.send(Command::Close);
        let writer = lock(&self.writer).take();
        let joined = writer.map(thread::JoinHandle::join);
        *lock(&self.reader) = None;
        match joined {
            Some(Err(_)) => Err(io_error(&self.path, "the journal writer panicked")),
            _ => Ok(()),
        }
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
            args: None,
            outcome: RecordedOutcome::Output(vec![1]),
            attempts: 1,
            started_at: 0,
            finished_at: 0,
            effect: Effect::None,
        }
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
}
