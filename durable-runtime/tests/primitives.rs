//! Durable time and randomness, version patches, steps that must not run twice, and
//! transaction steps.

mod common;

use common::{Journal, on_both_journals};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use durable_runtime::sqlite::transaction;
use durable_runtime::{
    Durability, Error, FailureKind, Runtime, now, patched, random, sleep, step, uuid, workflow,
};
use serde::{Deserialize, Serialize};

async fn open(path: &std::path::Path) -> Runtime {
    Runtime::builder(path)
        .durability(Durability::Off)
        .open()
        .await
        .expect("open")
}

#[workflow]
async fn nap(ms: u64) -> u64 {
    sleep(Duration::from_millis(ms)).await;
    ms
}

fn a_sleep_resumed_after_a_crash_waits_only_for_what_is_left(journal: Journal) {
    let path = journal.path();
    let first = tokio::runtime::Runtime::new().expect("tokio");
    let began = first.block_on(async {
        let rt = open(path).await;
        let began = SystemTime::now();
        rt.start_with_id("nap", nap(700)).await.expect("start");
        while rt.steps("nap").await.expect("steps").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        began
    });
    first.shutdown_background();
    std::thread::sleep(Duration::from_millis(300));
    let second = tokio::runtime::Runtime::new().expect("tokio");
    let rt_wake = second.block_on(async {
        let rt = common::reopen(path).await;
        let resumed = Instant::now();
        let h = rt.handle::<u64>("nap").await.expect("handle");
        assert_eq!(h.result().await.expect("nap"), 700);
        let steps = rt.steps("nap").await.expect("steps");
        let wake_at: i64 = steps[0].output().expect("wake-up time");
        (resumed.elapsed(), wake_at)
    });
    let (waited_after_restart, wake_at) = rt_wake;
    let ended = SystemTime::now();
    let since_epoch = |t: SystemTime| {
        i64::try_from(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("ms")
    };
    assert!(
        since_epoch(ended) >= wake_at,
        "woke before its wake-up time"
    );
    assert!(
        wake_at - since_epoch(began) >= 700,
        "the recorded wake-up time is not 700 ms after the start"
    );
    assert!(
        waited_after_restart < Duration::from_millis(650),
        "the recovered sleep started again: {waited_after_restart:?}"
    );
}
on_both_journals!(
    #[test]
    a_sleep_resumed_after_a_crash_waits_only_for_what_is_left
);

#[workflow]
async fn draws() -> (u64, String, u64) {
    let t = now().await;
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    (random().await, uuid().await, ms)
}

async fn now_random_and_uuid_replay_their_recorded_values(journal: Journal) {
    let rt = open(journal.path()).await;
    let first = rt
        .start_with_id("d", draws())
        .await
        .expect("start")
        .result()
        .await
        .expect("draws");
    let (r, u, _) = &first;
    assert_eq!(u.len(), 36);
    assert_eq!(&u[14..15], "4", "not a version 4 uuid: {u}");
    assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "variant: {u}");
    let fresh = rt
        .start(draws())
        .await
        .expect("start")
        .result()
        .await
        .expect("draws");
    assert_ne!(fresh.0, *r, "two runs drew the same random number");
    journal.release(rt).await;
    journal.make_pending("d");
    std::thread::sleep(Duration::from_millis(5));
    let rt = common::reopen(journal.path()).await;
    let again = rt
        .start_with_id("d", draws())
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, first);
    let names: Vec<String> = rt
        .steps("d")
        .await
        .expect("steps")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["durable::now", "durable::random", "durable::uuid"]);
}
on_both_journals!(
    #[tokio::test]
    now_random_and_uuid_replay_their_recorded_values
);

#[step]
async fn old_way(n: u32) -> u32 {
    n + 1
}

#[step]
async fn new_way(n: u32) -> u32 {
    n + 100
}

#[step]
async fn finish(n: u32) -> u32 {
    n
}

/// The code before the patch.
#[workflow(name = "notify_v1")]
async fn notify_v1(n: u32) -> u32 {
    let v = old_way(n).await;
    finish(v).await
}

/// The code after the patch. (A deployment keeps the workflow's name; here the two
/// versions live in one program, so the test renames the old run's row instead.)
#[workflow(name = "notify_v2")]
async fn notify_v2(n: u32) -> u32 {
    let v = if patched("use-new-way").await {
        new_way(n).await
    } else {
        old_way(n).await
    };
    finish(v).await
}

/// Makes run `id` look like an execution that crashed before its step `lost` was
/// recorded, recovered now by the code of workflow `now_named` (a deployment keeps the
/// name; here each version has its own).
fn crashed_under_old_code(journal: &Journal, id: &str, lost: &str, now_named: &str) {
    journal.make_pending(id);
    journal.sql(
        "DELETE FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = ?1) AND name = ?2",
        &[id, lost],
    );
    journal.sql(
        "UPDATE durable_workflows SET name = ?2 WHERE id = ?1",
        &[id, now_named],
    );
}

