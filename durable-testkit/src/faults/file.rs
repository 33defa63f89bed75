//! The files of the fault VFS: SQLite's `sqlite3_io_methods`, each counting its call,
//! failing it if a fault or the stopped machine says so, and otherwise forwarding it to
//! the real file or serving it from the file's image in the page cache.
//!
//! Layout: SQLite allocates `szOsFile` bytes for each file of the VFS. A [`FaultFile`]
//! fills the first [`REAL_OFFSET`] bytes (its first field the `sqlite3_file` SQLite
//! sees); the real VFS's file follows in the same allocation.

use std::ffi::{c_int, c_void};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rusqlite::ffi;

use super::cache::{Disk, Image};
use super::control::{Fault, Kind, Verdict};
use super::{Shared, locked};

/// Where the real file starts in the allocation: right after ours, which is a multiple
/// of 8 bytes (it holds pointers), the alignment SQLite's allocations have.
pub(super) const REAL_OFFSET: usize = std::mem::size_of::<FaultFile>().next_multiple_of(8);

/// A file opened through the real VFS, in the bytes after a [`FaultFile`].
pub(super) struct Real(*mut ffi::sqlite3_file);

/// Calls a method of the real file, or returns `$none` if it has none.
macro_rules! real {
    ($real:expr, $method:ident($($arg:expr),*), $none:expr) => {
        match $real.methods().$method {
            // SAFETY: the real file's own method, called on the real file (open, see
            // `Real::methods`) with the arguments SQLite gave us for the same method,
            // or with buffers of ours of the sizes passed.
            Some(m) => unsafe { m($real.0, $($arg),*) },
            None => $none,
        }
    };
}

impl Real {
    /// The real file of the file SQLite allocated at `ours`.
    pub(super) fn of(ours: *mut ffi::sqlite3_file) -> Real {
        // `wrapping_add` needs no `unsafe`; the address is inside SQLite's allocation of
        // `szOsFile` bytes, which the VFS sized as `REAL_OFFSET` plus the real VFS's.
        Real(ours.cast::<u8>().wrapping_add(REAL_OFFSET).cast())
    }

    pub(super) fn as_ptr(&self) -> *mut ffi::sqlite3_file {
        self.0
    }

    /// Whether the real VFS opened it (set its methods): a failed open may leave them
    /// set, and must then be closed.
    pub(super) fn is_open(&self) -> bool {
        // SAFETY: the real file's bytes are in SQLite's allocation; the real xOpen has
        // set `pMethods` (to its methods or to null) before anyone reads it.
        unsafe { !(*self.0).pMethods.is_null() }
    }

    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: only called on a file the real VFS opened: its methods pointer stays
        // valid until it is closed, and SQLite uses no file after closing it.
        unsafe { &*(*self.0).pMethods }
    }

    /// The version of the real file's methods: which of them exist.
    pub(super) fn version(&self) -> c_int {
        self.methods().iVersion
    }

    pub(super) fn close(&self) -> c_int {
        real!(self, xClose(), ffi::SQLITE_OK)
    }

    pub(super) fn size(&self) -> Result<u64, c_int> {
        let mut size: ffi::sqlite3_int64 = 0;
        match real!(self, xFileSize(&mut size), ffi::SQLITE_IOERR_FSTAT) {
            ffi::SQLITE_OK => Ok(u64::try_from(size).unwrap_or(0)),
            rc => Err(rc),
        }
    }

    /// The whole file, read at its opening to make its image.
    pub(super) fn read_all(&self) -> Result<Vec<u8>, c_int> {
        const CHUNK: usize = 1 << 16;
        let size = usize::try_from(self.size()?).map_err(|_| ffi::SQLITE_NOMEM)?;
        let mut data = vec![0; size];
        for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
            let (len, at) = (chunk.len() as c_int, (i * CHUNK) as i64);
            let buf = chunk.as_mut_ptr().cast::<c_void>();
            match real!(self, xRead(buf, len, at), ffi::SQLITE_IOERR_READ) {
                ffi::SQLITE_OK | ffi::SQLITE_IOERR_SHORT_READ => {}
                rc => return Err(rc),
            }
        }
        Ok(data)
    }
}

