//! The scale workloads: what a journal costs as it grows, rather than per step.
//!
//! | workload | measures | baseline |
//! |---|---|---|
//! | `parked` | `W` workflows (half in `recv`, half in a day-long `sleep`): resident memory per workflow once they are dormant (and while still in memory, before), time to park them, time until all are dormant, time from a reopen until all are dormant again (re-parked from what the journal kept, or by replay), and that a woken one finishes | `W` bare tokio tasks, each awaiting a oneshot |
//! | `long_replay` | a pending workflow with `N` recorded sequential steps: time from open to its result, and peak resident memory | open and one `SELECT` of those `N` rows |
//! | `history_open` | open time of a journal holding `H` finished workflows | open time of an empty journal |
//! | `bytes` | journal bytes per recorded step (the `long_replay` journal, checkpointed) | a plain SQLite table of the same outputs, keyed by an integer |
//!
//! Resident memory is a process-wide figure, so each measurement that reports one runs
//! in a child process of its own (`durable-bench --child ...`), started fresh: nothing
//! an earlier workload allocated is counted. The sizes are `W` = 100,000, `N` =
//! 1,000,000 and `H` = 1,000,000 (a tenth of each with `--quick`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use durable_runtime::{Runtime, recv, sleep, step, workflow};

use crate::sampler::{Sampler, rss_kib};
use crate::{Res, Sync, median, open, open_with, run_all, sequential, usage, wait_unlocked};

/// How many [`waiter`]s have reached their wait, in this process.
static PARKED: AtomicU64 = AtomicU64::new(0);

/// Counts a waiter that reached its wait. Outside the workflow body: instrumentation,
/// never journaled.
fn parked() {
    PARKED.fetch_add(1, Ordering::Relaxed);
}

#[step]
async fn label(i: u32) -> u32 {
    i
}

/// Records one step, then waits: in `recv` (even `i`) or in a day-long durable sleep
/// (odd `i`). A woken `recv` returns its message plus the step's value.
#[workflow]
async fn waiter(i: u32) -> Result<u64, String> {
    let mine = u64::from(label(i).await);
    parked();
    if i.is_multiple_of(2) {
        let got = recv::<u64>("wake", None)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("recv without a timeout returned no message")?;
        Ok(got + mine)
    } else {
        sleep(Duration::from_secs(86_400)).await;
        Ok(mine)
    }
}

/// The id of waiter `i`.
fn waiter_id(i: u32) -> String {
    format!("p{i}")
}

/// What a child process reported: its `key value` lines.
type Report = HashMap<String, f64>;

/// Runs `durable-bench --child ARGS` and parses the `key value` lines it prints.
fn child(args: &[&str]) -> Res<Report> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--child")
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "child `{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let mut report = Report::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            report.insert(k.to_owned(), v.trim().parse()?);
        }
    }
    Ok(report)
}

fn get(r: &Report, key: &str) -> Res<f64> {
    r.get(key)
        .copied()
        .ok_or_else(|| format!("a child did not report `{key}`").into())
}

/// The entry point of `durable-bench --child KIND ...`: one measurement, printed as
/// `key value` lines.
pub(crate) async fn run_child(args: &[String]) -> Res<()> {
    let arg = |i: usize| -> Res<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("--child {args:?}: argument {i} is missing").into())
    };
    let sync = |i: usize| -> Res<Sync> {
        let name = arg(i)?;
        Sync::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| format!("unknown sync `{name}`").into())
    };
    let report = match arg(0)? {
        "park" => park(Path::new(arg(1)?), sync(2)?, arg(3)?.parse()?, false).await?,
        "repark" => park(Path::new(arg(1)?), sync(2)?, arg(3)?.parse()?, true).await?,
        "tasks" => tasks(arg(1)?.parse()?).await?,
        "record" => record(Path::new(arg(1)?), arg(2)?.parse()?).await?,
        "replay" => long_replay(Path::new(arg(1)?), sync(2)?, arg(3)?.parse()?).await?,
        "history" => history(Path::new(arg(1)?), arg(2)?.parse()?).await?,
        other => return Err(format!("unknown child workload `{other}`").into()),
    };
    for (k, v) in report {
        println!("{k} {v}");
    }
    Ok(())
}

/// Waits until `count` waiters have parked and the journal has been quiet for a while
/// (their waits are recorded).
async fn until_parked(rt: &Runtime, count: u64) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while PARKED.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            return Err("the waiters did not all park within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut last = rt.journal_commits();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = rt.journal_commits();
        if now == last {
            return Ok(());
        }
        last = now;
    }
}

