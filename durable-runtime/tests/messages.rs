//! Messages and events: FIFO per destination and topic, kept until received, each
//! received exactly once, waits woken by the write they wait for, deadlines recorded,
//! and replays that see what the first execution saw.

mod common;

use std::time::{Duration, Instant};

use durable_runtime::{Runtime, get_event, recv, send, set_event, step, workflow};

async fn open(dir: &tempfile::TempDir) -> Runtime {
    Runtime::builder(dir.path().join("journal.db"))
        .durability(durable_runtime::Durability::Off)
        .open()
        .await
        .expect("open")
}

#[workflow]
async fn collect(n: u32) -> Vec<u32> {
    let mut got = Vec::new();
    for _ in 0..n {
        match recv::<u32>("numbers", None).await {
            Ok(Some(v)) => got.push(v),
            other => panic!("recv without a timeout returned {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn messages_sent_before_the_wait_are_kept_and_received_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    // Sent before the receiver exists.
    for i in 0..5u32 {
        rt.send("collector", "numbers", &i).await.expect("send");
    }
    // Another topic and another destination do not interfere.
    rt.send("collector", "other", &99u32).await.expect("send");
    rt.send("someone-else", "numbers", &98u32)
        .await
        .expect("send");
    let h = rt
        .start_with_id("collector", collect(8))
        .await
        .expect("start");
    for i in 5..8u32 {
        rt.send("collector", "numbers", &i).await.expect("send");
    }
    assert_eq!(
        h.result().await.expect("result"),
        (0..8).collect::<Vec<_>>()
    );
    // Exactly the two unrelated messages are left.
    let left = common::dump(rt.path(), "durable_messages");
    assert_eq!(left.len(), 2, "{left:?}");
}

#[tokio::test]
async fn a_waiting_recv_wakes_when_the_send_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt.start_with_id("waiter", collect(1)).await.expect("start");
    // Let it park in the writer.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = Instant::now();
    rt.send("waiter", "numbers", &7u32).await.expect("send");
    assert_eq!(h.result().await.expect("result"), [7]);
    // No timer: the wake-up follows the commit, not a polling interval. (Generous bound;
    // the benchmark measures the real figure.)
    assert!(sent.elapsed() < Duration::from_millis(500));
}

#[workflow]
async fn recv_with_timeout(ms: u64) -> Option<String> {
    recv::<String>("maybe", Duration::from_millis(ms))
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_recv_that_times_out_returns_none_and_leaves_later_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let started = Instant::now();
    let h = rt
        .start_with_id("impatient", recv_with_timeout(60))
        .await
        .expect("start");
    assert_eq!(h.result().await.expect("result"), None);
    assert!(started.elapsed() >= Duration::from_millis(60));
    // A message sent after the timeout is not lost: it waits for a later recv.
    rt.send("impatient", "maybe", &"late".to_string())
        .await
        .expect("send");
    assert_eq!(common::dump(rt.path(), "durable_messages").len(), 1);
    // And the timed-out recv replays as timed out.
    drop(rt);
    common::make_pending(&dir.path().join("journal.db"), "impatient");
    let rt = common::reopen(&dir.path().join("journal.db")).await;
    let h = rt
        .start_with_id("impatient", recv_with_timeout(60))
        .await
        .expect("handle");
    assert_eq!(h.result().await.expect("replayed"), None);
    assert_eq!(common::dump(rt.path(), "durable_messages").len(), 1);
}

#[test]
fn a_recv_deadline_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let first = tokio::runtime::Runtime::new().expect("tokio");
    let began = first.block_on(async {
        let rt = open(&dir).await;
        rt.start_with_id("w", recv_with_timeout(400))
            .await
            .expect("start");
        // Wait until the wait is parked with its deadline recorded.
        while common::dump(&path, "durable_started").is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Instant::now()
    });
    first.shutdown_background();
    let second = tokio::runtime::Runtime::new().expect("tokio");
    second.block_on(async {
        let rt = common::reopen(&path).await;
        let h = rt
            .start_with_id("w", recv_with_timeout(400))
            .await
            .expect("handle");
        assert_eq!(h.result().await.expect("result"), None);
    });
    let waited = began.elapsed();
    // The original deadline (400 ms after the wait began), not a fresh 400 ms.
    assert!(
        waited < Duration::from_millis(780),
        "the recovered wait took {waited:?}: its deadline was restarted"
    );
}

#[workflow]
async fn relay(peer: String, n: u32) -> u32 {
    for i in 0..n {
        send(&peer, "numbers", &i)
            .await
            .expect("send in a workflow");
    }
    n
}

#[tokio::test]
async fn sends_from_a_workflow_are_not_repeated_on_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&dir).await;
    rt.start_with_id("relay", relay("sink".into(), 3))
        .await
        .expect("start")
        .result()
        .await
        .expect("relay");
    drop(rt);
    common::make_pending(&path, "relay");
    let rt = common::reopen(&path).await;
    rt.start_with_id("relay", relay("sink".into(), 3))
        .await
        .expect("handle")
        .result()
        .await
        .expect("replayed relay");
    assert_eq!(
        common::dump(&path, "durable_messages").len(),
        3,
        "a replayed send sent again"
    );
    let h = rt.start_with_id("sink", collect(3)).await.expect("start");
    assert_eq!(h.result().await.expect("sink"), [0, 1, 2]);
}

