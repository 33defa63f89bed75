//! The semantics users rely on: idempotent workflow ids, panics recorded as failures
//! without taking other workflows down, and retries with exponential backoff.

mod common;

use common::{Journal, on_both_journals};

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use durable_runtime::{
    Codec, Durability, Error, FailureKind, Runtime, WorkflowStatus, step, workflow,
};

async fn open(journal: &Journal) -> Runtime {
    Runtime::builder(journal.path())
        .durability(Durability::Normal)
        .open()
        .await
        .expect("open journal")
}

static ONCE_BODY: AtomicUsize = AtomicUsize::new(0);
static ONCE_STEP: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn slow_increment(x: u64) -> u64 {
    ONCE_STEP.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await;
    x + 1
}

#[workflow]
async fn counted(x: u64) -> u64 {
    ONCE_BODY.fetch_add(1, Ordering::SeqCst);
    slow_increment(x).await
}

async fn sixteen_concurrent_starts_of_one_id_run_the_body_once(journal: Journal) {
    ONCE_BODY.store(0, Ordering::SeqCst);
    ONCE_STEP.store(0, Ordering::SeqCst);
    let rt = open(&journal).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let rt = rt.clone();
            // Different inputs: only the first start's input may ever be used.
            tokio::spawn(async move {
                rt.start_with_id("same", counted(100 + i))
                    .await?
                    .result()
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task").expect("result"));
    }
    assert_eq!(
        ONCE_BODY.load(Ordering::SeqCst),
        1,
        "workflow body ran more than once"
    );
    assert_eq!(
        ONCE_STEP.load(Ordering::SeqCst),
        1,
        "step body ran more than once"
    );
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");

    // After completion, from this runtime and from a fresh one: the recorded result,
    // nothing runs.
    let again = rt.start_with_id("same", counted(7)).await.expect("start");
    assert_eq!(again.status(), WorkflowStatus::Completed);
    assert_eq!(again.result().await.expect("result"), results[0]);
    drop(again);
    journal.release(rt).await;
    let rt = common::reopen(journal.path()).await;
    assert!(rt.recovered().is_empty());
    let again = rt.start_with_id("same", counted(8)).await.expect("start");
    assert_eq!(again.result().await.expect("result"), results[0]);
    assert_eq!(ONCE_BODY.load(Ordering::SeqCst), 1);
    assert_eq!(ONCE_STEP.load(Ordering::SeqCst), 1);
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    sixteen_concurrent_starts_of_one_id_run_the_body_once,
    serial
);

#[workflow]
async fn other_workflow() -> u64 {
    1
}

async fn an_id_belongs_to_one_workflow(journal: Journal) {
    let rt = open(&journal).await;
    rt.start_with_id("taken", other_workflow())
        .await
        .expect("start")
        .result()
        .await
        .expect("done");
    let err = rt
        .start_with_id("taken", counted(1))
        .await
        .expect_err("different workflow");
    assert!(
        matches!(&err, Error::WorkflowMismatch { workflow_id, existing, requested }
            if workflow_id == "taken" && existing == "other_workflow" && requested == "counted"),
        "{err:?}"
    );
    let err = rt
        .start_with_id("", other_workflow())
        .await
        .expect_err("empty id");
    assert!(matches!(err, Error::InvalidId { .. }), "{err:?}");
    let a = rt.start(other_workflow()).await.expect("start");
    let b = rt.start(other_workflow()).await.expect("start");
    assert_ne!(a.id(), b.id(), "generated ids must be unique");
    assert_eq!(a.id().len(), 32);
}
on_both_journals!(
    #[tokio::test]
    an_id_belongs_to_one_workflow
);

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn explode(x: u32) -> u32 {
    PANICS.fetch_add(1, Ordering::SeqCst);
    if x == 0 {
        panic!("card reader on fire");
    }
    x
}

#[step]
async fn fine(x: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    x * 2
}

#[workflow]
async fn panicky(x: u32) -> u32 {
    let a = fine(x).await;
    a + explode(0).await
}

#[workflow]
async fn calm(x: u32) -> u32 {
    fine(x).await + fine(x + 1).await
}

async fn a_panicking_step_is_recorded_and_fails_only_its_workflow(journal: Journal) {
    PANICS.store(0, Ordering::SeqCst);
    let rt = open(&journal).await;
    let bad = rt.start_with_id("bad", panicky(1)).await.expect("start");
    let good = rt.start_with_id("good", calm(1)).await.expect("start");
    let err = bad.result().await.expect_err("panicked");
    match &err {
        Error::Failed {
            workflow_id,
            kind,
            message,
        } => {
            assert_eq!(workflow_id, "bad");
            assert_eq!(*kind, FailureKind::StepPanicked);
            assert!(
                message.contains("step 2 (`explode`) panicked: card reader on fire"),
                "{message}"
            );
        }
        other => panic!("expected Error::Failed, got {other:?}"),
    }
    assert_eq!(bad.status(), WorkflowStatus::Failed);
    assert_eq!(
        good.result().await.expect("other workflow unaffected"),
        2 + 4
    );
    let steps = rt.steps("bad").await.expect("steps");
    assert_eq!(steps.len(), 2);
    assert!(steps[1].panicked && !steps[0].panicked);

    let steps_before = journal.dump("durable_steps");
    let workflows_before = journal.dump("durable_workflows");
    drop((bad, good));
    journal.release(rt).await;
    let rt = common::reopen(journal.path()).await;
    assert!(
        rt.recovered().is_empty(),
        "a failed workflow is not resumed"
    );
    let again = rt.start_with_id("bad", panicky(1)).await.expect("start");
    let again = again.result().await.expect_err("still failed");
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        1,
        "the panicking body ran again"
    );
    assert_eq!(journal.dump("durable_steps"), steps_before);
    assert_eq!(journal.dump("durable_workflows"), workflows_before);
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_panicking_step_is_recorded_and_fails_only_its_workflow,
    serial
);