impl Disk for &Real {
    type Error = c_int;

    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), c_int> {
        let len = c_int::try_from(bytes.len()).map_err(|_| ffi::SQLITE_IOERR_WRITE)?;
        let buf = bytes.as_ptr().cast::<c_void>();
        match real!(
            self,
            xWrite(buf, len, offset as i64),
            ffi::SQLITE_IOERR_WRITE
        ) {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(rc),
        }
    }

    fn set_len(&mut self, len: u64) -> Result<(), c_int> {
        match real!(self, xTruncate(len as i64), ffi::SQLITE_IOERR_TRUNCATE) {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(rc),
        }
    }
}

/// A file of the fault VFS.
#[repr(C)]
pub(super) struct FaultFile {
    /// What SQLite sees: our methods.
    base: ffi::sqlite3_file,
    real: Real,
    shared: Arc<Shared>,
    /// The page-cache image and its path, for a database, WAL or rollback journal
    /// opened while the VFS is volatile; `None` for a file that writes through.
    image: Option<(PathBuf, Arc<Mutex<Image>>)>,
}

impl FaultFile {
    /// Makes the file SQLite allocated at `p` ours, over the real file the real VFS
    /// opened after it ([`Real::of`]).
    ///
    /// # Safety
    ///
    /// `p` is SQLite's allocation of `szOsFile` bytes for a file of our VFS, not yet
    /// ours, and its real file is open.
    pub(super) unsafe fn install(
        p: *mut ffi::sqlite3_file,
        shared: Arc<Shared>,
        image: Option<(PathBuf, Arc<Mutex<Image>>)>,
    ) {
        let real = Real::of(p);
        let version = real.version().clamp(1, 3);
        shared.open_files.fetch_add(1, Ordering::SeqCst);
        let file = FaultFile {
            base: ffi::sqlite3_file {
                pMethods: &METHODS[version as usize - 1],
            },
            real,
            shared,
            image,
        };
        // SAFETY: per the contract, the first `REAL_OFFSET` bytes of `p` are ours to
        // fill, and aligned for a `FaultFile` (SQLite's allocations are 8-aligned).
        unsafe { p.cast::<FaultFile>().write(file) };
    }

    /// Our file at `p`.
    ///
    /// # Safety
    ///
    /// `p` is a file [`FaultFile::install`] made and `x_close` has not closed.
    unsafe fn at<'a>(p: *mut ffi::sqlite3_file) -> &'a FaultFile {
        // SAFETY: per the contract, `p` points at a live `FaultFile`, which SQLite only
        // reads through its methods (never moves or writes).
        unsafe { &*p.cast::<FaultFile>() }
    }

    /// Counts a call of `kind`; the code it fails with, unless it goes ahead.
    fn refuse(&self, kind: Kind) -> Option<c_int> {
        self.shared.tick(kind).refusal(kind)
    }

    fn crashed(&self) -> bool {
        self.shared.is_crashed()
    }

    fn image(&self) -> Option<&Mutex<Image>> {
        self.image.as_ref().map(|(_, image)| &**image)
    }
}

/// Our methods, for real files whose methods are of version 1, 2 and 3.
static METHODS: [ffi::sqlite3_io_methods; 3] = [methods(1), methods(2), methods(3)];

/// Our methods as of `version` (the methods of a later version are there, unused).
const fn methods(version: c_int) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: version,
        xClose: Some(x_close),
        xRead: Some(x_read),
        xWrite: Some(x_write),
        xTruncate: Some(x_truncate),
        xSync: Some(x_sync),
        xFileSize: Some(x_file_size),
        xLock: Some(x_lock),
        xUnlock: Some(x_unlock),
        xCheckReservedLock: Some(x_check_reserved_lock),
        xFileControl: Some(x_file_control),
        xSectorSize: Some(x_sector_size),
        xDeviceCharacteristics: Some(x_device_characteristics),
        xShmMap: Some(x_shm_map),
        xShmLock: Some(x_shm_lock),
        xShmBarrier: Some(x_shm_barrier),
        xShmUnmap: Some(x_shm_unmap),
        xFetch: Some(x_fetch),
        xUnfetch: Some(x_unfetch),
    }
}

