//! Replays of histories longer than one read batch (1,024 steps): recorded steps are
//! read as the code asks for them, and the replay still returns every recorded value,
//! runs nothing twice, notices a step the code no longer asks for, and stops at a
//! damaged record in a later batch instead of returning a wrong value.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use durable_runtime::{Error, Runtime, StoreErrorKind, recv, step, workflow};

mod common;

static BODIES: AtomicUsize = AtomicUsize::new(0);
/// How many sequential steps `shrinking` takes in this "deploy" of its code.
static SEQUENTIAL: AtomicU32 = AtomicU32::new(0);
/// The tests count step bodies in `BODIES`: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[step]
async fn count(i: u32) -> u64 {
    BODIES.fetch_add(1, Ordering::SeqCst);
    u64::from(i) * 3 + 1
}

/// `n` sequential steps, then two branches of `n` steps each; the second waits for
/// "go" halfway. Run 1 parks there, so run 2 replays the sequential steps and both
/// branches (whose records interleave by path with what they claim) and then records
/// new steps in one branch while the other is still being read.
#[workflow]
async fn wide(n: u32) -> u64 {
    let mut total = 0;
    for i in 0..n {
        total += count(i).await;
    }
    let (a, b) = tokio::join!(
        async {
            let mut t = 0;
            for i in 0..n {
                t += count(i).await;
            }
            t
        },
        async {
            let mut t = 0;
            for i in 0..n {
                if i == n / 2 {
                    let go: Option<u64> = recv("go", None).await.expect("recv");
                    t += go.unwrap_or(0);
                }
                t += count(i).await;
            }
            t
        }
    );
    total + a + b
}

/// `SEQUENTIAL` steps, then waits for "go" (run 1), or not at all (a later deploy
/// that takes fewer steps and returns).
#[workflow]
async fn shrinking(n: u32) -> u64 {
    let mut total = 0;
    for i in 0..SEQUENTIAL.load(Ordering::SeqCst) {
        total += count(i).await;
    }
    if SEQUENTIAL.load(Ordering::SeqCst) == n {
        let _: Option<u64> = recv("go", None).await.expect("recv");
    }
    total
}

fn sum(n: u32) -> u64 {
    (0..n).map(|i| u64::from(i) * 3 + 1).sum()
}

/// Starts `id` and waits until it has recorded `steps` steps, then closes.
async fn park(path: &Path, id: &str, start: impl AsyncFnOnce(&Runtime), steps: usize) {
    let rt = Runtime::open(path).await.expect("open");
    start(&rt).await;
    while rt.steps(id).await.expect("steps").len() < steps {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Let the wait park.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    rt.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_branches_replay_across_batches_and_go_on() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let n = 1500;
    let recorded = (n + n + n / 2) as usize;
    park(
        &path,
        "w",
        async |rt| {
            rt.start_with_id("w", wide(n)).await.expect("start");
        },
        recorded,
    )
    .await;
    let before = BODIES.load(Ordering::SeqCst);
    let rt = common::reopen(&path).await;
    rt.send("w", "go", &7u64).await.expect("send");
    let h = rt.handle::<u64>("w").await.expect("handle");
    assert_eq!(h.result().await.expect("w"), 3 * sum(n) + 7);
    // Only the steps after the wait ran.
    assert_eq!(BODIES.load(Ordering::SeqCst) - before, (n - n / 2) as usize);
    assert_eq!(
        rt.steps("w").await.expect("steps").len(),
        3 * n as usize + 1
    );
    rt.close().await.expect("close");
}

/// Runs `shrinking` as `id` with `n` sequential steps, until it waits after them.
async fn park_shrinking(path: &Path, id: &str, n: u32) {
    SEQUENTIAL.store(n, Ordering::SeqCst);
    park(
        path,
        id,
        async |rt| {
            rt.start_with_id(id, shrinking(n)).await.expect("start");
        },
        n as usize,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_step_the_new_code_never_asks_for_is_a_divergence() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    park_shrinking(&path, "s", 3000).await;
    // The next deploy takes fewer steps, ending past the first batch.
    SEQUENTIAL.store(2100, Ordering::SeqCst);
    let rt = common::reopen(&path).await;
    let h = rt.handle::<u64>("s").await.expect("handle");
    match h.result().await {
        Err(Error::Divergence { path, recorded, .. }) => {
            assert_eq!(path.to_string(), "2101");
            assert_eq!(recorded, "count");
        }
        other => panic!("expected a divergence at step 2101, got {other:?}"),
    }
    rt.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_a_later_batch_stops_the_replay_there() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    park_shrinking(&path, "d", 3000).await;
    common::sql(
        &path,
        "UPDATE durable_steps SET output = CAST(output || x'00' AS BLOB)
          WHERE run = (SELECT run FROM durable_workflows WHERE id = 'd') AND path = 'd2000'",
        [],
    );
    let before = BODIES.load(Ordering::SeqCst);
    let rt = common::reopen(&path).await;
    let h = rt.handle::<u64>("d").await.expect("handle");
    match h.result().await {
        Err(Error::Store(e)) => {
            // A checksum mismatch is reported as a broken invariant, as at any step.
            assert_eq!(e.kind(), StoreErrorKind::Invariant, "{e}");
            assert!(
                e.to_string()
                    .contains("step 2000 of workflow d does not match its checksum"),
                "{e}"
            );
        }
        other => panic!("expected the damaged step to stop the run, got {other:?}"),
    }
    // Nothing ran: the steps before 2000 replayed, and none after it started.
    assert_eq!(BODIES.load(Ordering::SeqCst), before);
    rt.close().await.expect("close");
}