#[workflow]
async fn competing(n: u32) -> Vec<u32> {
    // Two concurrent receivers on one topic: every message goes to exactly one.
    let a = async {
        let mut got = Vec::new();
        for _ in 0..n {
            if let Ok(Some(v)) = recv::<u32>("jobs", Duration::from_millis(300)).await {
                got.push(v);
            }
        }
        got
    };
    let b = async {
        let mut got = Vec::new();
        for _ in 0..n {
            if let Ok(Some(v)) = recv::<u32>("jobs", Duration::from_millis(300)).await {
                got.push(v);
            }
        }
        got
    };
    let (mut a, b) = tokio::join!(a, b);
    a.extend(b);
    a.sort_unstable();
    a
}

#[tokio::test]
async fn concurrent_receivers_never_share_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt
        .start_with_id("pool", competing(10))
        .await
        .expect("start");
    for i in 0..10u32 {
        rt.send("pool", "jobs", &i).await.expect("send");
    }
    let got = h.result().await.expect("result");
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert!(common::dump(rt.path(), "durable_messages").is_empty());
}

#[step]
async fn price(n: u32) -> u32 {
    n * 100
}

#[workflow]
async fn publish(n: u32) -> u32 {
    let p = price(n).await;
    set_event("price", &p).await.expect("set_event");
    // A later value replaces it.
    let p2 = price(n + 1).await;
    set_event("price", &p2).await.expect("set_event");
    p2
}

#[tokio::test]
async fn get_event_waits_for_the_value_and_sees_replacements() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    // Not set yet: a zero timeout answers at once.
    let none: Option<u32> = rt
        .get_event("pub", "price", Duration::ZERO)
        .await
        .expect("get_event");
    assert_eq!(none, None);
    let waiter = {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.get_event::<u32>("pub", "price", Duration::from_secs(5))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let h = rt.start_with_id("pub", publish(1)).await.expect("start");
    let seen = waiter.await.expect("join").expect("get_event");
    assert!(matches!(seen, Some(100 | 200)), "{seen:?}");
    assert_eq!(h.result().await.expect("result"), 200);
    let now: Option<u32> = rt.get_event("pub", "price", None).await.expect("get_event");
    assert_eq!(now, Some(200));
    // A timed-out outside wait returns None.
    let missing: Option<u32> = rt
        .get_event("pub", "nothing", Duration::from_millis(20))
        .await
        .expect("get_event");
    assert_eq!(missing, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_event_with_a_zero_timeout_sees_a_set_value_however_busy_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt.start_with_id("pub", publish(1)).await.expect("start");
    assert_eq!(h.result().await.expect("result"), 200);
    // Keep the journal's writer busy while asking: a zero timeout means "do not wait
    // for a value to be set", never "give up on the answer".
    let busy = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let sends = (0..4000).map(|i| {
                let rt = rt.clone();
                async move { rt.send("nobody", "t", &i).await }
            });
            for r in futures::future::join_all(sends).await {
                r.expect("send");
            }
        })
    };
    for _ in 0..200 {
        let now: Option<u32> = rt
            .get_event("pub", "price", Duration::ZERO)
            .await
            .expect("get_event");
        assert_eq!(now, Some(200));
    }
    busy.await.expect("join");
}

