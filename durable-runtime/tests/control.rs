//! Durable select, child workflows, cancellation, resumption and deadlines.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use durable_runtime::{
    CancelReason, Durability, Either, Error, Runtime, WorkflowStatus, recv, select, select_all,
    sleep, start_child, step, workflow,
};

async fn open(dir: &tempfile::TempDir) -> Runtime {
    Runtime::builder(dir.path().join("journal.db"))
        .durability(Durability::Off)
        .open()
        .await
        .expect("open")
}

/// Which racer a test wants to finish first: 0 or 1.
static FAST: AtomicU32 = AtomicU32::new(0);

#[step]
async fn racer(me: u32) -> u32 {
    // The fast one is ready at its first poll; the other takes a while.
    if FAST.load(Ordering::SeqCst) != me {
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    me
}

/// Not a step: nothing of it is recorded, so on replay it is as fast as `FAST` says.
async fn unrecorded(me: u32) -> u32 {
    if FAST.load(Ordering::SeqCst) != me {
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    me
}

#[workflow]
async fn race() -> String {
    match select(unrecorded(0), racer(1)).await {
        Either::Left(v) => format!("left {v}"),
        Either::Right(v) => format!("right {v}"),
    }
}

#[tokio::test]
async fn select_replays_the_recorded_winner_even_if_the_other_finishes_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    FAST.store(1, Ordering::SeqCst);
    let rt = open(&dir).await;
    let first = rt
        .start_with_id("race", race())
        .await
        .expect("start")
        .result()
        .await
        .expect("race");
    assert_eq!(first, "right 1");
    let steps = rt.steps("race").await.expect("steps");
    let select_step = steps
        .iter()
        .find(|s| s.name == "durable::select")
        .expect("the winner is recorded");
    // The racer claimed its id (1) before the select claimed its own (2).
    assert_eq!(select_step.path.to_string(), "2");
    assert_eq!(select_step.output::<u32>().expect("winner"), 1);
    drop(rt);

    // On replay the unrecorded branch is ready at its first poll, like the recorded
    // winner: polled in source order, it would win.
    FAST.store(0, Ordering::SeqCst);
    common::make_pending(&path, "race");
    let rt = common::reopen(&path).await;
    let again = rt
        .start_with_id("race", race())
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, "right 1");
}

#[workflow]
async fn race_many() -> (u32, u32) {
    let (i, v) = select_all(vec![racer(0), racer(1)]).await;
    (u32::try_from(i).unwrap_or(u32::MAX), v)
}

#[tokio::test]
async fn select_all_records_its_winner_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    // Whatever FAST is (tests share it), the result is one consistent pair.
    let (i, v) = rt
        .start(race_many())
        .await
        .expect("start")
        .result()
        .await
        .expect("race");
    assert_eq!(i, v);
}

static CHILD_RUNS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn child_work(n: u32) -> u32 {
    CHILD_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 2
}

#[workflow]
async fn double(n: u32) -> u32 {
    child_work(n).await
}

#[workflow]
async fn parent(n: u32) -> Result<u32, String> {
    let a = double(n).await.map_err(|e| e.to_string())?;
    let handle = start_child(double(n + 1))
        .await
        .map_err(|e| e.to_string())?;
    let b = handle.result().await.map_err(|e| e.to_string())?;
    Ok(a + b)
}