/// A count or offset SQLite passed, which it never passes negative.
fn unsigned<T: TryInto<u64>>(n: T) -> Option<u64> {
    n.try_into().ok()
}

/// Closing always works, even on a stopped machine, so that the process can let go.
unsafe extern "C" fn x_close(p: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file it opened through us once, and uses it no more:
    // the `FaultFile` is moved out (SQLite frees the bytes).
    let file = unsafe { p.cast::<FaultFile>().read() };
    let rc = file.real.close();
    if let Some((path, image)) = &file.image {
        file.shared.cache.detach(path, image);
    }
    file.shared.open_files.fetch_sub(1, Ordering::SeqCst);
    rc
}

unsafe extern "C" fn x_read(
    p: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    if let Some(rc) = f.refuse(Kind::Read) {
        return rc;
    }
    let Some(image) = f.image() else {
        return real!(f.real, xRead(buf, amount, offset), ffi::SQLITE_IOERR_READ);
    };
    let (Some(len), Some(at)) = (unsigned(amount), unsigned(offset)) else {
        return ffi::SQLITE_IOERR_READ;
    };
    // SAFETY: SQLite passes a buffer of `amount` writable bytes, which may be
    // uninitialized: they are zeroed before a slice is made of them.
    let out = unsafe {
        std::ptr::write_bytes(buf.cast::<u8>(), 0, len as usize);
        std::slice::from_raw_parts_mut(buf.cast::<u8>(), len as usize)
    };
    if locked(image).read(at, out) {
        ffi::SQLITE_OK
    } else {
        ffi::SQLITE_IOERR_SHORT_READ
    }
}

unsafe extern "C" fn x_write(
    p: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    let verdict = f.shared.tick(Kind::Write);
    let (Some(len), Some(at)) = (unsigned(amount), unsigned(offset)) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite passes `amount` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len as usize) };
    // A short write writes its part, then fails; any other refusal changes nothing.
    let (bytes, rc) = match verdict {
        Verdict::Go => (bytes, ffi::SQLITE_OK),
        Verdict::Fail(Fault::ShortWrite) => (&bytes[..short(bytes.len())], ffi::SQLITE_IOERR_WRITE),
        _ => {
            return verdict
                .refusal(Kind::Write)
                .unwrap_or(ffi::SQLITE_IOERR_WRITE);
        }
    };
    let written = match f.image() {
        Some(image) => {
            locked(image).write(at, bytes);
            ffi::SQLITE_OK
        }
        None => match (&f.real).write(at, bytes) {
            Ok(()) => ffi::SQLITE_OK,
            Err(rc) => rc,
        },
    };
    if written == ffi::SQLITE_OK {
        rc
    } else {
        written
    }
}

/// How much of a write of `len` bytes a short write writes: its first half, in whole
/// sectors if it spans two or more, and always less than all of it.
fn short(len: usize) -> usize {
    let sector = super::cache::SECTOR as usize;
    let half = len / 2;
    if half >= sector {
        half / sector * sector
    } else {
        half
    }
}

unsafe extern "C" fn x_truncate(p: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    if let Some(rc) = f.refuse(Kind::Truncate) {
        return rc;
    }
    match (f.image(), unsigned(size)) {
        (Some(image), Some(len)) => {
            locked(image).truncate(len);
            ffi::SQLITE_OK
        }
        (Some(_), None) => ffi::SQLITE_IOERR_TRUNCATE,
        (None, _) => real!(f.real, xTruncate(size), ffi::SQLITE_IOERR_TRUNCATE),
    }
}

/// A sync makes the file's image reach the disk (the real file), then syncs that.
unsafe extern "C" fn x_sync(p: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    if let Some(rc) = f.refuse(Kind::Sync) {
        return rc;
    }
    if let Some(image) = f.image()
        && let Err(rc) = locked(image).persist(&mut &f.real, || true)
    {
        return rc;
    }
    real!(f.real, xSync(flags), ffi::SQLITE_IOERR_FSYNC)
}

