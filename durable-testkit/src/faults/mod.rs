//! A fault-injecting file layer under SQLite, for testing a journal against what
//! happens below the process: an I/O call that fails, a full disk, a short write, and
//! a machine that loses power with writes still in its page cache.
//!
//! [`FaultFs::new`] registers an SQLite VFS (by a name of its own, never as the
//! default) that wraps the system's. Give its name to
//! `Runtime::builder(path).sqlite_vfs(fs.name())` and every connection of that
//! runtime's journal goes through it. Then:
//!
//! - **Counting.** Every open, read, write, truncate, sync and lock call is counted
//!   ([`FaultFs::io_calls`]), so a test can run a workload once to learn its calls, then
//!   advance a fault through every one of them, in the style of SQLite's own I/O-error
//!   tests.
//! - **Faults.** [`FaultFs::fail_at`] fails the n-th call with an I/O error, a full disk
//!   or a short write, once or from then on.
//! - **Power loss.** Writes to the database, its WAL and its rollback journal are held
//!   in memory, per file, until that file is synced, as a page cache holds them. (Every
//!   connection of this layer to one path shares the file's memory, and it outlives the
//!   connections, as a page cache does.) [`FaultFs::crash_at`] stops the machine at the
//!   n-th call: that call and every later one fails and changes nothing. Once the
//!   process has let go of its connections ([`FaultFs::open_files`] is 0),
//!   [`FaultFs::power_loss`] drops what was never synced, or tears it: a random half of
//!   its 512-byte sectors reach the disk. The files on disk are then the crash image.
//!   [`FaultFs::flush_all`] is the other ending: the process died, the machine did not,
//!   and everything written reaches the disk.
//!
//! What is not modelled: the `-shm` file (SQLite's shared index of the WAL, which it
//! rebuilds after a crash) is passed through; directory entries (a file created,
//! deleted or renamed) are durable at once; a sync of one file does not sync another.
//! Memory-mapped I/O is not offered to SQLite, so every page goes through `xRead`.
//!
//! Each `FaultFs` registers one VFS for the life of the process (SQLite keeps a pointer
//! to it), so make a few per test, not millions.
//!
//! ```no_run
//! # async fn demo() -> durable_runtime::Result<()> {
//! use durable_testkit::faults::{Fault, FaultFs, Persistence};
//!
//! let fs = FaultFs::new();
//! fs.fail_at(40, Fault::NoSpace, Persistence::Sticky); // the disk fills at call 40
//! let rt = durable_runtime::Runtime::builder("journal.db")
//!     .sqlite_vfs(fs.name())
//!     .open()
//!     .await?;
//! // ... run workflows; their checkpoints fail from call 40 on ...
//! # Ok(())
//! # }
//! ```

// The workspace denies `unsafe`: an SQLite VFS is a table of C callbacks over raw
// pointers, which cannot be written without it. Each block says why it is sound.
#![allow(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, c_char, c_int};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rusqlite::ffi;

/// The error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An I/O error (EIO): `SQLITE_IOERR_READ`, `_WRITE`, `_TRUNCATE`, `_FSYNC` or
    /// `_LOCK` for the call it strikes, `SQLITE_CANTOPEN` for an open.
    Io,
    /// A full disk (ENOSPC): `SQLITE_FULL` for a write, truncate or sync; an I/O error
    /// for other calls.
    NoSpace,
    /// A write that writes only its first half (in 512-byte sectors where it can), then
    /// fails with `SQLITE_IOERR_WRITE`; an I/O error for other calls.
    ShortWrite,
}

/// Whether a fault strikes once or stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Only the chosen call fails.
    Once,
    /// The chosen call and every counted call after it fail, until [`FaultFs::clear`].
    Sticky,
}

/// What a power loss does to the writes that were never synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// None of them reaches the disk.
    Drop,
    /// A pseudo-random half of their 512-byte sectors (chosen by `seed`) reaches the
    /// disk, and a pending change of a file's size may or may not.
    Tear {
        /// Chooses the sectors: the same seed tears the same way.
        seed: u64,
    },
}

/// The kinds of counted I/O call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Open,
    Read,
    Write,
    Truncate,
    Sync,
    Lock,
}