#[tokio::test]
async fn children_have_derived_ids_and_their_results_are_recorded_in_the_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&dir).await;
    let before = CHILD_RUNS.load(Ordering::SeqCst);
    let total = rt
        .start_with_id("p", parent(5))
        .await
        .expect("start")
        .result()
        .await
        .expect("parent");
    assert_eq!(total, Ok(10 + 12));
    assert_eq!(CHILD_RUNS.load(Ordering::SeqCst) - before, 2);
    let names: Vec<(String, String)> = rt
        .steps("p")
        .await
        .expect("steps")
        .into_iter()
        .map(|s| (s.path.to_string(), s.name))
        .collect();
    assert_eq!(
        names,
        [
            ("1".to_owned(), "durable::child".to_owned()),
            ("2".to_owned(), "durable::start_child".to_owned()),
            ("3".to_owned(), "durable::child_result".to_owned()),
        ]
    );
    // The children are workflows of their own, linked to the parent.
    assert_eq!(
        rt.handle::<u32>("p/1")
            .await
            .expect("child 1")
            .result()
            .await
            .expect("r"),
        10
    );
    let parents = common::dump(&path, "durable_workflows");
    assert!(
        parents
            .iter()
            .any(|row| row.iter().any(|c| c == "Text(\"p/2\")")
                && row.iter().any(|c| c == "Text(\"p\")")),
        "{parents:?}"
    );
    // A replay of the parent with both children finished runs no child step again.
    drop(rt);
    common::make_pending(&path, "p");
    let rt = common::reopen(&path).await;
    let again = rt
        .start_with_id("p", parent(5))
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, Ok(22));
    assert_eq!(CHILD_RUNS.load(Ordering::SeqCst) - before, 2);
}

#[tokio::test]
async fn a_parent_whose_child_record_is_missing_picks_up_the_finished_child() {
    // The window between the child's completion and the parent's record: the child is
    // complete in the journal, the parent's `durable::child` step is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&dir).await;
    let before = CHILD_RUNS.load(Ordering::SeqCst);
    rt.start_with_id("q", parent(1))
        .await
        .expect("start")
        .result()
        .await
        .expect("parent")
        .expect("ok");
    drop(rt);
    common::make_pending(&path, "q");
    common::sql(
        &path,
        "DELETE FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 'q') AND path = '1'",
        [],
    );
    let rt = common::reopen(&path).await;
    let again = rt
        .start_with_id("q", parent(1))
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, Ok(2 + 4));
    assert_eq!(
        CHILD_RUNS.load(Ordering::SeqCst) - before,
        2,
        "a finished child ran again"
    );
}

static PARKED: AtomicU32 = AtomicU32::new(0);

#[step]
async fn note_parked(_who: String) {
    PARKED.fetch_add(1, Ordering::SeqCst);
}

#[workflow]
async fn napper(name: String) -> String {
    note_parked(name.clone()).await;
    sleep(Duration::from_secs(3600)).await;
    name
}

#[workflow]
async fn family() -> Result<(String, String), String> {
    let (a, b) = tokio::join!(napper("a".into()), napper("b".into()));
    Ok((a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?))
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_two_children_and_resume_continues_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&dir).await;
    let before = PARKED.load(Ordering::SeqCst);
    let h = rt.start_with_id("fam", family()).await.expect("start");
    while PARKED.load(Ordering::SeqCst) - before < 2 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cancelled_at = Instant::now();
    rt.cancel("fam").await.expect("cancel");
    let err = h.result().await.expect_err("cancelled");
    assert!(
        matches!(&err, Error::Cancelled { workflow_id, reason: CancelReason::Requested } if workflow_id == "fam"),
        "{err:?}"
    );
    // Sleeping workflows stop at once.
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
    assert_eq!(h.status(), WorkflowStatus::Cancelled);
    for child in ["fam/1", "fam/2"] {
        let c = rt.handle::<String>(child).await.expect("child");
        assert!(
            matches!(c.result().await, Err(Error::Cancelled { .. })),
            "{child} was not cancelled"
        );
    }
    // Recorded: a reopen does not resume them.
    drop(rt);
    let rt = common::reopen(&path).await;
    assert!(rt.recovered().is_empty(), "{:?}", rt.recovered());
    assert!(matches!(
        rt.handle::<(String, String)>("fam")
            .await
            .expect("h")
            .result()
            .await,
        Err(Error::Cancelled { .. })
    ));
    // Resume brings back the parent and both children, from their recorded steps.
    rt.resume("fam").await.expect("resume");
    let again = rt
        .handle::<Result<(String, String), String>>("fam")
        .await
        .expect("handle");
    assert_eq!(again.status(), WorkflowStatus::Running);
    // They sleep for an hour again (the sleep is recorded); cancel once more to end
    // the test, and check a second resume refuses a running workflow.
    let err = rt.resume("fam").await.expect_err("pending");
    assert!(matches!(err, Error::NotResumable { .. }), "{err:?}");
    rt.cancel("fam").await.expect("cancel again");
    assert!(matches!(again.result().await, Err(Error::Cancelled { .. })));
    assert_eq!(
        PARKED.load(Ordering::SeqCst) - before,
        2,
        "a recorded step ran again after resume"
    );
}

