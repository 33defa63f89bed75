//! The journal under faults below the process, in the style of SQLite's own I/O-error
//! and crash tests: a workload of a few workflows (sequential and concurrent steps, a
//! message, a durable sleep, a child) runs over the fault-injecting file layer of
//! `durable_testkit::faults`, with the fault advanced through every I/O call the
//! workload makes.
//!
//! - **I/O errors**: the n-th call fails (EIO, ENOSPC, a short write; once, or from
//!   then on). The process then dies, the OS keeps what was written, and the journal
//!   is opened again with the fault cleared.
//! - **Power loss**: the machine stops at the n-th call; what was written but not
//!   synced is dropped, or torn at sector boundaries; the journal is opened again from
//!   what reached the disk.
//!
//! After each, every step whose checkpoint was acknowledged (its `await` returned in
//! the workflow) must be in the journal with the value the workflow saw, no
//! acknowledged step's body may run again, and every workflow must finish with the
//! result of an uninterrupted run. At `Durability::Normal` a power loss may lose
//! acknowledged steps, and the harness must see it.
//!
//! Longer runs: `DURABLE_FAULT_SEEDS=40 cargo test -p durable-testkit --release --test
//! faults -- --nocapture` tears each crash point 40 ways instead of the default (enough
//! for 2,200 crash images).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use durable_runtime::{Durability, JournalView, Runtime, recv, send, sleep, step, workflow};
use durable_testkit::faults::{Fault, FaultFs, Loss, Persistence};

// ---------------------------------------------------------------------------------
// The workload, and what it tells the harness.

/// What happened, per iteration (its tag): step bodies that ran, and the values the
/// workflows saw come back from their steps (acknowledged checkpoints).
#[derive(Default)]
struct Log {
    /// The phase: 1 while the faulty run goes on, 2 once the journal reopened.
    phase: u8,
    /// `(phase, label)` of every step body run.
    bodies: Vec<(u8, String)>,
    /// `(phase, label, value)` of every step result a workflow received.
    acks: Vec<(u8, String, String)>,
}

static LOGS: Mutex<BTreeMap<u64, Log>> = Mutex::new(BTreeMap::new());

fn logs() -> MutexGuard<'static, BTreeMap<u64, Log>> {
    LOGS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn log_body(tag: u64, label: &str) {
    let mut logs = logs();
    let log = logs.entry(tag).or_default();
    let phase = log.phase;
    log.bodies.push((phase, label.to_owned()));
}

/// Notes that the workflow received `value` from the step `label`, and returns it.
fn ack(tag: u64, label: &str, value: String) -> String {
    let mut logs = logs();
    let log = logs.entry(tag).or_default();
    let phase = log.phase;
    log.acks.push((phase, label.to_owned(), value.clone()));
    value
}

/// A step whose result names it: `label=x²`.
#[step]
async fn work(tag: u64, label: String, x: u64) -> String {
    log_body(tag, &label);
    format!("{label}={}", x * x)
}

/// Runs `work` and notes the acknowledgement.
async fn checkpoint(tag: u64, label: String, x: u64) -> String {
    let value = work(tag, label.clone(), x).await;
    ack(tag, &label, value)
}

#[workflow]
async fn packing(tag: u64, n: u64) -> String {
    let a = checkpoint(tag, format!("{n}/child/a"), n + 100).await;
    let b = checkpoint(tag, format!("{n}/child/b"), n + 200).await;
    format!("{a},{b}")
}

/// Sequential steps, two concurrent ones, a durable sleep, a message to itself and
/// its `recv`, and a child workflow.
#[workflow]
async fn order(tag: u64, n: u64) -> String {
    let a = checkpoint(tag, format!("{n}/a"), n).await;
    let (b, c) = futures::join!(
        checkpoint(tag, format!("{n}/b"), n + 1),
        checkpoint(tag, format!("{n}/c"), n + 2)
    );
    sleep(Duration::from_millis(1)).await;
    send(&order_id(tag, n), "pay", &(n * 3))
        .await
        .expect("send to itself");
    let paid: Option<u64> = recv("pay", None).await.expect("recv");
    let d = checkpoint(tag, format!("{n}/d"), paid.unwrap_or(0)).await;
    let child = packing(tag, n).await.expect("the child's result");
    format!("{a};{b};{c};{d};[{child}]")
}

/// How many `order` workflows one run of the workload starts.
const ORDERS: u64 = 3;

fn order_id(tag: u64, n: u64) -> String {
    format!("t{tag}-o{n}")
}

