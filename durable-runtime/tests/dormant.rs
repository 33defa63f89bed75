//! Dormant workflows: a workflow parked long enough is dropped from memory and rebuilt
//! by replay when what it waits for comes (a message, an event, its time, a child's
//! outcome), and gets the same results as one that stayed in memory: no message lost
//! or taken twice, no step run twice, no wake-up missed.

mod common;

use std::time::{Duration, Instant};

use durable_runtime::{
    Either, Error, Runtime, branch, get_event, recv, select, send, set_event, sleep, start_child,
    step, workflow,
};

use common::{open_dormant as open, ran, runs_of, until_dormant};

#[step]
async fn before(x: u64) -> u64 {
    ran("before");
    x * 10
}

#[step]
async fn after(x: u64) -> u64 {
    ran("after");
    x + 1
}

#[workflow]
async fn listener(x: u64) -> u64 {
    let base = before(x).await;
    let got = recv::<u64>("go", None).await.ok().flatten().unwrap_or(0);
    after(base + got).await
}

#[tokio::test]
async fn a_dormant_recv_wakes_on_its_message_and_runs_no_step_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let h = rt
        .start_with_id("listener-1", listener(4))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    rt.send("listener-1", "go", &2u64).await.expect("send");
    assert_eq!(h.result().await.expect("result"), 43);
    assert_eq!(rt.dormant_count(), 0);
    assert_eq!(runs_of("listener-1", "before"), 1);
    assert_eq!(runs_of("listener-1", "after"), 1);
    // The message was taken once.
    assert!(common::dump(rt.path(), "durable_messages").is_empty());
}

#[tokio::test]
async fn a_parked_workflow_stays_in_memory_when_dormancy_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder(dir.path().join("j.db"))
        .durability(durable_runtime::Durability::Off)
        .evict_parked_after(None)
        .open()
        .await
        .expect("open");
    let h = rt
        .start_with_id("listener-off", listener(1))
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rt.dormant_count(), 0);
    rt.send("listener-off", "go", &1u64).await.expect("send");
    assert_eq!(h.result().await.expect("result"), 12);
}

#[workflow]
async fn watcher() -> Option<u64> {
    get_event::<u64>("setter-1", "ready", None)
        .await
        .ok()
        .flatten()
}

#[workflow]
async fn setter() -> u64 {
    let v = recv::<u64>("set", None).await.ok().flatten().unwrap_or(0);
    set_event("ready", &v).await.expect("set_event");
    v
}

#[tokio::test]
async fn a_dormant_get_event_wakes_when_another_workflow_sets_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let w = rt
        .start_with_id("watcher-1", watcher())
        .await
        .expect("start");
    let s = rt.start_with_id("setter-1", setter()).await.expect("start");
    until_dormant(&rt, 2).await;
    rt.send("setter-1", "set", &77u64).await.expect("send");
    assert_eq!(s.result().await.expect("setter"), 77);
    assert_eq!(w.result().await.expect("watcher"), Some(77));
}

#[workflow]
async fn napper(ms: u64) -> u64 {
    let x = before(1).await;
    sleep(Duration::from_millis(ms)).await;
    after(x).await
}

#[tokio::test]
async fn a_dormant_sleep_wakes_at_its_time_not_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let started = Instant::now();
    let h = rt
        .start_with_id("napper-1", napper(300))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    assert_eq!(h.result().await.expect("result"), 11);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(runs_of("napper-1", "before"), 1);
    assert_eq!(runs_of("napper-1", "after"), 1);
}

#[workflow]
async fn kid() -> u64 {
    recv::<u64>("kid-go", None)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
        * 2
}

#[workflow]
async fn parent() -> Result<u64, String> {
    let k = kid().await.map_err(|e| e.to_string())?;
    Ok(after(k).await)
}

#[tokio::test]
async fn a_dormant_parent_wakes_when_its_child_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let h = rt.start_with_id("parent-1", parent()).await.expect("start");
    // The parent (joining) and the child (in `recv`) both go dormant.
    until_dormant(&rt, 2).await;
    rt.send("parent-1/1", "kid-go", &5u64).await.expect("send");
    assert_eq!(h.result().await.expect("result"), Ok(11));
    assert_eq!(runs_of("parent-1", "after"), 1);
}

