//! Process-level crash tests for the workflow primitives, against the
//! `primitives-worker` binary (`examples/src/primitives_worker.rs`).
//!
//! A worker is SIGKILLed and restarted, and each test checks what survives:
//!
//! - during a durable sleep: the step after the sleep starts no earlier than the
//!   wake-up time recorded before the kill, and within a second of it;
//! - during `recv` waits, with messages in flight: at every kill, each message sent is
//!   either waiting or received (recorded) exactly once; at the end every message has
//!   been received once, in the order its sender sent it, and none is left waiting;
//! - between a child's completion and its parent's record of it: the parent finishes
//!   with the child's result, and no step body of a completed child runs again;
//! - inside a transaction step: at every kill, a row exists exactly when its step is
//!   recorded; at the end every row exists exactly once;
//! - while workflows are dormant (dropped from memory while they wait, at once: see
//!   `evict_parked_after`) in every kind of wait: each finishes with the value an
//!   uninterrupted run gets, and no step recorded before a kill runs again.
//!
//! Kill moments come from a seed, `PRIMITIVES_SEED` (or the clock), printed by each
//! test; rerun a failure with
//! `PRIMITIVES_SEED=<seed> cargo test -p durable-examples --test primitives_crash -- --nocapture`.

mod common;

use common::Rng;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------
// Helpers: seeded randomness, the worker process, its log, the journal.

/// The seed of a test's kill moments: `PRIMITIVES_SEED`, or the clock (printed).
fn seeded(test: &str) -> Res<Rng> {
    let seed = match std::env::var("PRIMITIVES_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => {
            u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() % (1 << 63))?
        }
    };
    println!("{test}: PRIMITIVES_SEED={seed}");
    Ok(Rng(seed))
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A running worker process; killed if the test panics while it runs.
struct Worker(Option<Child>);

impl Worker {
    fn start(scenario: &str, journal: &Path, log: &Path) -> Res<Worker> {
        Worker::start_with(scenario, journal, log, &[])
    }

    /// [`Worker::start`] with more arguments.
    fn start_with(scenario: &str, journal: &Path, log: &Path, more: &[&str]) -> Res<Worker> {
        let child = Command::new(env!("CARGO_BIN_EXE_primitives-worker"))
            .arg(scenario)
            .arg("--journal")
            .arg(journal)
            .arg("--log")
            .arg(log)
            .args(more)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Worker(Some(child)))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("worker already collected")
    }

    fn exited(&mut self) -> Res<bool> {
        Ok(self.child().try_wait()?.is_some())
    }

    /// Waits for the process to exit, but no longer than `limit`: `false` if it still
    /// runs.
    fn wait_up_to(&mut self, limit: Duration) -> Res<bool> {
        let deadline = Instant::now() + limit;
        while !self.exited()? {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(true)
    }

    /// SIGKILLs the process (`Child::kill` on Unix) and checks it died of it, rather
    /// than exiting on its own first.
    fn kill(self, what: &str) -> Res<()> {
        match self.kill_unless_finished(what)? {
            None => Ok(()),
            Some(_) => panic!("{what}: the worker finished before it could be killed"),
        }
    }

    /// SIGKILLs the process, unless it finished on its own first (it can, between the
    /// last look and the signal): then returns its sorted `RESULT` lines.
    fn kill_unless_finished(mut self, what: &str) -> Res<Option<Vec<String>>> {
        self.child().kill()?;
        let (status, stdout, stderr) = self.collect()?;
        if status.success() {
            return Ok(Some(result_lines(&stdout)));
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "{what}: the worker should have died of SIGKILL ({status}):\n{stdout}\n{stderr}"
            );
        }
        #[cfg(not(unix))]
        let _ = (stderr, what);
        Ok(None)
    }

    /// The exit status, stdout and stderr of a process that has exited (or is killed).
    fn collect(mut self) -> Res<(ExitStatus, String, String)> {
        let child = self.0.take().expect("worker already collected");
        let output = child.wait_with_output()?;
        Ok((
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Waits (up to 30 s) for the worker to finish on its own, and returns its sorted
    /// `RESULT` lines.
    fn finish(mut self, what: &str) -> Res<Vec<String>> {
        assert!(
            self.wait_up_to(Duration::from_secs(30))?,
            "{what}: the worker did not finish within 30 s"
        );
        let (status, stdout, stderr) = self.collect()?;
        assert!(
            status.success(),
            "{what}: the worker failed ({status}):\n{stdout}\n{stderr}"
        );
        Ok(result_lines(&stdout))
    }
}

/// A worker's `RESULT` lines, sorted.
fn result_lines(stdout: &str) -> Vec<String> {
    let mut results: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("RESULT "))
        .map(str::to_owned)
        .collect();
    results.sort();
    results
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One log line: `<wall-clock ms> <words...>`.
#[derive(Debug, Clone)]
struct Line {
    ms: i64,
    words: Vec<String>,
}

fn read_log(log: &Path) -> Res<Vec<Line>> {
    if !log.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(log)?;
    // A line the worker was killed in the middle of writing has no newline yet.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| {
            let mut words = l.split(' ').map(str::to_owned);
            let ms = words.next().unwrap_or_default().parse()?;
            Ok(Line {
                ms,
                words: words.collect(),
            })
        })
        .collect()
}

