//! CPU time used by this process (every thread, including threads that have exited),
//! from `getrusage(RUSAGE_SELF)`.

/// User plus system CPU seconds this process has used so far; zero where unsupported.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the `rusage` it is given and reads nothing else;
    // `RUSAGE_SELF` is always a valid target.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: `getrusage` returned 0, so it initialized the struct.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(not(unix))]
pub(crate) fn cpu_seconds() -> f64 {
    0.0
}
