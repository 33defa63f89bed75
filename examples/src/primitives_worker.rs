//! The worker process of `tests/primitives_crash.rs`: workflows built to be SIGKILLed in
//! a durable sleep, in a `recv` wait, between a child's completion and its parent's
//! record, and inside a transaction step. A test fixture, not an example to copy.
//!
//! ```text
//! primitives-worker SCENARIO --journal PATH --log PATH
//! ```
//!
//! `SCENARIO` is `sleep`, `recv`, `child`, `transaction` or `dormant`. With
//! `--evict-ms MS`, parked workflows go dormant after `MS` ms (see
//! `RuntimeBuilder::evict_parked_after`), and the worker logs `dormant <count>` every
//! 5 ms. The worker opens the
//! journal (resuming what is pending), starts the scenario's workflows under fixed ids
//! (or finds them), waits for all of them and prints `RESULT <id> <result>` for each.
//! Every step body, and everything else the test times, appends one line
//! `<wall-clock ms> <what> ...` to the log file.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durable_runtime::{
    Runtime, WorkflowHandle, get_event, recv, send, set_event, sleep, step, step_context, workflow,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

type Res<T> = Result<T, Box<dyn Error>>;

// ---------------------------------------------------------------------------------------
// The log.

static LOG: OnceLock<File> = OnceLock::new();

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Appends `<ms> <line>` to the log (one write, to a file opened in append mode);
/// returns the time it wrote.
fn log(line: &str) -> i64 {
    let at = now_ms();
    if let Some(mut file) = LOG.get() {
        file.write_all(format!("{at} {line}\n").as_bytes())
            .expect("cannot write the log");
    }
    at
}

/// Logs `<ms> step <workflow id> <path> <name>` from a step body.
fn log_step(name: &str) -> i64 {
    let (workflow_id, path) = step_context()
        .map(|s| (s.workflow_id().to_owned(), s.path().to_string()))
        .unwrap_or_default();
    log(&format!("step {workflow_id} {path} {name}"))
}

/// A transaction step's error: serializable, and made from the SQLite error.
#[derive(Debug, Serialize, Deserialize)]
struct DbError(String);

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// `sleep`: a step, a durable sleep, a step that logs when it starts.

const NAP_MS: u64 = 1_500;

#[workflow]
async fn nap(ms: u64) -> i64 {
    before_nap().await;
    sleep(Duration::from_millis(ms)).await;
    after_nap().await
}

#[step]
async fn before_nap() {
    log_step("before_nap");
}

/// Returns when it started (wall-clock ms).
#[step]
async fn after_nap() -> i64 {
    log_step("after_nap")
}

// ---------------------------------------------------------------------------------------
// `recv`: two feeders send numbered messages, with durable sleeps between them; a
// collector receives them one `recv` at a time, pausing after every eighth.

const MESSAGES_PER_FEEDER: u32 = 20;
const TOPIC: &str = "item";

#[workflow]
async fn collect(n: u32) -> Result<Vec<u32>, String> {
    let mut got = Vec::new();
    for _ in 0..n {
        match recv::<u32>(TOPIC, None).await.map_err(|e| e.to_string())? {
            Some(v) => got.push(v),
            None => return Err("a recv without a timeout returned nothing".into()),
        }
        if got.len() % 8 == 0 {
            // Now and then the collector is busy, and messages queue up meanwhile.
            digest(got.len()).await;
        }
    }
    Ok(got)
}

#[step]
async fn digest(received: usize) -> usize {
    log_step("digest");
    tokio::time::sleep(Duration::from_millis(50)).await;
    received
}