/// Waits (up to 20 s, and while the worker runs) for a log line after the first
/// `skip` that `pred` accepts.
fn wait_for_line(
    worker: &mut Worker,
    log: &Path,
    skip: usize,
    pred: impl Fn(&Line) -> bool,
) -> Res<Option<Line>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = read_log(log)?.into_iter().skip(skip).find(&pred) {
            return Ok(Some(line));
        }
        if worker.exited()? || Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `(workflow id, path, step name)` of every step body logged.
fn step_lines(log: &Path) -> Res<Vec<(String, String, String)>> {
    Ok(read_log(log)?
        .into_iter()
        .filter(|l| l.words.first().map(String::as_str) == Some("step"))
        .map(|l| (l.words[1].clone(), l.words[2].clone(), l.words[3].clone()))
        .collect())
}

/// Opens a copy of a journal (see `common::copy_for_reading`); `None` if no worker
/// created its tables yet.
fn open_journal(journal: &Path) -> Res<Option<Connection>> {
    let Some(copy) = common::copy_for_reading(journal)? else {
        return Ok(None);
    };
    let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let ready: bool = conn.query_row(
        "SELECT COUNT(*) = 2 FROM sqlite_master WHERE type = 'table'
         AND name IN ('durable_steps', 'durable_messages')",
        [],
        |r| r.get(0),
    )?;
    Ok(ready.then_some(conn))
}