static FLAKY_ATTEMPTS: Mutex<Vec<tokio::time::Instant>> = Mutex::new(Vec::new());

#[step(retries = 3, backoff = 10ms, backoff_factor = 2.0, max_backoff = 1s)]
async fn flaky(fail_first: usize) -> Result<String, String> {
    let n = {
        let mut a = FLAKY_ATTEMPTS.lock().expect("lock");
        a.push(tokio::time::Instant::now());
        a.len()
    };
    if n <= fail_first {
        Err(format!("attempt {n} failed"))
    } else {
        Ok(format!("ok after {n}"))
    }
}

static HOPELESS_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

#[step(retries = 2, backoff = 5ms)]
async fn hopeless() -> Result<u32, String> {
    let n = HOPELESS_ATTEMPTS.fetch_add(1, Ordering::SeqCst) + 1;
    Err(format!("no luck on attempt {n}"))
}

#[workflow]
async fn retrying() -> (Result<String, String>, Result<u32, String>) {
    (flaky(2).await, hopeless().await)
}

// Paused time: sleeps advance the clock exactly, so the backoff delays are checked
// exactly rather than timed.
async fn retries_back_off_exponentially_and_record_only_the_final_attempt(journal: Journal) {
    FLAKY_ATTEMPTS.lock().expect("lock").clear();
    HOPELESS_ATTEMPTS.store(0, Ordering::SeqCst);
    let rt = open(&journal).await;
    let (ok, err) = rt
        .start_with_id("r", retrying())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    assert_eq!(ok, Ok("ok after 3".to_owned()));
    assert_eq!(
        err,
        Err("no luck on attempt 3".to_owned()),
        "an exhausted step records its last Err"
    );
    let gaps: Vec<Duration> = {
        let a = FLAKY_ATTEMPTS.lock().expect("lock");
        a.windows(2).map(|w| w[1] - w[0]).collect()
    };
    assert_eq!(gaps, [Duration::from_millis(10), Duration::from_millis(20)]);
    assert_eq!(HOPELESS_ATTEMPTS.load(Ordering::SeqCst), 3);
    let attempts: Vec<u32> = rt
        .steps("r")
        .await
        .expect("steps")
        .iter()
        .map(|s| s.attempts)
        .collect();
    assert_eq!(attempts, [3, 3]);

    // The recorded Err replays like an Ok: no attempt runs again.
    journal.release(rt).await;
    journal.make_pending("r");
    let rt = common::reopen(journal.path()).await;
    let replayed = rt
        .start_with_id("r", retrying())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    assert_eq!(replayed, (ok, err));
    assert_eq!(FLAKY_ATTEMPTS.lock().expect("lock").len(), 3);
    assert_eq!(HOPELESS_ATTEMPTS.load(Ordering::SeqCst), 3);
}
on_both_journals!(
    #[tokio::test(start_paused = true)]
    retries_back_off_exponentially_and_record_only_the_final_attempt,
    serial
);

static DROPPED_RAN: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn never_awaited() -> u8 {
    DROPPED_RAN.fetch_add(1, Ordering::SeqCst);
    0
}

#[step]
async fn after(x: u8) -> u8 {
    x
}

