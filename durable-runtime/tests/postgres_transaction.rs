//! Transaction steps on PostgreSQL: the application's writes and the step's record
//! commit together, once, also when the step's connection is killed in the middle.
//! The flavours do not mix: each journal refuses the other's transaction steps.
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::Journal;
use common::proxy::{
    COMMIT_THEN_CUT, CUT_BEFORE_COMMIT, CUT_THEN_LATE_COMMIT, PASS, open_through_proxy,
};
use durable_runtime::postgres::tokio_postgres;
use durable_runtime::postgres::transaction;
use durable_runtime::{Error, FailureKind, Runtime, workflow};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum LedgerError {
    Db(String),
    Durable(String),
    Refused,
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(e: tokio_postgres::Error) -> Self {
        LedgerError::Db(e.to_string())
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Db(e.to_string())
    }
}

impl From<Error> for LedgerError {
    fn from(e: Error) -> Self {
        LedgerError::Durable(e.to_string())
    }
}

/// A table of the application's for this test's journal (never in the journal's
/// schema), made empty.
fn ledger(journal: &Journal) -> String {
    let Journal::Postgres { schema, .. } = journal else {
        unreachable!("a PostgreSQL journal")
    };
    let table = format!("public.ledger_{schema}");
    journal.sql(
        &format!("CREATE TABLE {table} (id bigserial PRIMARY KEY, entry text NOT NULL)"),
        &[],
    );
    table
}

fn entries(journal: &Journal, table: &str) -> Vec<String> {
    journal.strings(&format!("SELECT entry FROM {table} ORDER BY id"), &[])
}

async fn open(journal: &Journal) -> Runtime {
    Runtime::builder(journal.path())
        .lease(Duration::from_secs(30))
        .open()
        .await
        .expect("open")
}

static BOOK_RUNS: AtomicU32 = AtomicU32::new(0);

