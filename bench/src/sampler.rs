//! Samples the process's resident memory and open file descriptors from `/proc` while a
//! workload runs, keeping the peaks. Linux only; elsewhere the peaks read as zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    rss_kib: Arc<AtomicU64>,
    fds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// The peaks seen while a [`Sampler`] ran.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peaks {
    pub(crate) rss_mib: f64,
    pub(crate) fds: u64,
}

/// The process's resident memory now, in KiB (zero where `/proc` is missing).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

impl Sampler {
    pub(crate) fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let rss = Arc::new(AtomicU64::new(rss_kib()));
        let fds = Arc::new(AtomicU64::new(open_fds()));
        let thread = {
            let (stop, rss, fds) = (stop.clone(), rss.clone(), fds.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    rss.fetch_max(rss_kib(), Ordering::Relaxed);
                    fds.fetch_max(open_fds(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Sampler {
            stop,
            rss_kib: rss,
            fds,
            thread: Some(thread),
        }
    }

    pub(crate) fn stop(mut self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.rss_kib.fetch_max(rss_kib(), Ordering::Relaxed);
        Peaks {
            rss_mib: self.rss_kib.load(Ordering::Relaxed) as f64 / 1024.0,
            fds: self.fds.load(Ordering::Relaxed),
        }
    }
}
