//! A cancel made by another runtime sharing a PostgreSQL journal (another process, in
//! production) stops the run of the runtime that owns the workflow: a run busy with
//! steps records no step after it, and a run parked in a `recv` ends at once. Its
//! handles answer `Cancelled`. As with a cancel in the same process, a step body that
//! was running when the cancel came finishes and is recorded: a resume does not run it
//! again. A client's cancel and resume back to back, while the old run still winds
//! down, end with the workflow run again, its handles following it (queued or not).
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::Journal;
use durable_runtime::{CancelReason, Client, Enqueue, Error, Queue, Runtime, recv, step, workflow};

static TICKS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn cancel_tick(i: u32) -> u32 {
    TICKS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2)).await;
    i
}

#[workflow]
async fn cancel_many_ticks(n: u32) -> u32 {
    let mut sum = 0;
    for i in 0..n {
        sum += cancel_tick(i).await;
    }
    sum
}

#[step]
async fn cancel_about_to_park() -> u32 {
    1
}

#[workflow]
async fn cancel_parked_in_recv() -> u32 {
    cancel_about_to_park().await;
    recv::<u32>("never", None).await.ok().flatten().unwrap_or(0)
}

/// Waits for `handle`'s outcome; a hang (the bug) fails the test instead of hanging it.
async fn outcome<T: std::fmt::Debug>(
    what: &str,
    result: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(Duration::from_secs(60), result)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome a minute after the cancel"))
}

