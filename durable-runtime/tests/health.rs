//! `Runtime::health`: what a service's health check reports, and `Runtime::workflow`:
//! a run as the journal holds it, on both journals.

mod common;

use std::time::Duration;

use common::{Journal, on_both_journals};
use durable_runtime::{Runtime, recv, workflow};

#[workflow]
async fn hl_waits() -> u32 {
    recv::<u32>("go", None).await.ok().flatten().unwrap_or(0)
}

async fn health_counts_pending_work_and_says_when_not_ready(journal: Journal) {
    let rt = Runtime::open(journal.path()).await.expect("open");
    let empty = rt.health().await;
    assert!(empty.is_ready(), "{empty:?}");
    assert_eq!(empty.pending, Some(0));
    assert_eq!((empty.running, empty.dormant), (0, 0));
    assert_eq!(empty.oldest_pending, None);
    assert_eq!(empty.problem, None);

    rt.start_with_id("a", hl_waits()).await.expect("start");
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.start_with_id("b", hl_waits()).await.expect("start");
    let busy = rt.health().await;
    assert!(busy.is_ready(), "{busy:?}");
    assert_eq!(busy.pending, Some(2));
    assert_eq!(busy.running + busy.dormant, 2);
    let oldest = busy.oldest_pending.expect("an oldest");
    assert!(oldest >= Duration::from_millis(20), "{oldest:?}");

    rt.send("a", "go", &1u32).await.expect("send");
    rt.handle::<u32>("a")
        .await
        .expect("handle")
        .result()
        .await
        .expect("result");
    assert_eq!(rt.health().await.pending, Some(1));

    // The journal's view of a run, through the runtime itself.
    let a = rt.workflow("a").await.expect("read").expect("recorded");
    assert_eq!(a.status, durable_runtime::RecordedStatus::Completed);
    assert_eq!(a.output::<u32>().expect("decodes"), Some(1));
    let b = rt.workflow("b").await.expect("read").expect("recorded");
    assert_eq!(b.status, durable_runtime::RecordedStatus::Pending);
    assert_eq!(b.name, "hl_waits");
    assert!(rt.workflow("c").await.expect("read").is_none());
    assert!(rt.workflow("nul\0id").await.expect("read").is_none());

    rt.close().await.expect("close");
    let closed = rt.health().await;
    assert!(closed.closing && !closed.is_ready(), "{closed:?}");
    assert!(!closed.writer_alive, "{closed:?}");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    health_counts_pending_work_and_says_when_not_ready
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_file_deleted_under_the_runtime_is_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = Runtime::open(&path).await.expect("open");
    assert!(rt.health().await.is_ready());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let health = rt.health().await;
    assert!(
        !health.is_ready() && !health.journal_reachable,
        "{health:?}"
    );
    let problem = health.problem.expect("a problem");
    assert!(problem.contains("deleted or replaced"), "{problem}");
    drop(rt);
}
