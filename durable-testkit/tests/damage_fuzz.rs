//! Whole-file fuzzing of real journals: damage a journal's files (byte flips, damaged
//! b-tree pages, truncations, damaged or stale `-wal` frames, a deleted, stale or
//! garbage `-shm`) and open it, as a property test over thousands of damaged copies.
//!
//! Every damaged copy must end in a correct recovery or a clear error: never a panic,
//! a hang (20 s), an allocation beyond a bound set by the file's size, or a wrong
//! result. A workflow either finishes with the value of an undamaged run, or its
//! handle, the open, or the recovery report says what is damaged.
//!
//! Damage that SQLite cannot see is counted, not asserted: a lost or older `-wal` rolls
//! the journal back to an earlier commit, so workflows recorded only there are gone,
//! and a file cut to nothing is a new journal. Damage to the database file alone that
//! loses or hides a workflow must be reported by `Runtime::check`, and damage to the
//! `-shm` alone must lose nothing. The report line prints the counts.
//!
//! The default run draws 5,000 cases with a fresh seed (printed). The soak:
//!
//! ```text
//! DURABLE_FUZZ_CASES=200000 cargo test -p durable-testkit --release --test damage_fuzz -- --nocapture
//! ```
//!
//! A failing case is replayed with `DURABLE_FUZZ_SEED=<seed>` (printed with the
//! failure, with the shrunk damage).

// The workspace denies `unsafe`: the counting allocator below is a `GlobalAlloc`,
// which only `unsafe` can implement. It forwards to the system allocator unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use durable_runtime::{Error, Runtime, StoreErrorKind, recv, set_event, step, workflow};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

// ---------------------------------------------------------------------------------
// Allocation accounting: the live and peak heap of the whole process. Cases run one
// at a time, so the peak above a case's starting point is that case's.

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let live = if new_size >= layout.size() {
                LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size()
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed)
                    - (layout.size() - new_size)
            };
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most a case may allocate above where it started: SQLite's page cache and the
/// runtime's fixed costs, plus a few times the files' size.
fn allocation_bound(file_bytes: usize) -> usize {
    16 * 1024 * 1024 + 4 * file_bytes
}

// ---------------------------------------------------------------------------------
// The workload: finished workflows (sequential and concurrent steps, a value that
// spills to overflow pages) and parked ones (a step, an event, a `recv`).

const FINISHED: u32 = 12;
const PARKED: u32 = 6;

fn small(i: u32, k: u32) -> String {
    format!("s{i}.{k}:{}", u64::from(i) * 7919 + u64::from(k) * 104_729)
}

/// A value of a few KiB, longer than a page for most `i`.
fn big(i: u32) -> String {
    (0..3000 + i * 400)
        .map(|n| char::from(b'a' + ((n * 31 + i * 7) % 26) as u8))
        .collect()
}

