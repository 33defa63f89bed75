//! The SQLite side of [`FaultFs`](super::FaultFs): the VFS and file method tables, each
//! method forwarding to SQLite's default VFS after counting the call, failing it, or
//! serving it from the file's page-cache image.
//!
//! Layout: SQLite allocates `szOsFile` bytes for each open file. Ours start with a
//! [`File`] (its first field the `sqlite3_file` SQLite sees), and the real VFS's file
//! follows at [`REAL_OFFSET`] in the same allocation.

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rusqlite::ffi;

use super::{Call, Image, State, locked, path_of};

/// Our VFS: SQLite's struct first, so a `*mut sqlite3_vfs` SQLite hands back is ours.
#[repr(C)]
struct Vfs {
    base: ffi::sqlite3_vfs,
    /// SQLite's default VFS, which does the I/O.
    real: *mut ffi::sqlite3_vfs,
    state: Arc<State>,
    /// Owns the name `base.zName` points at.
    _name: CString,
}

/// One open file of ours: SQLite's struct first (its methods are [`METHODS`]).
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// The real VFS's file, right after this struct in SQLite's allocation.
    real: *mut ffi::sqlite3_file,
    /// The state of the VFS that opened it (leaked with the VFS: it outlives the file).
    state: *const State,
    /// The page-cache image of a database, WAL or rollback journal; `None` for files
    /// that write through (temporary files, or all of them when not volatile).
    image: Option<Arc<Mutex<Image>>>,
}

/// Where the real file starts in our file's allocation (a multiple of the pointer
/// alignment `sqlite3_file` needs, as every `repr(C)` size of pointers is).
const REAL_OFFSET: usize = std::mem::size_of::<File>();

/// Registers a VFS named `name` over SQLite's default one, driven by `state`. The VFS
/// is leaked: SQLite keeps pointers to it for the life of the process.
pub(super) fn register(name: &str, state: Arc<State>) {
    let name = CString::new(name).expect("a VFS name has no NUL byte");
    // SAFETY: `sqlite3_vfs_find(NULL)` initializes SQLite and returns its default VFS,
    // which lives for the life of the process.
    let real = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    assert!(!real.is_null(), "SQLite has no default VFS");
    // SAFETY: `real` is a valid VFS (above).
    let (real_size, max_path) = unsafe { ((*real).szOsFile, (*real).mxPathname) };
    let size = c_int::try_from(REAL_OFFSET).expect("a small struct") + real_size;
    let vfs = Box::leak(Box::new(Vfs {
        base: ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: size,
            mxPathname: max_path,
            pNext: ptr::null_mut(),
            zName: name.as_ptr(),
            pAppData: ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: None,
            xDlError: None,
            xDlSym: None,
            xDlClose: None,
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        },
        real,
        state,
        _name: name,
    }));
    // SAFETY: the VFS is leaked, so it outlives every use SQLite makes of it; it is
    // registered as a non-default VFS, reached only by its name.
    let rc = unsafe { ffi::sqlite3_vfs_register(&mut vfs.base, 0) };
    assert_eq!(rc, ffi::SQLITE_OK, "SQLite refused the fault VFS");
}

/// Our VFS behind a pointer SQLite passes back.
///
/// # Safety
///
/// `p` must be the `base` of a [`Vfs`] (SQLite passes ours only to our methods).
unsafe fn vfs<'a>(p: *mut ffi::sqlite3_vfs) -> &'a Vfs {
    // SAFETY: per the contract, `p` points at the first field of a live `Vfs`.
    unsafe { &*p.cast::<Vfs>() }
}

/// Our file behind a pointer SQLite passes back.
///
/// # Safety
///
/// `p` must be a file [`x_open`] initialized and [`x_close`] has not closed.
unsafe fn file<'a>(p: *mut ffi::sqlite3_file) -> &'a File {
    // SAFETY: per the contract, `p` points at the first field of a live `File`.
    unsafe { &*p.cast::<File>() }
}

impl File {
    fn state(&self) -> &State {
        // SAFETY: the VFS (and with it its state) is leaked, so it outlives the file.
        unsafe { &*self.state }
    }

