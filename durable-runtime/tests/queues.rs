//! Queues on both journals: limits hold, order holds, partitions are served
//! fairly, deduplication refuses or joins, limits change at run time and hold after a
//! restart, a crash leaks no slot, and a run that cannot go on frees its slot.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use common::{Journal, on_both_journals};
use durable_runtime::{
    Enqueue, Error, OnDuplicate, Queue, QueueHandle, QueueInfo, Runtime, WorkflowHandle, step,
    workflow,
};

/// What each test's workflows did, by the test's key: how many run now, the most that
/// ran at once, and the order they started in.
#[derive(Default, Debug, Clone)]
struct Seen {
    now: u32,
    max: u32,
    started: Vec<String>,
    ended: u32,
}

static SEEN: Mutex<Option<HashMap<String, Seen>>> = Mutex::new(None);

fn seen(key: &str) -> Seen {
    SEEN.lock()
        .expect("ok")
        .get_or_insert_with(HashMap::new)
        .get(key)
        .cloned()
        .unwrap_or_default()
}

fn with_seen<T>(key: &str, f: impl FnOnce(&mut Seen) -> T) -> T {
    let mut all = SEEN.lock().expect("ok");
    f(all
        .get_or_insert_with(HashMap::new)
        .entry(key.to_owned())
        .or_default())
}

/// Test key `key` of `journal`'s variant of a test: the two run at once.
fn k(journal: &Journal, key: &str) -> String {
    match journal {
        Journal::Sqlite { .. } => format!("sqlite-{key}"),
        #[allow(unreachable_patterns)]
        _ => format!("postgres-{key}"),
    }
}

/// Runs for `ms`, counting itself as running meanwhile.
#[step]
async fn work(key: String, item: String, ms: u64) -> String {
    with_seen(&key, |s| {
        s.now += 1;
        s.max = s.max.max(s.now);
        s.started.push(item.clone());
    });
    tokio::time::sleep(Duration::from_millis(ms)).await;
    with_seen(&key, |s| {
        s.now -= 1;
        s.ended += 1;
    });
    item
}

#[workflow]
async fn job(key: String, item: String, ms: u64) -> String {
    work(key, item, ms).await
}

async fn open(path: &std::path::Path, queues: &[&Queue]) -> Runtime {
    let mut b = Runtime::builder(path);
    for q in queues {
        b = b.queue((*q).clone());
    }
    b.open().await.expect("open")
}

/// Queue `name` of `rt`.
fn queue(rt: &Runtime, name: &str) -> QueueHandle {
    rt.queue(name).expect("a declared queue")
}

/// What queue `name` of `rt` holds now.
async fn info_of(rt: &Runtime, name: &str) -> QueueInfo {
    queue(rt, name).info().await.expect("queue info")
}