fn count(conn: &Connection, sql: &str) -> Res<i64> {
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// `(workflow id, path)` of every recorded step.
fn committed(journal: &Path) -> Res<BTreeSet<(String, String)>> {
    let Some(conn) = open_journal(journal)? else {
        return Ok(BTreeSet::new());
    };
    let mut stmt = conn
        .prepare("SELECT w.id, s.path FROM durable_steps s JOIN durable_workflows w USING (run)")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------
// A durable sleep.

/// Three rounds. In each, the worker is killed during the sleep, restarted at once,
/// and (if enough of the sleep is left) killed again. In the last round the worker
/// stays down past the wake-up time: the step after the sleep then starts at once.
#[test]
fn a_sleep_interrupted_by_sigkill_ends_at_its_original_wake_up_time() -> Res<()> {
    let mut rng = seeded("sleep")?;
    let dir = tempfile::tempdir()?;
    let mut kills = 0;
    for round in 1..=3 {
        let journal = dir.path().join(format!("sleep-{round}.db"));
        let log = dir.path().join(format!("sleep-{round}.log"));
        let what = format!("sleep round {round}");
        let mut wake_at = None;
        let mut run = 0;
        let mut started_at;
        let worker = loop {
            run += 1;
            let seen = read_log(&log)?.len();
            started_at = now_ms();
            let mut worker = Worker::start("sleep", &journal, &log)?;
            let line = wait_for_line(&mut worker, &log, seen, |l| l.words[0] == "wake_at")?;
            let line = line.ok_or_else(|| format!("{what}: the sleep was never recorded"))?;
            let at: i64 = line.words[1].parse()?;
            assert_eq!(
                *wake_at.get_or_insert(at),
                at,
                "{what}: the recorded wake-up time changed"
            );
            // Kill with at least 300 ms of the sleep left, so the kill lands in it.
            let left = at - now_ms() - 300;
            if run > 2 || left <= 0 {
                break worker;
            }
            let delay = rng.up_to(Duration::from_millis(u64::try_from(left)?));
            std::thread::sleep(delay);
            worker.kill(&what)?;
            kills += 1;
            assert!(
                !step_lines(&log)?.iter().any(|s| s.2 == "after_nap"),
                "{what}: the step after the sleep ran before the wake-up time"
            );
            println!(
                "{what}: killed run {run} {} ms before the wake-up time",
                at - now_ms()
            );
            if round == 3 {
                // Down until after the wake-up time.
                std::thread::sleep(Duration::from_millis(u64::try_from(at - now_ms() + 300)?));
            }
        };
        let results = worker.finish(&what)?;
        let wake_at = wake_at.unwrap_or_default();
        let after: Vec<Line> = read_log(&log)?
            .into_iter()
            .filter(|l| l.words.get(3).map(String::as_str) == Some("after_nap"))
            .collect();
        assert_eq!(
            after.len(),
            1,
            "{what}: after_nap ran {} times",
            after.len()
        );
        let started = after[0].ms;
        println!(
            "{what}: {} kill(s); the step after the sleep started {} ms after the wake-up \
             time ({} ms after the last restart)",
            run - 1,
            started - wake_at,
            started - started_at
        );
        assert!(
            started >= wake_at,
            "{what}: the step after the sleep started {} ms before the wake-up time",
            wake_at - started
        );
        // Within a second of the wake-up time, or of the restart if that came later.
        let due = wake_at.max(started_at);
        assert!(
            started <= due + 1000,
            "{what}: the step after the sleep started {} ms after it was due",
            started - due
        );
        assert_eq!(results, [format!("RESULT nap Ok({started})")], "{what}");
    }
    assert!(kills >= 3, "only {kills} kills landed in a sleep");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Messages.

const MESSAGES_PER_FEEDER: u32 = 20;

/// Checks that every message sent so far is exactly once either waiting or received:
/// sends and receives are recorded in the same transaction as the message itself.
/// Returns `(received, waiting)`.
fn messages_balance(journal: &Path, what: &str) -> Res<(i64, i64)> {
    let Some(conn) = open_journal(journal)? else {
        return Ok((0, 0));
    };
    let sent = count(
        &conn,
        "SELECT COUNT(*) FROM durable_steps WHERE name = 'durable::send'",
    )?;
    let received = count(
        &conn,
        "SELECT COUNT(*) FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 'collector')
         AND name = 'durable::recv'",
    )?;
    let waiting = count(&conn, "SELECT COUNT(*) FROM durable_messages")?;
    assert_eq!(
        sent,
        received + waiting,
        "{what}: {sent} sent, but {received} received and {waiting} waiting"
    );
    Ok((received, waiting))
}

#[test]
fn messages_survive_sigkill_during_recv_waits_exactly_once_and_in_order() -> Res<()> {
    let mut rng = seeded("recv")?;
    let dir = tempfile::tempdir()?;
    let total = i64::from(2 * MESSAGES_PER_FEEDER);

    // Kill moments span an uninterrupted run.
    let started = Instant::now();
    Worker::start(
        "recv",
        &dir.path().join("baseline.db"),
        &dir.path().join("baseline.log"),
    )?
    .finish("uninterrupted recv run")?;
    let window = started.elapsed();
    println!("uninterrupted run: {} ms", window.as_millis());

    let (mut kills, mut while_waiting, mut while_in_flight) = (0, 0, 0);
    let mut round = 0;
    // At least 15 kills, and until both kinds of moment were hit twice (bounded).
    while kills < 15 || ((while_waiting < 2 || while_in_flight < 2) && kills < 100) {
        round += 1;
        let journal = dir.path().join(format!("recv-{round}.db"));
        let what = format!("recv round {round}");
        let mut run = 0;
        let results = loop {
            run += 1;
            assert!(run <= 100, "{what}: no progress in 100 runs");
            let log = dir.path().join(format!("recv-{round}-{run}.log"));
            let mut worker = Worker::start("recv", &journal, &log)?;
            let delay = rng.up_to(window);
            if worker.wait_up_to(delay)? {
                break worker.finish(&what)?;
            }
            // It can still finish between the last look and the signal.
            if let Some(results) = worker.kill_unless_finished(&what)? {
                break results;
            }
            kills += 1;
            let (received, waiting) = messages_balance(&journal, &what)?;
            if received < total && waiting == 0 {
                while_waiting += 1;
            }
            if waiting > 0 {
                while_in_flight += 1;
            }
            println!(
                "{what}: kill after {} ms: {received} received, {waiting} waiting",
                delay.as_millis()
            );
        };
        let (received, waiting) = messages_balance(&journal, &what)?;
        assert_eq!((received, waiting), (total, 0), "{what}: at the end");

        assert_eq!(results.len(), 3, "{what}: {results:?}");
        assert_eq!(results[1], "RESULT feed-a Ok(Ok(()))", "{what}");
        assert_eq!(results[2], "RESULT feed-b Ok(Ok(()))", "{what}");
        let list = results[0]
            .strip_prefix("RESULT collector Ok(Ok([")
            .and_then(|s| s.strip_suffix("]))"))
            .ok_or_else(|| format!("{what}: {}", results[0]))?;
        let got: Vec<u32> = list.split(", ").map(str::parse).collect::<Result<_, _>>()?;
        // Each feeder's messages, in the order it sent them: nothing lost, nothing twice.
        let from_a: Vec<u32> = got.iter().copied().filter(|v| *v < 1000).collect();
        let from_b: Vec<u32> = got.iter().copied().filter(|v| *v >= 1000).collect();
        assert_eq!(
            from_a,
            (0..MESSAGES_PER_FEEDER).collect::<Vec<_>>(),
            "{what}"
        );
        assert_eq!(
            from_b,
            (1000..1000 + MESSAGES_PER_FEEDER).collect::<Vec<_>>(),
            "{what}"
        );
        println!("{what}: finished after {} kill(s)", run - 1);
    }
    println!(
        "{kills} kills: {while_waiting} while the collector waited with nothing to take, \
         {while_in_flight} with messages sent and not yet received"
    );
    assert!(
        while_waiting > 0 && while_in_flight > 0,
        "the kills missed a kind of moment"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child workflows.

/// Parents whose child has completed but who have not recorded its result.
fn parents_in_the_gap(journal: &Path) -> Res<i64> {
    let Some(conn) = open_journal(journal)? else {
        return Ok(0);
    };
    count(
        &conn,
        "SELECT COUNT(*) FROM durable_workflows c
         WHERE c.parent_id IS NOT NULL AND c.status = 'completed'
           AND NOT EXISTS (SELECT 1 FROM durable_steps s
                           WHERE s.run = (SELECT run FROM durable_workflows WHERE id = c.parent_id)
                             AND s.name = 'durable::child')",
    )
}

fn completed_children(journal: &Path) -> Res<BTreeSet<String>> {
    let Some(conn) = open_journal(journal)? else {
        return Ok(BTreeSet::new());
    };
    let mut stmt = conn.prepare(
        "SELECT id FROM durable_workflows WHERE parent_id IS NOT NULL AND status = 'completed'",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[test]
fn a_child_completed_before_sigkill_is_not_run_again_and_its_parent_gets_its_result() -> Res<()> {
    let mut rng = seeded("child")?;
    let dir = tempfile::tempdir()?;

    // The reference: one run that nobody interrupts.
    let started = Instant::now();
    let expected = Worker::start(
        "child",
        &dir.path().join("baseline.db"),
        &dir.path().join("baseline.log"),
    )?
    .finish("uninterrupted child run")?;
    let window = started.elapsed();
    assert_eq!(expected.len(), 13, "{expected:?}");
    println!("uninterrupted run: {} ms", window.as_millis());

    let (mut kills, mut in_gap, mut rounds) = (0, 0, 0);
    // At least 20 kills, and until one has landed in the gap (bounded).
    while kills < 20 || (in_gap == 0 && kills < 200) {
        rounds += 1;
        let journal = dir.path().join(format!("child-{rounds}.db"));
        let mut before = BTreeSet::new();
        let mut done_children = BTreeSet::new();
        for run in 1.. {
            let what = format!("child round {rounds} run {run}");
            assert!(run <= 100, "{what}: no progress in 100 runs");
            let log = dir.path().join(format!("child-{rounds}-{run}.log"));
            let mut worker = Worker::start("child", &journal, &log)?;
            let delay = rng.up_to(window);
            let finished = worker.wait_up_to(delay)?;
            let results = if finished {
                Some(worker.finish(&what)?)
            } else {
                worker.kill_unless_finished(&what)?
            };
            // No step body ran again once its record had committed, and no step of a
            // child that had completed ran at all.
            for (workflow_id, path, name) in step_lines(&log)? {
                assert!(
                    !before.contains(&(workflow_id.clone(), path.clone())),
                    "{what}: step {path} ({name}) of {workflow_id} ran again after its \
                     record committed"
                );
                assert!(
                    !done_children.contains(&workflow_id),
                    "{what}: step {path} ({name}) of {workflow_id} ran after the child completed"
                );
            }
            if let Some(results) = results {
                assert_eq!(results, expected, "{what}");
                println!("child round {rounds}: finished after {} kill(s)", run - 1);
                break;
            }
            kills += 1;
            let gap = parents_in_the_gap(&journal)?;
            if gap > 0 {
                in_gap += 1;
                println!(
                    "{what}: killed after {} ms with {gap} parent(s) between their child's \
                     completion and its record",
                    delay.as_millis()
                );
            }
            let after = committed(&journal)?;
            assert!(after.is_superset(&before), "{what}: records disappeared");
            before = after;
            done_children = completed_children(&journal)?;
        }
    }
    println!("{kills} kills in {rounds} rounds, {in_gap} in a child-to-parent gap");
    assert!(
        in_gap > 0,
        "no kill landed between a child's completion and its parent's record"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Transaction steps.

const ENTRIES: u32 = 4;

/// Checks that a ledger row exists exactly when its transaction step is recorded (the
/// step of entry `e` is at path `2e + 1`); returns the entries with a row.
fn ledger_matches_records(journal: &Path, what: &str) -> Res<BTreeSet<u32>> {
    let Some(conn) = open_journal(journal)? else {
        return Ok(BTreeSet::new());
    };
    let has_ledger = count(
        &conn,
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ledger'",
    )? == 1;
    let mut rows = Vec::new();
    if has_ledger {
        let mut stmt = conn.prepare("SELECT entry FROM ledger ORDER BY entry")?;
        rows = stmt
            .query_map([], |r| r.get::<_, u32>(0))?
            .collect::<Result<_, _>>()?;
    }
    let entries: BTreeSet<u32> = rows.iter().copied().collect();
    assert_eq!(entries.len(), rows.len(), "{what}: a row twice: {rows:?}");
    let mut stmt = conn.prepare(
        "SELECT path FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 'ledger') AND name = 'insert_row'",
    )?;
    let recorded: BTreeSet<u32> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|p| Ok((p?.parse::<u32>()? - 1) / 2))
        .collect::<Res<_>>()?;
    assert_eq!(
        entries, recorded,
        "{what}: rows for entries {entries:?}, transaction steps recorded for {recorded:?}"
    );
    Ok(entries)
}

#[test]
fn a_transaction_step_killed_before_its_commit_leaves_exactly_one_row() -> Res<()> {
    let mut rng = seeded("transaction")?;
    let dir = tempfile::tempdir()?;
    let mut inside = 0;
    for round in 1..=2 {
        let journal = dir.path().join(format!("tx-{round}.db"));
        let log = dir.path().join(format!("tx-{round}.log"));
        // Run `e + 1` is killed inside the transaction step of entry `e`, which the
        // runs before it left unrecorded; the last run finishes.
        for entry in 0..ENTRIES {
            let what = format!("transaction round {round}, entry {entry}");
            let seen = read_log(&log)?.len();
            let mut worker = Worker::start("transaction", &journal, &log)?;
            let body = wait_for_line(&mut worker, &log, seen, |l| {
                l.words[0] == "tx_body" && l.words[1] == entry.to_string()
            })?;
            assert!(body.is_some(), "{what}: the transaction step never ran");
            // The body holds its transaction open for 250 ms after its insert.
            std::thread::sleep(rng.up_to(Duration::from_millis(150)));
            worker.kill(&what)?;
            let rows = ledger_matches_records(&journal, &what)?;
            if !rows.contains(&entry) {
                inside += 1;
            }
            println!("{what}: killed; rows for {rows:?}");
        }
        let what = format!("transaction round {round}");
        let results = Worker::start("transaction", &journal, &log)?.finish(&what)?;
        let rows = ledger_matches_records(&journal, &what)?;
        assert_eq!(rows, (0..ENTRIES).collect(), "{what}");

        // The workflow's result is the row ids the committed transactions saw.
        let conn = open_journal(&journal)?.ok_or("no journal")?;
        let mut stmt = conn.prepare("SELECT rowid FROM ledger ORDER BY entry")?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .map(|id| id.map(|id| id.to_string()))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            results,
            [format!("RESULT ledger Ok(Ok([{}]))", ids.join(", "))],
            "{what}"
        );
        let bodies = read_log(&log)?
            .iter()
            .filter(|l| l.words[0] == "tx_body")
            .count();
        println!(
            "{what}: {bodies} transaction bodies ran for {ENTRIES} rows, each row exactly once"
        );
    }
    assert!(
        inside >= 4,
        "only {inside} of {} kills landed inside a transaction step",
        2 * ENTRIES
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Dormant workflows.

/// The worker's arguments that make parked workflows go dormant at once.
const AT_ONCE: &[&str] = &["--evict-ms", "0"];

/// The last dormant count the worker logged, if it logged one.
fn last_dormant(log: &Path) -> Res<Option<u64>> {
    Ok(read_log(log)?
        .iter()
        .rev()
        .find(|l| l.words.first().map(String::as_str) == Some("dormant"))
        .and_then(|l| l.words.get(1)?.parse().ok()))
}

/// Fails if a step body logged in `log` had been recorded before the run began.
fn no_step_again(log: &Path, recorded: &BTreeSet<(String, String)>, what: &str) -> Res<()> {
    for (workflow, path, name) in step_lines(log)? {
        assert!(
            !recorded.contains(&(workflow.clone(), path.clone())),
            "{what}: step {name} at {path} of {workflow} was recorded, and ran again"
        );
    }
    Ok(())
}

/// Checks the `dormant` scenario's results against what an uninterrupted run gets.
fn check_dormant_results(results: &[String], what: &str) -> Res<()> {
    assert_eq!(results.len(), 7, "{what}: {results:?}");
    assert_eq!(results[0], "RESULT announcer Ok(Ok(42))", "{what}");
    assert_eq!(results[2], "RESULT feed-a Ok(Ok(()))", "{what}");
    assert_eq!(results[3], "RESULT feed-b Ok(Ok(()))", "{what}");
    assert!(
        results[4].starts_with("RESULT nap Ok("),
        "{what}: {}",
        results[4]
    );
    assert_eq!(results[5], "RESULT slow-parent Ok(Ok(11))", "{what}");
    assert_eq!(results[6], "RESULT watcher Ok(Ok(43))", "{what}");
    let list = results[1]
        .strip_prefix("RESULT collector Ok(Ok([")
        .and_then(|s| s.strip_suffix("]))"))
        .ok_or_else(|| format!("{what}: {}", results[1]))?;
    let got: Vec<u32> = list.split(", ").map(str::parse).collect::<Result<_, _>>()?;
    let n = 8;
    let from_a: Vec<u32> = got.iter().copied().filter(|v| *v < 1000).collect();
    let from_b: Vec<u32> = got.iter().copied().filter(|v| *v >= 1000).collect();
    assert_eq!(from_a, (0..n).collect::<Vec<_>>(), "{what}");
    assert_eq!(from_b, (1000..1000 + n).collect::<Vec<_>>(), "{what}");
    Ok(())
}

#[test]
fn dormant_workflows_survive_sigkill_and_wake_with_the_right_values() -> Res<()> {
    let mut rng = seeded("dormant")?;
    let dir = tempfile::tempdir()?;

    let started = Instant::now();
    let baseline_log = dir.path().join("baseline.log");
    let results = Worker::start_with(
        "dormant",
        &dir.path().join("baseline.db"),
        &baseline_log,
        AT_ONCE,
    )?
    .finish("uninterrupted dormant run")?;
    check_dormant_results(&results, "uninterrupted dormant run")?;
    let window = started.elapsed();
    let most = read_log(&baseline_log)?
        .iter()
        .filter(|l| l.words.first().map(String::as_str) == Some("dormant"))
        .filter_map(|l| l.words.get(1)?.parse::<u64>().ok())
        .max();
    assert!(
        most >= Some(5),
        "the uninterrupted run never had most of its workflows dormant: {most:?}"
    );
    println!("uninterrupted run: {} ms", window.as_millis());

    let (mut kills, mut while_dormant, mut round) = (0, 0, 0);
    // At least 12 kills, and until 4 landed while workflows were dormant (bounded).
    while kills < 12 || (while_dormant < 4 && kills < 60) {
        round += 1;
        let journal = dir.path().join(format!("dormant-{round}.db"));
        let what = format!("dormant round {round}");
        let mut recorded = BTreeSet::new();
        let mut run = 0;
        let results = loop {
            run += 1;
            assert!(run <= 100, "{what}: no progress in 100 runs");
            let log = dir.path().join(format!("dormant-{round}-{run}.log"));
            let mut worker = Worker::start_with("dormant", &journal, &log, AT_ONCE)?;
            let delay = rng.up_to(window);
            let finished = if worker.wait_up_to(delay)? {
                Some(worker.finish(&what)?)
            } else {
                worker.kill_unless_finished(&what)?
            };
            no_step_again(&log, &recorded, &what)?;
            if let Some(results) = finished {
                break results;
            }
            kills += 1;
            let dormant = last_dormant(&log)?.unwrap_or(0);
            if dormant > 0 {
                while_dormant += 1;
            }
            println!(
                "{what}: kill after {} ms, {dormant} workflow(s) dormant",
                delay.as_millis()
            );
            recorded = committed(&journal)?;
        };
        check_dormant_results(&results, &what)?;
        let (received, waiting) = messages_balance(&journal, &what)?;
        assert_eq!(
            waiting, 0,
            "{what}: {received} received, {waiting} left waiting"
        );
        println!("{what}: finished after {} kill(s)", run - 1);
    }
    println!("{kills} kills, {while_dormant} while workflows were dormant");
    assert!(while_dormant >= 4, "too few kills landed during dormancy");
    Ok(())
}