/// Waits until `w` workflows of `rt` are dormant (see `evict_parked_after`).
async fn until_dormant(rt: &Runtime, w: u32) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while rt.dormant_count() < w as usize {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {w} parked workflows went dormant within 10 minutes",
                rt.dormant_count()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Parks `w` waiters in a fresh journal (`again`: re-parks those a `park` child left,
/// by opening the journal), and reports the resident memory each costs and the time.
/// A re-park also wakes one waiter and checks its result.
async fn park(dir: &Path, sync: Sync, w: u32, again: bool) -> Res<Report> {
    let path = dir.join("journal.db");
    let rss0 = rss_kib();
    let cpu0 = usage::cpu_seconds();
    let start = Instant::now();
    let rt = open_with(&path, sync, Some(Duration::ZERO)).await?;
    if !again {
        let starts: Vec<_> = (0..w)
            .map(|i| {
                let rt = rt.clone();
                tokio::spawn(async move { rt.start_with_id(waiter_id(i), waiter(i)).await })
            })
            .collect();
        for s in starts {
            drop(s.await??);
        }
    }
    if again {
        // Re-parked: dormant again, whether from what the journal kept (no replay) or
        // by replay and a new dormancy.
        until_dormant(&rt, w).await?;
    } else {
        until_parked(&rt, u64::from(w)).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = usage::cpu_seconds() - cpu0;
    let live_rss = rss_kib();
    // Parked, they go dormant at once (`evict_parked_after` zero).
    let dormant_since = Instant::now();
    until_dormant(&rt, w).await?;
    let dormant_s = dormant_since.elapsed().as_secs_f64();
    let rss = rss_kib();
    let per = |kib: u64| kib.saturating_sub(rss0) as f64 / f64::from(w);
    let mut report = Report::from([
        ("secs".to_owned(), secs),
        ("cpu_s".to_owned(), cpu),
        ("live_rss_kib_per_workflow".to_owned(), per(live_rss)),
        ("rss_kib_per_workflow".to_owned(), per(rss)),
        ("dormant_s".to_owned(), dormant_s),
    ]);
    if again {
        // A woken waiter finishes with the value it was sent plus its step's.
        let woken = Instant::now();
        rt.send(&waiter_id(0), "wake", &41u64).await?;
        let got = rt
            .handle::<Result<u64, String>>(&waiter_id(0))
            .await?
            .result()
            .await??;
        if got != 41 {
            return Err(format!("the woken waiter returned {got}, not 41").into());
        }
        report.insert("wake_s".to_owned(), woken.elapsed().as_secs_f64());
    }
    rt.close().await?;
    Ok(report)
}

/// The baseline of `parked`: `w` bare tokio tasks, each awaiting a oneshot.
async fn tasks(w: u32) -> Res<Report> {
    let rss0 = rss_kib();
    let mut senders = Vec::with_capacity(w as usize);
    let mut tasks = Vec::with_capacity(w as usize);
    for _ in 0..w {
        let (tx, rx) = tokio::sync::oneshot::channel::<u64>();
        senders.push(tx);
        tasks.push(tokio::spawn(async move { rx.await.unwrap_or(0) }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rss = rss_kib();
    for tx in senders {
        let _ = tx.send(1);
    }
    for t in tasks {
        t.await?;
    }
    Ok(Report::from([(
        "rss_kib_per_workflow".to_owned(),
        rss.saturating_sub(rss0) as f64 / f64::from(w),
    )]))
}

/// Records an `n`-step workflow (at `synchronous=OFF`: the file is the same), marks it
/// unfinished as a crash before its outcome would, and reports the journal's bytes per
/// step, checkpointed, against a plain table of the same outputs.
async fn record(dir: &Path, n: u32) -> Res<Report> {
    let path = dir.join("journal.db");
    let empty = {
        let rt = open(&path, Sync::Off).await?;
        rt.close().await?;
        file_bytes(&path)?
    };
    let start = Instant::now();
    let cpu0 = usage::cpu_seconds();
    {
        let rt = open(&path, Sync::Off).await?;
        rt.start_with_id("long", sequential(n))
            .await?
            .result()
            .await?;
        rt.close().await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = usage::cpu_seconds() - cpu0;
    wait_unlocked(&path).await?;
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute(
        "UPDATE durable_workflows SET status = 'pending', output = NULL WHERE id = 'long'",
        [],
    )?;
    let bytes = file_bytes(&path)? - empty;
    let outputs: Vec<Vec<u8>> = conn
        .prepare("SELECT output FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 'long')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    drop(conn);
    let raw = raw_bytes(dir, &outputs)?;
    Ok(Report::from([
        ("record_s".to_owned(), secs),
        ("cpu_s".to_owned(), cpu),
        ("bytes_per_step".to_owned(), bytes as f64 / f64::from(n)),
        (
            "baseline_bytes_per_step".to_owned(),
            raw as f64 / f64::from(n),
        ),
        (
            "value_bytes_per_step".to_owned(),
            outputs.iter().map(Vec::len).sum::<usize>() as f64 / f64::from(n),
        ),
    ]))
}

/// The size of the database at `path` once its WAL is checkpointed into it.
fn file_bytes(path: &Path) -> Res<u64> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    Ok(std::fs::metadata(path)?.len())
}

/// The bytes a plain SQLite table `(k INTEGER PRIMARY KEY, v BLOB)` takes for `values`.
fn raw_bytes(dir: &Path, values: &[Vec<u8>]) -> Res<u64> {
    let path = dir.join("raw.db");
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch("CREATE TABLE raw (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
    let empty = std::fs::metadata(&path)?.len();
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare("INSERT INTO raw (v) VALUES (?1)")?;
        for v in values {
            insert.execute([v])?;
        }
    }
    tx.commit()?;
    drop(conn);
    Ok(std::fs::metadata(&path)?.len() - empty)
}

/// Opens the journal `record` left and finishes its workflow by replay; reports the
/// time and the peak resident memory.
async fn long_replay(dir: &Path, sync: Sync, n: u32) -> Res<Report> {
    let path = dir.join("journal.db");
    let sampler = Sampler::start();
    let cpu0 = usage::cpu_seconds();
    let start = Instant::now();
    let rt = open(&path, sync).await?;
    let total = rt
        .start_with_id("long", sequential(n))
        .await?
        .result()
        .await?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = usage::cpu_seconds() - cpu0;
    let peaks = sampler.stop();
    let expected = (0..n).fold(0u32, u32::wrapping_add);
    if total != expected {
        return Err(format!("the replayed workflow returned {total}, not {expected}").into());
    }
    rt.close().await?;
    Ok(Report::from([
        ("secs".to_owned(), secs),
        ("cpu_s".to_owned(), cpu),
        ("peak_rss_mib".to_owned(), peaks.rss_mib),
    ]))
}

/// Fills a journal with `h` finished one-step workflows.
async fn history(dir: &Path, h: u32) -> Res<Report> {
    let path = dir.join("journal.db");
    let rt = open(&path, Sync::Off).await?;
    let start = Instant::now();
    // In chunks, so that the tasks of a million starts are not all alive at once.
    let chunk = 10_000;
    for first in (0..h).step_by(chunk as usize) {
        let count = chunk.min(h - first);
        run_all(&rt, count, |i| (None, crate::one_step(first + i))).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    rt.close().await?;
    Ok(Report::from([("fill_s".to_owned(), secs)]))
}

/// Median wall seconds of `runs` opens (and closes) of the journal at `path`.
async fn open_secs(path: &Path, sync: Sync, runs: usize) -> Res<f64> {
    let mut took = Vec::new();
    for _ in 0..runs {
        wait_unlocked(path).await?;
        let start = Instant::now();
        let rt = open(path, sync).await?;
        took.push(start.elapsed().as_secs_f64());
        rt.close().await?;
    }
    Ok(median(took))
}

/// The scale workloads' sizes.
pub(crate) struct Sizes {
    pub(crate) parked: u32,
    pub(crate) steps: u32,
    pub(crate) history: u32,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Sizes {
        let f = if quick { 10 } else { 1 };
        Sizes {
            parked: 100_000 / f,
            steps: 1_000_000 / f,
            history: 1_000_000 / f,
        }
    }
}

/// `parked` at `sync`: one JSON line.
pub(crate) async fn parked_line(dir: &Path, sync: Sync, w: u32) -> Res<String> {
    let run = tempfile::tempdir_in(dir)?;
    let d = run
        .path()
        .to_str()
        .ok_or("the temporary directory is not UTF-8")?;
    let ws = w.to_string();
    let parked = child(&["park", d, sync.name(), &ws])?;
    let reparked = child(&["repark", d, sync.name(), &ws])?;
    let base = child(&["tasks", &ws])?;
    Ok(format!(
        "{{\"journal\": \"sqlite\", \"workload\": \"parked\", \"sync\": \"{}\", \"n\": {w}, \"park_s\": {:.3}, \"repark_s\": {:.3}, \"wake_s\": {:.6}, \"rss_kib_per_workflow\": {:.3}, \"live_rss_kib_per_workflow\": {:.3}, \"dormant_s\": {:.3}, \"repark_rss_kib_per_workflow\": {:.3}, \"baseline\": \"{w} tokio tasks awaiting a oneshot\", \"baseline_rss_kib_per_workflow\": {:.3}, \"cpu_us\": {:.2}, \"repark_cpu_us\": {:.2}}}",
        sync.name(),
        get(&parked, "secs")?,
        get(&reparked, "secs")?,
        get(&reparked, "wake_s")?,
        get(&parked, "rss_kib_per_workflow")?,
        get(&parked, "live_rss_kib_per_workflow")?,
        get(&parked, "dormant_s")?,
        get(&reparked, "rss_kib_per_workflow")?,
        get(&base, "rss_kib_per_workflow")?,
        get(&parked, "cpu_s")? * 1e6 / f64::from(w),
        get(&reparked, "cpu_s")? * 1e6 / f64::from(w),
    ))
}

/// `long_replay` at `sync`, and `bytes` (the same at every setting: the journal is
/// recorded at `synchronous=OFF`): one JSON line each.
pub(crate) async fn long_replay_lines(dir: &Path, sync: Sync, n: u32) -> Res<(String, String)> {
    let run = tempfile::tempdir_in(dir)?;
    let d = run
        .path()
        .to_str()
        .ok_or("the temporary directory is not UTF-8")?;
    let ns = n.to_string();
    let recorded = child(&["record", d, &ns])?;
    let replayed = child(&["replay", d, sync.name(), &ns])?;
    let journal = run.path().join("journal.db");
    let (took, rows) = crate::baseline::select(&journal, "long")?;
    if rows != n as usize {
        return Err(format!("long_replay's baseline read {rows} rows, expected {n}").into());
    }
    let secs = get(&replayed, "secs")?;
    let replay = format!(
        "{{\"journal\": \"sqlite\", \"workload\": \"long_replay\", \"sync\": \"{}\", \"n\": {n}, \"ours_s\": {secs:.3}, \"baseline\": \"open + one SELECT of {n} rows\", \"baseline_s\": {:.3}, \"ratio\": {:.3}, \"peak_rss_mib\": {:.1}, \"cpu_us\": {:.3}}}",
        sync.name(),
        took.wall_s,
        secs / took.wall_s,
        get(&replayed, "peak_rss_mib")?,
        get(&replayed, "cpu_s")? * 1e6 / f64::from(n),
    );
    let bytes = format!(
        "{{\"journal\": \"sqlite\", \"workload\": \"bytes\", \"n\": {n}, \"bytes_per_step\": {:.1}, \"baseline\": \"a table (k INTEGER PRIMARY KEY, v BLOB) of the same outputs\", \"baseline_bytes_per_step\": {:.1}, \"value_bytes_per_step\": {:.1}, \"ratio\": {:.3}, \"cpu_us\": {:.3}}}",
        get(&recorded, "bytes_per_step")?,
        get(&recorded, "baseline_bytes_per_step")?,
        get(&recorded, "value_bytes_per_step")?,
        get(&recorded, "bytes_per_step")? / get(&recorded, "baseline_bytes_per_step")?,
        get(&recorded, "cpu_s")? * 1e6 / f64::from(n),
    );
    Ok((replay, bytes))
}

/// `history_open` at `sync`: one JSON line.
pub(crate) async fn history_open_line(dir: &Path, sync: Sync, h: u32, runs: usize) -> Res<String> {
    let empty_dir = tempfile::tempdir_in(dir)?;
    let empty = empty_dir.path().join("journal.db");
    open(&empty, sync).await?.close().await?;
    let full_dir = tempfile::tempdir_in(dir)?;
    let d = full_dir
        .path()
        .to_str()
        .ok_or("the temporary directory is not UTF-8")?;
    let filled = child(&["history", d, &h.to_string()])?;
    let full = full_dir.path().join("journal.db");
    let cpu0 = usage::cpu_seconds();
    let ours = open_secs(&full, sync, runs).await?;
    let cpu = (usage::cpu_seconds() - cpu0) / runs as f64;
    let base = open_secs(&empty, sync, runs).await?;
    Ok(format!(
        "{{\"journal\": \"sqlite\", \"workload\": \"history_open\", \"sync\": \"{}\", \"n\": {h}, \"ours_s\": {ours:.6}, \"baseline\": \"open of an empty journal\", \"baseline_s\": {base:.6}, \"ratio\": {:.3}, \"fill_s\": {:.1}, \"cpu_us\": {:.1}}}",
        sync.name(),
        ours / base,
        get(&filled, "fill_s")?,
        cpu * 1e6,
    ))
}
