//! Retention: `Runtime::gc` deletes exactly the runs that finished before the cutoff,
//! with what was recorded for them, never a pending run or the child of a pending one,
//! while the runtime keeps running; on SQLite the file then shrinks.
//!
//! `RETENTION_RUNS` sets how many old runs are made (100,000 by default).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Journal, on_both_journals};
use durable_runtime::{
    ListQuery, MAX_LIST_LIMIT, RecordedStatus, Runtime, recv, start_child, step, workflow,
};

#[step]
async fn rt_work(n: u64) -> u64 {
    n + 1
}

/// A finished run with one step.
#[workflow]
async fn rt_leaf(n: u64) -> u64 {
    rt_work(n).await
}

/// A run that starts a child, lets it finish, and returns.
#[workflow]
async fn rt_family(n: u64) -> u64 {
    let child = start_child(rt_leaf(n)).await.expect("child");
    child.result().await.expect("child result")
}

/// A run that starts a child, lets it finish, then waits for ever: pending, with a
/// finished child.
#[workflow]
async fn rt_waiting(n: u64) -> u64 {
    let child = start_child(rt_leaf(n)).await.expect("child");
    let got = child.result().await.expect("child result");
    recv::<u64>("never", None)
        .await
        .ok()
        .flatten()
        .unwrap_or(got)
}