#[workflow]
async fn watcher(of: String) -> Option<u32> {
    get_event::<u32>(&of, "price", None).await.ok().flatten()
}

#[tokio::test]
async fn get_event_in_a_workflow_replays_the_value_it_saw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&dir).await;
    let w = rt
        .start_with_id("watcher", watcher("pub2".into()))
        .await
        .expect("start");
    rt.start_with_id("pub2", publish(1))
        .await
        .expect("start")
        .result()
        .await
        .expect("publish");
    let seen = w.result().await.expect("watcher");
    assert!(matches!(seen, Some(100 | 200)), "{seen:?}");
    drop(rt);
    // The event now holds 200; a replay sees what the first run saw.
    common::make_pending(&path, "watcher");
    let rt = common::reopen(&path).await;
    let again = rt
        .start_with_id("watcher", watcher("pub2".into()))
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, seen);
}

#[workflow]
async fn wrong_type() -> Option<String> {
    recv::<String>("typed", None).await.ok().flatten()
}

#[tokio::test]
async fn a_message_of_the_wrong_type_is_a_clear_error_and_stays_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    // As a `String`, its encoding claims four billion bytes.
    rt.send("typed-1", "typed", &u32::MAX).await.expect("send");
    let err = rt
        .start_with_id("typed-1", wrong_type())
        .await
        .expect("start")
        .result()
        .await
        .expect_err("a u32 is not a String");
    let text = err.to_string();
    assert!(
        text.contains("typed-1") && text.contains("durable::recv"),
        "{text}"
    );
    // Taken from the queue and recorded at the recv: not lost, not taken twice.
    assert!(common::dump(rt.path(), "durable_messages").is_empty());
    let steps = rt.steps("typed-1").await.expect("steps");
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].name, "durable::recv");
}

#[tokio::test]
async fn primitives_outside_a_workflow_say_so() {
    let err = recv::<u32>("t", None).await.expect_err("outside");
    assert!(err.to_string().contains("outside a workflow"), "{err}");
    let err = send("x", "t", &1u32).await.expect_err("outside");
    assert!(err.to_string().contains("Runtime::send"), "{err}");
    let err = set_event("k", &1u32).await.expect_err("outside");
    assert!(matches!(err, durable_runtime::Error::NotInWorkflow { .. }));
}

#[tokio::test]
async fn a_cancelled_receiver_takes_no_message_and_gets_it_after_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    let h = rt.start_with_id("idle", collect(1)).await.expect("start");
    tokio::time::sleep(Duration::from_millis(30)).await;
    rt.cancel("idle").await.expect("cancel");
    assert!(matches!(
        h.result().await,
        Err(durable_runtime::Error::Cancelled { .. })
    ));
    rt.send("idle", "numbers", &41u32).await.expect("send");
    // Give the writer the chance to (wrongly) hand it to the abandoned wait.
    rt.send("idle", "other", &0u32).await.expect("send");
    let queued = common::dump(rt.path(), "durable_messages");
    assert_eq!(
        queued.len(),
        2,
        "the cancelled wait took the message: {queued:?}"
    );
    rt.resume("idle").await.expect("resume");
    let got = rt
        .handle::<Vec<u32>>("idle")
        .await
        .expect("handle")
        .result()
        .await
        .expect("resumed");
    assert_eq!(got, [41]);
}

#[step]
async fn quick() -> u32 {
    5
}

#[workflow]
async fn select_then_recv() -> (String, Option<u32>) {
    let first = match durable_runtime::select(quick(), recv::<u32>("q", None)).await {
        durable_runtime::Either::Left(v) => format!("left {v}"),
        durable_runtime::Either::Right(r) => format!("right {r:?}"),
    };
    let second = recv::<u32>("q", Duration::from_millis(300))
        .await
        .ok()
        .flatten();
    (first, second)
}

