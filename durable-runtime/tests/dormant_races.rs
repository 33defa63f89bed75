//! Dormant runs under races (written by an independent review): work the hand-over
//! cannot see (an interrupted step's record, a spawned branch), select loops racing
//! messages, parents of several children, events between dormant workflows, and two
//! workflows waking each other in turn.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use durable_runtime::{
    Either, Error, FailureKind, Runtime, branch, get_event, join_all, recv, select, send,
    set_event, sleep, step, workflow,
};

use common::{open_dormant as open, ran, runs_of};

// ---------------------------------------------------------------------------------
// 1. A `fail_if_interrupted` step found interrupted at recovery records its failure
//    without counting as open or busy: the run goes dormant beside a parked recv and
//    never fails.

static SENT: AtomicU32 = AtomicU32::new(0);
static HANG: AtomicBool = AtomicBool::new(true);

#[step(on_interrupt = "fail")]
async fn wire(cents: u64) -> u64 {
    SENT.fetch_add(1, Ordering::SeqCst);
    while HANG.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cents
}

#[workflow]
async fn wire_or_msg(cents: u64) -> Result<u64, String> {
    match select(wire(cents), recv::<u64>("never", None)).await {
        Either::Left(v) => Ok(v),
        Either::Right(_) => Err("recv".into()),
    }
}

#[test]
fn an_interrupted_step_beside_a_parked_recv_fails_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let first = tokio::runtime::Runtime::new().expect("tokio");
    first.block_on(async {
        let rt = open(&path).await;
        rt.start_with_id("pay", wire_or_msg(500))
            .await
            .expect("start");
        while SENT.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    first.shutdown_background();
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    second.block_on(async {
        let mut rt = None;
        for _ in 0..500 {
            // Commits that wait for the disk: the failure's record is answered after
            // the hand-over starts.
            match Runtime::builder(&path)
                .durability(durable_runtime::Durability::Full)
                .evict_parked_after(Duration::ZERO)
                .open()
                .await
            {
                Err(Error::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => {
                    rt = Some(other.expect("reopen"));
                    break;
                }
            }
        }
        let rt = rt.expect("reopened");
        let h = rt
            .handle::<Result<u64, String>>("pay")
            .await
            .expect("handle");
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), h.result()).await;
        eprintln!(
            "interrupted: took {:?}, dormant {}, result {r:?}",
            t0.elapsed(),
            rt.dormant_count()
        );
        let dormant = rt.dormant_count();
        let err = r
            .unwrap_or_else(|_| panic!("hung: the run never failed (dormant: {dormant})"))
            .expect_err("interrupted");
        assert!(
            matches!(
                &err,
                Error::Failed {
                    kind: FailureKind::StepInterrupted,
                    ..
                }
            ),
            "{err:?}"
        );
    });
}

// ---------------------------------------------------------------------------------
// 2. A branch the body spawned (`tokio::spawn(branch)`, supported: see
//    replay_never_lies.rs) outlives the dropped body: it goes on in the old execution
//    while the rebuilt one does the same work.

#[step]
async fn a_step(x: u64) -> u64 {
    ran("a_step");
    x + 1
}

#[step]
async fn b_step(x: u64) -> u64 {
    ran("b_step");
    tokio::time::sleep(Duration::from_millis(150)).await;
    x * 2
}

#[branch]
async fn napping_branch(x: u64) -> u64 {
    sleep(Duration::from_millis(200)).await;
    let a = a_step(x).await;
    b_step(a).await
}

#[workflow]
async fn spawner(x: u64) -> u64 {
    let h = tokio::spawn(napping_branch(x));
    // Polled again once the branch has parked in its sleep.
    sleep(Duration::from_millis(30)).await;
    h.await.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_branch_does_not_outlive_its_dormant_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let h = rt.start_with_id("sp-1", spawner(4)).await.expect("start");
    // Both the body and its spawned branch are parked in sleeps, but a run with a
    // spawned future alive does not go dormant: the future would outlive its body.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rt.dormant_count(), 0);
    let r = tokio::time::timeout(Duration::from_secs(10), h.result()).await;
    // Let an orphaned branch finish whatever it does.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (a, b) = (runs_of("sp-1", "a_step"), runs_of("sp-1", "b_step"));
    let r = r.expect("hung");
    assert_eq!((a, b), (1, 1), "step bodies ran (a, b) times; result {r:?}");
    assert_eq!(r.expect("result"), 10);
}

