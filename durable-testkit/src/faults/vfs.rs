//! The fault VFS itself: its registration with SQLite, and the `sqlite3_vfs` methods.
//! `xOpen` counts and wraps each file ([`FaultFile`]); `xDelete` and `xAccess` refuse
//! to work on a stopped machine; the rest forward to the real VFS.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;

use rusqlite::ffi;

use super::Shared;
use super::control::Kind;
use super::file::{FaultFile, REAL_OFFSET, Real};

/// Our VFS: SQLite's struct first, so that the `*mut sqlite3_vfs` SQLite passes to our
/// methods is a pointer to this.
#[repr(C)]
struct Vfs {
    base: ffi::sqlite3_vfs,
    /// The wrapped VFS, SQLite's default, which does the I/O. A raw pointer, not a
    /// reference: SQLite writes its `pNext` whenever a VFS is registered.
    real: *mut ffi::sqlite3_vfs,
    shared: Arc<Shared>,
    /// Owns the name `base.zName` points at.
    _name: CString,
}

/// Registers a VFS named `name` (not as the default) over SQLite's default VFS, driven
/// by `shared`. It is leaked: SQLite keeps a pointer to it for the life of the process
/// (a VFS could be unregistered only once no connection uses it, which a test cannot
/// easily know; a few hundred bytes per `FaultFs` is the price).
///
/// # Panics
///
/// If SQLite has no default VFS, or refuses the registration, neither of which happens
/// on the systems SQLite supports.
pub(super) fn register(name: &str, shared: Arc<Shared>) {
    let name = CString::new(name).expect("a VFS name without NUL bytes");
    // SAFETY: `sqlite3_vfs_find(NULL)` initializes SQLite if needed and returns the
    // default VFS, which SQLite never frees (nobody unregisters "unix").
    let real = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    assert!(!real.is_null(), "SQLite has a default VFS");
    // SAFETY: `real` is SQLite's default VFS, alive for the process; these fields are
    // set when it is registered and never change.
    let (os_file, mx_pathname) = unsafe { ((*real).szOsFile, (*real).mxPathname) };
    let sz_os_file = REAL_OFFSET as c_int + os_file;
    let vfs = Box::leak(Box::new(Vfs {
        base: ffi::sqlite3_vfs {
            // Version 2: up to xCurrentTimeInt64; no system-call overrides.
            iVersion: 2,
            szOsFile: sz_os_file,
            mxPathname: mx_pathname,
            pNext: ptr::null_mut(),
            zName: name.as_ptr(),
            pAppData: ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
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
        shared,
        _name: name,
    }));
    // SAFETY: the VFS is leaked, so it outlives every use SQLite makes of it, and it is
    // fully initialized; registered as not the default, it is reached only by name.
    let rc = unsafe { ffi::sqlite3_vfs_register(&mut vfs.base, 0) };
    assert_eq!(
        rc,
        ffi::SQLITE_OK,
        "SQLite refused to register the fault VFS"
    );
}

/// Our VFS behind the pointer SQLite passes to its methods.
///
/// # Safety
///
/// `p` is the `base` of a [`Vfs`]: SQLite passes ours only to our methods.
unsafe fn vfs<'a>(p: *mut ffi::sqlite3_vfs) -> &'a Vfs {
    // SAFETY: per the contract, `p` points at the first field of a leaked `Vfs`.
    unsafe { &*p.cast::<Vfs>() }
}

/// Calls a method of the real VFS with the arguments SQLite passed us, or returns
/// `$none` if it has none.
macro_rules! real_vfs {
    ($v:expr, $method:ident($($arg:expr),*), $none:expr) => {
        // SAFETY: the real VFS lives for the process; its methods never change.
        match unsafe { (*$v.real).$method } {
            // SAFETY: the real VFS's own method, called on the real VFS with the
            // arguments SQLite gave us for the same method.
            Some(m) => unsafe { m($v.real, $($arg),*) },
            None => $none,
        }
    };
}

/// The path SQLite named a file by (`None` for a temporary file without a name).
fn path_of(name: *const c_char) -> Option<PathBuf> {
    if name.is_null() {
        return None;
    }
    // SAFETY: SQLite's file names are NUL-terminated and outlive the call.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
    #[cfg(unix)]
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes));
    #[cfg(not(unix))]
    let path = PathBuf::from(String::from_utf8_lossy(bytes).into_owned());
    Some(path)
}