/// Not counted: an `fstat`, which fails only on a stopped machine.
unsafe extern "C" fn x_file_size(p: *mut ffi::sqlite3_file, out: *mut ffi::sqlite3_int64) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    if f.crashed() {
        return ffi::SQLITE_IOERR_FSTAT;
    }
    let Some(image) = f.image() else {
        return real!(f.real, xFileSize(out), ffi::SQLITE_IOERR_FSTAT);
    };
    let len = locked(image).len();
    // SAFETY: SQLite passes a place for the size.
    unsafe { out.write(len as ffi::sqlite3_int64) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_lock(p: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    if let Some(rc) = f.refuse(Kind::Lock) {
        return rc;
    }
    real!(f.real, xLock(level), ffi::SQLITE_IOERR_LOCK)
}

/// Not counted, and works on a stopped machine, so the process can let go.
unsafe extern "C" fn x_unlock(p: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    real!(f.real, xUnlock(level), ffi::SQLITE_IOERR_UNLOCK)
}

unsafe extern "C" fn x_check_reserved_lock(p: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    real!(
        f.real,
        xCheckReservedLock(out),
        ffi::SQLITE_IOERR_CHECKRESERVEDLOCK
    )
}

/// Forwarded, but for the hints that would size the real file behind its image's back
/// (accepted and ignored), and a size hint on a stopped machine (refused).
unsafe extern "C" fn x_file_control(
    p: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    let sizing = op == ffi::SQLITE_FCNTL_SIZE_HINT || op == ffi::SQLITE_FCNTL_CHUNK_SIZE;
    if sizing && f.image.is_some() {
        return ffi::SQLITE_OK;
    }
    if op == ffi::SQLITE_FCNTL_SIZE_HINT && f.crashed() {
        return ffi::SQLITE_IOERR_TRUNCATE;
    }
    real!(f.real, xFileControl(op, arg), ffi::SQLITE_NOTFOUND)
}

unsafe extern "C" fn x_sector_size(p: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    real!(f.real, xSectorSize(), 0)
}

unsafe extern "C" fn x_device_characteristics(p: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    real!(f.real, xDeviceCharacteristics(), 0)
}

// The shared-memory methods (version 2) are called only if our methods are of version 2
// or more, which they are only if the real file's are: they exist there too.

unsafe extern "C" fn x_shm_map(
    p: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    if f.crashed() {
        return ffi::SQLITE_IOERR_SHMMAP;
    }
    real!(
        f.real,
        xShmMap(region, size, extend, out),
        ffi::SQLITE_IOERR_SHMMAP
    )
}

/// On a stopped machine, releasing locks still works; taking them does not.
unsafe extern "C" fn x_shm_lock(
    p: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    if f.crashed() && flags & ffi::SQLITE_SHM_UNLOCK == 0 {
        return ffi::SQLITE_IOERR_SHMLOCK;
    }
    real!(
        f.real,
        xShmLock(offset, n, flags),
        ffi::SQLITE_IOERR_SHMLOCK
    )
}

unsafe extern "C" fn x_shm_barrier(p: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    real!(f.real, xShmBarrier(), ())
}

/// Unmapping works on a stopped machine (the process lets go), but deletes nothing.
unsafe extern "C" fn x_shm_unmap(p: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    let delete = if f.crashed() { 0 } else { delete };
    real!(f.real, xShmUnmap(delete), ffi::SQLITE_IOERR)
}

// The memory-map methods (version 3): the same reasoning as for shared memory.

/// A file with an image has no memory map (SQLite then reads through `xRead`): the
/// real file's pages are not what SQLite wrote.
unsafe extern "C" fn x_fetch(
    p: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    // SAFETY: SQLite passes a place for the pointer; null means "read instead".
    unsafe { out.write(ptr::null_mut()) };
    if f.image.is_some() || f.crashed() {
        return ffi::SQLITE_OK;
    }
    real!(f.real, xFetch(offset, amount, out), ffi::SQLITE_OK)
}

unsafe extern "C" fn x_unfetch(
    p: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls our methods with our open files.
    let f = unsafe { FaultFile::at(p) };
    real!(f.real, xUnfetch(offset, page), ffi::SQLITE_OK)
}
