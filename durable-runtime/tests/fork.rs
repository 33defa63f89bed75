//! `Runtime::fork`: a new run that starts with copies of another run's steps before a
//! step, replays those without running their bodies, runs the rest, links to its
//! origin, and is made once per id, on both journals.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{Journal, on_both_journals};
use durable_runtime::{Error, ListQuery, Runtime, step, workflow};

static A: AtomicU32 = AtomicU32::new(0);
static B: AtomicU32 = AtomicU32::new(0);
static C: AtomicU32 = AtomicU32::new(0);

#[step]
async fn fk_a() -> u32 {
    A.fetch_add(1, Ordering::SeqCst) + 1
}

#[step]
async fn fk_b(n: u32) -> u32 {
    B.fetch_add(1, Ordering::SeqCst);
    n * 10
}

#[step]
async fn fk_c(n: u32) -> u32 {
    C.fetch_add(1, Ordering::SeqCst);
    n + 1
}

/// Steps 1 (`fk_a`), 2 and 3 (two `fk_b` at once), 4 (`fk_c`).
#[workflow]
async fn fk_order(base: u32) -> u32 {
    let a = fk_a().await + base;
    let (x, y) = tokio::join!(fk_b(a), fk_b(a + 1));
    fk_c(x + y).await
}

fn counts() -> [u32; 3] {
    [
        A.load(Ordering::SeqCst),
        B.load(Ordering::SeqCst),
        C.load(Ordering::SeqCst),
    ]
}

async fn a_fork_replays_what_came_before_and_runs_the_rest(journal: Journal) {
    for c in [&A, &B, &C] {
        c.store(0, Ordering::SeqCst);
    }
    let rt = Runtime::builder(journal.path()).open().await.expect("open");
    let out = rt
        .start_with_id("orig", fk_order(5))
        .await
        .expect("start")
        .result()
        .await
        .expect("orig");
    // a = 1 + 5 = 6; b: 60 and 70; c: 131.
    assert_eq!(out, 131);
    assert_eq!(counts(), [1, 2, 1]);

    // From step 2: step 1 is copied (its body does not run again), the rest runs.
    rt.fork("orig", "2", "fork-2").await.expect("fork");
    let forked = rt.handle::<u32>("fork-2").await.expect("handle");
    assert_eq!(forked.result().await.expect("fork-2"), 131);
    assert_eq!(counts(), [1, 4, 2]);

    // From step 4: both concurrent steps (2 and 3, numbered as they were called)
    // are copied too.
    rt.fork("orig", "4", "fork-3").await.expect("fork");
    assert_eq!(
        rt.handle::<u32>("fork-3")
            .await
            .expect("h")
            .result()
            .await
            .expect("r"),
        131
    );
    assert_eq!(counts(), [1, 4, 3]);

    // Once per id: forking again under the same id makes nothing more.
    rt.fork("orig", "2", "fork-2").await.expect("again");
    assert_eq!(
        rt.handle::<u32>("fork-2")
            .await
            .expect("h")
            .result()
            .await
            .expect("r"),
        131
    );
    assert_eq!(counts(), [1, 4, 3]);

    // The steps the fork recorded: copies before step 2, its own from there.
    let steps = rt.steps("fork-2").await.expect("steps");
    let paths: Vec<String> = steps.iter().map(|s| s.path.to_string()).collect();
    assert_eq!(paths, ["1", "2", "3", "4"]);
    let orig_steps = rt.steps("orig").await.expect("steps");
    assert_eq!(
        steps[0].finished_at_ms, orig_steps[0].finished_at_ms,
        "copied"
    );
    assert_eq!(steps[0].output::<u32>().expect("output"), 1);

    // The fork names its origin.
    let page = rt.list(&ListQuery::new()).await.expect("list");
    let fork = page
        .workflows
        .iter()
        .find(|w| w.id == "fork-2")
        .expect("listed");
    assert_eq!(fork.forked_from.as_deref(), Some("orig"));
    let orig = page
        .workflows
        .iter()
        .find(|w| w.id == "orig")
        .expect("listed");
    assert_eq!(orig.forked_from, None);

    // Refusals: an id taken by another workflow, an unknown origin, a bad step.
    assert!(matches!(
        rt.fork("fork-3", "2", "orig").await,
        Err(Error::IdTaken { .. })
    ));
    assert!(matches!(
        rt.fork("nobody", "2", "fork-x").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        rt.fork("orig", "two", "fork-y").await,
        Err(Error::InvalidId { .. })
    ));
    assert!(
        rt.handle::<u32>("fork-y").await.is_err(),
        "nothing was made"
    );

    // A fork survives a restart like any run: reopened, it is there and finished.
    journal.release(rt).await;
    let rt = Runtime::builder(journal.path())
        .open()
        .await
        .expect("reopen");
    assert_eq!(
        rt.handle::<u32>("fork-3")
            .await
            .expect("h")
            .result()
            .await
            .expect("r"),
        131
    );
    journal.release(rt).await;
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_fork_replays_what_came_before_and_runs_the_rest,
    serial
);

static FIXED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[step]
async fn fk_maybe_panic() -> u32 {
    assert!(FIXED.load(Ordering::SeqCst), "boom");
    7
}

/// Sets an event (step 1), then runs a step that panics until it is fixed (step 2).
#[workflow]
async fn fk_evented() -> u32 {
    durable_runtime::set_event("st", &"before".to_owned())
        .await
        .expect("event");
    fk_maybe_panic().await
}

async fn a_fork_after_a_fix_runs_the_failed_step_and_keeps_earlier_events(journal: Journal) {
    FIXED.store(false, Ordering::SeqCst);
    let rt = Runtime::builder(journal.path()).open().await.expect("open");
    let failed = rt
        .start_with_id("ev", fk_evented())
        .await
        .expect("start")
        .result()
        .await;
    assert!(matches!(failed, Err(Error::Failed { .. })), "{failed:?}");
    // The fix, then a fork from after the failed step: the recorded panic is not
    // copied (the step runs again), the event set before it is.
    FIXED.store(true, Ordering::SeqCst);
    rt.fork("ev", "3", "ev-fixed").await.expect("fork");
    let fixed = rt.handle::<u32>("ev-fixed").await.expect("handle");
    assert_eq!(fixed.result().await.expect("fixed"), 7);
    let event = rt
        .get_event::<String>("ev-fixed", "st", std::time::Duration::ZERO)
        .await
        .expect("event");
    assert_eq!(event.as_deref(), Some("before"));
    journal.release(rt).await;
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_fork_after_a_fix_runs_the_failed_step_and_keeps_earlier_events,
    serial
);
