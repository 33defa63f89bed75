//! Each attempt of a step is recorded with its start and end (journal schema 13 on
//! SQLite, 6 on PostgreSQL), so a timeline is true: a step that retried shows every
//! attempt, the backoff between them, and its last attempt ending at its record.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{Journal, on_both_journals};
use durable_runtime::{Runtime, step, workflow};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// The attempt numbers `step_context` gave the flaky step, in order.
static SEEN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Fails its first two attempts, then returns how many attempts it took.
#[step(retries = 3, backoff = 20ms)]
async fn at_flaky() -> Result<u32, String> {
    let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(ctx) = durable_runtime::step_context() {
        SEEN.lock().expect("lock").push(ctx.attempt());
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    if n < 3 {
        Err(format!("attempt {n} fails"))
    } else {
        Ok(n)
    }
}

#[step]
async fn at_once() -> u32 {
    7
}

#[workflow]
async fn at_timed() -> Result<u32, String> {
    let once = at_once().await;
    Ok(at_flaky().await? + once)
}

async fn every_attempt_is_recorded_with_its_times(journal: Journal) {
    CALLS.store(0, Ordering::SeqCst);
    SEEN.lock().expect("lock").clear();
    let rt = Runtime::builder(journal.path()).open().await.expect("open");
    let out = rt
        .start_with_id("t", at_timed())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    assert_eq!(out, Ok(10));
    // Each attempt knew which it was.
    assert_eq!(*SEEN.lock().expect("lock"), [1, 2, 3]);
    let steps = rt.steps("t").await.expect("steps");
    journal.release(rt).await;

    // A step that ran once: its one attempt is its start to its record.
    let once = steps[0].attempt_times();
    assert_eq!(once.len(), 1);
    assert_eq!(once[0].started_at_ms, steps[0].started_at_ms);
    assert_eq!(once[0].finished_at_ms, steps[0].finished_at_ms);

    // The flaky step: three attempts, in order, each after the previous one and its
    // backoff, the first from the step's start, the last to its record.
    let flaky = &steps[1];
    assert_eq!(flaky.attempts, 3);
    let times = flaky.attempt_times();
    assert_eq!(times.len(), 3, "{times:?}");
    assert_eq!(times[0].started_at_ms, flaky.started_at_ms);
    assert_eq!(times[2].finished_at_ms, flaky.finished_at_ms);
    for t in &times {
        assert!(t.started_at_ms <= t.finished_at_ms, "{times:?}");
    }
    for pair in times.windows(2) {
        assert!(
            pair[1].started_at_ms >= pair[0].finished_at_ms,
            "attempts overlap: {times:?}"
        );
    }

    // A reopened runtime reads the same times (they are in the journal, not in memory).
    let rt = Runtime::builder(journal.path())
        .open()
        .await
        .expect("reopen");
    let again = rt.steps("t").await.expect("steps");
    assert_eq!(again[1].attempt_times(), times);
    journal.release(rt).await;
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_attempt_is_recorded_with_its_times,
    serial
);
