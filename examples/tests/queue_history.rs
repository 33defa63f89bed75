//! A history checker for queues, in the spirit of Jepsen's queue checker: the
//! `queue-worker` binary (`examples/src/queue_worker.rs`) runs a mixed load on four
//! queues and is SIGKILLed at random moments, at least `QUEUE_KILLS` times (default
//! 20), then runs to the end: one process on a SQLite journal, and three sharing a
//! PostgreSQL journal (a killed one is started again at once). From the side log of
//! every step body's start and end (with its process), the kill times, and the journal,
//! the checker asserts that:
//!
//! - every enqueued item completed (its workflow row, with its own id as result), and
//!   no item's bodies ever ran at the same time, nor again except after a kill;
//! - no deduplicated item ran while another with its deduplication id was queued or
//!   running;
//! - at no instant did more bodies of a queue run than its concurrency, of one
//!   partition than its partition limit, or of the per-process queue in one process
//!   than its per-process limit (a killed body counts until its kill);
//! - the rate limit held in every window of its period (from the journal's
//!   `dispatched_at`);
//! - the priority queue never dispatched an item while one of lower priority (or equal
//!   priority and earlier arrival) waited; on SQLite, where one process queues them all
//!   before any dispatch, it dispatched them exactly in that order.
//!
//! Kill moments come from `QUEUE_SEED` (or the clock), printed. A longer soak:
//! `QUEUE_KILLS=200 cargo test --release -p durable-examples --test queue_history -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Rng;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// The lease of the workers sharing a PostgreSQL journal: a killed one's workflows go
/// back to their queues within about a second.
const LEASE_MS: u64 = 2_000;