async fn all_done(handles: Vec<WorkflowHandle<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.result().await.expect("result"));
    }
    out
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_queue_never_runs_more_than_its_concurrency
);
async fn a_queue_never_runs_more_than_its_concurrency(journal: Journal) {
    let q = Queue::new("c3").concurrency(3);
    let rt = open(journal.path(), &[&q]).await;
    // Enqueued while paused, so that the three slots fill at once however slow each
    // enqueue is.
    queue(&rt, "c3").pause().await.expect("pause");
    let mut handles = Vec::new();
    for i in 0..40 {
        handles.push(
            rt.enqueue(&q, job(k(&journal, "c3"), i.to_string(), 3))
                .await
                .expect("ok"),
        );
    }
    queue(&rt, "c3").unpause().await.expect("unpause");
    let out = all_done(handles).await;
    assert_eq!(out.len(), 40);
    let s = seen(&k(&journal, "c3"));
    assert_eq!(s.max, 3, "{s:?}");
    assert_eq!(s.ended, 40);
    let info = info_of(&rt, "c3").await;
    assert_eq!((info.queued, info.running, info.held), (0, 0, 0));
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test]
    priority_runs_lower_numbers_first_then_in_order_of_arrival
);
async fn priority_runs_lower_numbers_first_then_in_order_of_arrival(journal: Journal) {
    let q = Queue::new("prio").concurrency(1);
    let rt = open(journal.path(), &[&q]).await;
    queue(&rt, "prio").pause().await.expect("ok");
    let items = [(5, "a"), (0, "b"), (5, "c"), (-3, "d"), (0, "e"), (1, "f")];
    let mut handles = Vec::new();
    for (p, item) in items {
        let call = job(k(&journal, "prio"), item.into(), 1);
        handles.push(
            rt.enqueue_with(&q, call, Enqueue::new().priority(p))
                .await
                .expect("ok"),
        );
    }
    let listed: Vec<String> = queue(&rt, "prio")
        .list(100)
        .await
        .expect("ok")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(listed.len(), 6);
    assert_eq!(
        seen(&k(&journal, "prio")).started.len(),
        0,
        "paused: nothing starts"
    );
    queue(&rt, "prio").unpause().await.expect("ok");
    all_done(handles).await;
    assert_eq!(
        seen(&k(&journal, "prio")).started,
        ["d", "b", "e", "f", "a", "c"]
    );
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_small_partition_does_not_wait_behind_a_big_ones_backlog
);
async fn a_small_partition_does_not_wait_behind_a_big_ones_backlog(journal: Journal) {
    let q = Queue::new("fair").concurrency(2);
    let rt = open(journal.path(), &[&q]).await;
    queue(&rt, "fair").pause().await.expect("ok");
    let mut handles = Vec::new();
    for i in 0..1000 {
        let call = job(k(&journal, "fair"), format!("big-{i}"), 0);
        handles.push(
            rt.enqueue_with(&q, call, Enqueue::new().partition("big"))
                .await
                .expect("ok"),
        );
    }
    for i in 0..10 {
        let call = job(k(&journal, "fair"), format!("small-{i}"), 0);
        handles.push(
            rt.enqueue_with(&q, call, Enqueue::new().partition("small"))
                .await
                .expect("ok"),
        );
    }
    queue(&rt, "fair").unpause().await.expect("ok");
    all_done(handles).await;
    let started = seen(&k(&journal, "fair")).started;
    let last_small = started
        .iter()
        .rposition(|s| s.starts_with("small"))
        .expect("ok");
    // Served in turn: the ten small ones go among the first thirty or so, not after
    // the thousand big ones.
    assert!(
        last_small < 40,
        "the last small one started {last_small}th: {started:?}"
    );
    assert_eq!(started.len(), 1010);
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    partition_concurrency_holds_per_partition
);
async fn partition_concurrency_holds_per_partition(journal: Journal) {
    let q = Queue::new("per-part")
        .concurrency(6)
        .partition_concurrency(1);
    let rt = open(journal.path(), &[&q]).await;
    let mut handles = Vec::new();
    for i in 0..30 {
        let part = format!("p{}", i % 3);
        let call = job(k(&journal, &format!("per-part-{part}")), i.to_string(), 2);
        handles.push(
            rt.enqueue_with(&q, call, Enqueue::new().partition(part))
                .await
                .expect("ok"),
        );
    }
    all_done(handles).await;
    for p in 0..3 {
        let s = seen(&k(&journal, &format!("per-part-p{p}")));
        assert_eq!((s.max, s.ended), (1, 10), "partition p{p}: {s:?}");
    }
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test]
    a_deduplication_id_refuses_or_joins_while_its_holder_is_pending
);
async fn a_deduplication_id_refuses_or_joins_while_its_holder_is_pending(journal: Journal) {
    let q = Queue::new("dedup").concurrency(1);
    let rt = open(journal.path(), &[&q]).await;
    queue(&rt, "dedup").pause().await.expect("ok");
    let first = rt
        .enqueue_with(
            &q,
            job(k(&journal, "dedup"), "first".into(), 0),
            Enqueue::new().dedup("k", OnDuplicate::Refuse),
        )
        .await
        .expect("ok");
    let refused = rt
        .enqueue_with(
            &q,
            job(k(&journal, "dedup"), "second".into(), 0),
            Enqueue::new().dedup("k", OnDuplicate::Refuse),
        )
        .await
        .expect_err("the id is taken");
    match &refused {
        Error::Duplicate {
            queue,
            dedup_id,
            existing,
        } => {
            assert_eq!((queue.as_str(), dedup_id.as_str()), ("dedup", "k"));
            assert_eq!(existing, first.id());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        refused.to_string().contains("OnDuplicate::Join"),
        "{refused}"
    );
    let joined = rt
        .enqueue_with(
            &q,
            job(k(&journal, "dedup"), "third".into(), 0),
            Enqueue::new().dedup("k", OnDuplicate::Join),
        )
        .await
        .expect("ok");
    assert_eq!(joined.id(), first.id());
    // Joining is for the same workflow: another one's handle would read this one's
    // output as its own.
    let other = rt
        .enqueue_with(
            &q,
            numbered(5),
            Enqueue::new().dedup("k", OnDuplicate::Join),
        )
        .await
        .expect_err("another workflow");
    assert!(
        matches!(&other, Error::WorkflowMismatch { workflow_id, existing, requested }
            if workflow_id == first.id() && existing == "job" && requested == "numbered"),
        "{other:?}"
    );
    assert_eq!(info_of(&rt, "dedup").await.queued, 1);
    queue(&rt, "dedup").unpause().await.expect("ok");
    assert_eq!(joined.result().await.expect("ok"), "first");
    // Finished: the id is free again.
    let again = rt
        .enqueue_with(
            &q,
            job(k(&journal, "dedup"), "fourth".into(), 0),
            Enqueue::new().dedup("k", OnDuplicate::Refuse),
        )
        .await
        .expect("ok");
    assert_eq!(again.result().await.expect("ok"), "fourth");
    assert_eq!(seen(&k(&journal, "dedup")).started, ["first", "fourth"]);
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_limit_changed_at_run_time_holds_and_outlives_a_restart
);
async fn a_limit_changed_at_run_time_holds_and_outlives_a_restart(journal: Journal) {
    let path = journal.path();
    let q = Queue::new("grow").concurrency(1);
    let rt = open(path, &[&q]).await;
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(
            rt.enqueue(&q, job(k(&journal, "grow-1"), i.to_string(), 2))
                .await
                .expect("ok"),
        );
    }
    all_done(handles).await;
    assert_eq!(seen(&k(&journal, "grow-1")).max, 1);
    queue(&rt, "grow")
        .set_concurrency(Some(4))
        .await
        .expect("ok");
    let info = info_of(&rt, "grow").await;
    assert_eq!((info.concurrency, info.set_at_run_time), (Some(4), true));
    rt.close().await.expect("ok");

    // The program still declares 1: the run-time change holds.
    let rt = open(path, &[&q]).await;
    // Enqueued while paused, so that the four slots fill at once however slow each
    // enqueue is.
    queue(&rt, "grow").pause().await.expect("pause");
    let mut handles = Vec::new();
    for i in 0..24 {
        handles.push(
            rt.enqueue(&q, job(k(&journal, "grow-4"), i.to_string(), 5))
                .await
                .expect("ok"),
        );
    }
    queue(&rt, "grow").unpause().await.expect("unpause");
    all_done(handles).await;
    assert_eq!(seen(&k(&journal, "grow-4")).max, 4);
    queue(&rt, "grow").reset().await.expect("ok");
    assert_eq!(info_of(&rt, "grow").await.concurrency, Some(1));
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test]
    a_delayed_workflow_waits_its_delay
);
async fn a_delayed_workflow_waits_its_delay(journal: Journal) {
    let q = Queue::new("later");
    let rt = open(journal.path(), &[&q]).await;
    let at = std::time::Instant::now();
    let h = rt
        .enqueue_with(
            &q,
            job(k(&journal, "later"), "x".into(), 0),
            Enqueue::new().delay(Duration::from_millis(300)),
        )
        .await
        .expect("ok");
    assert_eq!(queue(&rt, "later").list(10).await.expect("ok").len(), 1);
    h.result().await.expect("ok");
    assert!(at.elapsed() >= Duration::from_millis(300));
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test]
    a_queue_the_runtime_was_not_built_with_is_refused
);
async fn a_queue_the_runtime_was_not_built_with_is_refused(journal: Journal) {
    let q = Queue::new("known");
    let rt = open(journal.path(), &[&q]).await;
    let other = Queue::new("unknown");
    let e = rt
        .enqueue(&other, job(k(&journal, "x"), "x".into(), 0))
        .await
        .expect_err("unknown");
    assert!(
        matches!(&e, Error::Queue { queue, .. } if queue == "unknown"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(".queue(Queue::new(\"unknown\"))"),
        "{e}"
    );
    let e = rt
        .enqueue(
            &Queue::new("known").concurrency(3),
            job(k(&journal, "x"), "x".into(), 0),
        )
        .await
        .expect_err("other limits");
    assert!(e.to_string().contains("another declaration"), "{e}");
    assert!(rt.queue("nope").is_err());
    rt.close().await.expect("ok");

    let other = journal.another();
    let twice = Runtime::builder(other.path())
        .queue(Queue::new("a"))
        .queue(Queue::new("a"))
        .open()
        .await
        .expect_err("declared twice");
    assert!(twice.to_string().contains("declared twice"), "{twice}");
    let empty = Runtime::builder(other.path())
        .queue(Queue::new(""))
        .open()
        .await
        .expect_err("empty name");
    assert!(empty.to_string().contains("cannot be empty"), "{empty}");
}

on_both_journals!(
    #[tokio::test]
    a_cancelled_queued_workflow_frees_nothing_and_ends_its_handle
);
async fn a_cancelled_queued_workflow_frees_nothing_and_ends_its_handle(journal: Journal) {
    let q = Queue::new("cancel").concurrency(1);
    let rt = open(journal.path(), &[&q]).await;
    queue(&rt, "cancel").pause().await.expect("ok");
    let h = rt
        .enqueue(&q, job(k(&journal, "cancel"), "x".into(), 0))
        .await
        .expect("ok");
    queue(&rt, "cancel").cancel(h.id()).await.expect("ok");
    let e = h.result().await.expect_err("cancelled");
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    let info = info_of(&rt, "cancel").await;
    assert_eq!((info.queued, info.running), (0, 0));
    rt.close().await.expect("ok");
}

/// A workflow that blocks until released, to hold a slot across a "crash".
#[step]
async fn hold_slot(key: String) -> String {
    with_seen(&key, |s| s.started.push("held".into()));
    while with_seen(&key, |s| s.ended) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    "released".into()
}

#[workflow]
async fn holder(key: String) -> String {
    hold_slot(key).await
}

#[test]
fn a_workflow_running_at_a_crash_resumes_in_its_slot_and_the_queue_goes_on() {
    // SQLite only: on PostgreSQL a crashed runtime's dispatched workflow goes back to
    // its queue rather than resume in its slot (the history checker covers that).
    let journal = Journal::sqlite();
    let path = journal.path();
    let q = Queue::new("one").concurrency(1);
    let first = tokio::runtime::Runtime::new().expect("ok");
    first.block_on(async {
        let rt = open(path, &[&q]).await;
        rt.enqueue_with(&q, holder("crash".into()), Enqueue::new().id("h"))
            .await
            .expect("ok");
        for i in 0..3 {
            rt.enqueue_with(
                &q,
                job(k(&journal, "after-crash"), i.to_string(), 0),
                Enqueue::new().id(format!("w{i}")),
            )
            .await
            .expect("ok");
        }
        while seen("crash").started.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let info = info_of(&rt, "one").await;
        assert_eq!((info.running, info.queued), (1, 3));
    });
    first.shutdown_background();

    let second = tokio::runtime::Runtime::new().expect("ok");
    second.block_on(async {
        // The held one is released: the next run finishes it.
        with_seen("crash", |s| s.ended = 1);
        let rt = loop {
            let mut b = Runtime::builder(path);
            b = b.queue(q.clone());
            match b.open().await {
                Ok(rt) => break rt,
                Err(Error::Locked { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(rt.recovered(), ["h"]);
        let h: WorkflowHandle<String> = rt.handle("h").await.expect("ok");
        assert_eq!(h.result().await.expect("ok"), "released");
        for i in 0..3 {
            let w: WorkflowHandle<String> = rt.handle(&format!("w{i}")).await.expect("ok");
            assert_eq!(w.result().await.expect("ok"), i.to_string());
        }
        assert_eq!(seen(&k(&journal, "after-crash")).max, 1);
        let info = info_of(&rt, "one").await;
        assert_eq!((info.running, info.queued, info.held), (0, 0, 0));
        rt.close().await.expect("ok");
    });
}

on_both_journals!(
    #[tokio::test]
    a_workflow_that_cannot_run_frees_its_slot_and_is_queued_again_at_the_next_open
);
async fn a_workflow_that_cannot_run_frees_its_slot_and_is_queued_again_at_the_next_open(
    journal: Journal,
) {
    let path = journal.path();
    let q = Queue::new("bad").concurrency(1);
    let rt = open(path, &[&q]).await;
    queue(&rt, "bad").pause().await.expect("ok");
    let bad = rt
        .enqueue_with(
            &q,
            job(k(&journal, "bad"), "bad".into(), 0),
            Enqueue::new().id("bad"),
        )
        .await
        .expect("ok");
    let good = rt
        .enqueue_with(
            &q,
            job(k(&journal, "bad"), "good".into(), 0),
            Enqueue::new().id("good"),
        )
        .await
        .expect("ok");
    // Its input no longer matches its checksum: it cannot run here.
    journal.sql(
        "UPDATE durable_workflows SET input_crc32 = input_crc32 + 1 WHERE id = 'bad'",
        &[],
    );
    queue(&rt, "bad").unpause().await.expect("ok");
    assert_eq!(good.result().await.expect("ok"), "good");
    let info = info_of(&rt, "bad").await;
    assert_eq!((info.queued, info.running, info.held), (0, 0, 1));
    drop(bad);
    rt.close().await.expect("ok");
    // Repaired, and opened again: it is queued again, and runs.
    journal.sql(
        "UPDATE durable_workflows SET input_crc32 = input_crc32 - 1 WHERE id = 'bad'",
        &[],
    );
    let rt = open(path, &[&q]).await;
    let bad: WorkflowHandle<String> = rt.handle("bad").await.expect("ok");
    assert_eq!(bad.result().await.expect("ok"), "bad");
    let info = info_of(&rt, "bad").await;
    assert_eq!((info.queued, info.running, info.held), (0, 0, 0));
    rt.close().await.expect("ok");
}

/// A workflow whose input is a number: a row recorded for [`job`] and renamed to this
/// one no longer decodes, as after a deploy that changed the input's type.
#[workflow]
async fn numbered(n: u64) -> String {
    n.to_string()
}

/// The result of `handle`, or a panic if it has none within a minute (a handle that
/// would wait for ever).
async fn result_of(handle: WorkflowHandle<String>) -> Result<String, Error> {
    tokio::time::timeout(Duration::from_secs(60), handle.result())
        .await
        .expect("the handle answers: it does not wait for ever")
}

on_both_journals!(
    #[tokio::test]
    a_held_workflow_s_handles_say_why_it_stopped
);
async fn a_held_workflow_s_handles_say_why_it_stopped(journal: Journal) {
    let path = journal.path();
    let q = Queue::new("held").concurrency(1);
    let rt = open(path, &[&q]).await;
    queue(&rt, "held").pause().await.expect("ok");
    let enqueue = |item: &str| {
        rt.enqueue_with(
            &q,
            job(k(&journal, "held"), item.into(), 0),
            Enqueue::new().id(item),
        )
    };
    let (damaged, retyped) = (
        enqueue("damaged").await.expect("ok"),
        enqueue("retyped").await.expect("ok"),
    );
    let good = enqueue("good").await.expect("ok");
    // One no longer matches its checksum; the other's input no longer has its
    // workflow's type.
    journal.sql(
        "UPDATE durable_workflows SET input_crc32 = input_crc32 + 1 WHERE id = 'damaged'",
        &[],
    );
    journal.sql(
        "UPDATE durable_workflows SET name = 'numbered' WHERE id = 'retyped'",
        &[],
    );
    queue(&rt, "held").unpause().await.expect("ok");
    assert_eq!(good.result().await.expect("ok"), "good");
    // The handles taken at the enqueue report why each stopped.
    assert!(
        matches!(result_of(damaged).await, Err(Error::Corrupt { .. })),
        "a damaged row's handle reports the damage"
    );
    assert!(
        matches!(result_of(retyped).await, Err(Error::Incompatible { .. })),
        "a retyped row's handle reports the type change"
    );
    let info = info_of(&rt, "held").await;
    assert_eq!((info.queued, info.running, info.held), (0, 0, 2));
    // So do handles taken after: looked up, or returned by enqueueing the id again.
    for id in ["damaged", "retyped"] {
        let handle: WorkflowHandle<String> = rt.handle(id).await.expect("ok");
        let why = result_of(handle).await.expect_err("it stopped");
        assert!(
            matches!(why, Error::Corrupt { .. } | Error::Incompatible { .. }),
            "{why}"
        );
    }
    let again = rt
        .enqueue_with(&q, numbered(7), Enqueue::new().id("retyped"))
        .await
        .expect("ok");
    let why = result_of(again).await.expect_err("it stopped");
    assert!(matches!(why, Error::Incompatible { .. }), "{why}");
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test]
    durations_too_long_to_add_to_a_time_neither_stall_a_queue_nor_stop_the_runtime
);
async fn durations_too_long_to_add_to_a_time_neither_stall_a_queue_nor_stop_the_runtime(
    journal: Journal,
) {
    let key = k(&journal, "forever");
    let timed = Queue::new("timed").concurrency(1);
    let once = Queue::new("once").rate_limit(1, Duration::MAX);
    let rt = open(journal.path(), &[&timed, &once]).await;
    // A timeout of `Duration::MAX` is no timeout, and holds up nothing behind it.
    let first = rt
        .enqueue_with(
            &timed,
            job(key.clone(), "first".into(), 0),
            Enqueue::new()
                .timeout(Duration::MAX)
                .delay(Duration::from_millis(1)),
        )
        .await
        .expect("ok");
    let second = rt
        .enqueue(&timed, job(key.clone(), "second".into(), 0))
        .await
        .expect("ok");
    assert_eq!(result_of(first).await.expect("ok"), "first");
    assert_eq!(result_of(second).await.expect("ok"), "second");
    // One start in a window that never ends: the next waits for ever, and the
    // runtime goes on (a window's end, a time past `i64::MAX`, broke its writer).
    let only = rt
        .enqueue(&once, job(key.clone(), "only".into(), 0))
        .await
        .expect("ok");
    assert_eq!(result_of(only).await.expect("ok"), "only");
    let _next = rt
        .enqueue(&once, job(key.clone(), "next".into(), 0))
        .await
        .expect("ok");
    let after = rt
        .enqueue(&timed, job(key.clone(), "after".into(), 0))
        .await
        .expect("ok");
    assert_eq!(result_of(after).await.expect("ok"), "after");
    let info = info_of(&rt, "once").await;
    assert_eq!((info.queued, info.running), (1, 0));
    rt.close().await.expect("ok");
}

/// The runtime [`cancels_from_a_workflow`] reaches (a test's own, by key).
static RUNTIMES: Mutex<Option<HashMap<String, Runtime>>> = Mutex::new(None);

/// Tries to cancel workflow `id` of queue `cancels` from a workflow body.
#[workflow]
async fn cancels_from_a_workflow(key: String, id: String) -> String {
    let rt = RUNTIMES
        .lock()
        .expect("ok")
        .as_ref()
        .and_then(|all| all.get(&key).cloned())
        .expect("a runtime");
    match rt.queue("cancels").expect("declared").cancel(&id).await {
        Err(Error::Unrecorded { .. }) => "refused".to_owned(),
        other => format!("{other:?}"),
    }
}

on_both_journals!(
    #[tokio::test]
    a_queue_handle_cancels_only_its_own_queue_s_workflows
);
async fn a_queue_handle_cancels_only_its_own_queue_s_workflows(journal: Journal) {
    let key = k(&journal, "cancels");
    let cancels = Queue::new("cancels").concurrency(1);
    let other = Queue::new("other").concurrency(1);
    let rt = open(journal.path(), &[&cancels, &other]).await;
    let handle = queue(&rt, "cancels");
    queue(&rt, "other").pause().await.expect("ok");
    let theirs = rt
        .enqueue_with(
            &other,
            job(key.clone(), "theirs".into(), 0),
            Enqueue::new().id("theirs"),
        )
        .await
        .expect("ok");
    let plain = rt.start_with_id("plain", numbered(3)).await.expect("ok");
    assert_eq!(plain.result().await.expect("ok"), "3");
    assert!(
        matches!(handle.cancel("nobody").await, Err(Error::NotFound { .. })),
        "an unknown id is not found"
    );
    for id in ["theirs", "plain"] {
        let refused = handle.cancel(id).await.expect_err("not this queue's");
        assert!(
            matches!(&refused, Error::Queue { queue, .. } if queue == "cancels"),
            "{refused:?}"
        );
        assert!(refused.to_string().contains(id), "{refused}");
    }
    // Nothing was cancelled: the other queue's workflow still runs.
    queue(&rt, "other").unpause().await.expect("ok");
    assert_eq!(result_of(theirs).await.expect("ok"), "theirs");
    // Its own, waiting: cancelled.
    handle.pause().await.expect("ok");
    let mine = rt
        .enqueue_with(
            &cancels,
            job(key.clone(), "mine".into(), 0),
            Enqueue::new().id("mine"),
        )
        .await
        .expect("ok");
    handle.cancel("mine").await.expect("ok");
    assert!(matches!(
        result_of(mine).await,
        Err(Error::Cancelled { .. })
    ));
    // From a workflow body, where a replay would cancel again: refused.
    RUNTIMES
        .lock()
        .expect("ok")
        .get_or_insert_with(HashMap::new)
        .insert(key.clone(), rt.clone());
    let body = rt
        .start(cancels_from_a_workflow(key.clone(), "mine".into()))
        .await
        .expect("ok");
    assert_eq!(body.result().await.expect("ok"), "refused");
    RUNTIMES
        .lock()
        .expect("ok")
        .get_or_insert_with(HashMap::new)
        .remove(&key);
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test]
    a_dispatched_workflow_this_program_no_longer_has_frees_its_slot_at_the_open
);
async fn a_dispatched_workflow_this_program_no_longer_has_frees_its_slot_at_the_open(
    journal: Journal,
) {
    let path = journal.path();
    let key = k(&journal, "retired");
    let q = Queue::new("retired").concurrency(1);
    let rt = open(path, &[&q]).await;
    rt.enqueue_with(
        &q,
        job(key.clone(), "old".into(), 0),
        Enqueue::new().id("old").delay(Duration::from_secs(3600)),
    )
    .await
    .expect("ok");
    rt.close().await.expect("ok");
    // As a crash would leave it had it been running, in a build whose next version
    // removed its workflow.
    journal.sql(
        "UPDATE durable_workflows SET queue_state = 'running', name = 'retired_workflow'
         WHERE id = 'old'",
        &[],
    );
    let rt = open(path, &[&q]).await;
    let next = rt
        .enqueue(&q, job(key.clone(), "next".into(), 0))
        .await
        .expect("ok");
    assert_eq!(result_of(next).await.expect("ok"), "next");
    assert_eq!(info_of(&rt, "retired").await.running, 0);
    rt.close().await.expect("ok");
}

on_both_journals!(
    #[tokio::test]
    a_pause_outlives_a_restart_and_leaves_the_declared_limits_in_force
);
async fn a_pause_outlives_a_restart_and_leaves_the_declared_limits_in_force(journal: Journal) {
    let path = journal.path();
    let q = Queue::new("paused").concurrency(1);
    let rt = open(path, &[&q]).await;
    queue(&rt, "paused").pause().await.expect("pause");
    let info = info_of(&rt, "paused").await;
    assert!(info.paused);
    assert!(
        !info.set_at_run_time,
        "a pause is not a limit set at run time"
    );
    rt.enqueue_with(
        &q,
        job(k(&journal, "paused"), "x".into(), 0),
        Enqueue::new().id("p"),
    )
    .await
    .expect("enqueue");
    rt.close().await.expect("close");

    // A new build declares another limit: it holds, and the queue stays paused.
    let q = Queue::new("paused").concurrency(2);
    let rt = open(path, &[&q]).await;
    let info = info_of(&rt, "paused").await;
    assert_eq!(
        (info.concurrency, info.paused, info.queued),
        (Some(2), true, 1)
    );
    assert!(seen(&k(&journal, "paused")).started.is_empty());
    queue(&rt, "paused").unpause().await.expect("unpause");
    let h: WorkflowHandle<String> = rt.handle("p").await.expect("handle");
    assert_eq!(h.result().await.expect("result"), "x");
    rt.close().await.expect("close");
}

/// The queue the workflows below enqueue on, declared the same way on the builder.
fn children_queue() -> Queue {
    Queue::new("children").concurrency(1)
}

/// Enqueues `n` children from inside the workflow, then collects their results.
#[workflow]
async fn fan_out(key: String, n: u32) -> Result<Vec<String>, String> {
    let e = |e: Error| e.to_string();
    let mut handles = Vec::new();
    for i in 0..n {
        let child = job(key.clone(), format!("c{i}"), 20);
        handles.push(
            durable_runtime::enqueue(&children_queue(), child)
                .await
                .map_err(e)?,
        );
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(format!("{}={}", h.id(), h.result().await.map_err(e)?));
    }
    Ok(out)
}

on_both_journals!(
    #[tokio::test]
    a_workflow_enqueues_children_that_run_under_the_queues_limits
);
async fn a_workflow_enqueues_children_that_run_under_the_queues_limits(journal: Journal) {
    let rt = open(journal.path(), &[&children_queue()]).await;
    let h = rt
        .start_with_id("fan", fan_out(k(&journal, "fan-out"), 4))
        .await
        .expect("start");
    assert_eq!(
        h.result().await.expect("result").expect("children ran"),
        ["fan/1=c0", "fan/2=c1", "fan/3=c2", "fan/4=c3"]
    );
    assert_eq!(
        seen(&k(&journal, "fan-out")).max,
        1,
        "the queue ran two children at once"
    );
    assert_eq!(
        seen(&k(&journal, "fan-out")).started,
        ["c0", "c1", "c2", "c3"]
    );
    rt.close().await.expect("close");
}

/// Enqueues with deduplication id `dedup`, waits for a message, then says what the
/// enqueue answered.
#[workflow]
async fn enqueue_then_wait(key: String) -> String {
    let child = job(key.clone(), "second".into(), 1);
    let options = Enqueue::new().dedup("the-key", OnDuplicate::Refuse);
    let answer = durable_runtime::enqueue_with(&children_queue(), child, options).await;
    let _: Option<u32> = durable_runtime::recv("go", None).await.ok().flatten();
    match answer {
        Ok(h) => format!("enqueued {}", h.id()),
        Err(Error::Duplicate { existing, .. }) => format!("refused: {existing} holds it"),
        Err(e) => format!("error: {e}"),
    }
}

on_both_journals!(
    #[tokio::test]
    an_enqueue_from_a_workflow_is_recorded_so_a_replay_answers_the_same
);
async fn an_enqueue_from_a_workflow_is_recorded_so_a_replay_answers_the_same(journal: Journal) {
    let path = journal.path();
    let rt = open(path, &[&children_queue()]).await;
    queue(&rt, "children").pause().await.expect("pause");
    let holder = rt
        .enqueue_with(
            &children_queue(),
            job(k(&journal, "replayed-enqueue"), "first".into(), 1),
            Enqueue::new()
                .id("holder")
                .dedup("the-key", OnDuplicate::Refuse),
        )
        .await
        .expect("enqueue the holder");
    rt.start_with_id("parent", enqueue_then_wait(k(&journal, "replayed-enqueue")))
        .await
        .expect("start");
    // The parent's enqueue is refused (the holder waits in the paused queue) and
    // recorded; the parent then waits for its message.
    for _ in 0..2000 {
        let steps = rt.steps("parent").await.expect("steps");
        if steps.iter().any(|s| s.name == "durable::enqueue") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The holder runs and frees the deduplication id; then the process stops.
    queue(&rt, "children").unpause().await.expect("unpause");
    assert_eq!(holder.result().await.expect("holder ran"), "first");
    rt.close().await.expect("close");
    drop(rt);

    // The parent replays: an enqueue now would be taken, but the record answers.
    let rt = open(path, &[&children_queue()]).await;
    // The deduplication id is free now; the replay still answers what was recorded.
    rt.send("parent", "go", &1u32).await.expect("send");
    let parent = rt.handle::<String>("parent").await.expect("parent");
    assert_eq!(
        parent.result().await.expect("parent"),
        "refused: holder holds it"
    );
    assert!(matches!(
        rt.handle::<String>("parent/1").await,
        Err(Error::NotFound { .. })
    ));
    rt.close().await.expect("close");
}

#[step]
async fn slow_step(key: String, ms: u64) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    key
}

#[workflow]
async fn slow_job(key: String, ms: u64) -> String {
    slow_step(key, ms).await
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_dispatched_workflow_cancelled_then_resumed_goes_back_to_its_queue
);
async fn a_dispatched_workflow_cancelled_then_resumed_goes_back_to_its_queue(journal: Journal) {
    let q = Queue::new("rc").concurrency(1);
    let rt = open(journal.path(), &[&q]).await;
    let a = rt
        .enqueue_with(&q, slow_job("a".into(), 2000), Enqueue::new().id("ra"))
        .await
        .expect("enqueue");
    while info_of(&rt, "rc").await.running == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.cancel("ra").await.expect("cancel");
    assert!(a.result().await.is_err(), "cancelled");
    rt.resume("ra").await.expect("resume");
    let b = rt
        .enqueue_with(&q, slow_job("b".into(), 10), Enqueue::new().id("rb"))
        .await
        .expect("enqueue");
    let a: WorkflowHandle<String> = rt.handle("ra").await.expect("handle");
    let ra = tokio::time::timeout(Duration::from_secs(20), a.result()).await;
    let rb = tokio::time::timeout(Duration::from_secs(20), b.result()).await;
    assert_eq!(
        (
            ra.expect("the resumed one finishes").expect("ok"),
            rb.expect("the next one finishes").expect("ok")
        ),
        ("a".to_owned(), "b".to_owned())
    );
    let info = info_of(&rt, "rc").await;
    assert_eq!((info.queued, info.running, info.held), (0, 0, 0));
    rt.close().await.expect("close");
}