fn digest(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[step]
async fn piece(i: u32, k: u32) -> String {
    small(i, k)
}

#[step]
async fn blob(i: u32) -> String {
    big(i)
}

#[workflow]
async fn finished(i: u32) -> String {
    let a = piece(i, 0).await;
    let (b, c) = futures::join!(piece(i, 1), piece(i, 2));
    let d = blob(i).await;
    format!("{a}|{b}|{c}|{:x}", digest(&d))
}

fn finished_result(i: u32) -> String {
    format!(
        "{}|{}|{}|{:x}",
        small(i, 0),
        small(i, 1),
        small(i, 2),
        digest(&big(i))
    )
}

#[workflow]
async fn parked(i: u32) -> Result<String, String> {
    let a = piece(i, 10).await;
    set_event("stage", &format!("parked-{i}"))
        .await
        .map_err(|e| e.to_string())?;
    let go: Option<u32> = recv("go", None).await.map_err(|e| e.to_string())?;
    let b = piece(i, go.unwrap_or(0)).await;
    Ok(format!("{a}|{b}"))
}

/// What `parked(i)` returns once it receives `GO`.
fn parked_result(i: u32) -> String {
    format!("{}|{}", small(i, 10), small(i, GO))
}

const GO: u32 = 77;

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

// ---------------------------------------------------------------------------------
// The undamaged journals the cases start from.

/// A journal's files as bytes: the database, and its `-wal` and `-shm` if present.
#[derive(Clone, Debug, Default)]
struct Files {
    db: Vec<u8>,
    wal: Option<Vec<u8>>,
    shm: Option<Vec<u8>>,
}

impl Files {
    fn read(path: &Path) -> Files {
        let side = |suffix: &str| std::fs::read(sidecar(path, suffix)).ok();
        Files {
            db: std::fs::read(path).expect("read the journal"),
            wal: side("-wal"),
            shm: side("-shm"),
        }
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.db).expect("write the journal");
        for (suffix, bytes) in [("-wal", &self.wal), ("-shm", &self.shm)] {
            if let Some(bytes) = bytes {
                std::fs::write(sidecar(path, suffix), bytes).expect("write a side file");
            }
        }
    }

    fn len(&self) -> usize {
        self.db.len()
            + self.wal.as_ref().map_or(0, Vec::len)
            + self.shm.as_ref().map_or(0, Vec::len)
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The two starting points, and older side files for the "stale" damages.
struct Bases {
    /// Closed cleanly: the runtime checkpointed what it could into the database.
    closed: Files,
    /// A crash image taken while the runtime ran, idle: recent commits only in `-wal`.
    live: Files,
    /// The `-wal` and `-shm` of the live journal earlier in its history.
    early: Files,
}

fn bases() -> &'static Bases {
    static BASES: OnceLock<Bases> = OnceLock::new();
    BASES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        tokio().block_on(async {
            let rt = Runtime::open(&path).await.expect("open");
            for i in 0..FINISHED / 2 {
                let h = rt
                    .start_with_id(format!("f-{i}"), finished(i))
                    .await
                    .expect("start");
                assert_eq!(h.result().await.expect("result"), finished_result(i));
            }
            let early = Files::read(&path);
            for i in FINISHED / 2..FINISHED {
                let h = rt
                    .start_with_id(format!("f-{i}"), finished(i))
                    .await
                    .expect("start");
                assert_eq!(h.result().await.expect("result"), finished_result(i));
            }
            for i in 0..PARKED {
                rt.start_with_id(format!("p-{i}"), parked(i))
                    .await
                    .expect("start");
            }
            for i in 0..PARKED {
                let id = format!("p-{i}");
                let stage: Option<String> = rt
                    .get_event(&id, "stage", Duration::from_secs(10))
                    .await
                    .expect("event");
                assert_eq!(stage, Some(format!("parked-{i}")));
            }
            let live = Files::read(&path);
            rt.close().await.expect("close");
            let closed = Files::read(&path);
            assert!(
                live.wal.as_ref().is_some_and(|w| w.len() > 32),
                "the live image has a WAL"
            );
            Bases {
                closed,
                live,
                early,
            }
        })
    })
}

// ---------------------------------------------------------------------------------
// Damage.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Db,
    Wal,
}

#[derive(Clone, Debug)]
enum Damage {
    /// XOR `mask` into the byte at `at` (modulo the file's length).
    Flip { target: Target, at: u32, mask: u8 },
    /// XOR into the first 100 bytes of a page (its b-tree header and cell pointers).
    PageHead { page: u32, at: u8, mask: u8 },
    /// Zero a whole page.
    ZeroPage { page: u32 },
    /// Cut the file at `at` (modulo its length), or at a page boundary.
    Truncate {
        target: Target,
        at: u32,
        page_aligned: bool,
    },
    /// XOR into the WAL header (32 bytes) or a frame header (24 bytes).
    WalHeader {
        frame: Option<u32>,
        at: u8,
        mask: u8,
    },
    /// Lose the `-wal`.
    DeleteWal,
    /// Replace the `-wal` by the one from earlier in the journal's history.
    StaleWal,
    /// Lose the `-shm`.
    DeleteShm,
    /// Replace the `-shm` by an older one.
    StaleShm,
    /// Fill the `-shm` with bytes drawn from `seed`.
    GarbageShm { seed: u64 },
}

