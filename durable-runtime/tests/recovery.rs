//! A workflow interrupted mid-run resumes at the next open: recorded steps are returned
//! from the journal without running again, the interrupted step runs again, and the
//! handle of the interrupted run says the runtime stopped.
//!
//! The "crash" here shuts down the tokio runtime running the workflow (every task is
//! dropped, nothing else runs). The examples' process-level test kills a real process.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use durable_runtime::{Error, Runtime, WorkflowStatus, step, workflow};

static RESERVED: AtomicUsize = AtomicUsize::new(0);
static SHIP_STARTS: AtomicUsize = AtomicUsize::new(0);
static WAREHOUSE_OPEN: AtomicBool = AtomicBool::new(false);

#[step]
async fn reserve(sku: String) -> String {
    RESERVED.fetch_add(1, Ordering::SeqCst);
    format!("reserved {sku}")
}

#[step]
async fn ship(sku: String) -> String {
    SHIP_STARTS.fetch_add(1, Ordering::SeqCst);
    while !WAREHOUSE_OPEN.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    format!("shipped {sku}")
}

#[workflow]
async fn fulfil(sku: String) -> (String, String) {
    let r = reserve(sku.clone()).await;
    let s = ship(sku).await;
    (r, s)
}

#[test]
fn an_interrupted_workflow_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");

    let first = tokio::runtime::Runtime::new().expect("tokio");
    let handle = first.block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        let handle = rt
            .start_with_id("o-1", fulfil("tea".into()))
            .await
            .expect("start");
        // Wait until `reserve` is recorded and `ship` is running.
        while SHIP_STARTS.load(Ordering::SeqCst) == 0
            || rt.steps("o-1").await.expect("steps").is_empty()
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle
    });
    first.shutdown_background();

    let second = tokio::runtime::Runtime::new().expect("tokio");
    second.block_on(async {
        let err = handle
            .result()
            .await
            .expect_err("the first runtime is gone");
        assert!(
            matches!(&err, Error::Stopped { workflow_id } if workflow_id == "o-1"),
            "{err:?}"
        );
        assert_eq!(handle.status(), WorkflowStatus::Stopped);

        WAREHOUSE_OPEN.store(true, Ordering::SeqCst);
        let rt = common::reopen(&path).await;
        assert_eq!(rt.recovered(), ["o-1"]);
        let resumed = rt
            .start_with_id("o-1", fulfil("ignored".into()))
            .await
            .expect("handle");
        let (r, s) = resumed.result().await.expect("resumed run");
        assert_eq!((r.as_str(), s.as_str()), ("reserved tea", "shipped tea"));
        assert_eq!(
            RESERVED.load(Ordering::SeqCst),
            1,
            "a recorded step ran again"
        );
        assert_eq!(
            SHIP_STARTS.load(Ordering::SeqCst),
            2,
            "the interrupted step runs again"
        );
        let names: Vec<String> = rt
            .steps("o-1")
            .await
            .expect("steps")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["reserve", "ship"]);
    });
}

#[step]
async fn tagged(i: u32) -> u32 {
    i * 3
}

/// One step, then waits for its "go".
#[workflow]
async fn waits_for_go(i: u32) -> u32 {
    let mine = tagged(i).await;
    let go: Option<u32> = durable_runtime::recv("go", None).await.expect("recv");
    mine + go.expect("no timeout")
}

/// More waiting runs than one chunk of histories read at open (512): each resumes with
/// its own history (another's would replay another step value, or diverge), parks
/// again, and finishes with the message sent to it.
#[test]
fn many_waiting_runs_resume_each_with_its_own_history() {
    const RUNS: u32 = 1_100;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    tokio.block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        for i in 0..RUNS {
            rt.start_with_id(format!("w-{i}"), waits_for_go(i))
                .await
                .expect("start");
        }
        // Every run parked in its recv: its step is recorded.
        for i in 0..RUNS {
            while rt.steps(&format!("w-{i}")).await.expect("steps").is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        rt.close().await.expect("close");
    });
    tokio.block_on(async {
        let rt = Runtime::open(&path).await.expect("reopen");
        assert_eq!(rt.recovered().len(), RUNS as usize);
        for i in 0..RUNS {
            rt.send(&format!("w-{i}"), "go", &(i * 1000))
                .await
                .expect("send");
        }
        for i in 0..RUNS {
            let h = rt.handle::<u32>(&format!("w-{i}")).await.expect("handle");
            assert_eq!(h.result().await.expect("result"), i * 3 + i * 1000);
        }
        rt.close().await.expect("close");
    });
}