fn cancelled<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Cancelled {
            reason: CancelReason::Requested,
            ..
        }) => {}
        other => panic!("{what}: expected Cancelled, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_runtime_stops_the_owners_run() {
    const N: u32 = 2_000;
    let journal = Journal::postgres();
    let owner = Runtime::open(journal.path()).await.expect("open the owner");
    let other = Runtime::open(journal.path()).await.expect("open another");
    let run = owner
        .start_with_id("busy", cancel_many_ticks(N))
        .await
        .expect("start");
    while TICKS.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    other.cancel("busy").await.expect("cancel from the other");
    cancelled("the owner's handle", outcome("busy", run.result()).await);
    let ran = TICKS.load(Ordering::SeqCst);
    assert!(ran < N, "every step ran after the cancel ({ran})");
    // Nothing runs or is recorded for it any more.
    let recorded = owner.steps("busy").await.expect("steps").len();
    assert!(
        recorded <= ran as usize,
        "{recorded} steps recorded, {ran} ran"
    );
    let status = journal.strings(
        "SELECT status FROM durable_workflows WHERE id = 'busy'",
        &[],
    );
    assert_eq!(status, ["cancelled"]);
    // Resumed by the other runtime, it finishes there.
    other.resume("busy").await.expect("resume");
    let again = other.handle::<u32>("busy").await.expect("handle");
    assert_eq!(
        outcome("resumed", again.result()).await.expect("result"),
        (0..N).sum::<u32>()
    );
    owner.close().await.expect("close");
    other.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_runtime_ends_a_run_parked_in_recv() {
    let journal = Journal::postgres();
    let owner = Runtime::open(journal.path()).await.expect("open the owner");
    let other = Runtime::open(journal.path()).await.expect("open another");
    let run = owner
        .start_with_id("parked", cancel_parked_in_recv())
        .await
        .expect("start");
    // About to park in the recv: its step before is recorded. (A cancel heard before
    // the recv parks ends the run there just as well.)
    while owner.steps("parked").await.expect("steps").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    other.cancel("parked").await.expect("cancel from the other");
    cancelled("the owner's handle", outcome("parked", run.result()).await);
    owner.close().await.expect("close");
    other.close().await.expect("close");
}

static SLOW_BODIES: AtomicU32 = AtomicU32::new(0);

/// Counts its runs and takes a while: a cancel lands while it runs.
#[step]
async fn cancel_slow(i: u32) -> u32 {
    if i == 0 {
        SLOW_BODIES.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    i
}

#[workflow]
async fn cancel_slow_pair() -> u32 {
    cancel_slow(0).await + cancel_slow(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_running_at_a_cancel_from_elsewhere_is_recorded_and_not_run_again() {
    SLOW_BODIES.store(0, Ordering::SeqCst);
    let journal = Journal::postgres();
    let owner = Runtime::open(journal.path()).await.expect("open the owner");
    let other = Runtime::open(journal.path()).await.expect("open another");
    let run = owner
        .start_with_id("slow", cancel_slow_pair())
        .await
        .expect("start");
    while SLOW_BODIES.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    other.cancel("slow").await.expect("cancel from the other");
    cancelled("the owner's handle", outcome("slow", run.result()).await);
    let steps = owner.steps("slow").await.expect("steps");
    assert_eq!(
        steps.len(),
        1,
        "the running step's result was lost: {steps:?}"
    );
    owner.resume("slow").await.expect("resume");
    let again = owner.handle::<u32>("slow").await.expect("handle");
    assert_eq!(outcome("resumed", again.result()).await.expect("result"), 1);
    assert_eq!(SLOW_BODIES.load(Ordering::SeqCst), 1, "step 0 ran again");
    owner.close().await.expect("close");
    other.close().await.expect("close");
}

static WOUND_BODIES: AtomicU32 = AtomicU32::new(0);

#[step]
async fn cancel_wound(i: u32) -> u32 {
    WOUND_BODIES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    i
}

#[workflow]
async fn cancel_wound_chain() -> u32 {
    let mut sum = 0;
    for i in 0..4 {
        sum += cancel_wound(i).await;
    }
    sum
}

/// A client cancels and at once resumes a workflow whose run (here, queued or not)
/// is still in a step: the run winds down, the workflow runs again, and a handle
/// taken after the resume follows it to its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancel_and_resume_while_the_run_winds_down_runs_it_again() {
    let journal = Journal::postgres();
    let queue = Queue::new("cancel_q").concurrency(1);
    let rt = Runtime::builder(journal.path())
        .queue(queue.clone())
        .open()
        .await
        .expect("open");
    let client = Client::open(journal.path()).expect("client");
    for id in ["plain", "queued"] {
        if id == "plain" {
            rt.start_with_id(id, cancel_wound_chain())
                .await
                .expect("start");
        } else {
            rt.enqueue_with(&queue, cancel_wound_chain(), Enqueue::new().id(id))
                .await
                .expect("enqueue");
        }
        while rt.steps(id).await.expect("steps").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.cancel(id).await.expect("cancel");
        client.resume(id).await.expect("resume");
        let result = outcome(id, async { rt.handle::<u32>(id).await?.result().await }).await;
        assert_eq!(result.expect("result"), 6, "{id}");
    }
    rt.close().await.expect("close");
}

/// A client resumes a workflow whose runtime is gone, and forgotten (its executor row
/// deleted, as an hour after it died): a runtime alive claims it and runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resume_of_a_workflow_whose_runtime_is_gone_is_claimed() {
    let journal = Journal::postgres();
    let first = Runtime::open(journal.path()).await.expect("open");
    first
        .start_with_id("orphan", cancel_parked_in_recv())
        .await
        .expect("start");
    while first.steps("orphan").await.expect("steps").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.cancel("orphan").await.expect("cancel");
    first.close().await.expect("close");
    journal.sql("DELETE FROM durable_executors", &[]);

    let second = Runtime::open(journal.path()).await.expect("open again");
    let client = Client::open(journal.path()).expect("client");
    client.resume("orphan").await.expect("resume");
    client.send("orphan", "never", &5u32).await.expect("send");
    let result = outcome("orphan", async {
        second.handle::<u32>("orphan").await?.result().await
    })
    .await;
    assert_eq!(result.expect("result"), 5);
    second.close().await.expect("close");
}