impl Damage {
    /// Whether this damage changes the `-shm` alone, which SQLite rebuilds.
    fn only_the_shm(&self) -> bool {
        matches!(
            self,
            Damage::DeleteShm | Damage::StaleShm | Damage::GarbageShm { .. }
        )
    }

    /// Whether this damage changes the `-wal` or `-shm`: SQLite then reads the database
    /// as of an earlier commit, or another time's pages, and nothing can tell.
    fn touches_the_wal(&self) -> bool {
        match self {
            Damage::Flip { target, .. } | Damage::Truncate { target, .. } => *target == Target::Wal,
            Damage::PageHead { .. } | Damage::ZeroPage { .. } => false,
            Damage::WalHeader { .. }
            | Damage::DeleteWal
            | Damage::StaleWal
            | Damage::DeleteShm
            | Damage::StaleShm
            | Damage::GarbageShm { .. } => true,
        }
    }
}

const PAGE: usize = 4096;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

fn damage() -> impl Strategy<Value = Damage> {
    let target = prop_oneof![3 => Just(Target::Db), 2 => Just(Target::Wal)];
    let mask = 1u8..=255;
    prop_oneof![
        6 => (target.clone(), any::<u32>(), mask.clone())
            .prop_map(|(target, at, mask)| Damage::Flip { target, at, mask }),
        4 => (any::<u32>(), 0u8..100, mask.clone())
            .prop_map(|(page, at, mask)| Damage::PageHead { page, at, mask }),
        1 => any::<u32>().prop_map(|page| Damage::ZeroPage { page }),
        2 => (target, any::<u32>(), any::<bool>())
            .prop_map(|(target, at, page_aligned)| Damage::Truncate { target, at, page_aligned }),
        2 => (proptest::option::of(any::<u32>()), 0u8..32, mask)
            .prop_map(|(frame, at, mask)| Damage::WalHeader { frame, at, mask }),
        1 => Just(Damage::DeleteWal),
        1 => Just(Damage::StaleWal),
        1 => Just(Damage::DeleteShm),
        1 => Just(Damage::StaleShm),
        1 => any::<u64>().prop_map(|seed| Damage::GarbageShm { seed }),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Base {
    Closed,
    Live,
}

fn case() -> impl Strategy<Value = (Base, Vec<Damage>)> {
    (
        prop_oneof![Just(Base::Closed), Just(Base::Live)],
        proptest::collection::vec(damage(), 1..=3),
    )
}

fn apply(files: &mut Files, damage: &Damage, bases: &Bases) {
    fn wal_or_db(files: &mut Files, target: Target) -> Option<&mut Vec<u8>> {
        match target {
            Target::Db => Some(&mut files.db),
            Target::Wal => files.wal.as_mut(),
        }
    }
    match *damage {
        Damage::Flip { target, at, mask } => {
            if let Some(bytes) = wal_or_db(files, target).filter(|b| !b.is_empty()) {
                let at = at as usize % bytes.len();
                bytes[at] ^= mask;
            }
        }
        Damage::PageHead { page, at, mask } => {
            let pages = files.db.len() / PAGE;
            if pages > 0 {
                // Page 1 starts with the 100-byte file header: its b-tree header follows.
                let page = page as usize % pages;
                let base = if page == 0 { 100 } else { 0 };
                files.db[page * PAGE + base + usize::from(at)] ^= mask;
            }
        }
        Damage::ZeroPage { page } => {
            let pages = files.db.len() / PAGE;
            if pages > 0 {
                let start = (page as usize % pages) * PAGE;
                files.db[start..start + PAGE].fill(0);
            }
        }
        Damage::Truncate {
            target,
            at,
            page_aligned,
        } => {
            if let Some(bytes) = wal_or_db(files, target).filter(|b| !b.is_empty()) {
                let mut at = at as usize % bytes.len();
                if page_aligned {
                    at -= at % PAGE;
                }
                bytes.truncate(at);
            }
        }
        Damage::WalHeader { frame, at, mask } => {
            if let Some(wal) = files.wal.as_mut().filter(|w| w.len() >= WAL_HEADER) {
                let frames = (wal.len() - WAL_HEADER) / (FRAME_HEADER + PAGE);
                let at = match frame {
                    Some(f) if frames > 0 => {
                        let f = f as usize % frames;
                        WAL_HEADER + f * (FRAME_HEADER + PAGE) + usize::from(at) % FRAME_HEADER
                    }
                    _ => usize::from(at),
                };
                wal[at] ^= mask;
            }
        }
        Damage::DeleteWal => files.wal = None,
        Damage::StaleWal => files.wal.clone_from(&bases.early.wal),
        Damage::DeleteShm => files.shm = None,
        Damage::StaleShm => files.shm.clone_from(&bases.early.shm),
        Damage::GarbageShm { seed } => {
            let len = files.shm.as_ref().map_or(32 * 1024, Vec::len);
            let mut x = seed | 1;
            files.shm = Some(
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect(),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// One case: open the damaged copy, answer the parked workflows, read every result.

/// What one damaged journal did.
#[derive(Debug, Default)]
struct Outcome {
    /// The open failed with this error.
    refused: Option<String>,
    /// Results that differ from an undamaged run: the failure this test exists for.
    wrong: Vec<String>,
    /// Workflows whose handle reported an error (damage named).
    reported: usize,
    /// Workflows that finished with the right result.
    correct: usize,
    /// Workflows gone from the journal without a word (`NotFound`).
    lost: Vec<String>,
    /// Pending workflows that were neither resumed nor reported at open.
    hidden: Vec<String>,
    /// Workflows resumed that the base journal never had.
    invented: Vec<String>,
    /// What `Runtime::check` reported.
    check_findings: usize,
}

impl Outcome {
    fn silent(&self) -> bool {
        !self.lost.is_empty() || !self.hidden.is_empty() || !self.invented.is_empty()
    }
}

/// An error must say which journal and what: a path, a workflow, or what is damaged.
/// A damaged file is never passed off as an I/O failure (SQLite's words alone).
fn clear(e: &Error, path: &Path) -> Result<(), String> {
    let text = e.to_string();
    if let Error::Store(store) = e
        && store.kind() == StoreErrorKind::Io
    {
        return Err(format!("damage reported as an I/O error: {text}"));
    }
    let names_journal = text.contains(&*path.to_string_lossy());
    if !names_journal && !text.contains("workflow") {
        return Err(format!(
            "the error names neither the journal nor a workflow: {text}"
        ));
    }
    Ok(())
}

/// Whether `text` names workflow `id` (not one whose id merely starts with it).
fn names(text: &str, id: &str) -> bool {
    let needle = format!("workflow {id}");
    text.match_indices(&needle).any(|(at, _)| {
        text[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'))
    })
}

/// `what` must finish within [`STAGE`].
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STAGE, f)
        .await
        .map_err(|_| format!("hung for {STAGE:?} at: {what}"))
}

/// How long one call of a case may take; the whole case gets [`TIMEOUT`].
const STAGE: Duration = Duration::from_secs(8);

async fn run_case(path: &Path) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let rt = match within("open", Runtime::open(path)).await? {
        Ok(rt) => rt,
        Err(e) => {
            clear(&e, path)?;
            out.refused = Some(e.to_string());
            return Ok(out);
        }
    };
    let known = |id: &str| {
        let n = |prefix: &str| id.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok());
        n("f-").is_some_and(|n| n < FINISHED) || n("p-").is_some_and(|n| n < PARKED)
    };
    out.invented = rt
        .recovered()
        .iter()
        .filter(|id| !known(id))
        .cloned()
        .collect();
    for e in rt.unrecoverable() {
        clear(e, path)?;
    }
    let unrecoverable: Vec<String> = rt.unrecoverable().iter().map(Error::to_string).collect();
    let reported_at_open = |id: &str| unrecoverable.iter().any(|e| names(e, id));

    // A send to a damaged journal may fail with an error that names it; its workflow
    // then waits on for a message that was never recorded, so it is given a moment to
    // show a result (which must be right), and is not waited for beyond it.
    let mut unsent = Vec::new();
    for i in 0..PARKED {
        let id = format!("p-{i}");
        if let Err(e) = within(&format!("send to {id}"), rt.send(&id, "go", &GO)).await? {
            clear(&e, path)?;
            unsent.push(id);
        }
    }
    let ids = (0..FINISHED)
        .map(|i| (format!("f-{i}"), finished_result(i)))
        .chain((0..PARKED).map(|i| (format!("p-{i}"), parked_result(i))));
    for (id, expected) in ids {
        let result = async {
            if id.starts_with("p-") {
                let h = rt.handle::<Result<String, String>>(&id).await?;
                h.result()
                    .await
                    .map(|r| r.unwrap_or_else(|e| format!("Err({e})")))
            } else {
                rt.handle::<String>(&id).await?.result().await
            }
        };
        let got: Result<String, Error> = if unsent.contains(&id) {
            match tokio::time::timeout(Duration::from_millis(300), result).await {
                Ok(got) => got,
                Err(_) => {
                    out.reported += 1;
                    continue;
                }
            }
        } else {
            within(&format!("the result of {id}"), result).await?
        };
        match got {
            Ok(v) if v == expected => out.correct += 1,
            Ok(v) => out
                .wrong
                .push(format!("{id}: got {v:?}, expected {expected:?}")),
            Err(Error::NotFound { .. }) => out.lost.push(id),
            Err(Error::Stopped { .. }) if !reported_at_open(&id) => out.hidden.push(id),
            Err(e) => {
                clear(&e, path)?;
                out.reported += 1;
            }
        }
    }
    match within("check", rt.check()).await? {
        Ok(findings) => out.check_findings = findings.len(),
        // Damage is what `check` reports, not a reason for it to fail.
        Err(e) => return Err(format!("check() failed instead of reporting: {e}")),
    }
    // Closing may fail on a damaged journal; it must not hang or panic.
    let _ = within("close", rt.close()).await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------
// The harness: a timeout, panics from any thread, allocations, and the tallies.

const TIMEOUT: Duration = Duration::from_secs(20);

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_panic_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(info.to_string());
            default(info);
        }));
    });
}

