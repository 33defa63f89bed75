//! The fence on PostgreSQL: once an executor is marked dead (as a takeover marks the
//! executor it takes workflows from), nothing its writer sends afterwards commits, and
//! what it tried fails as taken over. Writes that check no workflow's owner (a message
//! sent from outside a workflow, a new workflow) depend on the batch's fence alone. An
//! open refused for a newer schema writes nothing.
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod common;

use std::time::Duration;

use common::Journal;
use durable_runtime::{Error, Runtime, StoreErrorKind, workflow};

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
