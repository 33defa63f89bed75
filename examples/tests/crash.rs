//! Process-level crash test for the `checkout` example.
//!
//! Property: a worker process SIGKILLed at random moments (before any step, in the middle
//! of steps, near the end) and restarted each time finishes exactly like a run that was
//! never interrupted: the same result for every workflow, the same recorded step at every
//! path (each recorded once), and no step body runs again once its record has committed.
//!
//! The soak that runs with the test suite kills the worker 100 times or more; the long
//! one (`cargo test -p durable-examples --test crash -- --ignored`) 5,000 times. At the
//! end of every round, each workflow has finished with 0 lost and 0 duplicated step
//! records.
//!
//! The seed comes from `CRASH_SEED` (or the clock) and is printed; rerun a failure with
//! `CRASH_SEED=<seed> cargo test -p durable-examples --test crash -- --nocapture`.

mod common;

use common::Rng;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

const ORDERS: usize = 8;
const STEP_DELAY_MS: u64 = 25;
/// Kills in the soak that runs with the test suite (well under 2 minutes on 2 cores).
const SOAK_KILLS: usize = 100;
/// Kills in the long soak: `cargo test -p durable-examples --test crash -- --ignored`.
const LONG_SOAK_KILLS: usize = 5_000;
/// A round that needs more restarts than this is not making progress.
const MAX_RUNS_PER_ROUND: usize = 300;

type Res<T> = Result<T, Box<dyn std::error::Error>>;
type StepKey = (String, String);

/// A running worker process; killed if the test panics while it runs.
struct Worker(Option<Child>);

