//! A run started again from its journal is marked with the time (SQLite schema 16,
//! PostgreSQL 8), so that a timeline tells the steps that ran before a restart, and
//! were replayed from the journal, from those that ran after it: at an open that
//! resumes it, at a takeover, at a resume. A run that ran in one go, and a fork's
//! first run (whose copied steps are older than it), have none.

mod common;

use std::time::Duration;

use common::{Journal, on_both_journals};
use durable_runtime::{Client, RecordedStatus, Runtime, WorkflowView, recv, step, workflow};

#[step]
async fn rp_before() -> u32 {
    1
}

#[step]
async fn rp_after(n: u32) -> u32 {
    n + 1
}

/// A step, a wait for `go`, a step.
#[workflow]
async fn rp_gated() -> u32 {
    let a = rp_before().await;
    let n = recv::<u32>("go", None).await.ok().flatten().unwrap_or(0);
    rp_after(a + n).await
}

/// Waits until the journal holds workflow `id` as `want` says.
async fn until(client: &Client, id: &str, want: impl Fn(&WorkflowView) -> bool) -> WorkflowView {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(w) = client.workflow(id).expect("read")
            && want(&w)
        {
            return w;
        }
        assert!(std::time::Instant::now() < deadline, "{id} never got there");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn restarts_are_marked_between_the_steps_they_replayed_and_the_rest(journal: Journal) {
    let rt = Runtime::open(journal.path()).await.expect("open");
    rt.start_with_id("once", rp_gated()).await.expect("start");
    rt.start_with_id("again", rp_gated()).await.expect("start");
    rt.send("once", "go", &1u32).await.expect("send");
    let client = Client::open(journal.path()).expect("client");
    let once = until(&client, "once", |w| w.status == RecordedStatus::Completed).await;
    assert!(once.replayed_at_ms.is_empty(), "{once:?}");
    // `again` recorded its first step, and waits.
    while client.steps("again").expect("steps").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.close().await.expect("close");

    // The next runtime starts it again: a mark after its first step.
    let rt = Runtime::open(journal.path()).await.expect("reopen");
    let marked = until(&client, "again", |w| !w.replayed_at_ms.is_empty()).await;
    assert_eq!(marked.replayed_at_ms.len(), 1, "{marked:?}");
    let restart = marked.replayed_at_ms[0];
    rt.send("again", "go", &2u32).await.expect("send");
    let done = until(&client, "again", |w| w.status == RecordedStatus::Completed).await;
    assert_eq!(done.output::<u32>().expect("output"), Some(4));
    let steps = client.steps("again").expect("steps");
    let (before, after) = (&steps[0], steps.last().expect("a last step"));
    assert_eq!(before.name, "rp_before");
    assert!(
        before.finished_at_ms <= restart,
        "{before:?} after {restart}"
    );
    assert_eq!(after.name, "rp_after");
    assert!(
        after.finished_at_ms >= restart,
        "{after:?} before {restart}"
    );
    // The other run was not started again: it was finished.
    assert!(
        client
            .workflow("once")
            .expect("read")
            .expect("once")
            .replayed_at_ms
            .is_empty()
    );

    // A resume starts it again too.
    rt.start_with_id("resumed", rp_gated())
        .await
        .expect("start");
    while client.steps("resumed").expect("steps").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.cancel("resumed").await.expect("cancel");
    rt.resume("resumed").await.expect("resume");
    let resumed = until(&client, "resumed", |w| !w.replayed_at_ms.is_empty()).await;
    assert_eq!(resumed.replayed_at_ms.len(), 1, "{resumed:?}");

    // A fork's copied steps are older than the fork: its first run replays nothing of
    // its own.
    rt.fork("again", "3", "forked").await.expect("fork");
    let forked = until(&client, "forked", |w| w.status == RecordedStatus::Completed).await;
    assert!(forked.replayed_at_ms.is_empty(), "{forked:?}");
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    restarts_are_marked_between_the_steps_they_replayed_and_the_rest
);
