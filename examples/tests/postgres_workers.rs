//! Many processes on one PostgreSQL journal, killed at random moments.
//!
//! Three `checkout worker` processes run the same 300 orders on one journal: each order
//! runs in the worker that created it, the others watch for its result. A random worker
//! is SIGKILLed at 10 moments or more and started again at once; the survivors (or the
//! new process) take its orders over. Then:
//! - every worker's last run reports the result an uninterrupted single worker got, for
//!   every order;
//! - the journal holds exactly the uninterrupted run's step records (workflow, path,
//!   name), each once;
//! - no step body started after its record was made (each body logs when it starts; a
//!   record's `finished_at` is taken before its commit), in any process: a step is never
//!   run again once recorded, nor by two owners at once.
//!
//! It prints how long each takeover took: from the kill to the moment no pending order
//! of the killed process was left without a live owner.
//!
//! A second test pauses a worker (SIGSTOP) past its lease in the middle of an order:
//! another worker takes the order over and finishes it, and the paused one, resumed, is
//! refused every record it tries to make for it, and reports the other's result.
//!
//! The seed comes from `CRASH_SEED` (or the clock) and is printed.

mod common;

use common::Rng;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const WORKERS: usize = 3;
const ORDERS: usize = 300;
const STEP_DELAY_MS: u64 = 150;
const LEASE_MS: u64 = 1_000;
const KILLS: usize = 10;

/// A worker process; killed if the test ends while it runs.
struct Worker {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(url: &str, log: &Path) -> Res<Worker> {
        Worker::start_with(url, log, ORDERS, STEP_DELAY_MS)
    }

    fn start_with(url: &str, log: &Path, orders: usize, step_delay_ms: u64) -> Res<Worker> {
        let child = Command::new(env!("CARGO_BIN_EXE_checkout"))
            .arg("worker")
            .args(["--journal", url])
            .arg("--log")
            .arg(log)
            .args(["--orders", &orders.to_string()])
            .args(["--step-delay-ms", &step_delay_ms.to_string()])
            .args(["--lease-ms", &LEASE_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Worker {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn kill(&mut self) -> Res<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits up to `limit` for the worker to exit; its status, stdout and stderr.
    fn finish(&mut self, limit: Duration) -> Res<(std::process::ExitStatus, String, String)> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().ok_or("worker already collected")?;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.kill()?;
                return Err(format!("a worker did not finish within {limit:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self
            .child
            .take()
            .ok_or("worker already collected")?
            .wait_with_output()?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The `RESULT` lines a worker printed, sorted.
fn results(stdout: &str) -> Vec<String> {
    let mut lines: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("RESULT "))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Runs `f` with a client of the test server, on a runtime of its own.
fn with_db<T>(
    url: &str,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Res<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        f(&client).await
    })?)
}

/// Every recorded step of the journal in `schema`: `(workflow, path, name)` and when
/// its record was made (`finished_at`, ms).
fn steps(url: &str, schema: &str) -> Res<BTreeMap<(String, String, String), i64>> {
    with_db(url, async |c| {
        let rows = c
            .query(
                &format!(
                    "SELECT w.id, s.path, s.name, s.finished_at FROM {schema}.steps s
                     JOIN {schema}.workflows w USING (run)"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
            .collect())
    })
}

/// How many pending orders the executor of process `pid` still owns while it is gone.
fn stranded(url: &str, schema: &str, pid: u32) -> Res<i64> {
    with_db(url, async |c| {
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.workflows w JOIN {schema}.executors e
                     ON e.id = w.owner
                     WHERE w.status = 'pending' AND e.name LIKE '%:' || $1::text"
                ),
                &[&pid.to_string()],
            )
            .await?;
        Ok(row.get(0))
    })
}

/// Step log lines: `(workflow, path, name, started µs)`. A line the worker was killed
/// while writing has no newline yet, and is left out.
fn log_lines(log: &Path) -> Res<Vec<(String, String, String, i64)>> {
    if !log.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(log)?;
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|line| {
            let p: Vec<&str> = line.split(' ').collect();
            match p.as_slice() {
                [w, path, name, us] => Ok((
                    (*w).to_owned(),
                    (*path).to_owned(),
                    (*name).to_owned(),
                    us.parse()?,
                )),
                _ => Err(format!("malformed log line {line:?}").into()),
            }
        })
        .collect()
}

#[test]
fn three_workers_sigkilled_finish_every_order_once() -> Res<()> {
    let seed = match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => {
            u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() % (1 << 63))?
        }
    };
    println!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let server = durable_testkit::postgres::database_url();
    let url_of = |schema: &str| {
        let sep = if server.contains('?') { '&' } else { '?' };
        format!("{server}{sep}schema={schema}")
    };
    let tag = format!("{}_{}", std::process::id(), seed % 1_000_000);
    let dir = tempfile::tempdir()?;