#[derive(Default)]
struct Tally {
    cases: u64,
    refused: u64,
    opened_clean: u64,
    reported: u64,
    correct: u64,
    lost: u64,
    hidden: u64,
    invented: u64,
    /// Journals with a silent loss where the `-wal` or `-shm` was damaged.
    silent_wal: u64,
    /// Journals with a silent loss where the database file was damaged, and how many
    /// of them `check()` flagged.
    silent_db: u64,
    silent_db_checked: u64,
    /// Of `silent_wal`, those where only the `-shm` was changed.
    silent_shm_only: u64,
    /// Journals whose database file was cut to nothing: a new journal.
    emptied: u64,
    max_case: Duration,
    refusals: BTreeMap<String, u64>,
}

/// Runs one damaged copy in its own thread and judges it.
fn judge(base: Base, damages: &[Damage], tally: &Mutex<Tally>) -> Result<(), TestCaseError> {
    let bases = bases();
    let mut files = match base {
        Base::Closed => bases.closed.clone(),
        Base::Live => bases.live.clone(),
    };
    for d in damages {
        apply(&mut files, d, bases);
    }
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let path = dir.path().join("j.db");
    files.write(&path);

    PANICS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let start_live = LIVE.load(Ordering::Relaxed);
    PEAK.store(start_live, Ordering::Relaxed);
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let case_path = path.clone();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| tokio().block_on(run_case(&case_path)));
        let _ = tx.send(result);
    });
    let outcome = match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(Ok(outcome))) => outcome,
        Ok(Ok(Err(failure))) => {
            let kept = dir.keep();
            return Err(TestCaseError::fail(format!(
                "{failure} (the journal: {})",
                kept.display()
            )));
        }
        Ok(Err(_)) => return Err(TestCaseError::fail("the case panicked")),
        Err(_) => {
            // Leave the directory: a thread still uses it.
            let kept = dir.keep();
            return Err(TestCaseError::fail(format!(
                "hung for {TIMEOUT:?}, in a blocking call (the journal: {})",
                kept.display()
            )));
        }
    };
    let elapsed = started.elapsed();
    let allocated = PEAK.load(Ordering::Relaxed).saturating_sub(start_live);
    let panics = std::mem::take(&mut *PANICS.lock().unwrap_or_else(PoisonError::into_inner));
    if !panics.is_empty() {
        return Err(TestCaseError::fail(format!("panicked: {panics:?}")));
    }
    if allocated > allocation_bound(files.len()) {
        return Err(TestCaseError::fail(format!(
            "allocated {allocated} bytes for {} bytes of files",
            files.len()
        )));
    }
    if !outcome.wrong.is_empty() {
        return Err(TestCaseError::fail(format!(
            "wrong results: {:?}",
            outcome.wrong
        )));
    }
    if !outcome.invented.is_empty() {
        return Err(TestCaseError::fail(format!(
            "resumed workflows the journal never had: {:?}",
            outcome.invented
        )));
    }
    // Damage to the database file alone that loses or hides a workflow is something
    // `check()` must see (SQLite's integrity_check, the checksums).
    let flagged = outcome.check_findings > 0;
    let db_only = !files.db.is_empty() && !damages.iter().any(Damage::touches_the_wal);
    // SQLite rebuilds a `-shm` it cannot trust: damage to it alone loses nothing.
    if outcome.silent() && damages.iter().all(Damage::only_the_shm) {
        return Err(TestCaseError::fail(format!(
            "workflows lost ({:?}) by damage to the -shm alone",
            outcome.lost
        )));
    }
    if outcome.silent() && db_only && !flagged {
        return Err(TestCaseError::fail(format!(
            "workflows lost ({:?}) or hidden ({:?}) by damage to the database file, and \
             check() reports nothing",
            outcome.lost, outcome.hidden
        )));
    }

    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    t.cases += 1;
    t.max_case = t.max_case.max(elapsed);
    if let Some(e) = &outcome.refused {
        t.refused += 1;
        let shape = e
            .replace(&*path.to_string_lossy(), "<journal>")
            .chars()
            .take(90)
            .collect::<String>();
        *t.refusals.entry(shape).or_default() += 1;
        return Ok(());
    }
    if outcome.check_findings == 0 && outcome.reported == 0 {
        t.opened_clean += 1;
    }
    t.reported += outcome.reported as u64;
    t.correct += outcome.correct as u64;
    t.lost += outcome.lost.len() as u64;
    t.hidden += outcome.hidden.len() as u64;
    t.invented += outcome.invented.len() as u64;
    if outcome.silent() {
        if files.db.is_empty() {
            // An empty file is a new journal; without a `-wal` nothing says otherwise.
            t.emptied += 1;
        } else if damages.iter().any(Damage::touches_the_wal) {
            t.silent_wal += 1;
            if damages.iter().all(Damage::only_the_shm) {
                t.silent_shm_only += 1;
            }
        } else {
            t.silent_db += 1;
            if flagged {
                t.silent_db_checked += 1;
            }
        }
    }
    Ok(())
}

