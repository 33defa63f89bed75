//! Step ids do not depend on completion order.
//!
//! One workflow uses every concurrency shape users reach for (`tokio::join!`,
//! `join_all` over a mapped iterator, `tokio::spawn` of a step, `FuturesUnordered`, a
//! biased `select!`, nested async blocks, async closures, a closure returning an async
//! block, a `#[branch]` helper), with random delays inside the step bodies. Under 200
//! seeds the journal's path -> (step name, output) map must be identical every time, and
//! identical after a full replay of it (which must run no step body).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Journal, on_both_journals};
use durable_runtime::{Durability, Runtime, branch, step, workflow};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

static RNG: AtomicU64 = AtomicU64::new(0);
static BODIES: AtomicUsize = AtomicUsize::new(0);

/// splitmix64 over a shared counter: each call gets the next value of the seeded stream.
fn next_random() -> u64 {
    let mut z = RNG.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[step]
async fn work(tag: String) -> String {
    BODIES.fetch_add(1, Ordering::SeqCst);
    match next_random() % 4 {
        0 => {}
        1 => tokio::task::yield_now().await,
        n => tokio::time::sleep(Duration::from_micros(300 * n)).await,
    }
    format!("{tag}!")
}

#[branch]
async fn pair(prefix: String) -> String {
    let a = work(format!("{prefix}-a")).await;
    let b = work(format!("{prefix}-b")).await;
    a + &b
}

#[workflow]
async fn every_shape(n: u32) -> Vec<String> {
    let mut out = Vec::new();

    let (a, b) = tokio::join!(work("join-1".into()), work("join-2".into()));
    out.extend([a, b]);

    out.extend(futures::future::join_all((0..n).map(|i| work(format!("map-{i}")))).await);

    let spawned = tokio::spawn(work("spawned".into()));

    let mut unordered: FuturesUnordered<_> =
        (0..3).map(|i| work(format!("unordered-{i}"))).collect();
    let mut done = Vec::new();
    while let Some(v) = unordered.next().await {
        done.push(v);
    }
    done.sort();
    out.extend(done);

    tokio::select! {
        biased;
        v = work("select".into()) => out.push(v),
        () = std::future::pending::<()>() => out.push("never".into()),
    }

    let (x, y) = tokio::join!(
        async {
            let p = work("nested-1a".into()).await;
            let q = work("nested-1b".into()).await;
            p + &q
        },
        async {
            let p = work("nested-2a".into()).await;
            let q = work("nested-2b".into()).await;
            let inner =
                async { work("nested-2c".into()).await + &work("nested-2d".into()).await }.await;
            p + &q + &inner
        }
    );
    out.extend([x, y]);

    let closure = async move |i: u32| {
        let p = work(format!("closure-{i}a")).await;
        let q = work(format!("closure-{i}b")).await;
        p + &q
    };
    out.extend(futures::future::join_all((0..3).map(closure)).await);

    out.extend(
        futures::future::join_all((0..2).map(|i| async move {
            work(format!("block-{i}a")).await + &work(format!("block-{i}b")).await
        }))
        .await,
    );

    let (h1, h2) = tokio::join!(pair("helper-1".into()), pair("helper-2".into()));
    out.extend([h1, h2]);

    // A non-`move` async closure borrowing from the body.
    let prefix = String::from("borrowing");
    let borrowing = async |i: u32| {
        let p = work(format!("{prefix}-{i}a")).await;
        p + &work(format!("{prefix}-{i}b")).await
    };
    out.extend(futures::future::join_all((0..2).map(borrowing)).await);

    out.push(
        spawned
            .await
            .unwrap_or_else(|e| format!("spawn failed: {e}")),
    );
    out
}

/// The recorded steps of workflow `id`: path -> (step name, output).
type Steps = BTreeMap<String, (String, Vec<u8>)>;

const STEPS: &str = "SELECT path, name, output FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = ?1)";

fn journal(journal: &Journal, id: &str) -> Steps {
    match journal {
        Journal::Sqlite { path, .. } => {
            let conn = rusqlite::Connection::open(path).expect("open journal");
            let mut stmt = conn.prepare(STEPS).expect("prepare");
            stmt.query_map([id], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        }
        #[cfg(all(feature = "postgres", feature = "testkit"))]
        Journal::Postgres { server, schema, .. } => {
            let query = common::pg_sql(schema, STEPS);
            let id = id.to_owned();
            common::on_postgres(server, async move |c| {
                c.query(&query, &[&id])
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
                    .collect()
            })
            .expect("rows")
        }
    }
}

async fn step_paths_are_identical_under_200_completion_orders_and_replay(kind: Journal) {
    let mut reference: Option<(Steps, Vec<String>)> = None;
    for seed in 0..200u64 {
        RNG.store(seed.wrapping_mul(0xA076_1D64_78BD_642F), Ordering::Relaxed);
        let fresh = kind.another();
        let path = fresh.path();

        let rt = Runtime::builder(path)
            .durability(Durability::Normal)
            .open()
            .await
            .expect("open");
        let output = rt
            .start_with_id("w", every_shape(4))
            .await
            .expect("start")
            .result()
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        fresh.release(rt).await;
        let recorded = journal(&fresh, "w");

        // Full replay: the workflow looks unfinished, so the next open resumes it; every
        // step must come from the journal.
        fresh.make_pending("w");
        let before = BODIES.load(Ordering::SeqCst);
        let rt = common::reopen(path).await;
        assert_eq!(rt.recovered(), ["w"], "seed {seed}");
        let replayed = rt
            .start_with_id("w", every_shape(4))
            .await
            .expect("handle")
            .result()
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: replay: {e}"));
        assert_eq!(
            BODIES.load(Ordering::SeqCst),
            before,
            "seed {seed}: replay ran a step body"
        );
        assert_eq!(
            replayed, output,
            "seed {seed}: replay returned a different result"
        );
        assert_eq!(
            journal(&fresh, "w"),
            recorded,
            "seed {seed}: replay changed the journal"
        );
        fresh.release(rt).await;

        match &reference {
            None => {
                // 11 top-level steps (1-11), then 11 branches (12-22) holding 24 steps.
                assert_eq!(
                    recorded.len(),
                    35,
                    "unexpected step count: {:?}",
                    recorded.keys()
                );
                reference = Some((recorded, output));
            }
            Some((journal0, output0)) => {
                assert_eq!(
                    &recorded, journal0,
                    "seed {seed}: step paths differ from seed 0"
                );
                assert_eq!(&output, output0, "seed {seed}");
            }
        }
    }
}
on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    step_paths_are_identical_under_200_completion_orders_and_replay,
    serial
);
