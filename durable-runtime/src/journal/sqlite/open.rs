//! Opening a journal: its lock file, creating a new journal, the connection settings,
//! and starting the writer thread.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use rusqlite::{Connection, OpenFlags};

use super::identity::{
    file_id, hold_file, identify, lock_name, lock_patiently, probe_write, read_only,
    refuse_wal_without_file, unwritable, with_suffix,
};
use super::integrity::{verify_message_index, verify_pending_index};
use super::migrate::migrate;
use super::writer::{Writer, WriterStats, write_loop};
use super::{Reader, ReaderAt, SqliteStore, io_error, sql_error};
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::journal::{Durability, JournalOptions};
use crate::util::lock;

impl Durability {
    /// The `synchronous` setting of this durability.
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        }
    }
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
///
/// The lock file is named after the journal's real path (symlinks resolved), so every
/// name of the file finds the same lock file; a hard link, which has no one real path,
/// is caught by the lock on the journal file itself (see [`hold_file`]).
fn lock_path(path: &Path) -> PathBuf {
    with_suffix(&lock_name(path), ".lock")
}

impl SqliteStore {
    /// Opens (creating if needed) the journal at `path`, takes its lock, migrates it and
    /// starts the writer thread.
    pub(crate) fn open(path: &Path, options: &JournalOptions) -> Result<Self, Error> {
        let (durability, codec) = (options.durability, options.codec);
        refuse_directory(path)?;
        let lock_file = take_lock(path)?;
        if !path.exists() {
            // A `-wal` that holds commits without its file: the journal was deleted or
            // moved, and a new one would start over without them (or take them in).
            refuse_wal_without_file(path, "there is no journal file")?;
            create_journal(path, options)?;
        }
        let held = hold_file(path)?;
        // What a reader opened later must find: this file, by a name that a change of
        // the working directory does not change.
        let reader_at = ReaderAt {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
            id: held.id(),
        };

        let mut writer = connect(path, options).map_err(|e| sql_error(path, e))?;
        identify(path)?;
        configure(&writer, durability).map_err(|e| unwritable(path, e))?;
        probe_write(path, &writer)?;
        migrate(&mut writer, path)?;
        verify_pending_index(&writer, path)?;
        verify_message_index(&writer, path)?;

        let mut writer = Writer::new(writer, codec).map_err(|e| sql_error(path, e))?;
        writer.queues = super::queues::Queues::new(options.workflows.as_deref());
        let core = Arc::new(Mutex::new(Some(writer)));
        let (tx, rx) = mpsc::channel();
        let writer_path = path.to_owned();
        let stats = Arc::new(WriterStats {
            #[cfg(feature = "testkit")]
            halted: options.halt.clone(),
            // No commit yet: nothing says commits are quick (see `may_commit_inline`).
            last_commit_ns: u64::MAX.into(),
            ..WriterStats::default()
        });
        let writer_stats = stats.clone();
        let writer_core = core.clone();
        let writer = thread::Builder::new()
            .name("durable-journal-writer".into())
            // The writer thread holds the lock: it is released only after the last
            // queued write has committed and the thread has exited.
            .spawn(move || {
                write_loop(&writer_core, &writer_path, &rx, &writer_stats);
                // The writing connection closes here, whichever way the loop ended: no
                // write commits after the close.
                drop(lock(&writer_core).take());
                // After the last connection: closing this descriptor drops the process's
                // POSIX locks on the file, SQLite's among them.
                drop(held);
                drop(lock_file);
            })
            .map_err(|e| io_error(path, format!("cannot start the writer thread: {e}")))?;

        Ok(SqliteStore {
            path: Arc::from(path),
            writes: tx,
            core,
            reader: Mutex::new(Reader::Unopened),
            reader_at,
            options: options.clone(),
            stats,
            inline: durability != Durability::Full,
            untaken: Arc::default(),
            writer: Mutex::new(Some(writer)),
        })
    }
}