/// The files whose writes the page cache holds: a database, its WAL and its rollback
/// journal. Temporary files, sub-journals and super-journals write through.
const CACHED: c_int =
    ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_WAL | ffi::SQLITE_OPEN_MAIN_JOURNAL;

unsafe extern "C" fn x_open(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    p_file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    // SAFETY: `p_file` is `szOsFile` writable bytes. SQLite requires its methods to be
    // null unless the open succeeds (it then never closes it).
    unsafe { ptr::addr_of_mut!((*p_file).pMethods).write(ptr::null()) };
    if let Some(rc) = v.shared.tick(Kind::Open).refusal(Kind::Open) {
        return rc;
    }
    let real = Real::of(p_file);
    let rc = real_vfs!(
        v,
        xOpen(name, real.as_ptr(), flags, out_flags),
        ffi::SQLITE_CANTOPEN
    );
    if rc != ffi::SQLITE_OK {
        if real.is_open() {
            real.close();
        }
        return rc;
    }
    let cached = flags & CACHED != 0 && v.shared.is_volatile();
    let image = match path_of(name).filter(|_| cached) {
        Some(path) => match v.shared.cache.attach(&path, || real.read_all()) {
            Ok(image) => Some((path, image)),
            Err(rc) => {
                real.close();
                return rc;
            }
        },
        None => None,
    };
    // SAFETY: `p_file` is SQLite's allocation for a file of ours, and its real file is
    // open (above).
    unsafe { FaultFile::install(p_file, v.shared.clone(), image) };
    ffi::SQLITE_OK
}

/// Deleting a file also forgets its image: its unsynced changes have nowhere to go. A
/// deletion is durable at once (directory entries are not modelled as volatile).
unsafe extern "C" fn x_delete(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    if v.shared.is_crashed() {
        return ffi::SQLITE_IOERR_DELETE;
    }
    let rc = real_vfs!(v, xDelete(name, sync_dir), ffi::SQLITE_IOERR_DELETE);
    if (rc == ffi::SQLITE_OK || rc == ffi::SQLITE_IOERR_DELETE_NOENT)
        && let Some(path) = path_of(name)
    {
        v.shared.cache.forget(&path);
    }
    rc
}

unsafe extern "C" fn x_access(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    if v.shared.is_crashed() {
        return ffi::SQLITE_IOERR_ACCESS;
    }
    real_vfs!(v, xAccess(name, flags, out), ffi::SQLITE_IOERR_ACCESS)
}

// The rest forward to the real VFS: they touch no file's contents.

unsafe extern "C" fn x_full_pathname(
    p_vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xFullPathname(name, n, out), ffi::SQLITE_CANTOPEN)
}

unsafe extern "C" fn x_dl_open(p_vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xDlOpen(name), ptr::null_mut())
}

unsafe extern "C" fn x_dl_error(p_vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xDlError(n, out), ())
}

type DlSym = Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)>;

unsafe extern "C" fn x_dl_sym(
    p_vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> DlSym {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xDlSym(handle, symbol), None)
}

unsafe extern "C" fn x_dl_close(p_vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xDlClose(handle), ())
}

unsafe extern "C" fn x_randomness(
    p_vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xRandomness(n, out), 0)
}

unsafe extern "C" fn x_sleep(p_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xSleep(micros), 0)
}

unsafe extern "C" fn x_current_time(p_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xCurrentTime(out), ffi::SQLITE_ERROR)
}

unsafe extern "C" fn x_get_last_error(
    p_vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xGetLastError(n, out), 0)
}

unsafe extern "C" fn x_current_time_int64(
    p_vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls our methods with our VFS.
    let v = unsafe { vfs(p_vfs) };
    real_vfs!(v, xCurrentTimeInt64(out), ffi::SQLITE_ERROR)
}
