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

/// splitmix64: small, seedable, good enough to pick kill moments.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub(crate) fn up_to(&mut self, max: Duration) -> Duration {
        let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.next() % micros.saturating_add(1))
    }
}