#[workflow]
async fn approval(ms: u64) -> String {
    match select(
        recv::<bool>("approve", None),
        sleep(Duration::from_millis(ms)),
    )
    .await
    {
        Either::Left(Ok(Some(true))) => "approved".to_owned(),
        Either::Left(other) => format!("rejected: {other:?}"),
        Either::Right(()) => "timed out".to_owned(),
    }
}

#[tokio::test]
async fn a_dormant_select_wakes_on_either_branch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let a = rt
        .start_with_id("approve-1", approval(60_000))
        .await
        .expect("start");
    let b = rt
        .start_with_id("approve-2", approval(200))
        .await
        .expect("start");
    until_dormant(&rt, 2).await;
    rt.send("approve-1", "approve", &true).await.expect("send");
    assert_eq!(a.result().await.expect("a"), "approved");
    assert_eq!(b.result().await.expect("b"), "timed out");
    // No message was left behind, none taken by the loser.
    rt.send("approve-2", "approve", &true).await.expect("send");
    assert_eq!(common::dump(rt.path(), "durable_messages").len(), 1);
}

#[workflow]
async fn patient(ms: u64) -> Option<u64> {
    recv::<u64>("late", Duration::from_millis(ms))
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_dormant_recv_gives_up_at_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let started = Instant::now();
    let h = rt
        .start_with_id("patient-1", patient(250))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    assert_eq!(h.result().await.expect("result"), None);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_dormant_workflow_is_cancelled_at_once_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let h = rt
        .start_with_id("listener-c", listener(1))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    rt.cancel("listener-c").await.expect("cancel");
    assert!(matches!(h.result().await, Err(Error::Cancelled { .. })));
    assert_eq!(rt.dormant_count(), 0);
    rt.resume("listener-c").await.expect("resume");
    until_dormant(&rt, 1).await;
    rt.send("listener-c", "go", &3u64).await.expect("send");
    let h = rt.handle::<u64>("listener-c").await.expect("handle");
    assert_eq!(h.result().await.expect("result"), 14);
    assert_eq!(runs_of("listener-c", "before"), 1);
}

#[tokio::test]
async fn a_close_stops_dormant_workflows_and_the_next_open_finishes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    let h = rt
        .start_with_id("listener-r", listener(2))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    rt.close().await.expect("close");
    assert!(matches!(h.result().await, Err(Error::Stopped { .. })));
    let rt = open(&path).await;
    assert_eq!(rt.recovered(), ["listener-r"]);
    until_dormant(&rt, 1).await;
    rt.send("listener-r", "go", &1u64).await.expect("send");
    let h = rt.handle::<u64>("listener-r").await.expect("handle");
    assert_eq!(h.result().await.expect("result"), 22);
    assert_eq!(runs_of("listener-r", "before"), 1);
}

#[tokio::test]
async fn a_runtime_whose_handles_are_dropped_still_wakes_its_dormant_workflows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let h = rt
        .start_with_id("napper-d", napper(300))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    drop(rt);
    let result = tokio::time::timeout(Duration::from_secs(20), h.result()).await;
    assert_eq!(result.expect("no wake-up").expect("result"), 11);
}

#[workflow]
async fn counter(n: u32) -> Vec<u32> {
    let mut got = Vec::with_capacity(n as usize);
    for _ in 0..n {
        got.push(
            recv::<u32>("n", None)
                .await
                .ok()
                .flatten()
                .unwrap_or(u32::MAX),
        );
    }
    got
}

