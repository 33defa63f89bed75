//! The fence on PostgreSQL: once an executor is marked dead (as a takeover marks the
//! executor it takes workflows from), nothing its writer sends afterwards commits, and
//! what it tried fails as taken over. Writes that check no workflow's owner (a message
//! sent from outside a workflow, a new workflow) depend on the batch's fence alone; a
//! step record alone in its batch has no fence, and depends on its own checks.
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod common;

use std::time::Duration;

use common::Journal;
use durable_runtime::{Error, Runtime, StoreErrorKind, step, workflow};

#[workflow]
async fn fenced_noop() -> u32 {
    7
}

fn taken_over<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Store(e)) if e.kind() == StoreErrorKind::TakenOver => {}
        other => panic!("{what}: expected a taken-over error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_executor_commits_nothing() {
    let journal = Journal::postgres();
    // A long lease: the watcher does not notice the death (and register anew) during
    // the test.
    let rt = Runtime::builder(journal.path())
        .lease(Duration::from_secs(60))
        .open()
        .await
        .expect("open");
    rt.send("inbox", "t", &1u32)
        .await
        .expect("a send while alive");
    journal.sql("UPDATE durable_executors SET dead_at = now()", &[]);
    taken_over("a send", rt.send("inbox", "t", &2u32).await);
    taken_over(
        "a start",
        rt.start_with_id("after-death", fenced_noop())
            .await
            .map(drop),
    );
    let messages = journal.strings(
        "SELECT count(*)::text FROM durable_messages WHERE destination = 'inbox'",
        &[],
    );
    assert_eq!(messages, ["1"], "a dead executor's send committed");
    let workflows = journal.strings(
        "SELECT count(*)::text FROM durable_workflows WHERE id = 'after-death'",
        &[],
    );
    assert_eq!(workflows, ["0"], "a dead executor's start committed");
    rt.close().await.expect("close");
}

static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();
static ENTERED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Waits, inside its body, until the test lets it finish.
#[step]
async fn held_open() -> u32 {
    ENTERED.notify_one();
    GATE.notified().await;
    5
}

#[workflow]
async fn one_held_step() -> u32 {
    held_open().await + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_executor_records_no_step_alone_in_its_batch() {
    let journal = Journal::postgres();
    let rt = Runtime::builder(journal.path())
        .lease(Duration::from_secs(60))
        .open()
        .await
        .expect("open");
    let entered = ENTERED.notified();
    let _handle = rt
        .start_with_id("held", one_held_step())
        .await
        .expect("start");
    entered.await;
    // Marked dead while the step runs; nobody takes the workflow over (no other
    // runtime), so its owner is still this executor. The step's record is alone in
    // its batch: no fence, only its own checks.
    journal.sql("UPDATE durable_executors SET dead_at = now()", &[]);
    GATE.notify_one();
    // Past the moment the record would have committed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let steps = journal.strings(
        "SELECT count(*)::text FROM durable_steps s JOIN durable_workflows w ON w.run = s.run
         WHERE w.id = 'held'",
        &[],
    );
    assert_eq!(steps, ["0"], "a dead executor's step record committed");
    rt.close_with_grace(Duration::ZERO).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_refused_for_a_newer_schema_writes_nothing() {
    let journal = Journal::postgres();
    Runtime::open(journal.path())
        .await
        .expect("open")
        .close()
        .await
        .expect("close");
    // An executor dead for two hours, which a registered claimer forgets; and a
    // schema a newer durable wrote.
    journal.sql(
        "INSERT INTO durable_executors (name, lease_ms, dead_at)
         VALUES ('old:1', 1000, now() - interval '2 hours')",
        &[],
    );
    journal.sql(
        "UPDATE durable_meta SET value = '999' WHERE key = 'schema_version'",
        &[],
    );
    match Runtime::open(journal.path()).await {
        Err(Error::Store(e)) if e.kind() == StoreErrorKind::NewerSchema => {}
        other => panic!("expected the newer schema refused, got {other:?}"),
    }
    let executors = journal.strings(
        "SELECT name FROM durable_executors WHERE name = 'old:1'",
        &[],
    );
    assert_eq!(executors, ["old:1"], "the refused open deleted an executor");
}