fn start(journal: &str, log: &Path, scale: u32) -> Res<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_queue-worker"))
        .arg("--journal")
        .arg(journal)
        .arg("--log")
        .arg(log)
        .arg("--scale")
        .arg(scale.to_string())
        .args(["--lease-ms", &LEASE_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// What the log says one body did: which process ran it, when it started, and when it
/// ended (or its process was killed).
#[derive(Debug, Clone, Copy)]
struct Body {
    pid: u32,
    start: i64,
    end: Option<i64>,
}

/// A workflow row, as the checker reads it.
#[derive(Debug)]
struct Row {
    status: String,
    dedup_id: Option<String>,
    dispatched_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    run: i64,
    queue: Option<String>,
}

/// The limits of the worker's queues, and which queue and partition each item is in,
/// for a load of `scale` times the items.
struct Load {
    scale: u32,
}

impl Load {
    fn queue_of(id: &str) -> &'static str {
        match id.as_bytes()[0] {
            b'r' => "prio",
            b't' => "tenants",
            b'l' => "local",
            _ => "global",
        }
    }

    fn concurrency(queue: &str) -> usize {
        match queue {
            "prio" => 1,
            "local" => 4,
            _ => 3,
        }
    }

    /// How many of a queue's bodies may run at once in one process.
    fn per_process(queue: &str) -> Option<usize> {
        (queue == "local").then_some(2)
    }

    /// Items `t-0000` to `t-0035` (times the scale) are partition `big`; the rest `p0`
    /// to `p2`.
    fn partition_of(&self, id: &str) -> Option<String> {
        let n: u32 = id.strip_prefix("t-")?.parse().ok()?;
        Some(if n < 36 * self.scale {
            "big".to_owned()
        } else {
            format!("p{}", n % 3)
        })
    }

    fn priority_of(id: &str) -> i64 {
        let n: i64 = id[2..].parse().unwrap_or(0);
        (n * 7) % 5
    }
}

/// The most intervals of `spans` open at one instant (an end at the same instant as a
/// start does not overlap it).
fn most_at_once(spans: &[(i64, i64)]) -> usize {
    let mut edges: Vec<(i64, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// The journal a history runs on.
enum Journal {
    Sqlite(std::path::PathBuf),
    Postgres { server: String, schema: String },
}

impl Journal {
    fn arg(&self) -> String {
        match self {
            Journal::Sqlite(path) => path.display().to_string(),
            Journal::Postgres { server, schema } => {
                let sep = if server.contains('?') { '&' } else { '?' };
                format!("{server}{sep}schema={schema}")
            }
        }
    }

    /// Every workflow row, by id.
    fn rows(&self) -> Res<HashMap<String, Row>> {
        let mut rows = HashMap::new();
        match self {
            Journal::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path)?;
                let mut stmt = conn.prepare(
                    "SELECT id, status, dedup_id, dispatched_at, created_at, updated_at, run,
                            queue
                     FROM durable_workflows",
                )?;
                let mut q = stmt.query([])?;
                while let Some(r) = q.next()? {
                    let row = Row {
                        status: r.get(1)?,
                        dedup_id: r.get(2)?,
                        dispatched_at: r.get(3)?,
                        created_at: r.get(4)?,
                        updated_at: r.get(5)?,
                        run: r.get(6)?,
                        queue: r.get(7)?,
                    };
                    rows.insert(r.get(0)?, row);
                }
            }
            Journal::Postgres { server, schema } => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let read = runtime.block_on(async {
                    let (client, connection) =
                        tokio_postgres::connect(server, tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    client
                        .query(
                            &format!(
                                "SELECT id, status, dedup_id, dispatched_at, created_at,
                                        updated_at, run, queue
                                 FROM {schema}.workflows"
                            ),
                            &[],
                        )
                        .await
                })?;
                for r in read {
                    let row = Row {
                        status: r.try_get(1)?,
                        dedup_id: r.try_get(2)?,
                        dispatched_at: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                        updated_at: r.try_get(5)?,
                        run: r.try_get(6)?,
                        queue: r.try_get(7)?,
                    };
                    rows.insert(r.try_get(0)?, row);
                }
            }
        }
        Ok(rows)
    }
}

#[test]
fn queue_history_holds_under_sigkill_on_sqlite() -> Res<()> {
    let dir = tempfile::tempdir()?;
    history(Journal::Sqlite(dir.path().join("queues.db")), 1, dir.path())
}

#[test]
fn queue_history_holds_under_sigkill_with_three_processes_on_postgres() -> Res<()> {
    let dir = tempfile::tempdir()?;
    let server = durable_testkit::postgres::database_url();
    let schema = format!(
        "queue_history_{}_{}",
        std::process::id(),
        now_us() % 1_000_000
    );
    history(Journal::Postgres { server, schema }, 3, dir.path())
}

/// Runs the history on `journal` with `workers` processes at once, writing the side
/// log in `dir`, and checks it.
fn history(journal: Journal, workers: usize, dir: &Path) -> Res<()> {
    let seed = match std::env::var("QUEUE_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => u64::try_from(now_us())?,
    };
    let kills_wanted: usize = std::env::var("QUEUE_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    println!("queue_history: QUEUE_SEED={seed} QUEUE_KILLS={kills_wanted}");
    // Enough work for the kills: a scale holds about 20 kills' worth, so 12 each.
    let scale = u32::try_from(kills_wanted.div_ceil(12).max(1))?;
    let load = Load { scale };
    let mut rng = Rng(seed);
    let arg = journal.arg();
    let log = dir.join("side.log");

    // Kill one at random moments, while they still have work, and start it again.
    let mut killed: HashMap<u32, i64> = HashMap::new();
    let mut children: Vec<Child> = (0..workers)
        .map(|_| start(&arg, &log, scale))
        .collect::<Res<_>>()?;
    while killed.len() < kills_wanted {
        std::thread::sleep(Duration::from_millis(60) + rng.up_to(Duration::from_millis(340)));
        let i = usize::try_from(rng.next() % workers as u64)?;
        if let Some(status) = children[i].try_wait()? {
            // It finished everything: the load is too short for the kills asked for.
            let mut stderr = String::new();
            if let Some(e) = children[i].stderr.as_mut() {
                std::io::Read::read_to_string(e, &mut stderr)?;
            }
            panic!(
                "a worker ended ({status}) after {} kills; it should still have work: {stderr}",
                killed.len()
            );
        }
        children[i].kill()?;
        children[i].wait()?;
        killed.insert(children[i].id(), now_us());
        children[i] = start(&arg, &log, scale)?;
    }
    // Then to the end.
    let deadline = Instant::now() + Duration::from_secs(120 * u64::from(scale));
    for child in &mut children {
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            assert!(Instant::now() < deadline, "the last run did not finish");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().ok_or("stderr")?, &mut stderr)?;
        assert!(status.success(), "a last run failed: {stderr}");
    }

    // The side log.
    let mut bodies: BTreeMap<String, Vec<Body>> = BTreeMap::new();
    let mut enqueued: Vec<String> = Vec::new();
    for line in std::fs::read_to_string(&log)?.lines() {
        let mut parts = line.split(' ');
        let (Some(at), Some(pid), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (at, pid): (i64, u32) = (at.parse()?, pid.parse()?);
        let id = parts.next().unwrap_or_default().to_owned();
        match what {
            "start" => bodies.entry(id).or_default().push(Body {
                pid,
                start: at,
                end: None,
            }),
            "end" => {
                let body = bodies
                    .get_mut(&id)
                    .and_then(|b| b.iter_mut().rev().find(|b| b.pid == pid && b.end.is_none()))
                    .ok_or(format!("{id} ended in {pid} without starting there"))?;
                body.end = Some(at);
            }
            "enqueued" => enqueued.push(id),
            _ => {}
        }
    }
    // A body ends when it logs its end, or when its process was killed.
    let span = |b: &Body| -> Res<(i64, i64)> {
        let end = match (b.end, killed.get(&b.pid)) {
            (Some(end), _) => end,
            (None, Some(&kill)) => kill,
            (None, None) => return Err(format!("a body in {} never ended, unkilled", b.pid).into()),
        };
        Ok((b.start, end))
    };

    // The journal.
    let rows = journal.rows()?;

    // Every enqueued item completed; so did every item of the journal; none is missing.
    for id in &enqueued {
        assert!(
            rows.contains_key(id),
            "{id} was enqueued but is not in the journal"
        );
    }
    for (id, row) in &rows {
        assert_eq!(row.status, "completed", "{id} did not complete");
        assert!(bodies.contains_key(id), "{id} completed without a body");
    }
    let fixed = (0..50 * scale)
        .map(|i| format!("g-{i:04}"))
        .chain((0..60 * scale).map(|i| format!("t-{i:04}")))
        .chain((0..40 * scale).map(|i| format!("r-{i:04}")))
        .chain((0..30 * scale).map(|i| format!("l-{i:04}")));
    for id in fixed {
        assert!(rows.contains_key(&id), "{id} is missing");
    }

    // One body of an item at a time, and a second one only after a kill.
    let mut reruns = 0;
    for (id, runs) in &bodies {
        for pair in runs.windows(2) {
            let (first, second) = (span(&pair[0])?, span(&pair[1])?);
            assert!(first.1 <= second.0, "{id} ran twice at once: {pair:?}");
            assert!(
                killed.contains_key(&pair[0].pid),
                "{id} ran again though its process was not killed: {pair:?}"
            );
            reruns += 1;
        }
    }

    // Concurrency, per queue and per partition, at every instant.
    let mut by_queue: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    let mut by_partition: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    let mut by_process: HashMap<(&str, u32), Vec<(i64, i64)>> = HashMap::new();
    for (id, runs) in &bodies {
        for b in runs {
            let s = span(b)?;
            by_queue.entry(Load::queue_of(id)).or_default().push(s);
            if Load::per_process(Load::queue_of(id)).is_some() {
                by_process
                    .entry((Load::queue_of(id), b.pid))
                    .or_default()
                    .push(s);
            }
            if let Some(p) = load.partition_of(id) {
                by_partition.entry(p).or_default().push(s);
            }
        }
    }
    for (queue, spans) in &by_queue {
        let most = most_at_once(spans);
        assert!(
            most <= Load::concurrency(queue),
            "{most} bodies of queue {queue} ran at once"
        );
        println!(
            "queue {queue}: at most {most} at once, {} bodies",
            spans.len()
        );
    }
    for ((queue, pid), spans) in &by_process {
        let most = most_at_once(spans);
        let limit = Load::per_process(queue).unwrap_or(usize::MAX);
        assert!(
            most <= limit,
            "{most} bodies of queue {queue} ran at once in process {pid} (limit {limit})"
        );
    }
    let processes = by_process.len();
    for (partition, spans) in &by_partition {
        assert!(
            most_at_once(spans) <= 1,
            "partition {partition} ran more than one at once"
        );
    }

    // The rate limit of `global` (8 per 500 ms), in every window, from the journal.
    let mut starts: Vec<i64> = rows
        .values()
        .filter(|r| r.queue.as_deref() == Some("global"))
        .filter_map(|r| r.dispatched_at)
        .collect();
    starts.sort_unstable();
    for (i, &at) in starts.iter().enumerate() {
        let in_window = starts[..=i].iter().filter(|&&t| t > at - 500).count();
        assert!(
            in_window <= 8,
            "{in_window} dispatches of global in the 500 ms up to {at}"
        );
    }

    // Deduplicated pairs never overlapped while pending.
    let mut by_key: HashMap<&str, Vec<(i64, i64, &str)>> = HashMap::new();
    for (id, r) in &rows {
        if let Some(key) = r.dedup_id.as_deref() {
            by_key
                .entry(key)
                .or_default()
                .push((r.created_at, r.updated_at, id));
        }
    }
    let mut both = 0;
    for (key, mut held) in by_key {
        held.sort_unstable();
        for pair in held.windows(2) {
            // The second's time is taken when its enqueue is called, a moment before
            // the writer takes it: 50 ms of slack.
            assert!(
                pair[0].1 <= pair[1].0 + 50,
                "{} and {} of {key} were pending at once",
                pair[0].2,
                pair[1].2
            );
            both += 1;
        }
    }

    // The priority queue: never an item dispatched while one before it (by priority,
    // then arrival) waited. A workflow's creation time is taken when its enqueue is
    // called, a moment before it commits: some slack, more with many processes.
    let slack = if workers > 1 { 250 } else { 50 };
    let prio_rows: Vec<(&String, &Row)> = rows
        .iter()
        .filter(|(id, _)| Load::queue_of(id) == "prio")
        .collect();
    for (x, xr) in &prio_rows {
        let Some(x_at) = xr.dispatched_at else {
            continue;
        };
        for (y, yr) in &prio_rows {
            let before = (Load::priority_of(y), yr.run) < (Load::priority_of(x), xr.run);
            let waited = yr.created_at + slack < x_at && yr.dispatched_at.is_none_or(|t| t > x_at);
            assert!(
                !(before && waited),
                "{x} (priority {}) was dispatched at {x_at} while {y} (priority {}) waited",
                Load::priority_of(x),
                Load::priority_of(y)
            );
        }
    }
    // On SQLite one process queues them all before any dispatch: dispatched exactly
    // in order of priority, then of arrival.
    let mut prio: Vec<(i64, i64, i64, &str)> = rows
        .iter()
        .filter(|(id, _)| Load::queue_of(id) == "prio")
        .map(|(id, r)| {
            (
                r.dispatched_at.unwrap_or(i64::MAX),
                Load::priority_of(id),
                r.run,
                id.as_str(),
            )
        })
        .collect();
    prio.sort_unstable();
    for pair in prio.windows(2).filter(|_| workers == 1) {
        assert!(
            (pair[0].1, pair[0].2) <= (pair[1].1, pair[1].2),
            "{} (priority {}) was dispatched before {} (priority {})",
            pair[1].3,
            pair[1].1,
            pair[0].3,
            pair[0].1
        );
    }
    println!(
        "queue_history: {workers} worker(s) at once, {} kills, {} items, {reruns} bodies run \
         again after a kill, {both} deduplicated pairs both run, {processes} processes ran \
         the per-process queue",
        killed.len(),
        rows.len()
    );
    Ok(())
}