/// Many workflows, each sent its messages at random moments: while it runs, while it
/// goes dormant, while it is dormant, while it is rebuilt. Each must receive exactly its
/// own messages, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_racing_dormancy_are_each_received_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let (workflows, messages) = (40u32, 12u32);
    let mut handles = Vec::new();
    for w in 0..workflows {
        let id = format!("counter-{w}");
        handles.push(
            rt.start_with_id(&id, counter(messages))
                .await
                .expect("start"),
        );
    }
    // A spread of gaps: none, a yield, sub-millisecond, a few milliseconds.
    let senders: Vec<_> = (0..workflows)
        .map(|w| {
            let id = format!("counter-{w}");
            common::send_with_random_gaps(
                &rt,
                id,
                "n",
                messages,
                w.into(),
                Duration::from_micros(300),
            )
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
    for h in handles {
        let got = tokio::time::timeout(Duration::from_secs(60), h.result())
            .await
            .expect("a workflow never received all its messages")
            .expect("result");
        assert_eq!(got, (0..messages).collect::<Vec<_>>());
    }
    assert!(common::dump(rt.path(), "durable_messages").is_empty());
}

// A run does not go dormant while a child start or a child's join reads the journal:
// their answers would wake a body that is gone (found by review).

#[workflow]
async fn quick_kid() -> u64 {
    5
}

/// Joins a child that has already finished (so the join reads the journal), racing a
/// `recv` that never gets a message.
#[workflow]
async fn late_joiner() -> Result<u64, String> {
    let h = start_child(quick_kid()).await.map_err(|e| e.to_string())?;
    sleep(Duration::from_millis(50)).await;
    match select(h.result(), recv::<u64>("never", None)).await {
        Either::Left(r) => r.map_err(|e| e.to_string()),
        Either::Right(_) => Err("recv".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_finished_child_beside_a_parked_recv_never_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    // Keep the journal's reader busy, so that the join's read of the finished child's
    // record takes a while.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..2 {
        let (rt, stop) = (rt.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rt.check().await;
            }
        });
    }
    let mut hs = Vec::new();
    for i in 0..40 {
        hs.push(
            rt.start_with_id(format!("lj-{i}"), late_joiner())
                .await
                .expect("start"),
        );
    }
    let mut hung = Vec::new();
    for (i, h) in hs.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), h.result()).await {
            Ok(r) => assert_eq!(r.expect("result"), Ok(5)),
            Err(_) => hung.push(i),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        hung.is_empty(),
        "hung: {hung:?} (dormant: {})",
        rt.dormant_count()
    );
}

#[workflow]
async fn echo_kid() -> u64 {
    recv::<u64>("ping", None).await.ok().flatten().unwrap_or(0)
}

#[branch]
async fn start_and_ping() -> Result<u64, String> {
    let h = start_child(echo_kid()).await.map_err(|e| e.to_string())?;
    send(h.id(), "ping", &7u64)
        .await
        .map_err(|e| e.to_string())?;
    h.result().await.map_err(|e| e.to_string())
}

/// Starts a child and pings it, racing a `recv` that never gets a message.
#[workflow]
async fn pinger() -> Result<u64, String> {
    match select(start_and_ping(), recv::<u64>("never", None)).await {
        Either::Left(r) => r,
        Either::Right(_) => Err("recv".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_child_beside_a_parked_recv_never_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let mut hs = Vec::new();
    for i in 0..40 {
        hs.push(
            rt.start_with_id(format!("pg-{i}"), pinger())
                .await
                .expect("start"),
        );
    }
    let mut hung = Vec::new();
    for (i, h) in hs.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), h.result()).await {
            Ok(r) => assert_eq!(r.expect("result"), Ok(7)),
            Err(_) => hung.push(i),
        }
    }
    assert!(
        hung.is_empty(),
        "hung: {hung:?} (dormant: {})",
        rt.dormant_count()
    );
}

#[tokio::test]
async fn a_handle_asked_for_after_an_unwatched_run_went_dormant_gets_its_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    // Nobody holds a handle while it is dormant: it keeps no outcome channel.
    drop(
        rt.start_with_id("listener-unwatched", listener(5))
            .await
            .expect("start"),
    );
    drop(
        rt.start_with_id("listener-unwatched-2", listener(6))
            .await
            .expect("start"),
    );
    until_dormant(&rt, 2).await;
    // One is watched before its wake, the other only after it.
    let h = rt
        .handle::<u64>("listener-unwatched")
        .await
        .expect("handle");
    rt.send("listener-unwatched", "go", &1u64)
        .await
        .expect("send");
    rt.send("listener-unwatched-2", "go", &2u64)
        .await
        .expect("send");
    assert_eq!(h.result().await.expect("result"), 52);
    let h2 = rt
        .handle::<u64>("listener-unwatched-2")
        .await
        .expect("handle");
    assert_eq!(h2.result().await.expect("result"), 63);
    // Cancelled while dormant and unwatched: its handle reads the cancellation.
    drop(
        rt.start_with_id("listener-unwatched-3", listener(7))
            .await
            .expect("start"),
    );
    until_dormant(&rt, 1).await;
    rt.cancel("listener-unwatched-3").await.expect("cancel");
    let h3 = rt
        .handle::<u64>("listener-unwatched-3")
        .await
        .expect("handle");
    assert!(
        matches!(h3.result().await, Err(Error::Cancelled { .. })),
        "cancelled"
    );
}
