//! What the journal's open checks about the file before anything in it runs or changes:
//! that this process holds the file itself (whatever name reached it), that it may
//! write it, and that it is a journal at all.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::sql_error;
use crate::error::{Error, StoreError, StoreErrorKind};

/// The name the journal's lock file is derived from: `path` with every symlink
/// resolved, so that two names of one file share one lock file. `path` itself if it
/// does not exist yet.
pub(super) fn lock_name(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The journal file held open and locked by [`hold_file`]; dropping it releases the
/// file (close it only after every SQLite connection of the journal).
#[derive(Debug)]
pub(super) struct Held {
    /// Open, and locked, for as long as this lives: never read. `None` while
    /// [`hold_file`] opens it.
    file: Option<File>,
    /// The file's device and inode, registered in [`HELD`] while this lives.
    id: Option<(u64, u64)>,
}

impl Held {
    /// The held file's device and inode (`None` where they are not known).
    pub(super) fn id(&self) -> Option<(u64, u64)> {
        self.id
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closed before the registration goes: a runtime of this process that opens
        // the file once it is gone must not lose its POSIX locks to this close.
        drop(self.file.take());
        if let Some(id) = self.id {
            held_files().remove(&id);
        }
    }
}

/// The files (device, inode) that runtimes of this process hold. A second open of a
/// held file must be refused without opening it: closing any descriptor of a file
/// drops every POSIX lock this process has on it, SQLite's own among them, and a
/// runtime that lost them no longer keeps other connections from checkpointing and
/// deleting the `-wal` under it.
static HELD: Mutex<BTreeMap<(u64, u64), PathBuf>> = Mutex::new(BTreeMap::new());

/// The held files, each with the name its runtime opened it by.
fn held_files() -> MutexGuard<'static, BTreeMap<(u64, u64), PathBuf>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The device and inode of the file at `path`, which every name of it shares.
#[cfg(unix)]
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
pub(crate) fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// Opens the journal file for writing and locks the file itself (not a name of it), so
/// that a runtime that reached it through a hard link, which has a lock file of its
/// own, still finds it held. The lock lasts while the returned [`Held`] lives.
///
/// Another process's runtime is found by the lock: `flock(2)`, which on Linux and the
/// BSDs is independent of the POSIX record locks SQLite takes on the same file. A
/// runtime of this process is found before the file is opened at all (see [`HELD`]).
///
/// Refuses a file this process may not write, naming it, before SQLite opens it.
pub(super) fn hold_file(path: &Path) -> Result<Held, Error> {
    let id = file_id(path);
    if let Some(id) = id {
        let mut held = held_files();
        if let Some(holder) = held.get(&id) {
            // The holder's name of the file: this name's own lock file is not the one
            // held.
            return Err(Error::Locked {
                path: path.to_owned(),
                lock: holder.clone(),
            });
        }
        // Registered before the file is opened, so that no other runtime of this process
        // opens it meanwhile; the registry itself is not held while the lock is waited
        // for (other runtimes open and close meanwhile).
        held.insert(id, path.to_owned());
    }
    // Takes the registration back if the file cannot be held.
    let mut held = Held { file: None, id };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                read_only(path, &format!("the journal file {}", path.display()), &e)
            }
            _ => StoreError::new(path, StoreErrorKind::Io, format!("cannot open it: {e}")),
        })?;
    #[cfg(unix)]
    match lock_patiently(&file) {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Locked {
                path: path.to_owned(),
                lock: lock_name(path),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(
                StoreError::new(path, StoreErrorKind::Io, format!("cannot lock it: {e}")).into(),
            );
        }
    }
    held.file = Some(file);
    Ok(held)
}

/// How long [`lock_patiently`] retries a lock someone else holds.
const LOCK_PATIENCE: Duration = Duration::from_millis(100);