/// Whether a runtime (of this process or another) holds the journal at `path` now: its
/// lock file is locked. Takes the lock for an instant if it is free, which a runtime
/// opening at that instant waits out (see `lock_patiently`).
pub(crate) fn held_by_runtime(path: &Path) -> bool {
    match OpenOptions::new().write(true).open(lock_path(path)) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Takes the journal's lock (creating its lock file if needed), held for as long as the
/// returned file stays open.
pub(crate) fn take_lock(path: &Path) -> Result<File, Error> {
    let lock = lock_path(path);
    let failed = |doing: &str, e: std::io::Error| -> Error {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                let dir = lock.parent().filter(|d| !d.as_os_str().is_empty());
                let what = format!(
                    "the lock file {} (or the directory {} it is created in)",
                    lock.display(),
                    dir.unwrap_or(Path::new(".")).display()
                );
                read_only(path, &what, &e).into()
            }
            _ => io_error(
                path,
                format!("cannot {doing} lock file {}: {e}", lock.display()),
            )
            .into(),
        }
    };
    create_private(&lock).map_err(|e| failed("create", e))?;
    let lock_file = OpenOptions::new()
        .write(true)
        .open(&lock)
        .map_err(|e| failed("open", e))?;
    match lock_patiently(&lock_file) {
        Ok(()) => Ok(lock_file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: path.to_owned(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io_error(path, format!("cannot lock {}: {e}", lock.display())).into())
        }
    }
}

/// A read-write connection to the SQLite file at `path` (through the testkit's VFS, if
/// the options name one).
fn connect(path: &Path, options: &JournalOptions) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    #[cfg(feature = "testkit")]
    if let Some(vfs) = &options.vfs {
        return Connection::open_with_flags_and_vfs(path, flags, vfs.as_str());
    }
    #[cfg(not(feature = "testkit"))]
    let _ = options;
    Connection::open_with_flags(path, flags)
}

/// The connection reads go through once one finds the writer busy (see
/// [`SqliteStore::read`]): read-only, and patient with the writer's commits. Refused
/// unless it is the file the store holds: opened after the open, by name, it would
/// otherwise read another journal put in its place (a restore from a backup while the
/// runtime runs).
pub(super) fn reader(at: &ReaderAt, options: &JournalOptions) -> Result<Connection, StoreError> {
    let path = &at.path;
    let reader = connect(path, options).map_err(|e| sql_error(path, e))?;
    reader
        .execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")
        .map_err(|e| sql_error(path, e))?;
    // After SQLite opened the file: a file swapped in before that is caught here, and
    // one swapped in after it is refused too (SQLite holds the right one, but nothing
    // tells which).
    if at.id.is_some() && file_id(path) != at.id {
        return Err(io_error(
            path,
            "the journal file was replaced or removed while the runtime had it open",
        ));
    }
    Ok(reader)
}

/// The settings of the writer's connection: WAL mode and `durability`.
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

/// Creates a new journal at `path`: built complete (WAL mode set, schema migrated) under
/// a temporary name, then renamed into place. Switching a new file to WAL goes through
/// a rollback journal; built in place, a crash at that moment would leave a hot
/// `-journal` beside the journal, which read-only tools refuse to open. Called with the
/// lock held, so a leftover temporary file is from a crash and can be removed.
fn create_journal(path: &Path, options: &JournalOptions) -> Result<(), Error> {
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
        let mut conn = connect(&tmp, options).map_err(|e| sql_error(path, e))?;
        // Before the first table: pages freed by `Runtime::gc` go back to the file
        // system (`PRAGMA incremental_vacuum`), so the file shrinks after retention.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(|e| sql_error(path, e))?;
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

/// The error for a journal path that names a directory.
pub(super) fn refuse_directory(path: &Path) -> Result<(), Error> {
    if path.is_dir() {
        return Err(StoreError::new(
            path,
            StoreErrorKind::NotAJournal,
            "this is a directory; give the path of a journal file in it, such as `journal.db`",
        )
        .into());
    }
    Ok(())
}