fn names(steps: Vec<durable_runtime::StepInfo>) -> Vec<String> {
    steps.into_iter().map(|s| s.name).collect()
}

async fn patched_keeps_old_executions_on_the_old_path_and_sends_new_ones_down_the_new(
    journal: Journal,
) {
    let rt = open(journal.path()).await;
    let new = rt
        .start_with_id("new", notify_v2(1))
        .await
        .expect("start")
        .result()
        .await
        .expect("v2");
    assert_eq!(new, 101);
    // An execution of the old code that had done `old_way` when the new code was
    // deployed.
    rt.start_with_id("old", notify_v1(1))
        .await
        .expect("start")
        .result()
        .await
        .expect("v1");
    journal.release(rt).await;
    journal.make_pending("new");
    crashed_under_old_code(&journal, "old", "finish", "notify_v2");
    let rt = common::reopen(journal.path()).await;
    let old = rt
        .handle::<u32>("old")
        .await
        .expect("old")
        .result()
        .await
        .expect("the old run resumes on the old path");
    assert_eq!(old, 2);
    assert_eq!(
        names(rt.steps("old").await.expect("steps")),
        ["old_way", "finish"],
        "an old run got a patch marker"
    );
    let new = rt
        .handle::<u32>("new")
        .await
        .expect("new")
        .result()
        .await
        .expect("the new run replays the new path");
    assert_eq!(new, 101);
    // The check takes no position: the marker is kept beside the steps.
    assert_eq!(
        names(rt.steps("new").await.expect("steps")),
        ["new_way", "finish"]
    );
    let markers: Vec<String> = journal.strings(
        "SELECT w.id FROM durable_patches JOIN durable_workflows w USING (run)",
        &[],
    );
    assert_eq!(markers, ["new"]);
}
on_both_journals!(
    #[tokio::test]
    patched_keeps_old_executions_on_the_old_path_and_sends_new_ones_down_the_new
);

/// The code once every execution from before the patch has finished: the check and the
/// old branch are gone.
#[workflow(name = "notify_v3")]
async fn notify_v3(n: u32) -> u32 {
    let v = new_way(n).await;
    finish(v).await
}

async fn removing_a_patch_check_keeps_executions_that_took_the_new_path_replaying(
    journal: Journal,
) {
    let rt = open(journal.path()).await;
    rt.start_with_id("after", notify_v2(1))
        .await
        .expect("start")
        .result()
        .await
        .expect("v2");
    journal.release(rt).await;
    crashed_under_old_code(&journal, "after", "finish", "notify_v3");
    let rt = common::reopen(journal.path()).await;
    let v = rt
        .handle::<u32>("after")
        .await
        .expect("handle")
        .result()
        .await
        .expect("replays without the check");
    assert_eq!(v, 101);
}
on_both_journals!(
    #[tokio::test]
    removing_a_patch_check_keeps_executions_that_took_the_new_path_replaying
);

#[step]
async fn slow_a() -> u32 {
    1
}

#[step]
async fn fast_b() -> u32 {
    2
}

#[step]
async fn new_c() -> u32 {
    30
}

#[workflow(name = "pair_v1")]
async fn pair_v1() -> u32 {
    let (a, b) = tokio::join!(slow_a(), fast_b());
    a + b
}

#[workflow(name = "pair_v2")]
async fn pair_v2() -> u32 {
    if patched("single").await {
        new_c().await
    } else {
        let (a, b) = tokio::join!(slow_a(), fast_b());
        a + b
    }
}

async fn patched_sees_an_old_execution_that_recorded_only_a_later_position(journal: Journal) {
    let rt = open(journal.path()).await;
    rt.start_with_id("pair", pair_v1())
        .await
        .expect("start")
        .result()
        .await
        .expect("v1");
    journal.release(rt).await;
    // The old run crashed with `fast_b` (position 2) recorded and `slow_a` (1) not.
    crashed_under_old_code(&journal, "pair", "slow_a", "pair_v2");
    let rt = common::reopen(journal.path()).await;
    let v = rt
        .handle::<u32>("pair")
        .await
        .expect("handle")
        .result()
        .await
        .expect("the old run stays on the old path");
    assert_eq!(v, 3);
    assert!(journal.dump("durable_patches").is_empty());
}
on_both_journals!(
    #[tokio::test]
    patched_sees_an_old_execution_that_recorded_only_a_later_position
);

static SENT: AtomicU32 = AtomicU32::new(0);
static HANG: AtomicBool = AtomicBool::new(true);

#[step(on_interrupt = "fail")]
async fn wire_money(cents: u64) -> u64 {
    SENT.fetch_add(1, Ordering::SeqCst);
    while HANG.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cents
}

#[workflow]
async fn payout(cents: u64) -> u64 {
    wire_money(cents).await
}