    // The reference: one worker, never interrupted.
    let base_schema = format!("workers_base_{tag}");
    let started = Instant::now();
    let mut base = Worker::start(&url_of(&base_schema), &dir.path().join("base.log"))?;
    let (status, stdout, stderr) = base.finish(Duration::from_secs(120))?;
    assert!(
        status.success(),
        "the reference run failed:\n{stdout}\n{stderr}"
    );
    let expected = results(&stdout);
    assert_eq!(expected.len(), ORDERS);
    let expected_steps: BTreeSet<_> = steps(&server, &base_schema)?.into_keys().collect();
    println!(
        "uninterrupted: {ORDERS} orders, {} steps, {} ms",
        expected_steps.len(),
        started.elapsed().as_millis()
    );

    // Three workers, killed at random.
    let schema = format!("workers_{tag}");
    let url = url_of(&schema);
    let mut logs = 0;
    let mut next_log = || {
        logs += 1;
        dir.path().join(format!("worker-{logs}.log"))
    };
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|_| Worker::start(&url, &next_log()))
        .collect::<Res<_>>()?;
    let mut all_logs: Vec<std::path::PathBuf> = workers.iter().map(|w| w.log.clone()).collect();
    let mut takeovers = Vec::new();
    for kill in 1..=KILLS {
        std::thread::sleep(Duration::from_millis(200) + rng.up_to(Duration::from_millis(600)));
        let victim = usize::try_from(rng.next() % WORKERS as u64)?;
        let pid = workers[victim].pid();
        workers[victim].kill()?;
        let killed = Instant::now();
        // Half the time it comes back at once (its new process claims what the old one
        // left); otherwise only after the others have taken its orders over.
        let at_once = rng.next().is_multiple_of(2);
        let log = next_log();
        all_logs.push(log.clone());
        if at_once {
            workers[victim] = Worker::start(&url, &log)?;
        }
        // Taken over: none of its pending orders is left with the dead executor.
        let deadline = killed + Duration::from_secs(30);
        let mut left = stranded(&server, &schema, pid)?;
        while left > 0 {
            assert!(
                Instant::now() < deadline,
                "orders of killed worker {pid} were not taken over within 30 s (seed {seed})"
            );
            std::thread::sleep(Duration::from_millis(5));
            left = stranded(&server, &schema, pid)?;
        }
        let took = killed.elapsed();
        takeovers.push((at_once, took));
        if !at_once {
            workers[victim] = Worker::start(&url, &log)?;
        }
        let by = if at_once {
            "its restart"
        } else {
            "the survivors"
        };
        println!(
            "kill {kill}: worker {victim} (pid {pid}), taken over by {by} in {} ms",
            took.as_millis()
        );
    }
    for (i, w) in workers.iter_mut().enumerate() {
        let (status, stdout, stderr) = w.finish(Duration::from_secs(180))?;
        assert!(
            status.success(),
            "worker {i} failed (seed {seed}):\n{stdout}\n{stderr}"
        );
        assert_eq!(
            results(&stdout),
            expected,
            "worker {i}'s results (seed {seed})"
        );
    }

    // The journal holds the reference's records, each once.
    let recorded = steps(&server, &schema)?;
    let keys: BTreeSet<_> = recorded.keys().cloned().collect();
    assert_eq!(keys, expected_steps, "the recorded steps (seed {seed})");
    // No body started after its step was recorded.
    let mut bodies = 0;
    for log in &all_logs {
        for (w, path, name, started_us) in log_lines(log)? {
            bodies += 1;
            let finished_ms = recorded
                .get(&(w.clone(), path.clone(), name.clone()))
                .ok_or_else(|| format!("step {path} ({name}) of {w} ran but is not recorded"))?;
            assert!(
                started_us / 1000 <= *finished_ms,
                "step {path} ({name}) of {w} started at {started_us} µs, after its record \
                 (made at {finished_ms} ms) (seed {seed})"
            );
        }
    }
    println!(
        "{KILLS} kills, {bodies} step bodies run for {} steps",
        expected_steps.len()
    );
    for (restarted, by) in [
        (true, "a restart"),
        (false, "the survivors (lease {LEASE_MS} ms)"),
    ] {
        let mut took: Vec<u128> = takeovers
            .iter()
            .filter(|(r, _)| *r == restarted)
            .map(|(_, t)| t.as_millis())
            .collect();
        took.sort_unstable();
        if let (Some(min), Some(max)) = (took.first(), took.last()) {
            println!(
                "takeover by {}: {} kills, min {min} ms, median {} ms, max {max} ms",
                by.replace("{LEASE_MS}", &LEASE_MS.to_string()),
                took.len(),
                took[took.len() / 2]
            );
        }
    }
    Ok(())
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) -> Res<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    assert!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