/// What `order(tag, n)` returns when nothing goes wrong.
fn expected(n: u64) -> String {
    let w = |label: String, x: u64| format!("{label}={}", x * x);
    format!(
        "{};{};{};{};[{},{}]",
        w(format!("{n}/a"), n),
        w(format!("{n}/b"), n + 1),
        w(format!("{n}/c"), n + 2),
        w(format!("{n}/d"), n * 3),
        w(format!("{n}/child/a"), n + 100),
        w(format!("{n}/child/b"), n + 200)
    )
}

// ---------------------------------------------------------------------------------
// One iteration: a faulty run, a crash, a reopened run, and the checks.

static TAGS: AtomicU64 = AtomicU64::new(1);

fn set_phase(tag: u64, phase: u8) {
    logs().entry(tag).or_default().phase = phase;
}

/// What went wrong in one iteration (empty: nothing).
#[derive(Debug, Default)]
struct Findings {
    /// Acknowledged steps missing from the journal after the crash (or recorded with
    /// another value).
    lost: Vec<String>,
    /// Acknowledged steps whose body ran again after the reopen.
    duplicated: Vec<String>,
    /// Workflows that finished with another result, or not at all.
    wrong: Vec<String>,
    /// `start` calls that returned success for a workflow the journal then lacked.
    lost_starts: Vec<String>,
}

impl Findings {
    fn is_empty(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.wrong.is_empty()
            && self.lost_starts.is_empty()
    }
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

/// The faulty run: opens the journal through `fs`, starts the workload, and lets it
/// run until it is done, or until the fault has struck and the journal has been quiet
/// for a moment. Then the process "dies": its tokio runtime is dropped with every
/// task, and the journal's connections close. Returns the ids whose `start` succeeded.
fn faulty_run(fs: &FaultFs, path: &Path, durability: Durability, tag: u64) -> Vec<String> {
    set_phase(tag, 1);
    let tokio = tokio();
    let started = tokio.block_on(async {
        let Ok(rt) = Runtime::builder(path)
            .durability(durability)
            .sqlite_vfs(fs.name())
            .open()
            .await
        else {
            return Vec::new();
        };
        let mut started = Vec::new();
        let mut handles = Vec::new();
        for n in 0..ORDERS {
            if let Ok(h) = rt.start_with_id(order_id(tag, n), order(tag, n)).await {
                started.push(order_id(tag, n));
                handles.push(h);
            }
        }
        let all = futures::future::join_all(handles.iter().map(|h| h.result()));
        let quiet = until_quiet(fs);
        tokio::select! {
            _ = all => {}
            () = quiet => {}
        }
        started
    });
    drop(tokio);
    wait_closed(fs);
    started
}

/// Resolves once the fault has struck (or the machine has stopped) and no I/O call
/// has happened for 5 ms, or after 10 s whatever happens. (When the process dies
/// after a fault does not matter: any moment is one a real process could die at.)
async fn until_quiet(fs: &FaultFs) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = fs.io_calls();
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = fs.io_calls();
        let struck = fs.faults_hit() > 0 || fs.is_crashed();
        if (struck && now == last) || Instant::now() > deadline {
            return;
        }
        last = now;
    }
}