fn an_interrupted_at_most_once_step_is_recorded_as_failed_and_resume_runs_it(journal: Journal) {
    SENT.store(0, Ordering::SeqCst);
    HANG.store(true, Ordering::SeqCst);
    let path = journal.path();
    let first = tokio::runtime::Runtime::new().expect("tokio");
    first.block_on(async {
        let rt = open(path).await;
        rt.start_with_id("pay", payout(500)).await.expect("start");
        while SENT.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    first.shutdown_background();
    assert_eq!(
        journal.dump("durable_started").len(),
        1,
        "the start record is durable before the body runs"
    );
    let second = tokio::runtime::Runtime::new().expect("tokio");
    second.block_on(async {
        let rt = common::reopen(path).await;
        let err = rt
            .handle::<u64>("pay")
            .await
            .expect("handle")
            .result()
            .await
            .expect_err("interrupted");
        assert!(
            matches!(
                &err,
                Error::Failed {
                    kind: FailureKind::StepInterrupted,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("on_interrupt"), "{err}");
        assert_eq!(SENT.load(Ordering::SeqCst), 1, "the body ran again");
        // After checking by hand, resume runs it once more.
        HANG.store(false, Ordering::SeqCst);
        rt.resume("pay").await.expect("resume");
        let v = rt
            .handle::<u64>("pay")
            .await
            .expect("handle")
            .result()
            .await
            .expect("resumed");
        assert_eq!(v, 500);
        assert_eq!(SENT.load(Ordering::SeqCst), 2);
    });
}
on_both_journals!(
    #[test]
    an_interrupted_at_most_once_step_is_recorded_as_failed_and_resume_runs_it,
    serial
);

// Transaction steps: SQLite only (they write in the SQLite journal's own transaction; on
// PostgreSQL a transaction step answers an error), so these tests stay on SQLite.

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum LedgerError {
    Db(String),
    Refused,
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Db(e.to_string())
    }
}

static TX_RUNS: AtomicU32 = AtomicU32::new(0);

#[workflow]
async fn book(entry: String, refuse: bool) -> (Result<i64, LedgerError>, Result<i64, LedgerError>) {
    let first = transaction("book_entry", move |tx| {
        TX_RUNS.fetch_add(1, Ordering::SeqCst);
        tx.execute(
            "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, entry TEXT NOT NULL)",
            [],
        )?;
        tx.execute("INSERT INTO ledger (entry) VALUES (?1)", [&entry])?;
        Ok(tx.last_insert_rowid())
    })
    .await;
    let second = transaction("maybe_refuse", move |tx| {
        tx.execute("INSERT INTO ledger (entry) VALUES ('refused?')", [])?;
        if refuse {
            return Err(LedgerError::Refused);
        }
        Ok(tx.last_insert_rowid())
    })
    .await;
    (first, second)
}

fn ledger_rows(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT entry FROM ledger ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<Vec<String>>>()
        .expect("rows")
}

#[tokio::test]
async fn a_transaction_step_commits_its_writes_with_its_checkpoint_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&path).await;
    let before = TX_RUNS.load(Ordering::SeqCst);
    let (first, second) = rt
        .start_with_id("tx", book("rent".into(), true))
        .await
        .expect("start")
        .result()
        .await
        .expect("book");
    assert_eq!(first, Ok(1));
    // An `Err` rolls its writes back and is recorded.
    assert_eq!(second, Err(LedgerError::Refused));
    assert_eq!(ledger_rows(&path), ["rent"]);
    drop(rt);
    common::make_pending(&path, "tx");
    let rt = common::reopen(&path).await;
    let again = rt
        .handle::<(Result<i64, LedgerError>, Result<i64, LedgerError>)>("tx")
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, (Ok(1), Err(LedgerError::Refused)));
    assert_eq!(ledger_rows(&path), ["rent"], "a replay wrote again");
    assert_eq!(TX_RUNS.load(Ordering::SeqCst) - before, 1);
}

#[workflow]
async fn tx_panics() -> Result<(), LedgerError> {
    transaction("explode", |tx| {
        tx.execute("CREATE TABLE IF NOT EXISTS boom (x INTEGER)", [])?;
        tx.execute("INSERT INTO boom (x) VALUES (1)", [])?;
        panic!("no ledger today");
    })
    .await
}

#[tokio::test]
async fn a_panicking_transaction_step_rolls_back_and_fails_the_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&path).await;
    let err = rt
        .start(tx_panics())
        .await
        .expect("start")
        .result()
        .await
        .expect_err("panicked");
    assert!(
        matches!(
            &err,
            Error::Failed {
                kind: FailureKind::StepPanicked,
                ..
            }
        ),
        "{err:?}"
    );
    let conn = rusqlite::Connection::open(&path).expect("open");
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'boom'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(tables, 0, "a panicking transaction kept its writes");
}

#[tokio::test]
async fn a_transaction_outside_a_workflow_is_an_error() {
    let r: Result<(), LedgerError> = transaction("t", |_tx| Ok(())).await;
    match r {
        Err(LedgerError::Db(message)) => {
            assert!(message.contains("outside a workflow"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