#[workflow]
async fn feed(to: String, first: u32, n: u32, gap_ms: u64) -> Result<(), String> {
    for v in first..first + n {
        send(&to, TOPIC, &v).await.map_err(|e| e.to_string())?;
        sleep(Duration::from_millis(gap_ms)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `child`: parents each await a child; a hog keeps the journal writer busy with slow
// transactions, so a parent's record of its child's result often waits behind one:
// the gap between the child's completion and the parent's record is wide enough to
// kill the process in.

const PARENTS: u32 = 12;
const HOG_ROUNDS: u32 = 40;

#[workflow]
async fn parent(k: u32) -> Result<u64, String> {
    let v = child(k).await.map_err(|e| e.to_string())?;
    Ok(after_child(v).await)
}

#[workflow]
async fn child(k: u32) -> u64 {
    child_work(k).await
}

/// Children finish staggered, `k * 40` ms in.
#[step]
async fn child_work(k: u32) -> u64 {
    log_step("child_work");
    tokio::time::sleep(Duration::from_millis(40 * u64::from(k))).await;
    u64::from(k) * 10
}

#[step]
async fn after_child(v: u64) -> u64 {
    log_step("after_child");
    v + 1
}

#[workflow]
async fn hog(rounds: u32) -> Result<u32, String> {
    for round in 0..rounds {
        durable_runtime::sqlite::transaction("hog_round", move |tx| {
            tx.execute(
                "CREATE TABLE IF NOT EXISTS hog (round INTEGER NOT NULL)",
                [],
            )?;
            tx.execute("INSERT INTO hog (round) VALUES (?1)", [round])?;
            // Holds the writer (and the database's write lock) for a while.
            std::thread::sleep(Duration::from_millis(20));
            Ok::<(), DbError>(())
        })
        .await
        .map_err(|e| e.0)?;
    }
    Ok(rounds)
}

// ---------------------------------------------------------------------------------------
// `transaction`: transaction steps that insert a row, then take a while to commit.

const ENTRIES: u32 = 4;
/// How long a transaction step's body takes after its insert.
const TX_HOLD_MS: u64 = 250;

#[workflow]
async fn ledger(entries: u32) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    for entry in 0..entries {
        let id = durable_runtime::sqlite::transaction("insert_row", move |tx| {
            tx.execute(
                "CREATE TABLE IF NOT EXISTS ledger (entry INTEGER NOT NULL)",
                [],
            )?;
            tx.execute("INSERT INTO ledger (entry) VALUES (?1)", [entry])?;
            let id = tx.last_insert_rowid();
            log(&format!("tx_body {entry} {id}"));
            std::thread::sleep(Duration::from_millis(TX_HOLD_MS));
            Ok::<i64, DbError>(id)
        })
        .await
        .map_err(|e| e.0)?;
        ids.push(id);
        between_entries(entry).await;
    }
    Ok(ids)
}

#[step]
async fn between_entries(entry: u32) -> u32 {
    log_step("between_entries");
    entry
}

// ---------------------------------------------------------------------------------------
// `dormant`: every kind of wait at once (a sleep, `recv`s fed by sleeping feeders, a
// `get_event` on a workflow that sets it after a sleep, a parent joining a sleeping
// child), run with `--evict-ms 0` so that each goes dormant whenever it waits.

const DORMANT_MESSAGES: u32 = 8;

#[workflow]
async fn watch_event() -> Result<u64, String> {
    let v = get_event::<u64>("announcer", "ready", None)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("get_event without a timeout returned nothing")?;
    Ok(after_child(v).await)
}

#[workflow]
async fn announce(ms: u64) -> Result<u64, String> {
    sleep(Duration::from_millis(ms)).await;
    set_event("ready", &42u64)
        .await
        .map_err(|e| e.to_string())?;
    Ok(42)
}

#[workflow]
async fn slow_parent() -> Result<u64, String> {
    let v = slow_child(700).await.map_err(|e| e.to_string())?;
    Ok(after_child(v).await)
}

#[workflow]
async fn slow_child(ms: u64) -> u64 {
    sleep(Duration::from_millis(ms)).await;
    child_work(1).await
}

// ---------------------------------------------------------------------------------------
// The process.

fn main() -> ExitCode {
    match worker() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("primitives-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: primitives-worker (sleep|recv|child|transaction|dormant) \
     --journal PATH --log PATH [--evict-ms MS]";

fn option<'a>(args: &'a [String], name: &str) -> Res<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .ok_or_else(|| format!("missing {name}\n{USAGE}").into())
}

/// Waits for a run and prints `RESULT <id> <result>`; `false` if the run failed.
async fn report<O: serde::Serialize + DeserializeOwned + std::fmt::Debug>(
    h: WorkflowHandle<O>,
) -> bool {
    let result = h.result().await;
    println!("RESULT {} {result:?}", h.id());
    result.is_ok()
}

fn worker() -> Res<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().ok_or(USAGE)?.clone();
    let journal = option(&args, "--journal")?.to_owned();
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(option(&args, "--log")?)?;
    LOG.set(log_file).map_err(|_| "log set twice")?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async move {
        let mut builder = Runtime::builder(&journal);
        if args.iter().any(|a| a == "--evict-ms") {
            let ms: u64 = option(&args, "--evict-ms")?.parse()?;
            builder = builder.evict_parked_after(Duration::from_millis(ms));
        }
        let rt = builder.open().await?;
        log("opened");
        if args.iter().any(|a| a == "--evict-ms") {
            let watcher = rt.clone();
            tokio::spawn(async move {
                loop {
                    log(&format!("dormant {}", watcher.dormant_count()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        let ok = match scenario.as_str() {
            "sleep" => {
                let h = rt.start_with_id("nap", nap(NAP_MS)).await?;
                // Logs the recorded wake-up time as soon as the sleep is recorded (at
                // once, after a restart).
                let watcher = rt.clone();
                tokio::spawn(async move {
                    loop {
                        if let Ok(steps) = watcher.steps("nap").await
                            && let Some(s) = steps.iter().find(|s| s.name == "durable::sleep")
                        {
                            if let Ok(wake_at) = s.output::<i64>() {
                                log(&format!("wake_at {wake_at}"));
                            }
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
                report(h).await
            }
            "recv" => {
                let n = MESSAGES_PER_FEEDER;
                let collector = rt.start_with_id("collector", collect(2 * n)).await?;
                let a = rt
                    .start_with_id("feed-a", feed("collector".into(), 0, n, 15))
                    .await?;
                let b = rt
                    .start_with_id("feed-b", feed("collector".into(), 1000, n, 23))
                    .await?;
                report(a).await & report(b).await & report(collector).await
            }
            "child" => {
                let hog = rt.start_with_id("hog", hog(HOG_ROUNDS)).await?;
                let mut parents = Vec::new();
                for k in 1..=PARENTS {
                    parents.push(rt.start_with_id(format!("parent-{k}"), parent(k)).await?);
                }
                let mut ok = true;
                for h in parents {
                    ok &= report(h).await;
                }
                ok & report(hog).await
            }
            "transaction" => report(rt.start_with_id("ledger", ledger(ENTRIES)).await?).await,
            "dormant" => {
                let n = DORMANT_MESSAGES;
                let nap = rt.start_with_id("nap", nap(NAP_MS)).await?;
                let collector = rt.start_with_id("collector", collect(2 * n)).await?;
                let a = rt
                    .start_with_id("feed-a", feed("collector".into(), 0, n, 60))
                    .await?;
                let b = rt
                    .start_with_id("feed-b", feed("collector".into(), 1000, n, 85))
                    .await?;
                let watcher = rt.start_with_id("watcher", watch_event()).await?;
                let announcer = rt.start_with_id("announcer", announce(600)).await?;
                let parent = rt.start_with_id("slow-parent", slow_parent()).await?;
                report(nap).await
                    & report(collector).await
                    & report(a).await
                    & report(b).await
                    & report(watcher).await
                    & report(announcer).await
                    & report(parent).await
            }
            _ => return Err(USAGE.into()),
        };
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}