fn describe(files: &Files) -> String {
    let len = |f: &Option<Vec<u8>>| {
        f.as_ref()
            .map_or("none".to_owned(), |b| b.len().to_string())
    };
    format!(
        "db {} bytes, wal {}, shm {}",
        files.db.len(),
        len(&files.wal),
        len(&files.shm)
    )
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Damage the fuzz once found mishandled, judged on every run.
/// The tests of this file share the panic log and the allocation counters: one at a
/// time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn damage_found_before() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    install_panic_hook();
    let found = [
        // A cell pointer of a leaf page of `durable_workflows` moved: looking up f-3
        // found f-5's intact row, and its handle returned f-5's result.
        (
            Base::Closed,
            vec![Damage::PageHead {
                page: 3_124_458_059,
                at: 17,
                mask: 56,
            }],
        ),
        // A database file cut to nothing beside a `-wal` full of commits.
        (
            Base::Live,
            vec![Damage::Truncate {
                target: Target::Db,
                at: 0,
                page_aligned: true,
            }],
        ),
        // A b-tree page header of the messages' index, damaged: p-1's message was
        // hidden and its recv hung (once a lone send could commit on its caller's
        // thread, which put the sends before the waits).
        (
            Base::Closed,
            vec![Damage::PageHead {
                page: 3_715_328_402,
                at: 4,
                mask: 3,
            }],
        ),
        // A bit of `sqlite_sequence`'s definition flipped: its column `name` was no
        // longer known, and the open's check of the run counter reported the damage
        // as an I/O error (SQLite's refusal to prepare a statement carries its code
        // apart).
        (
            Base::Closed,
            vec![Damage::Flip {
                target: Target::Db,
                at: 3_319_303_471,
                mask: 128,
            }],
        ),
    ];
    let tally = Mutex::new(Tally::default());
    for (base, damages) in found {
        if let Err(e) = judge(base, &damages, &tally) {
            panic!("{base:?} {damages:?}: {e}");
        }
    }
}