fn runs() -> u64 {
    std::env::var("RETENTION_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// Starts `ids` as runs of `make`, `width` at a time, and waits for each to finish.
async fn finish_all(rt: &Runtime, ids: Vec<String>, family: bool) {
    for chunk in ids.chunks(1000) {
        let mut handles = Vec::with_capacity(chunk.len());
        for (i, id) in chunk.iter().enumerate() {
            let h = if family && i % 10 == 0 {
                rt.start_with_id(id, rt_family(i as u64)).await
            } else {
                rt.start_with_id(id, rt_leaf(i as u64)).await
            };
            handles.push(h.expect("start"));
        }
        for h in handles {
            h.result().await.expect("finished");
        }
    }
}

/// Every workflow id in the journal, and whether its run is pending.
async fn ids(rt: &Runtime) -> BTreeMap<String, bool> {
    let mut all = BTreeMap::new();
    let query = ListQuery::new().limit(MAX_LIST_LIMIT);
    let mut page = rt.list(&query).await.expect("list");
    loop {
        for w in &page.workflows {
            all.insert(w.id.clone(), w.status == RecordedStatus::Pending);
        }
        match page.next {
            Some(c) => page = rt.list(&query.clone().after(c)).await.expect("list"),
            None => return all,
        }
    }
}

async fn gc_deletes_exactly_the_old_finished_runs(journal: Journal) {
    let n = runs();
    let rt = Runtime::builder(journal.path()).open().await.expect("open");

    // Old: n finished runs (every tenth with a child), and ten pending runs, each
    // with a finished child.
    let old: Vec<String> = (0..n).map(|i| format!("old-{i}")).collect();
    finish_all(&rt, old, true).await;
    for i in 0..10 {
        rt.start_with_id(format!("waiting-{i}"), rt_waiting(i))
            .await
            .expect("start");
    }
    // The pending runs' children finish long before the cutoff, as the old runs do.
    let started = Instant::now();
    loop {
        let all = ids(&rt).await;
        let finished = (0..10).all(|i| {
            all.iter()
                .any(|(id, pending)| id.starts_with(&format!("waiting-{i}/")) && !pending)
        });
        if finished {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "children never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cutoff = Instant::now();
    tokio::time::sleep(Duration::from_millis(30)).await;

    // New: finished after the cutoff.
    let new: Vec<String> = (0..100).map(|i| format!("new-{i}")).collect();
    finish_all(&rt, new.clone(), true).await;

    let before: BTreeSet<String> = ids(&rt).await.into_keys().collect();
    let size_before = journal_size(&journal);

    // The runtime keeps running during the collection: a task finishes workflows
    // all along, and some of them start and finish while it runs.
    let collecting = Arc::new(AtomicBool::new(true));
    let during = Arc::new(AtomicU64::new(0));
    let busy = {
        let (collecting, during) = (collecting.clone(), during.clone());
        let rt = rt.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while collecting.load(Ordering::SeqCst) {
                let h = rt
                    .start_with_id(format!("busy-{i}"), rt_leaf(i))
                    .await
                    .expect("start during gc");
                h.result().await.expect("finish during gc");
                if collecting.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
            i
        })
    };
    let report = rt.gc(cutoff.elapsed()).await.expect("gc");
    collecting.store(false, Ordering::SeqCst);
    let busy_runs = busy.await.expect("busy task");
    assert!(
        during.load(Ordering::SeqCst) > 0,
        "no workflow finished while gc ran"
    );

    // Exactly the old finished runs went: the old runs, their children, and nothing
    // else; the pending runs and their (finished) children stay, as do the new runs.
    let after: BTreeSet<String> = ids(&rt).await.into_keys().collect();
    let gone: BTreeSet<_> = before.difference(&after).cloned().collect();
    let expected_gone: BTreeSet<_> = before
        .iter()
        .filter(|id| id.starts_with("old-"))
        .cloned()
        .collect();
    assert_eq!(gone.len(), expected_gone.len(), "deleted: {}", gone.len());
    assert_eq!(gone, expected_gone);
    assert_eq!(report.workflows, expected_gone.len() as u64);
    for i in 0..10 {
        assert!(after.contains(&format!("waiting-{i}")));
        assert!(
            after
                .iter()
                .any(|id| id.starts_with(&format!("waiting-{i}/")))
        );
    }
    assert_eq!(
        after.iter().filter(|id| id.starts_with("new-")).count(),
        before.iter().filter(|id| id.starts_with("new-")).count()
    );
    assert_eq!(
        after.iter().filter(|id| id.starts_with("busy-")).count() as u64,
        busy_runs
    );
    // Nothing recorded for a deleted run is left: every step row belongs to a run
    // that is still there.
    let runs_left = journal.dump("durable_workflows").len();
    assert_eq!(runs_left, after.len());
    assert_eq!(
        journal.dump("durable_steps").len(),
        journal_steps_of(&rt, &after).await,
        "steps of deleted runs are left"
    );
    let rt2 = rt.clone();
    assert!(
        rt2.handle::<u64>("old-1").await.is_err(),
        "a deleted run is gone"
    );

    // A pending one still runs to its end when its message comes.
    rt.send("waiting-3", "never", &99u64).await.expect("send");
    assert_eq!(
        rt.handle::<u64>("waiting-3")
            .await
            .expect("handle")
            .result()
            .await
            .expect("result"),
        99
    );
    rt.close().await.expect("close");
    if let Some(size_before) = size_before {
        let size_after = journal_size(&journal).unwrap_or(u64::MAX);
        assert!(report.reclaimed, "{report:?}");
        assert!(
            size_after < size_before / 2,
            "the file did not shrink: {size_before} bytes before, {size_after} after ({report:?})"
        );
    }
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    gc_deletes_exactly_the_old_finished_runs
);

/// How many steps the runs `ids` recorded, as the runtime reads them.
async fn journal_steps_of(rt: &Runtime, ids: &BTreeSet<String>) -> usize {
    let mut n = 0;
    for id in ids {
        n += rt.steps(id).await.expect("steps").len();
    }
    n
}

/// The SQLite file's size once its WAL is copied into it (a checkpoint, which any
/// connection may run beside the runtime's); `None` on PostgreSQL.
fn journal_size(journal: &Journal) -> Option<u64> {
    let path = journal.path();
    if path.to_string_lossy().starts_with("postgres") {
        return None;
    }
    let conn = rusqlite::Connection::open(path).expect("sqlite");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0, "the checkpoint could not finish");
    drop(conn);
    Some(std::fs::metadata(path).map_or(0, |m| m.len()))
}

/// `Runtime::list` filters and pages alike on both journals.
async fn list_filters_and_pages(journal: Journal) {
    let rt = Runtime::builder(journal.path()).open().await.expect("open");
    // 12 finished leaves, 3 families (a parent and its child), 4 pending.
    let leaves: Vec<String> = (0..12).map(|i| format!("leaf-{i}")).collect();
    finish_all(&rt, leaves, false).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        rt.start_with_id(format!("fam-{i}"), rt_family(i))
            .await
            .expect("start")
            .result()
            .await
            .expect("family");
    }
    for i in 0..4 {
        rt.start_with_id(format!("wait-{i}"), rt_waiting(i))
            .await
            .expect("start");
    }
    let all = |q: ListQuery| {
        let rt = rt.clone();
        async move {
            let mut out = Vec::new();
            let mut page = rt.list(&q).await.expect("list");
            loop {
                assert!(page.workflows.len() <= 4);
                out.extend(page.workflows.iter().map(|w| w.id.clone()));
                match page.next {
                    Some(c) => page = rt.list(&q.clone().after(c)).await.expect("list"),
                    None => return out,
                }
            }
        }
    };
    let pending = all(ListQuery::new()
        .status(RecordedStatus::Pending)
        .name("rt_waiting")
        .limit(4))
    .await;
    assert_eq!(pending, ["wait-3", "wait-2", "wait-1", "wait-0"]);
    let leaves = all(ListQuery::new()
        .name("rt_leaf")
        .started_before(middle)
        .order(durable_runtime::Order::OldestFirst)
        .limit(4))
    .await;
    let expected: Vec<String> = (0..12).map(|i| format!("leaf-{i}")).collect();
    assert_eq!(leaves, expected);
    let children = all(ListQuery::new().parent("fam-1").limit(4)).await;
    assert_eq!(children.len(), 1);
    assert!(children[0].starts_with("fam-1/"), "{children:?}");
    let families = all(ListQuery::new()
        .name("rt_family")
        .started_after(middle)
        .limit(4))
    .await;
    assert_eq!(families, ["fam-2", "fam-1", "fam-0"]);
    journal.release(rt).await;
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    list_filters_and_pages
);

/// Waits for a child to finish, then for a message.
#[workflow]
async fn rt_parent_then_wait() -> u64 {
    let child = start_child(rt_leaf(1)).await.expect("child");
    let got = child.result().await.expect("child result");
    let more = recv::<u64>("go", None).await.ok().flatten().unwrap_or(0);
    got + more
}

/// A child whose parent was cancelled (so may be resumed) stays, however old.
async fn gc_keeps_the_child_a_resumable_parent_needs(journal: Journal) {
    let rt = Runtime::builder(journal.path()).open().await.expect("open");
    rt.start_with_id("p", rt_parent_then_wait())
        .await
        .expect("start");
    // The child finishes, then the cutoff, then the parent is cancelled.
    let started = Instant::now();
    while !ids(&rt)
        .await
        .iter()
        .any(|(id, pending)| id == "p/1" && !pending)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cutoff = Instant::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    rt.cancel("p").await.expect("cancel");
    let report = rt.gc(cutoff.elapsed()).await.expect("gc");
    assert_eq!(
        report.workflows, 0,
        "the child of a cancelled parent must stay"
    );
    rt.resume("p").await.expect("resume");
    rt.send("p", "go", &5u64).await.expect("send");
    let out = rt
        .handle::<u64>("p")
        .await
        .expect("h")
        .result()
        .await
        .expect("r");
    assert_eq!(out, 7);
    journal.release(rt).await;
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    gc_keeps_the_child_a_resumable_parent_needs
);