impl Call {
    /// The error `fault` makes of this call.
    fn error(self, fault: Fault) -> c_int {
        match (self, fault) {
            (Call::Write | Call::Truncate | Call::Sync, Fault::NoSpace) => ffi::SQLITE_FULL,
            (Call::Open, _) => ffi::SQLITE_CANTOPEN,
            (Call::Read, _) => ffi::SQLITE_IOERR_READ,
            (Call::Write, _) => ffi::SQLITE_IOERR_WRITE,
            (Call::Truncate, _) => ffi::SQLITE_IOERR_TRUNCATE,
            (Call::Sync, _) => ffi::SQLITE_IOERR_FSYNC,
            (Call::Lock, _) => ffi::SQLITE_IOERR_LOCK,
        }
    }
}

/// The size of a sector, the unit of a torn write.
const SECTOR: u64 = 512;

/// A file's contents as the processes of the machine see them: the page cache.
#[derive(Debug, Default)]
struct Image {
    data: Vec<u8>,
    /// Sectors written since the last sync.
    dirty: BTreeSet<u64>,
    /// Whether the size changed since the last sync.
    resized: bool,
}

impl Image {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset as usize + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
            self.resized = true;
        }
        self.data[offset as usize..end].copy_from_slice(bytes);
        if !bytes.is_empty() {
            self.dirty
                .extend(offset / SECTOR..=(end as u64 - 1) / SECTOR);
        }
    }

    fn truncate(&mut self, size: u64) {
        self.data.resize(size as usize, 0);
        self.resized = true;
        self.dirty.retain(|s| s * SECTOR < size);
    }

    /// The bytes of sector `s` (shorter at the end of the file).
    fn sector(&self, s: u64) -> (u64, &[u8]) {
        let start = (s * SECTOR).min(self.data.len() as u64);
        let end = ((s + 1) * SECTOR).min(self.data.len() as u64);
        (start, &self.data[start as usize..end as usize])
    }

    /// Writes the dirty sectors for which `keep` says yes, and the size if `resize`,
    /// to the file at `path` (with no connection open on it), and forgets the rest.
    fn settle(&mut self, path: &Path, mut keep: impl FnMut(u64) -> bool, resize: bool) {
        let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(path) else {
            return;
        };
        for s in std::mem::take(&mut self.dirty) {
            if keep(s) {
                let (at, bytes) = self.sector(s);
                let _ = file
                    .seek(SeekFrom::Start(at))
                    .and_then(|_| file.write_all(bytes));
            }
        }
        if resize && self.resized {
            let _ = file.set_len(self.data.len() as u64);
        }
        self.resized = false;
    }
}

/// The state of one `FaultFs`, shared by its VFS and its handles.
#[derive(Debug, Default)]
struct State {
    calls: AtomicU64,
    /// The call that fails (0: none), how, and whether the ones after it fail too.
    fault: Mutex<Option<(u64, Fault, Persistence)>>,
    faults_hit: AtomicU64,
    /// The call at which the machine stops (0: never), and whether it has.
    crash_at: AtomicU64,
    crashed: AtomicBool,
    volatile: AtomicBool,
    images: Mutex<HashMap<PathBuf, Arc<Mutex<Image>>>>,
    open_files: AtomicUsize,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Counts a call of kind `call`; the error it must fail with, if a fault or the
    /// stopped machine says so.
    fn tick(&self, call: Call) -> Option<c_int> {
        if self.crashed.load(Ordering::SeqCst) {
            return Some(call.error(Fault::Io));
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_at.load(Ordering::SeqCst) == n {
            self.crashed.store(true, Ordering::SeqCst);
            return Some(call.error(Fault::Io));
        }
        let fault = *locked(&self.fault);
        match fault {
            Some((at, fault, persistence))
                if n == at || (persistence == Persistence::Sticky && n > at) =>
            {
                self.faults_hit.fetch_add(1, Ordering::SeqCst);
                Some(call.error(fault))
            }
            _ => None,
        }
    }

    /// The short-write fault, if it strikes this write.
    fn short_write(&self, error: c_int) -> bool {
        error == ffi::SQLITE_IOERR_WRITE
            && !self.crashed.load(Ordering::SeqCst)
            && matches!(*locked(&self.fault), Some((_, Fault::ShortWrite, _)))
    }
}

/// A fault-injecting SQLite VFS and the handle that steers it. Cloning gives another
/// handle to the same VFS. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct FaultFs {
    state: Arc<State>,
    name: Arc<str>,
}

impl Default for FaultFs {
    fn default() -> Self {
        FaultFs::new()
    }
}