#[tokio::test]
async fn cancel_and_resume_report_unknown_and_finished_workflows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    assert!(matches!(
        rt.cancel("nobody").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        rt.resume("nobody").await,
        Err(Error::NotFound { .. })
    ));
    rt.start_with_id("done", double(1))
        .await
        .expect("start")
        .result()
        .await
        .expect("done");
    // Cancelling a finished workflow changes nothing.
    rt.cancel("done").await.expect("cancel");
    assert_eq!(
        rt.handle::<u32>("done")
            .await
            .expect("h")
            .result()
            .await
            .expect("still done"),
        2
    );
    let err = rt.resume("done").await.expect_err("completed");
    assert!(err.to_string().contains("completed"), "{err}");
}

static GATE: AtomicBool = AtomicBool::new(false);
static SLOW_DONE: AtomicU32 = AtomicU32::new(0);
static AFTER: AtomicU32 = AtomicU32::new(0);

#[step]
async fn slow_step() -> u32 {
    while !GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    SLOW_DONE.fetch_add(1, Ordering::SeqCst);
    1
}

#[step]
async fn after_step() -> u32 {
    AFTER.fetch_add(1, Ordering::SeqCst);
    2
}

#[workflow]
async fn boundary() -> u32 {
    slow_step().await + after_step().await
}

#[tokio::test]
async fn a_running_step_finishes_and_is_recorded_before_the_cancellation_takes_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt.start_with_id("b", boundary()).await.expect("start");
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.cancel("b").await.expect("cancel");
    // The step is still running: the workflow has not stopped yet.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(h.status(), WorkflowStatus::Running);
    GATE.store(true, Ordering::SeqCst);
    assert!(matches!(h.result().await, Err(Error::Cancelled { .. })));
    assert_eq!(SLOW_DONE.load(Ordering::SeqCst), 1);
    assert_eq!(
        AFTER.load(Ordering::SeqCst),
        0,
        "a step started after cancel"
    );
    let names: Vec<String> = rt
        .steps("b")
        .await
        .expect("steps")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["slow_step"]);
    // Resume runs only what is left.
    rt.resume("b").await.expect("resume");
    let v = rt
        .handle::<u32>("b")
        .await
        .expect("h")
        .result()
        .await
        .expect("resumed");
    assert_eq!(v, 3);
    assert_eq!(SLOW_DONE.load(Ordering::SeqCst), 1);
    assert_eq!(AFTER.load(Ordering::SeqCst), 1);
}

#[workflow]
async fn waits_for_ever() -> Option<u32> {
    recv::<u32>("never", None).await.ok().flatten()
}

#[workflow]
async fn supervisor() -> Result<Option<u32>, String> {
    waits_for_ever().await.map_err(|e| e.to_string())
}

#[test]
fn a_deadline_cancels_the_workflow_and_its_children_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let first = tokio::runtime::Runtime::new().expect("tokio");
    let started = first.block_on(async {
        let rt = open(&dir).await;
        let started = Instant::now();
        rt.start_with_id("sup", supervisor().timeout(Duration::from_millis(600)))
            .await
            .expect("start");
        // The child is running (and waiting) before the "crash".
        while common::dump(&path, "durable_workflows").len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        started
    });
    first.shutdown_background();
    let second = tokio::runtime::Runtime::new().expect("tokio");
    second.block_on(async {
        let rt = common::reopen(&path).await;
        let h = rt
            .handle::<Result<Option<u32>, String>>("sup")
            .await
            .expect("h");
        let err = h.result().await.expect_err("deadline");
        assert!(
            matches!(
                err,
                Error::Cancelled {
                    reason: CancelReason::DeadlineExceeded,
                    ..
                }
            ),
            "{err:?}"
        );
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(600), "{took:?}");
        assert!(
            took < Duration::from_millis(3000),
            "the deadline was restarted: {took:?}"
        );
        let child = rt.handle::<Option<u32>>("sup/1").await.expect("child");
        assert!(matches!(
            child.result().await,
            Err(Error::Cancelled {
                reason: CancelReason::DeadlineExceeded,
                ..
            })
        ));
    });
}