#[tokio::test]
async fn a_recv_that_loses_a_select_gives_its_message_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = open(&dir).await;
    rt.send("sel", "q", &42u32).await.expect("send");
    let out = rt
        .start_with_id("sel", select_then_recv())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    // Whichever branch won, the message reached the code exactly once.
    match out.0.as_str() {
        "left 5" => assert_eq!(out.1, Some(42)),
        other => {
            assert_eq!(other, "right Ok(Some(42))");
            assert_eq!(out.1, None);
        }
    }
    assert!(common::dump(&path, "durable_messages").is_empty());
    // And a replay delivers it the same way.
    drop(rt);
    common::make_pending(&path, "sel");
    let rt = common::reopen(&path).await;
    let again = rt
        .handle::<(String, Option<u32>)>("sel")
        .await
        .expect("handle")
        .result()
        .await
        .expect("replay");
    assert_eq!(again, out);
    assert!(common::dump(&path, "durable_messages").is_empty());
}

#[step]
async fn note(v: u32) -> u32 {
    v
}

#[step]
async fn slowish() -> u32 {
    tokio::time::sleep(Duration::from_millis(150)).await;
    0
}

#[step]
async fn forever() -> u32 {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    1
}

/// The losing branch takes a message, hands it to a recorded step, and is still busy
/// when the other branch wins: the message reached the code.
#[workflow]
async fn loser_consumes() -> (String, Option<u32>) {
    let first = match durable_runtime::select(
        async {
            let m = recv::<u32>("t", None).await.ok().flatten().unwrap_or(0);
            let n = note(m).await;
            forever().await;
            n
        },
        slowish(),
    )
    .await
    {
        durable_runtime::Either::Left(v) => format!("left {v}"),
        durable_runtime::Either::Right(v) => format!("right {v}"),
    };
    let _go = recv::<u32>("go", None).await;
    let second = recv::<u32>("t", Duration::from_millis(200))
        .await
        .ok()
        .flatten();
    (first, second)
}

#[test]
fn a_replayed_select_neither_diverges_on_its_losers_records_nor_gives_their_messages_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let first = tokio::runtime::Runtime::new().expect("tokio");
    first.block_on(async {
        let rt = open(&dir).await;
        rt.send("lc", "t", &42u32).await.expect("send");
        rt.start_with_id("lc", loser_consumes())
            .await
            .expect("start");
        // Until the select is recorded and the run waits for "go".
        loop {
            let steps = rt.steps("lc").await.expect("steps");
            if steps.iter().any(|s| s.name == "durable::select") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    });
    first.shutdown_background();
    let second = tokio::runtime::Runtime::new().expect("tokio");
    second.block_on(async {
        let rt = common::reopen(&path).await;
        rt.send("lc", "go", &1u32).await.expect("send go");
        let out = rt
            .handle::<(String, Option<u32>)>("lc")
            .await
            .expect("handle")
            .result()
            .await
            .expect("the replay must not diverge on the loser's records");
        // `note(42)` is recorded: the message reached the code in the first run.
        assert_eq!(
            out,
            ("right 0".to_owned(), None),
            "message 42 delivered twice"
        );
    });
}

type Racer = std::pin::Pin<Box<dyn std::future::Future<Output = u32> + Send>>;

#[workflow]
async fn two_losers() -> Vec<u32> {
    let racers: Vec<Racer> = vec![
        Box::pin(quick()),
        Box::pin(async { recv::<u32>("t", None).await.ok().flatten().unwrap_or(100) }),
        Box::pin(async { recv::<u32>("t", None).await.ok().flatten().unwrap_or(100) }),
    ];
    let (i, _) = durable_runtime::select_all(racers).await;
    let mut out = vec![u32::try_from(i).unwrap_or(u32::MAX)];
    for _ in 0..2 {
        out.push(
            recv::<u32>("t", Duration::from_millis(300))
                .await
                .ok()
                .flatten()
                .unwrap_or(0),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_given_back_by_several_losers_keep_their_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir).await;
    for k in 0..20 {
        let id = format!("tl{k}");
        rt.send(&id, "t", &1u32).await.expect("send");
        rt.send(&id, "t", &2u32).await.expect("send");
        let out = rt
            .start_with_id(&id, two_losers())
            .await
            .expect("start")
            .result()
            .await
            .expect("result");
        // Whoever won, 1 and 2 reach the code once each, 1 first.
        let got: Vec<u32> = out[1..].iter().copied().filter(|v| *v != 0).collect();
        match out[0] {
            0 => assert_eq!(got, [1, 2], "round {k}: {out:?}"),
            _ => assert!(got.len() <= 1, "round {k}: {out:?}"),
        }
    }
}
