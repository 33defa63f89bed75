//! A `start_with_id` that joins a run another call is starting returns only once that
//! run is journaled, as the first call does: a service that answers "accepted" to a
//! retried request never answers for a run a crash could still lose. On both journals.

mod common;

use common::{Journal, on_both_journals};
use durable_runtime::{Error, Runtime, recv, workflow};

#[workflow]
async fn sj_waits() -> u32 {
    recv::<u32>("go", None).await.ok().flatten().unwrap_or(0)
}

async fn a_start_that_joins_returns_once_the_run_is_journaled(journal: Journal) {
    let rt = Runtime::open(journal.path()).await.expect("open");
    for i in 0..40 {
        let id = format!("w{i}");
        let starts = (0..3).map(|_| {
            let rt = rt.clone();
            let id = id.clone();
            tokio::spawn(async move {
                rt.start_with_id(&id, sj_waits()).await.expect("start");
                // Whichever call this was, the journal has the run now.
                rt.workflow(&id).await.expect("read").is_some()
            })
        });
        for journaled in futures::future::join_all(starts).await {
            assert!(
                journaled.expect("task"),
                "{id}: a start returned before its run was journaled"
            );
        }
    }
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_start_that_joins_returns_once_the_run_is_journaled
);

#[workflow]
async fn sj_other() -> u32 {
    7
}

/// Ids another workflow already holds: every concurrent start of them fails the same
/// way, the ones that joined the first included.
async fn starts_that_join_a_failing_start_fail_with_it(journal: Journal) {
    let rt = Runtime::open(journal.path()).await.expect("open");
    for i in 0..20 {
        let id = format!("done{i}");
        rt.start_with_id(&id, sj_other())
            .await
            .expect("start")
            .result()
            .await
            .expect("result");
    }
    rt.close().await.expect("close");
    // A new runtime: the ids are in the journal, not in memory.
    let rt = Runtime::open(journal.path()).await.expect("reopen");
    for i in 0..20 {
        let id = format!("done{i}");
        let starts = (0..3).map(|_| {
            let rt = rt.clone();
            let id = id.clone();
            tokio::spawn(async move { rt.start_with_id(&id, sj_waits()).await.map(|_| ()) })
        });
        for started in futures::future::join_all(starts).await {
            match started.expect("task") {
                Err(Error::WorkflowMismatch { .. }) => {}
                other => panic!("{id}: expected WorkflowMismatch, got {other:?}"),
            }
        }
    }
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    starts_that_join_a_failing_start_fail_with_it
);