impl Worker {
    fn start(journal: &Path, log: &Path) -> Res<Worker> {
        let child = Command::new(env!("CARGO_BIN_EXE_checkout"))
            .arg("worker")
            .arg("--journal")
            .arg(journal)
            .arg("--log")
            .arg(log)
            .args(["--orders", &ORDERS.to_string()])
            .args(["--step-delay-ms", &STEP_DELAY_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Worker(Some(child)))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("worker already collected")
    }

    /// Waits for the process to exit, but no longer than `limit`: `None` if it still runs.
    fn wait_up_to(&mut self, limit: Duration) -> Res<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
        }
    }

    /// SIGKILLs the process (`Child::kill` on Unix) and reaps it.
    fn kill(&mut self) -> Res<ExitStatus> {
        self.child().kill()?;
        Ok(self.child().wait()?)
    }

    /// The exit status, stdout and stderr of a process that has exited.
    fn collect(mut self) -> Res<(ExitStatus, String, String)> {
        let child = self.0.take().expect("worker already collected");
        let output = child.wait_with_output()?;
        Ok((
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

/// Opens a copy of a journal (see `common::copy_for_reading`); `None` if no worker
/// created its tables yet.
fn open_journal(journal: &Path) -> Res<Option<Connection>> {
    let Some(copy) = common::copy_for_reading(journal)? else {
        return Ok(None);
    };
    let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let has_steps: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'durable_steps')",
        [],
        |r| r.get(0),
    )?;
    Ok(has_steps.then_some(conn))
}

/// Every recorded step: `(workflow id, path, name)`.
fn step_rows(journal: &Path) -> Res<BTreeSet<(String, String, String)>> {
    let Some(conn) = open_journal(journal)? else {
        return Ok(BTreeSet::new());
    };
    let mut stmt = conn.prepare(
        "SELECT w.id, s.path, s.name FROM durable_steps s JOIN durable_workflows w USING (run)",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The `(workflow id, path)` of every committed step.
fn committed(journal: &Path) -> Res<BTreeSet<StepKey>> {
    Ok(step_rows(journal)?
        .into_iter()
        .map(|(w, p, _)| (w, p))
        .collect())
}

/// `(workflow id, path, step name)` of every step body a worker started, from its log.
fn log_entries(log: &Path) -> Res<Vec<(String, String, String)>> {
    if !log.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            match (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) {
                (Some(w), Some(p), Some(n), Some(_started), None) => {
                    Ok((w.to_owned(), p.to_owned(), n.to_owned()))
                }
                _ => Err(format!("malformed step log line {line:?} in {}", log.display()).into()),
            }
        })
        .collect()
}

#[test]
fn sigkilled_worker_finishes_like_an_uninterrupted_run() -> Res<()> {
    soak(SOAK_KILLS)
}

#[test]
#[ignore = "the long soak: 5,000 kills, about 10 minutes on 2 cores"]
fn sigkilled_worker_survives_a_long_soak() -> Res<()> {
    soak(LONG_SOAK_KILLS)
}

/// Step records that appear more than once: `(workflow id, path, count)`.
fn duplicated(journal: &Path) -> Res<Vec<(String, String, i64)>> {
    let Some(conn) = open_journal(journal)? else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare(
        "SELECT w.id, s.path, COUNT(*) FROM durable_steps s JOIN durable_workflows w USING (run)
         GROUP BY s.run, s.path HAVING COUNT(*) > 1",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// SIGKILLs a worker at `min_kills` or more seeded random moments, restarting it each
/// time, and checks every round ends exactly like the uninterrupted run.
fn soak(min_kills: usize) -> Res<()> {
    let seed = match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => {
            u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() % (1 << 63))?
        }
    };
    println!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir()?;
    let test_start = Instant::now();

    // The reference: one run that nobody interrupts.
    let baseline_journal = dir.path().join("baseline.db");
    let started = Instant::now();
    let mut worker = Worker::start(&baseline_journal, &dir.path().join("baseline.log"))?;
    let status = worker.wait_up_to(Duration::from_secs(60))?;
    let baseline_time = started.elapsed();
    assert!(
        status.is_some(),
        "the uninterrupted run did not finish within 60 s"
    );
    let (status, stdout, stderr) = worker.collect()?;
    assert!(
        status.success(),
        "the uninterrupted run failed ({status}):\n{stdout}\n{stderr}"
    );
    let expected_results = results(&stdout);
    assert_eq!(
        expected_results.len(),
        ORDERS,
        "one RESULT line per order:\n{stdout}"
    );
    let expected_rows = step_rows(&baseline_journal)?;
    println!(
        "uninterrupted run: {} ms, {} steps recorded",
        baseline_time.as_millis(),
        expected_rows.len()
    );

    // Kill moments span the reference run's duration: some land before the runtime has
    // opened the journal, some mid-steps, some after every step has committed.
    let mut max_delay = baseline_time;
    // If the machine slows down (runs take longer than the reference did), runs killed
    // this early may stop making progress; then the window grows.
    let mut stalled = 0;
    let mut kills = 0;
    let mut kills_by_progress = [0usize; 3]; // nothing committed, some, all
    let mut round = 0;
    while kills < min_kills {
        round += 1;
        let journal = dir.path().join(format!("round-{round}.db"));
        let mut before: BTreeSet<StepKey> = BTreeSet::new();
        for run in 1.. {
            assert!(
                run <= MAX_RUNS_PER_ROUND,
                "round {round} made no progress in {MAX_RUNS_PER_ROUND} runs (seed {seed})"
            );
            let log = dir.path().join(format!("round-{round}-run-{run}.log"));
            let mut worker = Worker::start(&journal, &log)?;
            // Mostly uniform over the whole window; one kill in four in its first fifth,
            // where the runtime is still starting and recovering.
            let window = if rng.next().is_multiple_of(4) {
                max_delay / 5
            } else {
                max_delay
            };
            let delay = rng.up_to(window);
            let finished = match worker.wait_up_to(delay)? {
                Some(_) => true,
                // A kill that races with a normal exit finds a zombie: the exit status
                // says which happened.
                None => worker.kill()?.success(),
            };
            let (status, stdout, stderr) = worker.collect()?;

            // No step body ran again once its record had committed.
            for (workflow_id, path, name) in log_entries(&log)? {
                assert!(
                    !before.contains(&(workflow_id.clone(), path.clone())),
                    "round {round} run {run}: step {path} ({name}) of {workflow_id} ran again \
                     after its record committed (seed {seed})"
                );
            }

            if finished {
                assert!(
                    status.success(),
                    "round {round} run {run} failed ({status}) (seed {seed}):\n{stdout}\n{stderr}"
                );
                assert_eq!(
                    results(&stdout),
                    expected_results,
                    "round {round} (seed {seed})"
                );
                // Nothing lost, nothing extra, nothing twice.
                assert_eq!(
                    step_rows(&journal)?,
                    expected_rows,
                    "round {round} (seed {seed})"
                );
                let twice = duplicated(&journal)?;
                assert!(
                    twice.is_empty(),
                    "round {round}: step records duplicated (seed {seed}): {twice:?}"
                );
                println!("round {round}: finished after {} kill(s)", run - 1);
                break;
            }

            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    status.signal(),
                    Some(9),
                    "round {round} run {run} should have died of SIGKILL ({status}):\n{stderr}"
                );
            }
            kills += 1;
            let after = committed(&journal)?;
            assert!(
                after.is_superset(&before),
                "round {round} run {run}: committed steps disappeared (seed {seed})"
            );
            let progress = match after.len() {
                0 => 0,
                n if n < expected_rows.len() => 1,
                _ => 2,
            };
            kills_by_progress[progress] += 1;
            if after.len() == before.len() {
                stalled += 1;
                if stalled == 10 {
                    stalled = 0;
                    max_delay *= 2;
                    println!("10 kills in a row without progress: kill window now {max_delay:?}");
                }
            } else {
                stalled = 0;
            }
            println!(
                "kill {kills}: round {round} run {run} after {} ms, {}/{} steps committed",
                delay.as_millis(),
                after.len(),
                expected_rows.len()
            );
            before = after;
        }
    }
    println!(
        "{kills} kills in {round} round(s), {} s, 0 lost and 0 duplicated step records: {} before \
         any step committed, {} mid-run, {} with every step committed",
        test_start.elapsed().as_secs_f32(),
        kills_by_progress[0],
        kills_by_progress[1],
        kills_by_progress[2]
    );
    Ok(())
}