/// Takes `file`'s `flock(2)` lock, retrying for up to [`LOCK_PATIENCE`] while another
/// open file description holds it. A child process this process is starting (any
/// thread's `Command::spawn`) shares every descriptor until its `exec` closes them, and
/// with them the lock of a runtime that closed meanwhile: without the wait, a reopen
/// right after a close failed with `Locked` about one time in ten while another thread
/// spawned processes in a loop. A runtime that really holds the journal is still
/// reported, a tenth of a second later.
pub(super) fn lock_patiently(file: &File) -> Result<(), std::fs::TryLockError> {
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// The error for a journal this process may not write: `what` (a file or directory)
/// refused with `e`.
pub(super) fn read_only(path: &Path, what: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::new(
        path,
        StoreErrorKind::ReadOnly,
        format!(
            "{what} is not writable by this process ({e}). The runtime records every step \
             in the journal, so it must write it: give this user write permission to the \
             journal and its directory (or move it off a read-only file system), or look at \
             it read-only with `JournalView`"
        ),
    )
}

/// Takes the journal's write lock and lets it go, so that a journal SQLite can only
/// read (the file, or the `-wal` and `-shm` beside it, not writable) is refused here,
/// before any workflow runs, rather than at its first checkpoint.
pub(super) fn probe_write(path: &Path, conn: &Connection) -> Result<(), Error> {
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| sql_error(path, e))?
    {
        let what = format!("the journal file {}", path.display());
        return Err(read_only(path, &what, &"SQLite opened it read-only").into());
    }
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .map_err(|e| unwritable(path, e))
}

/// The error for `e`, met while the open set up or probed the journal: a refusal to
/// write is [`StoreErrorKind::ReadOnly`], naming the file or directory at fault.
pub(super) fn unwritable(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            let wal = with_suffix(path, "-wal");
            let shm = with_suffix(path, "-shm");
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            let what = if writable(path) && !(writable(&wal) && writable(&shm)) {
                format!(
                    "the journal's directory {} (SQLite must create and write {} and {} in it)",
                    dir.display(),
                    wal.display(),
                    shm.display()
                )
            } else {
                format!("the journal file {}", path.display())
            };
            read_only(path, &what, &e).into()
        }
        _ => sql_error(path, e).into(),
    }
}

/// Whether this process can open `path` for writing (without creating it).
fn writable(path: &Path) -> bool {
    OpenOptions::new().write(true).open(path).is_ok()
}

/// What is at a journal path, as far as its first bytes and its tables tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// An empty file, or an SQLite database without a table: a new journal.
    New,
    /// A journal: it has durable's meta table (its version is checked by the migration).
    Journal,
}

/// The length of an SQLite database header.
const HEADER: usize = 100;

/// The `application_id` in the header of every journal since schema 7 (`dura` in
/// ASCII), at bytes 68 to 71, big-endian: the open tells its own journals from their
/// first 100 bytes, without an SQLite connection to read their tables.
pub(super) const APPLICATION_ID: u32 = 0x6475_7261;

