//! A fault-injecting file layer under SQLite, in the style of SQLite's own test VFSes
//! (`test_vfs.c`, and the crash VFS of `test6.c`): I/O calls that fail, a full disk, a
//! short write, and a machine that loses power with writes still in its page cache.
//!
//! [`FaultFs::new`] registers an SQLite VFS under a name of its own (never as the
//! default) that wraps SQLite's default VFS (`unix` on Linux). Open connections
//! through it by name: `Runtime::builder(path).sqlite_vfs(fs.name())` for every
//! journal connection of a runtime, or `Connection::open_with_flags_and_vfs` in
//! rusqlite. Then:
//!
//! - **Counting.** Every open, read, write, truncate, sync and lock call is counted
//!   ([`FaultFs::io_calls`], [`FaultFs::calls`]), so a test can run a workload once to
//!   learn its calls, then advance a fault through each of them. Not counted, because
//!   they are not I/O that fails in practice, or must keep working for a dead process
//!   to let go: file sizes (`fstat`), closing, unlocking, file controls, the WAL's
//!   shared memory (`-shm`), deleting and checking for files. (So in WAL mode a
//!   connection's `xLock` calls come only as it opens and closes: its transactions
//!   lock through the shared memory.) A workload that runs on one thread counts the
//!   same calls every time; the positions of concurrent connections depend on their
//!   timing.
//! - **Faults.** [`FaultFs::fail_at`] fails the n-th counted call with an I/O error, a
//!   full disk or a short write ([`Fault`]), once or from then on ([`Persistence`]);
//!   [`FaultFs::only`] makes only some kinds of call count and fail ("the 3rd sync").
//! - **A volatile page cache.** While the VFS is volatile (the default,
//!   [`FaultFs::set_volatile`]), a database, its WAL and its rollback journal are held
//!   in memory, one image per path, shared by every connection of this VFS to the path.
//!   Reads and file sizes come from the image; writes and truncates change only the
//!   image; a sync of a file writes its changed 512-byte sectors and its new size to
//!   the real file, then syncs that. The image outlives the connections (a closed file's
//!   unsynced data stays in the page cache); deleting the file forgets it. Temporary
//!   files write through.
//! - **The machine stops.** [`FaultFs::crash_at`] (or [`FaultFs::crash_now`]) stops the
//!   machine at the n-th counted call: it and every later call fails and changes
//!   nothing, except closing files, unlocking, unmapping the shared memory (without
//!   deleting it) and releasing its locks, so that the process can drop its
//!   connections. Once it has ([`FaultFs::open_files`] is 0), one of two endings makes
//!   the real files the crash image and the VFS usable again:
//!   [`FaultFs::power_loss`] drops what was never synced, or tears it (a seeded random
//!   half of the changed sectors, and perhaps the size, reach the disk);
//!   [`FaultFs::flush_all`] is a process that died on a machine that did not: all of it
//!   reaches the disk. These two also end a run without a stop.
//!
//! # The model, and what it leaves out
//!
//! - Sectors are 512 bytes: a sector reaches the disk whole (with the image's bytes
//!   for all of it) or not at all. That is what SQLite's default VFS promises it
//!   ("powersafe overwrite"): a write never damages bytes outside it.
//! - Directory entries are durable at once: a file created, deleted or renamed stays
//!   so after a power loss (only its contents are volatile). A sync of one file
//!   writes that file only.
//! - The WAL's shared-memory index (`-shm`) goes straight to the real file, and is not
//!   durable in any sense SQLite relies on: the first connection after a crash rebuilds
//!   it from the WAL. That happens only if no connection of the process holds it:
//!   SQLite's `unix` VFS shares locks and `-shm` mappings between the connections of
//!   one process to one file, so wait for [`FaultFs::open_files`] to reach 0 before
//!   opening the files again (`power_loss` and `flush_all` insist on it).
//! - A failed sync leaves its data in the page cache: a later `flush_all` writes it, a
//!   power loss loses it.
//! - Only I/O through SQLite goes through the cache. A program that reads or writes
//!   the files itself (`std::fs`) sees the disk, not the cache; a file changed that way
//!   while its image holds unsynced changes keeps those changes over the disk's.
//! - Memory-mapped I/O is not offered for cached files (SQLite reads through `xRead`).
//! - Each `FaultFs` registers its VFS for the life of the process and is never
//!   unregistered (SQLite keeps a pointer to it): a few hundred bytes each, so make one
//!   per test case, not one per call.
//!
//! # Example
//!
//! ```
//! use durable_testkit::faults::{FaultFs, Loss};
//! use rusqlite::{Connection, OpenFlags};
//!
//! let fs = FaultFs::new();
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("shop.db");
//! let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
//! let db = Connection::open_with_flags_and_vfs(&path, flags, fs.name())?;
//! db.execute_batch(
//!     "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
//!      CREATE TABLE t (x); INSERT INTO t VALUES (1);",
//! )?;
//! fs.crash_now(); // the machine stops
//! assert!(db.execute("INSERT INTO t VALUES (2)", []).is_err());
//! drop(db); // the process lets go of its files
//! fs.power_loss(Loss::Tear { seed: 7 }); // what was never synced is torn
//!
//! // The crash image, opened without the fault layer.
//! let db = Connection::open(&path)?;
//! let rows: i64 = db.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
//! assert_eq!(rows, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The workspace denies `unsafe`: an SQLite VFS is a table of C callbacks over raw
// pointers, which cannot be written without it. It is allowed in this module only, and
// every block says why it is sound.
#![allow(unsafe_code)]