#[workflow]
async fn book(
    table: String,
    entry: String,
    refuse: bool,
) -> (Result<i64, LedgerError>, Result<i64, LedgerError>) {
    let t = table.clone();
    let first = transaction("book_entry", move |tx| {
        Box::pin(async move {
            BOOK_RUNS.fetch_add(1, Ordering::SeqCst);
            let row = tx
                .query_one(
                    &format!("INSERT INTO {t} (entry) VALUES ($1) RETURNING id"),
                    &[&entry],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
    })
    .await;
    let second = transaction("maybe_refuse", move |tx| {
        Box::pin(async move {
            let row = tx
                .query_one(
                    &format!("INSERT INTO {table} (entry) VALUES ('refused?') RETURNING id"),
                    &[],
                )
                .await?;
            if refuse {
                return Err(LedgerError::Refused);
            }
            Ok(row.try_get(0)?)
        })
    })
    .await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_step_commits_its_writes_with_its_checkpoint_once() {
    let journal = Journal::postgres();
    let table = ledger(&journal);
    let rt = open(&journal).await;
    let before = BOOK_RUNS.load(Ordering::SeqCst);
    let (first, second) = rt
        .start_with_id("tx", book(table.clone(), "rent".into(), true))
        .await
        .expect("start")
        .result()
        .await
        .expect("book");
    assert_eq!(first, Ok(1));
    // An `Err` rolls its writes back and is recorded.
    assert_eq!(second, Err(LedgerError::Refused));
    assert_eq!(entries(&journal, &table), ["rent"]);
    journal.release(rt).await;
    journal.make_pending("tx");
    let rt = open(&journal).await;
    let again = rt
        .handle::<(Result<i64, LedgerError>, Result<i64, LedgerError>)>("tx")
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, (Ok(1), Err(LedgerError::Refused)));
    assert_eq!(entries(&journal, &table), ["rent"], "a replay wrote again");
    assert_eq!(BOOK_RUNS.load(Ordering::SeqCst) - before, 1);
    // The record is the step's, with its checksum: the journal checks clean.
    assert_eq!(rt.check().await.expect("check"), []);
    rt.close().await.expect("close");
}

#[workflow]
async fn tx_panics(table: String) -> Result<(), LedgerError> {
    transaction("explode", move |tx| {
        Box::pin(async move {
            tx.execute(&format!("INSERT INTO {table} (entry) VALUES ('boom')"), &[])
                .await?;
            panic!("no ledger today");
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transaction_step_rolls_back_and_fails_the_workflow() {
    let journal = Journal::postgres();
    let table = ledger(&journal);
    let rt = open(&journal).await;
    let err = rt
        .start(tx_panics(table.clone()))
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
    assert!(err.to_string().contains("no ledger today"), "{err}");
    assert!(
        entries(&journal, &table).is_empty(),
        "a panicking transaction kept its writes"
    );
    rt.close().await.expect("close");
}

#[workflow]
async fn swallows_an_error(table: String) -> Result<u32, LedgerError> {
    transaction("swallow", move |tx| {
        Box::pin(async move {
            tx.execute(
                &format!("INSERT INTO {table} (entry) VALUES ('kept?')"),
                &[],
            )
            .await?;
            // Fails, and aborts the transaction; the closure says all is well.
            let _ = tx.execute("SELECT 1/0", &[]).await;
            Ok(7)
        })
    })
    .await
}

#[workflow]
async fn ends_its_transaction(table: String) -> Result<u32, LedgerError> {
    transaction("commits_itself", move |tx| {
        Box::pin(async move {
            tx.execute(
                &format!("INSERT INTO {table} (entry) VALUES ('early')"),
                &[],
            )
            .await?;
            tx.batch_execute("COMMIT").await?;
            Ok(7)
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_step_that_hides_a_failure_or_ends_its_transaction_is_refused() {
    let journal = Journal::postgres();
    let table = ledger(&journal);
    let rt = open(&journal).await;
    let err = rt
        .start_with_id("swallow", swallows_an_error(table.clone()))
        .await
        .expect("start")
        .result()
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("aborted the transaction") && message.contains("`swallow`"),
        "{message}"
    );
    assert!(entries(&journal, &table).is_empty(), "kept writes");
    let err = rt
        .start_with_id("early", ends_its_transaction(table.clone()))
        .await
        .expect("start")
        .result()
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("ended the transaction it was given"),
        "{message}"
    );
    // Neither step is recorded.
    assert!(rt.steps("swallow").await.expect("steps").is_empty());
    assert!(rt.steps("early").await.expect("steps").is_empty());
    rt.close().await.expect("close");
}

#[tokio::test]
async fn a_transaction_outside_a_workflow_is_an_error() {
    let r: Result<(), LedgerError> = transaction("t", |_tx| Box::pin(async { Ok(()) })).await;
    match r {
        Err(LedgerError::Durable(message)) => {
            assert!(message.contains("outside a workflow"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[workflow]
async fn on_sqlite_flavour() -> Result<i64, LedgerError> {
    durable_runtime::sqlite::transaction("sqlite_flavour", |tx| {
        tx.execute("CREATE TABLE t (x INTEGER)", [])?;
        Ok(1)
    })
    .await
}

#[workflow]
async fn on_postgres_flavour() -> Result<i64, LedgerError> {
    transaction("postgres_flavour", |tx| {
        Box::pin(async move { Ok(tx.query_one("SELECT 1::int8", &[]).await?.try_get(0)?) })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_journal_refuses_the_other_flavour_of_transaction_step() {
    let journal = Journal::postgres();
    let rt = open(&journal).await;
    let err = rt
        .start(on_sqlite_flavour())
        .await
        .expect("start")
        .result()
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("SQLite transaction step")
            && message.contains("durable_runtime::postgres::transaction"),
        "{message}"
    );
    assert_eq!(
        rt.start(on_postgres_flavour())
            .await
            .expect("start")
            .result()
            .await
            .expect("runs"),
        Ok(1)
    );
    rt.close().await.expect("close");

    let sqlite = Journal::sqlite();
    let rt = open(&sqlite).await;
    let err = rt
        .start(on_postgres_flavour())
        .await
        .expect("start")
        .result()
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("PostgreSQL transaction step")
            && message.contains("durable_runtime::sqlite::transaction"),
        "{message}"
    );
}

static KILLED_RUNS: AtomicU32 = AtomicU32::new(0);

/// Inserts an entry and answers its id (from a sequence: a run that rolls back still
/// uses up an id, so each run answers another one); its first run waits in a
/// statement marked `marker` long enough to be killed.
#[workflow]
async fn killed_once(table: String, marker: String) -> Result<i64, LedgerError> {
    transaction("killed_once", move |tx| {
        Box::pin(async move {
            let run = KILLED_RUNS.fetch_add(1, Ordering::SeqCst);
            let row = tx
                .query_one(
                    &format!("INSERT INTO {table} (entry) VALUES ('once') RETURNING id"),
                    &[],
                )
                .await?;
            if run == 0 {
                tx.execute(&format!("SELECT pg_sleep(10) /* {marker} */"), &[])
                    .await?;
            }
            Ok(row.try_get(0)?)
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_step_whose_connection_is_killed_runs_again_and_commits_once() {
    let journal = Journal::postgres();
    let Journal::Postgres { server, schema, .. } = &journal else {
        unreachable!()
    };
    let table = ledger(&journal);
    let marker = format!("kill me {schema}");
    let rt = open(&journal).await;
    let h = rt
        .start_with_id("killed", killed_once(table.clone(), marker.clone()))
        .await
        .expect("start");
    // Kill the step's session while it waits in its transaction.
    let killed = kill_marked(server, marker);
    assert_eq!(killed, 1);
    let got = tokio::time::timeout(Duration::from_secs(30), h.result())
        .await
        .expect("the step did not finish within 30 s")
        .expect("result");
    assert_eq!(KILLED_RUNS.load(Ordering::SeqCst), 2, "runs of the step");
    // One entry: the second run's. The step answers (and recorded) its id, not the
    // killed run's.
    let ids = journal.strings(&format!("SELECT id::text FROM {table}"), &[]);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(got, Ok(ids[0].parse::<i64>().expect("id")));
    assert_eq!(ids[0], "2", "the killed run used up id 1");
    journal.release(rt).await;
    journal.make_pending("killed");
    let rt = open(&journal).await;
    let again = rt
        .handle::<Result<i64, LedgerError>>("killed")
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, got, "the replay answered another value");
    assert_eq!(
        KILLED_RUNS.load(Ordering::SeqCst),
        2,
        "a replay ran the step"
    );
    rt.close().await.expect("close");
}

#[workflow]
async fn many_entries(table: String, n: u32) -> Result<Vec<i64>, LedgerError> {
    let mut ids = Vec::new();
    for i in 0..n {
        let t = table.clone();
        ids.push(
            transaction("entry", move |tx| {
                Box::pin(async move {
                    let row = tx
                        .query_one(
                            &format!("INSERT INTO {t} (entry) VALUES ($1) RETURNING id"),
                            &[&format!("e{i}")],
                        )
                        .await?;
                    Ok::<i64, LedgerError>(row.try_get(0)?)
                })
            })
            .await?,
        );
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workflows_run_transaction_steps_at_once() {
    let journal = Journal::postgres();
    let table = ledger(&journal);
    let rt = open(&journal).await;
    let mut handles = Vec::new();
    for w in 0..40 {
        handles.push(
            rt.start_with_id(format!("w{w}"), many_entries(table.clone(), 5))
                .await
                .expect("start"),
        );
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.result().await.expect("result").expect("entries"));
    }
    all.sort_unstable();
    let mut stored: Vec<i64> = journal
        .strings(&format!("SELECT id::text FROM {table}"), &[])
        .iter()
        .map(|s| s.parse().expect("id"))
        .collect();
    stored.sort_unstable();
    assert_eq!(all.len(), 200);
    assert_eq!(all, stored, "the answers are the committed rows");
    rt.close().await.expect("close");
}

/// The runs of `cut_entry`, by table (the tests run at once).
static CUT_RUNS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn cut_runs(table: &str) -> u32 {
    let runs = CUT_RUNS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    u32::try_from(runs.iter().filter(|t| *t == table).count()).expect("runs")
}

#[workflow]
async fn cut_entry(table: String) -> Result<i64, LedgerError> {
    transaction("cut_entry", move |tx| {
        Box::pin(async move {
            CUT_RUNS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(table.clone());
            let row = tx
                .query_one(
                    &format!("INSERT INTO {table} (entry) VALUES ('cut') RETURNING id"),
                    &[],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
    })
    .await
}

/// The answer to a transaction step's `COMMIT` lost (`mode`): the step ends with the
/// value it committed, once; answers how many times it ran.
async fn commit_answer_lost(mode: u8) -> u32 {
    let journal = Journal::postgres();
    let table = ledger(&journal);
    let (rt, switch) = open_through_proxy(&journal).await;
    switch.store(mode, Ordering::SeqCst);
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        rt.start_with_id("cut", cut_entry(table.clone()))
            .await
            .expect("start")
            .result(),
    )
    .await
    .expect("the step did not finish within 30 s")
    .expect("result");
    assert_eq!(switch.load(Ordering::SeqCst), PASS, "no COMMIT was cut");
    let runs = cut_runs(&table);
    let ids = journal.strings(&format!("SELECT id::text FROM {table}"), &[]);
    assert_eq!(ids.len(), 1, "rows {ids:?} after {runs} runs");
    assert_eq!(
        got,
        Ok(ids[0].parse::<i64>().expect("id")),
        "the step answered another value than it committed"
    );
    journal.release(rt).await;
    journal.make_pending("cut");
    let rt = open(&journal).await;
    let again = rt
        .handle::<Result<i64, LedgerError>>("cut")
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, got, "the replay answered another value");
    rt.close().await.expect("close");
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_found_committed() {
    assert_eq!(
        commit_answer_lost(COMMIT_THEN_CUT).await,
        1,
        "runs of the step"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_arrived_runs_the_step_again() {
    assert_eq!(
        commit_answer_lost(CUT_BEFORE_COMMIT).await,
        2,
        "runs of the step"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_late_on_the_network_is_waited_out() {
    // The late COMMIT reaches a session that was ended first: nothing committed then,
    // and the step ran again.
    assert_eq!(
        commit_answer_lost(CUT_THEN_LATE_COMMIT).await,
        2,
        "runs of the step"
    );
}

/// The tries of `fails_then_panics`, by table.
static PANIC_RUNS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Its first try waits (to be killed; its statement then fails, and the closure
/// answers `Err`); its second panics before its first await.
#[workflow]
async fn fails_then_panics(table: String, marker: String) -> Result<i64, LedgerError> {
    transaction("fails_then_panics", move |tx| {
        let run = {
            let mut runs = PANIC_RUNS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            runs.push(table.clone());
            runs.iter().filter(|t| **t == table).count()
        };
        assert!(run == 1, "the second try panics at once");
        let marker = marker.clone();
        Box::pin(async move {
            tx.execute(&format!("SELECT pg_sleep(10) /* {marker} */"), &[])
                .await?;
            Ok(1)
        })
    })
    .await
}

/// Terminates the sessions running a statement marked `marker`, once there is one.
fn kill_marked(server: &str, marker: String) -> i64 {
    common::on_postgres(server, async move |c| {
        loop {
            let n: i64 = c
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity
                     WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                    &[&marker],
                )
                .await?
                .try_get(0)?;
            if n > 0 {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .expect("kill")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_that_panics_after_one_that_failed_answers_the_panic() {
    let journal = Journal::postgres();
    let Journal::Postgres { server, schema, .. } = &journal else {
        unreachable!()
    };
    let table = ledger(&journal);
    let marker = format!("panic after {schema}");
    let rt = open(&journal).await;
    let h = rt
        .start_with_id("p", fails_then_panics(table.clone(), marker.clone()))
        .await
        .expect("start");
    assert_eq!(kill_marked(server, marker), 1);
    let got = tokio::time::timeout(Duration::from_secs(30), h.result())
        .await
        .expect("the step did not finish within 30 s");
    // Not the killed try's `Err`: the try that counts panicked.
    match &got {
        Err(Error::Failed {
            kind: FailureKind::StepPanicked,
            message,
            ..
        }) => assert!(message.contains("the second try panics"), "{message}"),
        other => panic!("the workflow answered {other:?}"),
    }
    rt.close().await.expect("close");
}

/// Markers of `sleeps_in_a_transaction` that slept already.
static SLEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Its first try sleeps in a statement marked `marker` (until killed).
#[workflow]
async fn sleeps_in_a_transaction(marker: String) -> Result<i64, LedgerError> {
    transaction("sleeps", move |tx| {
        let first = {
            let mut slept = SLEPT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let first = !slept.contains(&marker);
            slept.push(marker.clone());
            first
        };
        let marker = marker.clone();
        Box::pin(async move {
            if first {
                tx.execute(&format!("SELECT pg_sleep(30) /* {marker} */"), &[])
                    .await?;
            }
            Ok(1)
        })
    })
    .await
}

#[workflow]
async fn quick() -> u32 {
    7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_does_not_wait_for_a_transaction_step() {
    let journal = Journal::postgres();
    let Journal::Postgres { server, schema, .. } = &journal else {
        unreachable!()
    };
    let marker = format!("cancel while {schema}");
    let rt = open(&journal).await;
    rt.start_with_id("long", sleeps_in_a_transaction(marker.clone()))
        .await
        .expect("start");
    let running = {
        let marker = marker.clone();
        let server = server.clone();
        move || {
            common::on_postgres(&server, {
                let marker = marker.clone();
                async move |c| {
                    c.query_one(
                        "SELECT count(*) FROM pg_catalog.pg_stat_activity
                         WHERE query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                        &[&marker],
                    )
                    .await?
                    .try_get::<_, i64>(0)
                }
            })
            .expect("look")
        }
    };
    while running() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The cancel updates the row the step's transaction holds, and another workflow
    // commits after it, through the same writer: both while the step still sleeps.
    rt.cancel("long").await.expect("cancel");
    assert_eq!(
        rt.start(quick())
            .await
            .expect("start")
            .result()
            .await
            .expect("quick"),
        7
    );
    assert_eq!(running(), 1, "the writer waited for the transaction step");
    assert_eq!(kill_marked(server, marker), 1);
    rt.close().await.expect("close");
}

#[workflow]
async fn idles_past_the_lease() -> Result<i64, LedgerError> {
    transaction("idles", |tx| {
        Box::pin(async move {
            tx.execute("SELECT 1", &[]).await?;
            // Not a durable sleep: a wait inside the transaction, which is idle.
            std::thread::sleep(Duration::from_millis(1_500));
            tx.execute("SELECT 1", &[]).await?;
            Ok(1)
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_step_idle_past_the_lease_stops_with_an_error_that_says_so() {
    let journal = Journal::postgres();
    let rt = Runtime::builder(journal.path())
        .lease(Duration::from_secs(1))
        .open()
        .await
        .expect("open");
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        rt.start(idles_past_the_lease())
            .await
            .expect("start")
            .result(),
    )
    .await
    .expect("the step did not stop within 60 s");
    let message = format!("{got:?}");
    assert!(
        message.contains("longer than the runtime's lease"),
        "{message}"
    );
    rt.close().await.expect("close");
}
