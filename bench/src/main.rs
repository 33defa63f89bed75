//! durable's benchmark: what a checkpoint costs, next to what SQLite itself costs.
//!
//! ```text
//! cargo run --release --bin durable-bench              # a table
//! cargo run --release --bin durable-bench -- --json    # one JSON object per line
//! cargo run --release --bin durable-bench -- --quick   # fewer runs, no n = 10,000
//! ```
//!
//! Every workload runs against a fresh journal file on disk (`--dir`, default the
//! system temporary directory), once to warm up and then `--runs` times (default 5),
//! interleaved with its baseline: raw rusqlite with the same pragmas (WAL, the same
//! `synchronous`) writing rows of the same shape as durable's step table. Each side's
//! figure is the median of its runs, and `ratio` is ours / baseline, so noise from a
//! shared machine mostly cancels. Peak RSS is sampled from `/proc` during our runs.
//!
//! | workload | ours | baseline |
//! |---|---|---|
//! | `seq` | one workflow, `n` sequential no-op steps | `n` single-row commits |
//! | `fanout` | one workflow, `n` concurrent no-op steps (`join_all`) | `n` rows, 100 per commit |
//! | `many` | 200 workflows x 10 sequential steps, started at once | 2,000 rows, 100 per commit |
//! | `replay` | open a journal and finish a pending workflow whose 1,000 steps are recorded | one `SELECT` of those 1,000 rows |
//! | `start` | start 1,000 one-step workflows with explicit ids, at once | 2,000 rows, 100 per commit |
//!
//! `seq` and `fanout` run at n = 100, 1,000 and 10,000 (the scale check: per-step cost
//! should stay flat), at `synchronous=FULL` and `NORMAL`. A last line reports 10,000
//! workflows of 10 steps started at once: total time, peak RSS, peak open descriptors.

mod baseline;
mod sampler;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use durable_runtime::{Durability, Error, Runtime, WorkflowCall, step, workflow};

use crate::sampler::Sampler;

#[step]
async fn noop(i: u32) -> u32 {
    i
}

#[workflow]
async fn sequential(n: u32) -> u32 {
    let mut total = 0u32;
    for i in 0..n {
        total = total.wrapping_add(noop(i).await);
    }
    total
}

#[workflow]
async fn concurrent(n: u32) -> u32 {
    let all = futures::future::join_all((0..n).map(noop)).await;
    all.into_iter().fold(0, u32::wrapping_add)
}

#[workflow]
async fn one_step(i: u32) -> u32 {
    noop(i).await
}

/// A `synchronous` setting, as durable and as SQLite spell it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sync {
    Full,
    Normal,
}