#[test]
fn damaged_journals_recover_correctly_or_say_what_is_damaged() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    install_panic_hook();
    let cases = env_u64("DURABLE_FUZZ_CASES").unwrap_or(5_000);
    let seed = env_u64("DURABLE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let _ = bases();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let result = runner.run(&case(), |(base, damages)| judge(base, &damages, &tally));
    let t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let mut report = format!(
        "damage fuzz (seed {seed}): {} damaged journals in {:.1?} (slowest {:.1?}): {} refused \
         at open, {} opened with nothing to report; workflows: {} correct, {} errors naming \
         the damage, 0 wrong; silent: {} lost, {} hidden, {} invented, in {} journals with \
         the -wal or -shm damaged ({} with only the -shm damaged) and {} with only the database damaged ({} of them flagged \
         by check()), and {} cut to an empty file (a new journal)\nbases: closed {}, live {}\nrefusals:",
        t.cases,
        started.elapsed(),
        t.max_case,
        t.refused,
        t.opened_clean,
        t.correct,
        t.reported,
        t.lost,
        t.hidden,
        t.invented,
        t.silent_wal,
        t.silent_shm_only,
        t.silent_db,
        t.silent_db_checked,
        t.emptied,
        describe(&bases().closed),
        describe(&bases().live),
    );
    for (shape, n) in &t.refusals {
        let _ = write!(report, "\n  {n:6} {shape}");
    }
    eprintln!("{report}");
    if let Err(e) = result {
        panic!("damage fuzz failed (replay with DURABLE_FUZZ_SEED={seed}): {e}");
    }
}