    /// The real file's methods.
    fn real(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: the real file was opened successfully (or this `File` would not
        // exist), so its methods pointer is valid until it is closed, which happens
        // only in `x_close`, after which SQLite never uses this file again.
        unsafe { &*(*self.real).pMethods }
    }
}

/// Calls a method of the real file (or fails with an I/O error if it has none).
macro_rules! real {
    ($f:expr, $method:ident, $($arg:expr),*) => {
        match $f.real().$method {
            // SAFETY: a method of the real file, called with its own file and the
            // arguments SQLite gave us for the same method.
            Some(m) => unsafe { m($f.real, $($arg),*) },
            None => ffi::SQLITE_IOERR,
        }
    };
}

/// Calls a method of the real VFS.
macro_rules! real_vfs {
    ($v:expr, $method:ident, $($arg:expr),*) => {
        // SAFETY: `real` is SQLite's default VFS, which lives for the process.
        match unsafe { (*$v.real).$method } {
            // SAFETY: a method of SQLite's default VFS, called with that VFS and the
            // arguments SQLite gave us for the same method.
            Some(m) => unsafe { m($v.real, $($arg),*) },
            None => ffi::SQLITE_ERROR,
        }
    };
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 2: shared memory, no memory-mapped pages (every read goes through us).
    iVersion: 2,
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
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_open(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    p_file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls our xOpen with our VFS.
    let v = unsafe { vfs(p_vfs) };
    // SAFETY: `p_file` is `szOsFile` writable bytes. Until the open succeeds, SQLite
    // must see no methods, so it will not call xClose on a file we never opened.
    unsafe { ptr::addr_of_mut!((*p_file).pMethods).write(ptr::null()) };
    if let Some(rc) = v.state.tick(Call::Open) {
        return rc;
    }
    // SAFETY: the real file's bytes follow ours in the same allocation of `szOsFile`.
    let real = unsafe { p_file.cast::<u8>().add(REAL_OFFSET) }.cast::<ffi::sqlite3_file>();
    let rc = real_vfs!(v, xOpen, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let kinds = ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_WAL | ffi::SQLITE_OPEN_MAIN_JOURNAL;
    let mut f = File {
        base: ffi::sqlite3_file { pMethods: &METHODS },
        real,
        state: Arc::as_ptr(&v.state),
        image: None,
    };
    if v.state.volatile.load(Ordering::SeqCst) && flags & kinds != 0 {
        f.image = path_of(name).map(|path| image_for(&v.state, path, &f));
    }
    // SAFETY: `p_file` is ours to initialize (see above); SQLite now owns a `File`.
    unsafe { p_file.cast::<File>().write(f) };
    v.state.open_files.fetch_add(1, Ordering::SeqCst);
    ffi::SQLITE_OK
}

/// The image of the file at `path`: the one already held for it, or one loaded from
/// the real file `f` (just opened).
fn image_for(state: &State, path: std::path::PathBuf, f: &File) -> Arc<Mutex<Image>> {
    let mut images = locked(&state.images);
    images
        .entry(path)
        .or_insert_with(|| {
            let mut size: ffi::sqlite3_int64 = 0;
            let mut data = Vec::new();
            if real!(f, xFileSize, &mut size) == ffi::SQLITE_OK && size > 0 {
                data = vec![0u8; usize::try_from(size).unwrap_or(0)];
                for (i, chunk) in data.chunks_mut(CHUNK).enumerate() {
                    let len = c_int::try_from(chunk.len()).unwrap_or(c_int::MAX);
                    let at = (i * CHUNK) as i64;
                    real!(f, xRead, chunk.as_mut_ptr().cast::<c_void>(), len, at);
                }
            }
            Arc::new(Mutex::new(Image {
                data,
                ..Image::default()
            }))
        })
        .clone()
}

unsafe extern "C" fn x_close(p_file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes only files we opened, once.
    let f = unsafe { file(p_file) };
    let rc = real!(f, xClose,);
    f.state().open_files.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: the file is closed; drop what `x_open` wrote (SQLite frees the memory).
    unsafe { ptr::drop_in_place(p_file.cast::<File>()) };
    rc
}

unsafe extern "C" fn x_read(
    p_file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if let Some(rc) = f.state().tick(Call::Read) {
        return rc;
    }
    let Some(image) = &f.image else {
        return real!(f, xRead, buf, amount, offset);
    };
    let image = locked(image);
    let (start, want) = (offset as usize, amount as usize);
    // SAFETY: SQLite gives a buffer of `amount` writable bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), want) };
    let have = image.data.len().saturating_sub(start).min(want);
    if have > 0 {
        out[..have].copy_from_slice(&image.data[start..start + have]);
    }
    if have < want {
        // SQLite requires the rest zero-filled on a short read.
        out[have..].fill(0);
        return ffi::SQLITE_IOERR_SHORT_READ;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_write(
    p_file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    // SAFETY: SQLite gives `amount` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), amount as usize) };
    let failure = f.state().tick(Call::Write);
    let bytes = match failure {
        Some(rc) if f.state().short_write(rc) => &bytes[..short(bytes.len())],
        Some(rc) => return rc,
        None => bytes,
    };
    let rc = match &f.image {
        Some(image) => {
            locked(image).write(offset as u64, bytes);
            ffi::SQLITE_OK
        }
        None => {
            let len = c_int::try_from(bytes.len()).unwrap_or(c_int::MAX);
            real!(f, xWrite, bytes.as_ptr().cast::<c_void>(), len, offset)
        }
    };
    failure.unwrap_or(rc)
}

/// How much of a write of `len` bytes a short write writes: the first half, in whole
/// sectors where there are two or more, and always less than all.
fn short(len: usize) -> usize {
    let sector = super::SECTOR as usize;
    if len >= 2 * sector {
        (len / 2) / sector * sector
    } else {
        len / 2
    }
}

unsafe extern "C" fn x_truncate(p_file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if let Some(rc) = f.state().tick(Call::Truncate) {
        return rc;
    }
    match &f.image {
        Some(image) => {
            locked(image).truncate(size as u64);
            ffi::SQLITE_OK
        }
        None => real!(f, xTruncate, size),
    }
}

unsafe extern "C" fn x_sync(p_file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if let Some(rc) = f.state().tick(Call::Sync) {
        return rc;
    }
    if let Some(image) = &f.image {
        let rc = write_back(f, &mut locked(image));
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    real!(f, xSync, flags)
}

/// The most one call to the real VFS reads or writes: SQLite's unix VFS handles at
/// most 128 KiB per call (it never asks for more than a page itself).
const CHUNK: usize = 64 * 1024;

/// Writes what the image holds unsynced to the real file (runs of dirty sectors, then
/// its size), as a sync makes the page cache reach the disk. A sector stays dirty
/// until its write succeeded.
fn write_back(f: &File, image: &mut Image) -> c_int {
    let per_run = CHUNK as u64 / super::SECTOR;
    while let Some(&first) = image.dirty.first() {
        let mut last = first;
        while last - first + 1 < per_run && image.dirty.contains(&(last + 1)) {
            last += 1;
        }
        let (start, _) = image.sector(first);
        let end = image.sector(last).0 as usize + image.sector(last).1.len();
        let run = &image.data[start as usize..end];
        let len = c_int::try_from(run.len()).unwrap_or(c_int::MAX);
        let rc = real!(f, xWrite, run.as_ptr().cast::<c_void>(), len, start as i64);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        image.dirty.retain(|s| *s < first || *s > last);
    }
    if std::mem::take(&mut image.resized) {
        let len = image.data.len() as i64;
        return real!(f, xTruncate, len);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    p_file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if f.state().crashed.load(Ordering::SeqCst) {
        return ffi::SQLITE_IOERR_FSTAT;
    }
    match &f.image {
        Some(image) => {
            // SAFETY: SQLite gives a place for the size.
            unsafe { size.write(locked(image).data.len() as i64) };
            ffi::SQLITE_OK
        }
        None => real!(f, xFileSize, size),
    }
}

unsafe extern "C" fn x_lock(p_file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if let Some(rc) = f.state().tick(Call::Lock) {
        return rc;
    }
    real!(f, xLock, level)
}

unsafe extern "C" fn x_unlock(p_file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: a file of ours. Unlocking always works, so a dead process lets go.
    let f = unsafe { file(p_file) };
    real!(f, xUnlock, level)
}

unsafe extern "C" fn x_check_reserved_lock(
    p_file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    real!(f, xCheckReservedLock, out)
}

unsafe extern "C" fn x_file_control(
    p_file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if op == ffi::SQLITE_FCNTL_SIZE_HINT && f.image.is_some() {
        // The real VFS would grow the real file behind the image's back.
        return ffi::SQLITE_OK;
    }
    real!(f, xFileControl, op, arg)
}

unsafe extern "C" fn x_sector_size(p_file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    real!(f, xSectorSize,)
}

unsafe extern "C" fn x_device_characteristics(p_file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    real!(f, xDeviceCharacteristics,)
}

unsafe extern "C" fn x_shm_map(
    p_file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if f.state().crashed.load(Ordering::SeqCst) {
        return ffi::SQLITE_IOERR_SHMMAP;
    }
    real!(f, xShmMap, region, size, extend, out)
}

unsafe extern "C" fn x_shm_lock(
    p_file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if f.state().crashed.load(Ordering::SeqCst) && flags & ffi::SQLITE_SHM_LOCK != 0 {
        return ffi::SQLITE_IOERR_SHMLOCK;
    }
    real!(f, xShmLock, offset, n, flags)
}

unsafe extern "C" fn x_shm_barrier(p_file: *mut ffi::sqlite3_file) {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    if let Some(m) = f.real().xShmBarrier {
        // SAFETY: the real file's own method, with the real file.
        unsafe { m(f.real) }
    }
}

unsafe extern "C" fn x_shm_unmap(p_file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: a file of ours.
    let f = unsafe { file(p_file) };
    // A stopped machine deletes nothing.
    let delete = if f.state().crashed.load(Ordering::SeqCst) {
        0
    } else {
        delete
    };
    real!(f, xShmUnmap, delete)
}

unsafe extern "C" fn x_delete(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    if v.state.crashed.load(Ordering::SeqCst) {
        return ffi::SQLITE_IOERR_DELETE;
    }
    let rc = real_vfs!(v, xDelete, name, sync_dir);
    if rc == ffi::SQLITE_OK
        && let Some(path) = path_of(name)
    {
        locked(&v.state.images).remove(&path);
    }
    rc
}

unsafe extern "C" fn x_access(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xAccess, name, flags, out)
}

unsafe extern "C" fn x_full_pathname(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xFullPathname, name, n, out)
}

unsafe extern "C" fn x_randomness(
    p_vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xRandomness, n, out)
}

unsafe extern "C" fn x_sleep(p_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xSleep, micros)
}

unsafe extern "C" fn x_current_time(p_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xCurrentTime, out)
}

unsafe extern "C" fn x_get_last_error(
    p_vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xGetLastError, n, out)
}

unsafe extern "C" fn x_current_time_int64(
    p_vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xCurrentTimeInt64, out)
}