#[test]
fn a_paused_worker_taken_over_records_nothing_more() -> Res<()> {
    let server = durable_testkit::postgres::database_url();
    let schema = format!("workers_paused_{}", std::process::id());
    let url = format!(
        "{server}{}schema={schema}",
        if server.contains('?') { '&' } else { '?' }
    );
    let dir = tempfile::tempdir()?;
    // One order whose steps take 700 ms each: worker A is paused inside one.
    let mut a = Worker::start_with(&url, &dir.path().join("a.log"), 1, 700)?;
    let a_pid = a.pid();
    let first_step_recorded = Instant::now() + Duration::from_secs(30);
    while steps(&server, &schema).map(|s| s.len()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < first_step_recorded,
            "worker A recorded no step in 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Inside its next step.
    std::thread::sleep(Duration::from_millis(300));
    signal(a_pid, "STOP")?;
    let paused = Instant::now();
    let before: BTreeSet<_> = steps(&server, &schema)?.into_keys().collect();

    // B takes the order over once A's heartbeat is older than A's lease, and finishes it.
    let mut b = Worker::start_with(&url, &dir.path().join("b.log"), 1, 700)?;
    let (status, stdout, stderr) = b.finish(Duration::from_secs(60))?;
    assert!(status.success(), "worker B failed:\n{stdout}\n{stderr}");
    let b_results = results(&stdout);
    println!(
        "B finished {} ms after A was paused",
        paused.elapsed().as_millis()
    );

    signal(a_pid, "CONT")?;
    // A's run of the order is refused its next record and stops; A's handle follows
    // the order where it runs now, and reports the result B got.
    let (status, a_out, a_err) = a.finish(Duration::from_secs(30))?;
    assert!(status.success(), "worker A failed:\n{a_out}\n{a_err}");
    assert_eq!(results(&a_out), b_results, "A reports what B got");

    // Only B's records after the takeover: none of A's was made after A was marked
    // gone, and every step A had not recorded before the pause is B's.
    let (a_executor, dead_at_ms, rows) = with_db(&server, async |c| {
        let a = c
            .query_one(
                &format!(
                    "SELECT id, (extract(epoch FROM dead_at) * 1000)::bigint FROM {schema}.executors
                     WHERE name LIKE '%:' || $1::text ORDER BY id LIMIT 1"
                ),
                &[&a_pid.to_string()],
            )
            .await?;
        let rows = c
            .query(
                &format!(
                    "SELECT w.id, s.path, s.name, s.executor, s.finished_at FROM {schema}.steps s
                     JOIN {schema}.workflows w USING (run)"
                ),
                &[],
            )
            .await?;
        let rows: Vec<(String, String, String, Option<i64>, i64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        Ok((a.get::<_, i64>(0), a.get::<_, Option<i64>>(1), rows))
    })?;
    let dead_at_ms = dead_at_ms.ok_or("worker A was never marked gone")?;
    let mut by_a = 0;
    for (w, path, name, executor, finished_at) in &rows {
        if *executor == Some(a_executor) {
            by_a += 1;
            assert!(
                *finished_at <= dead_at_ms,
                "step {path} ({name}) of {w} was recorded by A at {finished_at} ms, after A was \
                 taken over at {dead_at_ms} ms"
            );
            assert!(
                before.contains(&(w.clone(), path.clone(), name.clone())),
                "step {path} ({name}) of {w} was recorded by A after it was paused"
            );
        }
    }
    println!(
        "A recorded {by_a} step(s) before its pause, B the other {}; A was refused after it resumed",
        rows.len() - by_a
    );
    assert_eq!(b_results.len(), 1, "B reports the order:\n{b_results:?}");
    assert!(b_results[0].contains("Ok("), "B's result: {b_results:?}");
    Ok(())
}

#[test]
fn the_database_restarting_twice_loses_and_strands_nothing() -> Res<()> {
    use durable_testkit::postgres::{Fsync, Server};
    const ORDERS: usize = 200;
    // A server of its own, which the test crashes: as durable as a production one.
    let server = Server::start(Fsync::On);
    let dir = tempfile::tempdir()?;
    let url = |schema: &str| format!("{}?schema={schema}", server.url);

    let mut base = Worker::start_with(
        &url("restart_base"),
        &dir.path().join("base.log"),
        ORDERS,
        200,
    )?;
    let (status, stdout, stderr) = base.finish(Duration::from_secs(120))?;
    assert!(
        status.success(),
        "the reference run failed:\n{stdout}\n{stderr}"
    );
    let expected = results(&stdout);
    let expected_steps: BTreeSet<_> = steps(&server.url, "restart_base")?.into_keys().collect();

    let mut worker = Worker::start_with(&url("restarted"), &dir.path().join("w.log"), ORDERS, 300)?;
    for (restart, after) in [(1, 600), (2, 300)] {
        std::thread::sleep(Duration::from_millis(after));
        let before = steps(&server.url, "restarted")?.len();
        let restarted = Instant::now();
        server.restart();
        println!(
            "restart {restart}: {before}/{} steps recorded; the server was back in {} ms",
            expected_steps.len(),
            restarted.elapsed().as_millis()
        );
    }
    let (status, stdout, stderr) = worker.finish(Duration::from_secs(120))?;
    assert!(status.success(), "the worker failed:\n{stdout}\n{stderr}");
    assert_eq!(results(&stdout), expected, "the results");
    let recorded = steps(&server.url, "restarted")?;
    let keys: BTreeSet<_> = recorded.keys().cloned().collect();
    assert_eq!(keys, expected_steps, "the recorded steps");
    let pending = with_db(&server.url, async |c| {
        let row = c
            .query_one(
                "SELECT count(*) FROM restarted.workflows WHERE status = 'pending'",
                &[],
            )
            .await?;
        Ok(row.get::<_, i64>(0))
    })?;
    assert_eq!(pending, 0, "workflows left pending");
    for (w, path, name, started_us) in log_lines(&dir.path().join("w.log"))? {
        let finished_ms = recorded
            .get(&(w.clone(), path.clone(), name.clone()))
            .ok_or_else(|| format!("step {path} ({name}) of {w} ran but is not recorded"))?;
        assert!(
            started_us / 1000 <= *finished_ms,
            "step {path} ({name}) of {w} started after its record"
        );
    }
    Ok(())
}