impl Sync {
    fn durability(self) -> Durability {
        match self {
            Sync::Full => Durability::Full,
            Sync::Normal => Durability::Normal,
        }
    }

    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sync::Full => "full",
            Sync::Normal => "normal",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Workload {
    Seq(u32),
    Fanout(u32),
    Many,
    Replay,
    Start,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Seq(_) => "seq",
            Workload::Fanout(_) => "fanout",
            Workload::Many => "many",
            Workload::Replay => "replay",
            Workload::Start => "start",
        }
    }

    /// Steps the workload records.
    fn n(self) -> u32 {
        match self {
            Workload::Seq(n) | Workload::Fanout(n) => n,
            Workload::Many => 2_000,
            Workload::Replay | Workload::Start => 1_000,
        }
    }

    fn baseline(self) -> String {
        match self {
            Workload::Seq(n) => format!("{n} single-row commits"),
            Workload::Fanout(n) => format!("{n} rows, 100 per commit"),
            Workload::Many | Workload::Start => "2000 rows, 100 per commit".to_owned(),
            Workload::Replay => "one SELECT of 1000 rows".to_owned(),
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Options {
    json: bool,
    quick: bool,
    runs: usize,
    dir: PathBuf,
}

fn parse_args() -> Res<Options> {
    let mut o = Options {
        json: false,
        quick: false,
        runs: 5,
        dir: std::env::temp_dir(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => o.json = true,
            "--quick" => o.quick = true,
            "--runs" => o.runs = args.next().ok_or("--runs needs a number")?.parse()?,
            "--dir" => o.dir = args.next().ok_or("--dir needs a directory")?.into(),
            "-h" | "--help" => {
                println!("usage: durable-bench [--json] [--quick] [--runs N] [--dir DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help").into()),
        }
    }
    if o.quick {
        o.runs = o.runs.min(3);
    }
    if o.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(o)
}

/// Opens a runtime, waiting for a just-dropped one on the same file to let go.
async fn open(path: &Path, sync: Sync) -> Res<Runtime> {
    for _ in 0..1000 {
        match Runtime::builder(path)
            .durability(sync.durability())
            .open()
            .await
        {
            Err(Error::Locked { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => return Ok(other?),
        }
    }
    Err(format!("{} stayed locked", path.display()).into())
}

/// One timed run of our side of `w`, in a fresh journal under `dir`.
async fn ours(dir: &Path, sync: Sync, w: Workload) -> Res<f64> {
    let path = dir.join("journal.db");
    if let Workload::Replay = w {
        return replay(&path, sync).await;
    }
    let rt = open(&path, sync).await?;
    let start = Instant::now();
    match w {
        Workload::Seq(n) => drop(rt.start(sequential(n)).await?.result().await?),
        Workload::Fanout(n) => drop(rt.start(concurrent(n)).await?.result().await?),
        Workload::Many => run_all(&rt, 200, |_| (None, sequential(10))).await?,
        Workload::Start => run_all(&rt, 1000, |i| (Some(format!("wf-{i}")), one_step(i))).await?,
        Workload::Replay => {}
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Starts `count` workflows at once, each from its own task (under the id `call`
/// gives, or a generated one), and waits for them all to finish.
async fn run_all<O>(
    rt: &Runtime,
    count: u32,
    call: impl Fn(u32) -> (Option<String>, WorkflowCall<O>),
) -> Res<()>
where
    O: serde::de::DeserializeOwned + Send + 'static,
{
    let runs: Vec<_> = (0..count)
        .map(|i| {
            let rt = rt.clone();
            let (id, call) = call(i);
            tokio::spawn(async move {
                let handle = match id {
                    Some(id) => rt.start_with_id(id, call).await?,
                    None => rt.start(call).await?,
                };
                handle.result().await
            })
        })
        .collect();
    for r in runs {
        r.await??;
    }
    Ok(())
}

/// Records a 1,000-step workflow, marks it unfinished (as a crash before its outcome
/// was written would), then times an open that resumes it and its result.
async fn replay(path: &Path, sync: Sync) -> Res<f64> {
    {
        let rt = open(path, sync).await?;
        rt.start_with_id("replay", sequential(1000))
            .await?
            .result()
            .await?;
    }
    rusqlite::Connection::open(path)?.execute(
        "UPDATE durable_workflows SET status = 'pending', output = NULL WHERE id = 'replay'",
        [],
    )?;
    let start = Instant::now();
    let rt = open(path, sync).await?;
    rt.start_with_id("replay", sequential(1000))
        .await?
        .result()
        .await?;
    Ok(start.elapsed().as_secs_f64())
}

fn baseline(dir: &Path, sync: Sync, w: Workload, steps_table: &str) -> Res<f64> {
    let commits = |rows, per_commit| baseline::commits(dir, sync, steps_table, rows, per_commit);
    Ok(match w {
        Workload::Seq(n) => commits(n as usize, 1)?,
        Workload::Fanout(n) => commits(n as usize, 100)?,
        Workload::Many | Workload::Start => commits(2000, 100)?,
        Workload::Replay => {
            // The same rows our replay reads: a journal left by a replay run.
            let journal = dir.join("journal.db");
            let (secs, rows) = baseline::select(&journal, "replay")?;
            if rows != 1000 {
                return Err(format!("replay baseline read {rows} rows, expected 1000").into());
            }
            secs
        }
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    workload: &'static str,
    sync: &'static str,
    n: u32,
    ours_s: f64,
    baseline: String,
    baseline_s: f64,
    peak_rss_mib: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ours_s / self.baseline_s
    }

    fn per_step_us(&self) -> f64 {
        self.ours_s * 1e6 / f64::from(self.n)
    }

    fn json(&self) -> String {
        format!(
            "{{\"workload\": \"{}\", \"sync\": \"{}\", \"n\": {}, \"ours_s\": {:.6}, \"baseline\": \"{}\", \"baseline_s\": {:.6}, \"ratio\": {:.3}, \"peak_rss_mib\": {:.1}, \"per_step_us\": {:.2}}}",
            self.workload,
            self.sync,
            self.n,
            self.ours_s,
            self.baseline,
            self.baseline_s,
            self.ratio(),
            self.peak_rss_mib,
            self.per_step_us()
        )
    }
}

async fn measure(o: &Options, sync: Sync, w: Workload, steps_table: &str) -> Res<Row> {
    // Warm-up: caches, the page cache, the allocator; not counted.
    let warm = tempfile::tempdir_in(&o.dir)?;
    ours(warm.path(), sync, w).await?;
    baseline(warm.path(), sync, w, steps_table)?;
    let mut ours_runs = Vec::new();
    let mut base_runs = Vec::new();
    let sampler = Sampler::start();
    for _ in 0..o.runs {
        let dir = tempfile::tempdir_in(&o.dir)?;
        ours_runs.push(ours(dir.path(), sync, w).await?);
        base_runs.push(baseline(dir.path(), sync, w, steps_table)?);
    }
    let peaks = sampler.stop();
    Ok(Row {
        workload: w.name(),
        sync: sync.name(),
        n: w.n(),
        ours_s: median(ours_runs),
        baseline: w.baseline(),
        baseline_s: median(base_runs),
        peak_rss_mib: peaks.rss_mib,
    })
}

/// 10,000 workflows of 10 steps started at once: time, peak RSS, peak descriptors.
async fn big(o: &Options) -> Res<String> {
    let dir = tempfile::tempdir_in(&o.dir)?;
    let rt = open(&dir.path().join("journal.db"), Sync::Full).await?;
    let sampler = Sampler::start();
    let start = Instant::now();
    run_all(&rt, 10_000, |_| (None, sequential(10))).await?;
    let secs = start.elapsed().as_secs_f64();
    let peaks = sampler.stop();
    Ok(format!(
        "{{\"workload\": \"10k_x_10\", \"sync\": \"full\", \"n\": 100000, \"ours_s\": {secs:.3}, \"peak_rss_mib\": {:.1}, \"peak_fds\": {}, \"commits\": {}}}",
        peaks.rss_mib,
        peaks.fds,
        rt.journal_commits()
    ))
}

async fn run(o: Options) -> Res<()> {
    // The baselines write rows into a table made from the real schema.
    let steps_table = {
        let dir = tempfile::tempdir_in(&o.dir)?;
        let journal = dir.path().join("journal.db");
        drop(open(&journal, Sync::Full).await?);
        baseline::steps_table(&journal)?
    };
    let sizes: &[u32] = if o.quick {
        &[100, 1000]
    } else {
        &[100, 1000, 10_000]
    };
    let mut workloads = Vec::new();
    workloads.extend(sizes.iter().map(|&n| Workload::Seq(n)));
    workloads.extend(sizes.iter().map(|&n| Workload::Fanout(n)));
    workloads.extend([Workload::Many, Workload::Replay, Workload::Start]);
    if !o.json {
        println!(
            "{:<8} {:<7} {:>6} {:>10} {:>10} {:>7} {:>9} {:>9}  baseline",
            "workload", "sync", "n", "ours_s", "base_s", "ratio", "us/step", "rss_mib"
        );
    }
    for sync in [Sync::Full, Sync::Normal] {
        for &w in &workloads {
            let row = measure(&o, sync, w, &steps_table).await?;
            if o.json {
                println!("{}", row.json());
            } else {
                println!(
                    "{:<8} {:<7} {:>6} {:>10.4} {:>10.4} {:>7.2} {:>9.1} {:>9.1}  {}",
                    row.workload,
                    row.sync,
                    row.n,
                    row.ours_s,
                    row.baseline_s,
                    row.ratio(),
                    row.per_step_us(),
                    row.peak_rss_mib,
                    row.baseline
                );
            }
        }
    }
    if !o.quick {
        let line = big(&o).await?;
        println!("{line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("durable-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("durable-bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("durable-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
