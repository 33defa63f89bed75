//! Shared by the tests that record journal fixtures or inspect a killed worker's journal.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

/// Waits (up to 10 s) for the runtime that last opened the journal at `path` to let go
/// of it; returns its lock file, locked.
pub(crate) fn wait_unlocked(path: &Path) -> std::fs::File {
    let lock = format!("{}.lock", path.display());
    let file = std::fs::File::open(&lock).expect("the journal's lock file");
    let deadline = Instant::now() + Duration::from_secs(10);
    while file.try_lock().is_err() {
        assert!(Instant::now() < deadline, "the journal stays locked");
        std::thread::sleep(Duration::from_millis(5));
    }
    file
}

/// Leaves `path` as one self-contained file: the WAL folded in, the lock file removed.
pub(crate) fn seal(path: &Path) {
    let lock = wait_unlocked(path);
    let conn = rusqlite::Connection::open(path).expect("open the fixture");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .expect("fold the WAL into the fixture");
    drop(conn);
    drop(lock);
    let _ = std::fs::remove_file(format!("{}.lock", path.display()));
}

/// Copies a journal (as a killed or finished worker left it) beside it, for reading, so
/// a test never changes what the next worker finds; returns the copy's path, or `None`
/// if no worker created the journal yet.
///
/// Reading the original read-only is not enough: a worker killed while SQLite switched a
/// new file to WAL mode leaves a hot rollback journal (`<db>-journal`), which only a
/// read-write connection can roll back.
pub(crate) fn copy_for_reading(journal: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
    if !journal.exists() {
        return Ok(None);
    }
    let copy = journal.with_extension("inspect.db");
    for suffix in ["", "-wal", "-journal", "-shm"] {
        let (mut from, mut to) = (journal.as_os_str().to_owned(), copy.as_os_str().to_owned());
        from.push(suffix);
        to.push(suffix);
        let _ = std::fs::remove_file(&to);
        // The shared-memory index (`-shm`) is rebuilt from the WAL; copy the rest.
        if suffix != "-shm" && Path::new(&from).exists() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(Some(copy))
}