// ---------------------------------------------------------------------------------
// 3. Stress: select loops racing messages, several children per parent, events.

#[workflow]
async fn select_loop(n: u32) -> Vec<u32> {
    let mut got = Vec::new();
    while got.len() < n as usize {
        match select(recv::<u32>("n", None), sleep(Duration::from_millis(1))).await {
            Either::Left(m) => got.push(m.ok().flatten().unwrap_or(u32::MAX)),
            Either::Right(()) => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_loops_racing_messages_lose_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let (workflows, messages) = (30u32, 10u32);
    let mut handles = Vec::new();
    for w in 0..workflows {
        handles.push(
            rt.start_with_id(format!("sl-{w}"), select_loop(messages))
                .await
                .expect("start"),
        );
    }
    let senders: Vec<_> = (0..workflows)
        .map(|w| {
            let id = format!("sl-{w}");
            common::send_with_random_gaps(
                &rt,
                id,
                "n",
                messages,
                w.into(),
                Duration::from_micros(700),
            )
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
    let mut bad = Vec::new();
    for (w, h) in handles.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(30), h.result()).await {
            Ok(Ok(got)) if got == (0..messages).collect::<Vec<_>>() => {}
            other => bad.push((w, format!("{other:?}"))),
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
    assert!(common::dump(rt.path(), "durable_messages").is_empty());
}

#[workflow]
async fn waiting_kid(k: u64) -> u64 {
    let v = recv::<u64>("go", None).await.ok().flatten().unwrap_or(0);
    sleep(Duration::from_millis(k % 3)).await;
    v + k
}

#[workflow]
async fn many_kids(n: u64) -> Result<u64, String> {
    let kids = (0..n).map(waiting_kid);
    let mut sum = 0;
    for r in join_all(kids).await {
        sum += r.map_err(|e| e.to_string())?;
    }
    let extra = recv::<u64>("last", None).await.ok().flatten().unwrap_or(0);
    Ok(sum + extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_of_several_children_wake_for_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let (parents, kids) = (12u64, 4u64);
    let mut hs = Vec::new();
    for p in 0..parents {
        hs.push(
            rt.start_with_id(format!("mk-{p}"), many_kids(kids))
                .await
                .expect("start"),
        );
    }
    // Children are at positions 1..=kids of their parent.
    let mut senders = Vec::new();
    for p in 0..parents {
        let rt = rt.clone();
        senders.push(tokio::spawn(async move {
            for k in 0..kids {
                if (p + k) % 2 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let id = format!("mk-{p}/{}", k + 1);
                // The child may not exist yet.
                loop {
                    if rt.handle::<u64>(&id).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                rt.send(&id, "go", &100u64).await.expect("send");
            }
            tokio::task::yield_now().await;
            rt.send(&format!("mk-{p}"), "last", &1000u64)
                .await
                .expect("send");
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    let want: u64 = (0..kids).map(|k| 100 + k).sum::<u64>() + 1000;
    let mut bad = Vec::new();
    for (p, h) in hs.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(30), h.result()).await {
            Ok(Ok(Ok(v))) if v == want => {}
            other => bad.push((p, format!("{other:?}"))),
        }
    }
    assert!(bad.is_empty(), "{bad:?} (dormant {})", rt.dormant_count());
}

#[workflow]
async fn ev_setter(v: u64) -> u64 {
    let m = recv::<u64>("set", None).await.ok().flatten().unwrap_or(0);
    set_event("ready", &(m + v)).await.expect("set_event");
    let again = recv::<u64>("set2", None).await.ok().flatten().unwrap_or(0);
    set_event("ready2", &again).await.expect("set_event");
    m + v
}

#[workflow]
async fn ev_watcher(of: String) -> (Option<u64>, Option<u64>) {
    let a = get_event::<u64>(&of, "ready", None).await.ok().flatten();
    let b = match select(
        get_event::<u64>(&of, "ready2", None),
        sleep(Duration::from_millis(2)),
    )
    .await
    {
        Either::Left(b) => b.ok().flatten(),
        Either::Right(()) => get_event::<u64>(&of, "ready2", None).await.ok().flatten(),
    };
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_between_dormant_workflows_always_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let n = 25u64;
    let mut ws = Vec::new();
    let mut ss = Vec::new();
    for i in 0..n {
        let s = format!("evs-{i}");
        ss.push(rt.start_with_id(&s, ev_setter(i)).await.expect("start"));
        for j in 0..2 {
            ws.push((
                i,
                rt.start_with_id(format!("evw-{i}-{j}"), ev_watcher(s.clone()))
                    .await
                    .expect("start"),
            ));
        }
    }
    for i in 0..n {
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        rt.send(&format!("evs-{i}"), "set", &10u64)
            .await
            .expect("send");
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
        rt.send(&format!("evs-{i}"), "set2", &7u64)
            .await
            .expect("send");
    }
    let mut bad = Vec::new();
    for (i, w) in ws {
        match tokio::time::timeout(Duration::from_secs(30), w.result()).await {
            Ok(Ok((Some(a), Some(7)))) if a == 10 + i => {}
            other => bad.push((i, format!("{other:?}"))),
        }
    }
    for s in ss {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.result()).await;
    }
    assert!(bad.is_empty(), "{bad:?} (dormant {})", rt.dormant_count());
}

// ---------------------------------------------------------------------------------
// 4. A sender workflow and a receiver workflow ping-pong through dormancy.

#[workflow]
async fn ponger(n: u32) -> u32 {
    let mut last = 0;
    for _ in 0..n {
        last = recv::<u32>("ping", None)
            .await
            .ok()
            .flatten()
            .unwrap_or(u32::MAX);
        send("pinger-r", "pong", &last).await.expect("send");
    }
    last
}

#[workflow]
async fn pinger_r(n: u32) -> u32 {
    let mut sum = 0;
    for i in 0..n {
        send("ponger-r", "ping", &i).await.expect("send");
        sum += recv::<u32>("pong", Duration::from_secs(60))
            .await
            .ok()
            .flatten()
            .unwrap_or(1_000_000);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong_through_dormancy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let n = 60u32;
    let b = rt
        .start_with_id("ponger-r", ponger(n))
        .await
        .expect("start");
    let a = rt
        .start_with_id("pinger-r", pinger_r(n))
        .await
        .expect("start");
    let r = tokio::time::timeout(Duration::from_secs(60), a.result()).await;
    assert_eq!(r.expect("hung").expect("result"), (0..n).sum::<u32>());
    assert_eq!(b.result().await.expect("b"), n - 1);
}

// ---------------------------------------------------------------------------------
// 4. A dormant parent's cancelled child, resumed: the cancellation wakes the parent,
//    whose replay watches the child while the resume is registering it. The parent
//    must get the child's outcome, never "stopped".

#[workflow]
async fn go_kid(k: u64) -> u64 {
    recv::<u64>("go", None).await.ok().flatten().unwrap_or(0) + k
}

#[workflow]
async fn parent_of_handle() -> String {
    let c = match durable_runtime::start_child(go_kid(10)).await {
        Ok(c) => c,
        Err(e) => return format!("start err {e}"),
    };
    match c.result().await {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("err {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dormant_parent_of_a_resumed_child_gets_its_outcome() {
    let mut outcomes: HashMap<String, u32> = HashMap::new();
    for i in 0..40 {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = open(&dir.path().join("j.db")).await;
        let id = format!("loop-{i}");
        let h = rt
            .start_with_id(&id, parent_of_handle())
            .await
            .expect("start");
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.dormant_count() < 2 {
            assert!(Instant::now() < deadline, "{} dormant", rt.dormant_count());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let kid = format!("{id}/1");
        rt.cancel(&kid).await.expect("cancel");
        rt.resume(&kid).await.expect("resume");
        rt.send(&kid, "go", &1u64).await.expect("send");
        let r = tokio::time::timeout(Duration::from_secs(10), h.result())
            .await
            .expect("the parent hung");
        let key = match r {
            Ok(s) => s.split(' ').next().unwrap_or_default().to_owned(),
            Err(e) => format!("Err {e}"),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    // The child's cancellation or its result after the resume: both are its outcome.
    assert!(
        outcomes.keys().all(|k| k == "ok" || k == "err"),
        "{outcomes:?}"
    );
}
