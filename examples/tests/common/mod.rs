//! Shared by the tests that record journal fixtures.

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