mod cache;
mod control;
mod file;
mod vfs;

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use self::control::{Fault, Kind, Persistence};

use self::cache::{Cache, Disk};
use self::control::{Control, Verdict};

/// What a power loss does to the data that was written and never synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loss {
    /// None of it reaches the disk.
    Drop,
    /// Each changed 512-byte sector reaches the disk or not, one chance in two; each
    /// pending change of a file's size too. The same seed tears the same way.
    Tear {
        /// Chooses which sectors and sizes reach the disk.
        seed: u64,
    },
}

/// A fault-injecting SQLite VFS, and the handle that steers it. Clones are handles to
/// the same VFS; all of them may be used from any thread. See the
/// [module docs](self).
#[derive(Clone)]
pub struct FaultFs {
    shared: Arc<Shared>,
    name: Arc<str>,
}

/// The state of one VFS, shared by its handles, its SQLite side and its open files.
struct Shared {
    control: Mutex<Control>,
    cache: Cache,
    volatile: AtomicBool,
    open_files: AtomicUsize,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        locked(&self.control)
    }

    fn tick(&self, kind: Kind) -> Verdict {
        self.control().tick(kind)
    }

    fn is_crashed(&self) -> bool {
        self.control().is_crashed()
    }

    fn is_volatile(&self) -> bool {
        self.volatile.load(Ordering::SeqCst)
    }
}

/// Locks `m`, whether or not a thread panicked holding it: the state stays consistent
/// (every update under these locks is a plain assignment or a whole method).
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for FaultFs {
    fn default() -> Self {
        FaultFs::new()
    }
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFs")
            .field("name", &self.name)
            .field("io_calls", &self.io_calls())
            .field("faults_hit", &self.faults_hit())
            .field("crashed", &self.is_crashed())
            .field("open_files", &self.open_files())
            .finish()
    }
}