impl FaultFs {
    /// Registers a new VFS, with a name of its own, over SQLite's default one. Writes
    /// are held until synced (see [`FaultFs::set_volatile`]); no fault is set.
    ///
    /// # Panics
    ///
    /// If SQLite has no default VFS or refuses the registration (it does neither on
    /// the systems SQLite supports).
    pub fn new() -> FaultFs {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!(
            "durable-faults-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let state = Arc::new(State {
            volatile: AtomicBool::new(true),
            ..State::default()
        });
        vfs::register(&name, state.clone());
        FaultFs {
            state,
            name: Arc::from(name),
        }
    }

    /// The name the VFS is registered under: give it to `RuntimeBuilder::sqlite_vfs`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counted I/O calls (opens, reads, writes, truncates, syncs, locks) since the
    /// last [`reset_count`](FaultFs::reset_count). Calls refused because the machine
    /// stopped are not counted.
    pub fn io_calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Counts from zero again; [`fail_at`](FaultFs::fail_at) and
    /// [`crash_at`](FaultFs::crash_at) count from here.
    pub fn reset_count(&self) {
        self.state.calls.store(0, Ordering::SeqCst);
    }

    /// Makes the `n`-th counted call (1-based, since the last reset) fail with `fault`,
    /// and with `Persistence::Sticky` every counted call after it.
    pub fn fail_at(&self, n: u64, fault: Fault, persistence: Persistence) {
        *locked(&self.state.fault) = Some((n, fault, persistence));
    }

    /// How many calls a fault has failed.
    pub fn faults_hit(&self) -> u64 {
        self.state.faults_hit.load(Ordering::SeqCst)
    }

    /// Removes the fault set by [`fail_at`](FaultFs::fail_at) and the stop set by
    /// [`crash_at`](FaultFs::crash_at) (a machine that already stopped stays stopped
    /// until [`power_loss`](FaultFs::power_loss)).
    pub fn clear(&self) {
        *locked(&self.state.fault) = None;
        self.state.crash_at.store(0, Ordering::SeqCst);
    }

    /// Stops the machine at the `n`-th counted call: it and every later call fail and
    /// change nothing (closing and unlocking still work, so the process can let go).
    pub fn crash_at(&self, n: u64) {
        self.state.crash_at.store(n, Ordering::SeqCst);
    }

    /// Stops the machine now (see [`crash_at`](FaultFs::crash_at)).
    pub fn crash_now(&self) {
        self.state.crashed.store(true, Ordering::SeqCst);
    }

    /// Whether the machine has stopped.
    pub fn is_crashed(&self) -> bool {
        self.state.crashed.load(Ordering::SeqCst)
    }

    /// Whether files opened from now on hold their writes until synced (`true`, the
    /// default) or write through.
    pub fn set_volatile(&self, volatile: bool) {
        self.state.volatile.store(volatile, Ordering::SeqCst);
    }

    /// How many files SQLite has open through this VFS.
    pub fn open_files(&self) -> usize {
        self.state.open_files.load(Ordering::SeqCst)
    }

    /// The power goes out: what was written and never synced is dropped, or torn
    /// (`loss`); the files on disk are now the crash image. The machine then runs again
    /// (no longer stopped). Call it once nothing has the files open
    /// ([`open_files`](FaultFs::open_files) is 0).
    pub fn power_loss(&self, loss: Loss) {
        let images = std::mem::take(&mut *locked(&self.state.images));
        for (path, image) in images {
            let mut image = locked(&image);
            match loss {
                Loss::Drop => image.dirty.clear(),
                Loss::Tear { seed } => {
                    let mut rng = Rng::new(seed ^ hash(&path));
                    let resize = rng.coin();
                    image.settle(&path, |_| rng.coin(), resize);
                }
            }
        }
        self.state.crashed.store(false, Ordering::SeqCst);
    }

    /// The process died and the machine did not: everything written reaches the disk.
    /// Call it once nothing has the files open.
    pub fn flush_all(&self) {
        let images = std::mem::take(&mut *locked(&self.state.images));
        for (path, image) in images {
            locked(&image).settle(&path, |_| true, true);
        }
        self.state.crashed.store(false, Ordering::SeqCst);
    }
}

/// A small deterministic generator (SplitMix64), for torn writes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn coin(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

/// A stable hash of a path, so that each file tears its own way.
fn hash(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

mod vfs;

/// The path SQLite gave a file, if it gave one.
fn path_of(name: *const c_char) -> Option<PathBuf> {
    if name.is_null() {
        return None;
    }
    // SAFETY: SQLite passes a NUL-terminated file name that lives as long as the file.
    let name = unsafe { CStr::from_ptr(name) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}