static LAST_GATE: AtomicBool = AtomicBool::new(false);

#[step]
async fn gated_last() -> u32 {
    while !LAST_GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    7
}

#[workflow]
async fn one_slow_step() -> u32 {
    gated_last().await
}

#[tokio::test]
async fn a_cancel_during_the_last_step_wins_for_every_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt
        .start_with_id("last", one_slow_step())
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.cancel("last").await.expect("cancel");
    LAST_GATE.store(true, Ordering::SeqCst);
    let live = h.result().await;
    let journal = rt
        .handle::<u32>("last")
        .await
        .expect("handle")
        .result()
        .await;
    assert!(
        matches!(live, Err(Error::Cancelled { .. }))
            && matches!(journal, Err(Error::Cancelled { .. })),
        "live handle {live:?}, journal {journal:?}"
    );
}

static SEND_GATE: AtomicBool = AtomicBool::new(false);

#[step]
async fn before_send() -> u32 {
    while !SEND_GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    1
}

#[workflow]
async fn step_then_send() -> u32 {
    let v = before_send().await;
    let _ = durable_runtime::send("elsewhere", "t", &v).await;
    sleep(Duration::from_secs(3600)).await;
    v
}

#[tokio::test]
async fn nothing_starts_after_the_running_step_of_a_cancelled_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt
        .start_with_id("sender", step_then_send())
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.cancel("sender").await.expect("cancel");
    SEND_GATE.store(true, Ordering::SeqCst);
    assert!(matches!(h.result().await, Err(Error::Cancelled { .. })));
    let names: Vec<String> = rt
        .steps("sender")
        .await
        .expect("steps")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["before_send"]);
    assert!(common::dump(rt.path(), "durable_messages").is_empty());
}

static KID_GATE: AtomicBool = AtomicBool::new(false);
static KID_IN: AtomicU32 = AtomicU32::new(0);

#[step]
async fn kid_slow() -> u32 {
    KID_IN.fetch_add(1, Ordering::SeqCst);
    while !KID_GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    9
}

#[step]
async fn kid_after() -> u32 {
    1
}

#[workflow]
async fn kid() -> u32 {
    kid_slow().await + kid_after().await
}

#[workflow]
async fn mom() -> Result<u32, String> {
    kid().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_resumed_while_its_child_winds_down_gets_the_childs_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt.start_with_id("mom", mom()).await.expect("start");
    while KID_IN.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rt.cancel("mom").await.expect("cancel");
    assert!(matches!(h.result().await, Err(Error::Cancelled { .. })));
    // The child is still in its step body; resume waits for it to stop.
    let resume = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.resume("mom").await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    KID_GATE.store(true, Ordering::SeqCst);
    resume.await.expect("join").expect("resume");
    let out = rt
        .handle::<Result<u32, String>>("mom")
        .await
        .expect("handle")
        .result()
        .await
        .expect("parent");
    assert_eq!(out, Ok(10));
}

static KID7_RUNS: AtomicU32 = AtomicU32::new(0);

#[workflow]
async fn kid7(_n: u32) -> u32 {
    KID7_RUNS.fetch_add(1, Ordering::SeqCst);
    sleep(Duration::from_millis(100)).await;
    3
}

#[workflow]
async fn mom7() -> u32 {
    let kids = (0..16).map(kid7);
    durable_runtime::join_all(kids)
        .await
        .into_iter()
        .map(|r| r.unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_runs_each_child_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt.start_with_id("mom7", mom7()).await.expect("start");
    while common::dump(rt.path(), "durable_workflows").len() < 17 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.cancel("mom7").await.expect("cancel");
    let _ = h.result().await;
    let before = KID7_RUNS.load(Ordering::SeqCst);
    rt.resume("mom7").await.expect("resume");
    let out = rt
        .handle::<u32>("mom7")
        .await
        .expect("handle")
        .result()
        .await
        .expect("parent");
    assert_eq!(out, 48);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(KID7_RUNS.load(Ordering::SeqCst) - before, 16);
}