#[workflow]
async fn drops_a_step() -> u8 {
    // Called, never polled: it still holds position 1, so `after` is 2 on every run.
    drop(never_awaited());
    after(9).await
}

async fn a_step_dropped_unpolled_keeps_its_id(journal: Journal) {
    let rt = open(&journal).await;
    let h = rt
        .start_with_id("drop", drops_a_step())
        .await
        .expect("start");
    assert_eq!(h.result().await.expect("result"), 9);
    let steps = rt.steps("drop").await.expect("steps");
    let recorded: Vec<(String, &str)> = steps
        .iter()
        .map(|s| (s.path.to_string(), s.name.as_str()))
        .collect();
    assert_eq!(recorded, [("2".to_owned(), "after")]);
    assert_eq!(
        DROPPED_RAN.load(Ordering::SeqCst),
        0,
        "a dropped step never runs"
    );
}
on_both_journals!(
    #[tokio::test]
    a_step_dropped_unpolled_keeps_its_id
);

#[step]
async fn slow_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    x * 2
}

#[workflow]
async fn patient(x: u64) -> u64 {
    slow_double(x).await
}

async fn a_start_abandoned_by_its_caller_still_runs(journal: Journal) {
    let rt = open(&journal).await;
    // The caller gives up after the first poll (a timeout, a dropped web request):
    // the start must not leave the id claimed without a run.
    let mut abandoned = Box::pin(rt.start_with_id("abandoned", patient(1)));
    assert!(futures::poll!(&mut abandoned).is_pending());
    drop(abandoned);
    let handle = rt
        .start_with_id("abandoned", patient(1))
        .await
        .expect("start");
    assert_eq!(handle.result().await.expect("the run goes on"), 2);
}
on_both_journals!(
    #[tokio::test]
    a_start_abandoned_by_its_caller_still_runs
);

async fn open_bincode(journal: &Journal) -> Runtime {
    Runtime::builder(journal.path())
        .durability(Durability::Normal)
        .codec(Codec::Bincode)
        .open()
        .await
        .expect("open journal")
}

/// bincode cannot represent `skip_serializing_if`: the encoding does not decode back.
/// The default codec records it.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Lossy {
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    n: u32,
}

#[workflow]
async fn lossy_output() -> Lossy {
    Lossy { note: None, n: 3 }
}

#[workflow]
async fn lossy_input(x: Lossy) -> u32 {
    x.n
}

async fn an_output_that_does_not_round_trip_fails_the_workflow_for_good(journal: Journal) {
    let rt = open_bincode(&journal).await;
    let h = rt
        .start_with_id("lossy-out", lossy_output())
        .await
        .expect("start");
    let err = h.result().await.expect_err("not recordable");
    assert!(
        matches!(&err, Error::Failed { kind: FailureKind::OutputNotEncodable, message, .. }
            if message.contains("does not decode back")),
        "{err:?}"
    );
    assert_eq!(h.status(), WorkflowStatus::Failed);
    // Recorded as failed, so starting it again says the same without running.
    let again = rt
        .start_with_id("lossy-out", lossy_output())
        .await
        .expect("start");
    assert_eq!(
        again.result().await.expect_err("failed").to_string(),
        err.to_string()
    );
}
on_both_journals!(
    #[tokio::test]
    an_output_that_does_not_round_trip_fails_the_workflow_for_good
);

async fn an_input_that_does_not_round_trip_is_refused_before_anything_is_written(journal: Journal) {
    let rt = open_bincode(&journal).await;
    let err = rt
        .start_with_id("lossy-in", lossy_input(Lossy { note: None, n: 1 }))
        .await
        .expect_err("not recordable");
    assert!(
        matches!(&err, Error::Encode { what, reason }
            if what.contains("lossy-in") && reason.to_string().contains("does not decode back")),
        "{err:?}"
    );
    drop(rt);
    assert!(journal.dump("durable_workflows").is_empty());
}
on_both_journals!(
    #[tokio::test]
    an_input_that_does_not_round_trip_is_refused_before_anything_is_written
);

async fn the_default_codec_records_what_bincode_cannot(journal: Journal) {
    let rt = open(&journal).await;
    let out = rt
        .start_with_id("out", lossy_output())
        .await
        .expect("start");
    assert_eq!(
        out.result().await.expect("recorded"),
        Lossy { note: None, n: 3 }
    );
    let input = Lossy {
        note: Some("gift".into()),
        n: 4,
    };
    let h = rt
        .start_with_id("in", lossy_input(input))
        .await
        .expect("start");
    assert_eq!(h.result().await.expect("recorded"), 4);
}
on_both_journals!(
    #[tokio::test]
    the_default_codec_records_what_bincode_cannot
);