/// Waits until every file the dead runtime opened through `fs` is closed (its writer
/// thread finishes on its own after the runtime is dropped).
fn wait_closed(fs: &FaultFs) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs.open_files() > 0 {
        assert!(
            Instant::now() < deadline,
            "the dead runtime's journal connections stayed open"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The reopened run, with nothing faulty any more: starts every workflow again (a
/// start of a recorded id attaches to it) and waits for every result. Returns each
/// workflow's result, or why it has none.
fn reopened_run(path: &Path, tag: u64) -> BTreeMap<u64, Result<String, String>> {
    set_phase(tag, 2);
    tokio().block_on(async {
        let rt = match open_when_released(path).await {
            Ok(rt) => rt,
            Err(e) => {
                return (0..ORDERS)
                    .map(|n| (n, Err(format!("reopen failed: {e}"))))
                    .collect();
            }
        };
        let mut results = BTreeMap::new();
        for n in 0..ORDERS {
            let result = match rt.start_with_id(order_id(tag, n), order(tag, n)).await {
                Ok(h) => match tokio::time::timeout(Duration::from_secs(20), h.result()).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no result within 20 s".to_owned()),
                },
                Err(e) => Err(format!("start failed: {e}")),
            };
            results.insert(n, result);
        }
        let _ = rt.close().await;
        results
    })
}

/// Opens the journal once the dead runtime's writer thread, which lets go of the
/// journal's lock just after its last connection, has finished.
async fn open_when_released(path: &Path) -> durable_runtime::Result<Runtime> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Runtime::open(path).await {
            Err(durable_runtime::Error::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            opened => return opened,
        }
    }
}

/// Every step result the journal at `path` records, as `label=value` strings, and
/// the workflows it has.
fn recorded(path: &Path, tag: u64) -> (BTreeSet<String>, BTreeSet<String>) {
    let Ok(view) = JournalView::open(path) else {
        // No journal was made before the fault: nothing can have been acknowledged.
        return Default::default();
    };
    let workflows = view.workflows().expect("the workflows");
    let mut values = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for w in workflows {
        if !w.id.starts_with(&format!("t{tag}-")) {
            continue;
        }
        ids.insert(w.id.clone());
        for s in view.steps(&w.id).expect("the steps") {
            if let Ok(v) = s.output::<String>() {
                values.insert(v);
            }
        }
    }
    (values, ids)
}

/// Checks one iteration, once the reopened run is over: `after_crash` is what the
/// journal recorded right after the crash, `started` the ids whose start succeeded.
fn findings(
    tag: u64,
    after_crash: &(BTreeSet<String>, BTreeSet<String>),
    started: &[String],
    results: &BTreeMap<u64, Result<String, String>>,
) -> Findings {
    let logs = logs();
    let log = logs.get(&tag);
    let acked: HashMap<&str, &str> = log
        .map(|l| {
            l.acks
                .iter()
                .filter(|(phase, ..)| *phase == 1)
                .map(|(_, label, value)| (label.as_str(), value.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut f = Findings::default();
    for (label, value) in &acked {
        if !after_crash.0.contains(*value) {
            f.lost.push(format!("{label} ({value})"));
        }
        let reran = log.is_some_and(|l| l.bodies.iter().any(|(p, b)| *p == 2 && b == label));
        if reran {
            f.duplicated.push((*label).to_owned());
        }
    }
    for id in started {
        if !after_crash.1.contains(id) {
            f.lost_starts.push(id.clone());
        }
    }
    for (n, result) in results {
        if result.as_ref() != Ok(&expected(*n)) {
            f.wrong.push(format!("{}: {result:?}", order_id(tag, *n)));
        }
    }
    f
}

// ---------------------------------------------------------------------------------
// The loops.

/// The I/O calls one uninterrupted run of the workload makes through the fault layer.
fn count_calls(durability: Durability) -> u64 {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let tag = TAGS.fetch_add(1, Ordering::SeqCst);
    fs.reset_count();
    let started = faulty_run(&fs, &path, durability, tag);
    let calls = fs.io_calls();
    fs.flush_all();
    let after = recorded(&path, tag);
    assert_eq!(started.len(), ORDERS as usize);
    let results = reopened_run(&path, tag);
    let f = findings(tag, &after, &started, &results);
    assert!(f.is_empty(), "the workload without faults: {f:?}");
    calls
}

/// What one loop found, summed over its iterations.
#[derive(Debug, Default)]
struct Tally {
    iterations: u64,
    struck: u64,
    lost: u64,
    duplicated: u64,
    wrong: u64,
    lost_starts: u64,
    examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, what: &str, f: &Findings) {
        self.iterations += 1;
        self.lost += f.lost.len() as u64;
        self.duplicated += f.duplicated.len() as u64;
        self.wrong += f.wrong.len() as u64;
        self.lost_starts += f.lost_starts.len() as u64;
        if !f.is_empty() && self.examples.len() < 5 {
            self.examples.push(format!("{what}: {f:?}"));
        }
    }

    /// The counts, in words: `duplicated` names what a second run of an acknowledged
    /// step is called in the loop (a duplicate, or at NORMAL a step that ran again).
    fn summary(&self, duplicated: &str) -> String {
        format!(
            "({} struck): {} acknowledged steps lost, {} {duplicated}, {} wrong results, {} \
             lost starts",
            self.struck, self.lost, self.duplicated, self.wrong, self.lost_starts
        )
    }

    /// Asserts that at least `at_least` iterations ran and none lost, duplicated or
    /// changed anything acknowledged.
    fn assert_nothing_lost(&self, at_least: u64) {
        assert!(self.iterations >= at_least, "{self:?}");
        assert_eq!(
            (self.lost, self.duplicated, self.wrong, self.lost_starts),
            (0, 0, 0, 0),
            "{:#?}",
            self.examples
        );
    }
}

/// One iteration of the I/O-error loop: the `n`-th call fails with `fault`.
fn io_error_at(n: u64, fault: Fault, persistence: Persistence, tally: &mut Tally) {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let tag = TAGS.fetch_add(1, Ordering::SeqCst);
    fs.reset_count();
    fs.fail_at(n, fault, persistence);
    let started = faulty_run(&fs, &path, Durability::Full, tag);
    if fs.faults_hit() > 0 {
        tally.struck += 1;
    }
    fs.clear();
    // The process died; the OS did not: what was written reaches the disk.
    fs.flush_all();
    let after = recorded(&path, tag);
    let results = reopened_run(&path, tag);
    let f = findings(tag, &after, &started, &results);
    tally.add(&format!("call {n}, {fault:?} {persistence:?}"), &f);
}

#[test]
fn an_io_error_at_any_call_loses_and_duplicates_nothing() {
    let calls = count_calls(Durability::Full);
    let mut tally = Tally::default();
    let kinds = [
        (Fault::Io, Persistence::Once),
        (Fault::NoSpace, Persistence::Sticky),
        (Fault::ShortWrite, Persistence::Once),
    ];
    for n in 1..=calls {
        for (fault, persistence) in kinds {
            io_error_at(n, fault, persistence, &mut tally);
        }
    }
    println!(
        "I/O-error loop: {calls} I/O calls in the workload, {} fault points {}",
        tally.iterations,
        tally.summary("duplicated")
    );
    tally.assert_nothing_lost(500);
}

/// How many torn images each of the workload's `calls` crash points makes, besides
/// the one that drops every unsynced write: enough for 2,200 images in all, or
/// `DURABLE_FAULT_SEEDS`.
fn tear_seeds(calls: u64) -> u64 {
    std::env::var("DURABLE_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| 2200_u64.div_ceil(calls.max(1)).saturating_sub(1))
}

/// One iteration of the power-loss loop: the machine stops at the `n`-th call and
/// loses what was not synced (`loss`).
fn power_loss_at(n: u64, loss: Loss, durability: Durability, tally: &mut Tally) {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let tag = TAGS.fetch_add(1, Ordering::SeqCst);
    fs.reset_count();
    fs.crash_at(n);
    let started = faulty_run(&fs, &path, durability, tag);
    if fs.is_crashed() {
        tally.struck += 1;
    }
    fs.power_loss(loss);
    let after = recorded(&path, tag);
    let results = reopened_run(&path, tag);
    let f = findings(tag, &after, &started, &results);
    tally.add(&format!("crash at call {n}, {loss:?}"), &f);
}

/// Crashes at every I/O call of the workload, with `seeds(calls)` torn images besides
/// the one that drops every unsynced write.
fn power_loss_loop(durability: Durability, seeds: fn(u64) -> u64) -> (u64, Tally) {
    let calls = count_calls(durability);
    let seeds = seeds(calls);
    let mut tally = Tally::default();
    for n in 1..=calls {
        power_loss_at(n, Loss::Drop, durability, &mut tally);
        for seed in 0..seeds {
            power_loss_at(n, Loss::Tear { seed }, durability, &mut tally);
        }
    }
    (calls, tally)
}

#[test]
fn a_power_loss_at_any_call_loses_no_acknowledged_step_at_full() {
    let (calls, tally) = power_loss_loop(Durability::Full, tear_seeds);
    println!(
        "power-loss loop at FULL: {calls} I/O calls, {} crash images {}",
        tally.iterations,
        tally.summary("duplicated")
    );
    tally.assert_nothing_lost(2000);
}

/// At `Normal`, SQLite syncs the WAL only at checkpoints: a power loss drops the
/// commits since, acknowledged or not. The harness must see that loss (or it could not
/// see one at FULL either), and the workflows must still finish correctly: their lost
/// steps run again.
#[test]
fn a_power_loss_at_normal_loses_acknowledged_steps_and_the_harness_sees_it() {
    let (calls, tally) = power_loss_loop(Durability::Normal, |_| 1);
    println!(
        "power-loss loop at NORMAL: {calls} I/O calls, {} crash images {}",
        tally.iterations,
        tally.summary("ran again")
    );
    assert!(
        tally.lost > 0,
        "NORMAL lost nothing: the harness cannot see a loss"
    );
    assert_eq!(tally.wrong, 0, "{:#?}", tally.examples);
}