/// Looks at the file at `path`, changing nothing in it or beside it, and refuses it if
/// it is not a journal (or an empty file or database that can become one).
///
/// The tables are read through a connection of its own that cannot write, so that
/// closing it cannot checkpoint another program's `-wal` into its file or roll back its
/// hot `-journal`. If a `-wal` holds commits (a WAL database whose last connection did
/// not close), it is read with them; otherwise the file alone is read as immutable,
/// without a lock and without creating any file beside it.
pub(super) fn identify(path: &Path) -> Result<Found, Error> {
    let mut header = Vec::with_capacity(HEADER);
    File::open(path)
        .and_then(|f| f.take(HEADER as u64).read_to_end(&mut header))
        .map_err(|e| StoreError::new(path, StoreErrorKind::Io, format!("cannot read it: {e}")))?;
    if header.is_empty() {
        refuse_wal_without_file(path, "the file is empty")?;
        return Ok(Found::New);
    }
    if header.len() < HEADER || !header.starts_with(b"SQLite format 3\0") {
        return Err(not_a_journal(
            path,
            "it is not an SQLite database (if it was a journal, its first bytes are damaged: \
             restore it from a backup)",
        ));
    }
    // Bytes 18 and 19: the file format versions, 1 for a rollback journal, 2 for WAL.
    let wal_mode = header[18] == 2 && header[19] == 2;
    let len = |suffix| std::fs::metadata(with_suffix(path, suffix)).map_or(0, |m| m.len());
    if !wal_mode && len("-journal") > 0 {
        // Durable's journals are never in rollback mode: this is another program's
        // database, in a transaction it did not finish. Any writing connection would
        // roll that back; leave it to its program.
        return Err(not_a_journal(
            path,
            &format!(
                "it is an SQLite database in rollback-journal mode (durable's are in WAL \
                 mode) with an unfinished transaction in {}; nothing in it was changed: give \
                 the runtime a file of its own",
                with_suffix(path, "-journal").display()
            ),
        ));
    }
    let with_wal = wal_mode && len("-wal") > 0;
    if wal_mode && !with_wal && header[68..72] == APPLICATION_ID.to_be_bytes() {
        // Durable's own, as its header says: no need to read its tables to tell. (A
        // journal whose latest header is still in the `-wal` only, or one from before
        // schema 7, is told by its tables below.)
        return Ok(Found::Journal);
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let shm = with_suffix(path, "-shm");
    let shm_existed = shm.exists();
    let reader = match immutable_uri(path) {
        Some(uri) if !with_wal => {
            Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
        }
        _ => Connection::open_with_flags(path, flags),
    }
    .map_err(|e| unreadable(path, e))?;
    let found = classify(path, &reader);
    drop(reader);
    if found.is_err() && with_wal && !shm_existed {
        // Reading a -wal needs its index, which SQLite created; the file is refused, so
        // leave nothing of ours beside it. (No other connection had the file open, or
        // the -shm would have existed.)
        let _ = std::fs::remove_file(&shm);
    }
    found
}

/// An SQLite URI that opens `path` as immutable (`None` if the path is not UTF-8).
fn immutable_uri(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    let mut uri = String::from(if path.is_absolute() {
        "file://"
    } else {
        "file:"
    });
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Some(uri)
}

/// `path` with `suffix` appended to its file name.
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Refuses a journal file that is missing or empty (`state` says which) while a `-wal`
/// beside it holds commits: the file was deleted, truncated or replaced, and a new
/// journal would start over without them, or take in a log that is not its own.
pub(super) fn refuse_wal_without_file(path: &Path, state: &str) -> Result<(), Error> {
    // A WAL file is a 32-byte header followed by frames; a header alone holds nothing.
    const WAL_HEADER: u64 = 32;
    let wal = with_suffix(path, "-wal");
    match std::fs::metadata(&wal) {
        Ok(meta) if meta.len() > WAL_HEADER => Err(StoreError::new(
            path,
            StoreErrorKind::Damaged,
            format!(
                "the journal is damaged: {state}, but {} beside it holds {} bytes of commits \
                 (the file was deleted, truncated or replaced); restore it from a backup, or \
                 move the -wal aside to start a new journal",
                wal.display(),
                meta.len()
            ),
        )
        .into()),
        _ => Ok(()),
    }
}

/// Sorts an SQLite database into a journal, a new (empty) one, or someone else's.
fn classify(path: &Path, conn: &Connection) -> Result<Found, Error> {
    let tables = || -> rusqlite::Result<(Vec<String>, i64, i64)> {
        let mut stmt =
            conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let user_version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let application_id = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        Ok((names, user_version, application_id))
    };
    let (names, user_version, application_id) = tables().map_err(|e| unreadable(path, e))?;
    if names.iter().any(|n| n == "durable_meta") {
        return Ok(Found::Journal);
    }
    if names.is_empty() && user_version == 0 && application_id == 0 {
        return Ok(Found::New);
    }
    let mut what = if names.is_empty() {
        "it is an SQLite database of another program (it has no tables, but its \
         user_version or application_id is set)"
            .to_owned()
    } else {
        let shown: Vec<_> = names.iter().take(5).map(|n| format!("`{n}`")).collect();
        let more = if names.len() > 5 { ", .." } else { "" };
        format!(
            "it is an SQLite database of another program (it has the tables {}{more}, and not \
             durable's `durable_meta`)",
            shown.join(", ")
        )
    };
    what.push_str("; nothing in it was changed: give the runtime a file of its own");
    Err(not_a_journal(path, &what))
}

/// The error for a file that is not a journal: `why`.
fn not_a_journal(path: &Path, why: &str) -> Error {
    StoreError::new(
        path,
        StoreErrorKind::NotAJournal,
        format!("not a durable journal: {why}"),
    )
    .into()
}

/// The error for a database SQLite could not read while the open looked at it.
fn unreadable(path: &Path, e: rusqlite::Error) -> Error {
    unwritable(path, e)
}