impl FaultFs {
    /// Registers a new VFS, named `durable-faults-N`, over SQLite's default VFS:
    /// volatile, with no fault set. It stays registered for the life of the process.
    ///
    /// # Panics
    ///
    /// If SQLite has no default VFS or refuses the registration (neither happens on
    /// the systems SQLite supports).
    pub fn new() -> FaultFs {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("durable-faults-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let shared = Arc::new(Shared {
            control: Mutex::new(Control::default()),
            cache: Cache::default(),
            volatile: AtomicBool::new(true),
            open_files: AtomicUsize::new(0),
        });
        vfs::register(&name, shared.clone());
        FaultFs {
            shared,
            name: Arc::from(name),
        }
    }

    /// The name the VFS is registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counted calls (opens, reads, writes, truncates, syncs, locks) since the last
    /// [`reset_count`](FaultFs::reset_count), including the ones that failed.
    pub fn io_calls(&self) -> u64 {
        self.shared.control().total()
    }

    /// The counted calls of one kind since the last reset.
    pub fn calls(&self, kind: Kind) -> u64 {
        self.shared.control().calls(kind)
    }

    /// Counts from zero again (and [`faults_hit`](FaultFs::faults_hit) too): the
    /// positions of [`fail_at`](FaultFs::fail_at) and [`crash_at`](FaultFs::crash_at)
    /// count from here.
    pub fn reset_count(&self) {
        self.shared.control().reset_count();
    }

    /// Fails the `n`-th counted call (1-based, since the last reset; of the kinds
    /// [`only`](FaultFs::only) allows) with `fault`, and with [`Persistence::Sticky`]
    /// every such call after it, until [`clear`](FaultFs::clear). Replaces the fault
    /// set before. A position already passed does not strike (a sticky fault strikes
    /// the next call).
    pub fn fail_at(&self, n: u64, fault: Fault, persistence: Persistence) {
        self.shared.control().fail_at(n, fault, persistence);
    }

    /// Makes only calls of `kinds` count towards the positions of
    /// [`fail_at`](FaultFs::fail_at) and [`crash_at`](FaultFs::crash_at), and only
    /// they fail: with `only(&[Kind::Sync])`, `fail_at(3, ..)` fails the third sync
    /// since the last reset. [`io_calls`](FaultFs::io_calls) still counts every kind.
    /// Until [`clear`](FaultFs::clear); all kinds count at first.
    pub fn only(&self, kinds: &[Kind]) {
        self.shared.control().only(kinds);
    }

    /// How many calls an injected fault (not a stop) has failed since the last reset.
    pub fn faults_hit(&self) -> u64 {
        self.shared.control().faults_hit()
    }

    /// Removes the fault, the crash point and the [`only`](FaultFs::only) filter. A
    /// machine that has stopped stays stopped (see [`revive`](FaultFs::revive)).
    pub fn clear(&self) {
        self.shared.control().clear();
    }

    /// Stops the machine at the `n`-th counted call (1-based, since the last reset; of
    /// the kinds [`only`](FaultFs::only) allows): it and every later call fails and
    /// changes nothing, but closing and unlocking still work. See the
    /// [module docs](self). A position already passed does not strike.
    pub fn crash_at(&self, n: u64) {
        self.shared.control().crash_at(n);
    }

    /// Stops the machine now (see [`crash_at`](FaultFs::crash_at)).
    pub fn crash_now(&self) {
        self.shared.control().crash_now();
    }

    /// Whether the machine has stopped.
    pub fn is_crashed(&self) -> bool {
        self.shared.is_crashed()
    }

    /// Starts a stopped machine again as it was, page cache and all (as if it had only
    /// paused). [`power_loss`](FaultFs::power_loss) and
    /// [`flush_all`](FaultFs::flush_all) revive it too.
    pub fn revive(&self) {
        self.shared.control().revive();
    }

    /// Whether files opened from now on keep their writes in the page cache until
    /// synced (`true`, the default) or write through to the real files. Files already
    /// open keep their way.
    pub fn set_volatile(&self, volatile: bool) {
        self.shared.volatile.store(volatile, Ordering::SeqCst);
    }

    /// How many files SQLite has open through this VFS.
    pub fn open_files(&self) -> usize {
        self.shared.open_files.load(Ordering::SeqCst)
    }

    /// The machine loses power: what was written and never synced is dropped, or torn
    /// (`loss`). The files on disk are now the crash image; the page cache is empty and
    /// the machine runs again.
    ///
    /// # Panics
    ///
    /// If a file is still open through the VFS (wait for
    /// [`open_files`](FaultFs::open_files) to be 0), or a file on disk cannot be
    /// written.
    pub fn power_loss(&self, loss: Loss) {
        match loss {
            Loss::Drop => self.settle(|| false),
            Loss::Tear { seed } => {
                let mut rng = SplitMix64(seed);
                self.settle(move || rng.coin());
            }
        }
    }

    /// The process died and the machine did not: everything written reaches the disk.
    /// The page cache is then empty and the machine runs again.
    ///
    /// # Panics
    ///
    /// As [`power_loss`](FaultFs::power_loss).
    pub fn flush_all(&self) {
        self.settle(|| true);
    }

    /// Writes to disk the unsynced changes `keep` chooses, of every image in the order
    /// of their paths (so a seeded choice is the same from run to run), and forgets the
    /// images.
    fn settle(&self, mut keep: impl FnMut() -> bool) {
        let open = self.open_files();
        assert_eq!(open, 0, "{}: {open} files are still open", self.name);
        for (path, image) in self.shared.cache.take_all() {
            let mut disk = OnDisk {
                path: &path,
                file: None,
            };
            if let Err(e) = locked(&image).persist(&mut disk, &mut keep) {
                panic!("{}: cannot write {}: {e}", self.name, path.display());
            }
        }
        self.shared.control().revive();
    }
}

/// A file on disk, written with no connection open: opened at the first write. A file
/// that no longer exists is left so (its data has nowhere to go).
struct OnDisk<'a> {
    path: &'a Path,
    file: Option<std::fs::File>,
}

impl OnDisk<'_> {
    fn file(&mut self) -> std::io::Result<Option<&mut std::fs::File>> {
        if self.file.is_none() {
            match OpenOptions::new().write(true).open(self.path) {
                Ok(file) => self.file = Some(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.file.as_mut())
    }
}

impl Disk for OnDisk<'_> {
    type Error = std::io::Error;

    fn write(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        match self.file()? {
            Some(file) => {
                file.seek(SeekFrom::Start(offset))?;
                file.write_all(bytes)
            }
            None => Ok(()),
        }
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        match self.file()? {
            Some(file) => file.set_len(len),
            None => Ok(()),
        }
    }
}

/// A small deterministic generator (SplitMix64), for torn writes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn coin(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<FaultFs>();
    }

    #[test]
    fn each_fault_fs_has_a_vfs_of_its_own() {
        let (a, b) = (FaultFs::new(), FaultFs::new());
        assert_ne!(a.name(), b.name());
        assert_eq!(a.clone().name(), a.name());
        assert!(format!("{a:?}").contains(a.name()));
    }
}
