//! Smoke test: sequential steps and a `join!` with a nested branch record one path each.
use durable_runtime::{Runtime, step, workflow};
use std::sync::atomic::{AtomicUsize, Ordering};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn add(a: u32, b: u32) -> u32 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    a + b
}

#[workflow]
async fn sum(n: u32) -> u32 {
    let mut t = 0;
    for i in 0..n {
        t = add(t, i).await;
    }
    let (x, y) = tokio::join!(async { add(1, 2).await + add(3, 4).await }, add(5, 6));
    t + x + y
}

#[tokio::test]
async fn smoke() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let rt = Runtime::open(dir.path().join("j.db")).await?;
    let h = rt.start_with_id("a", sum(4)).await?;
    assert_eq!(h.result().await?, 6 + 3 + 7 + 11);
    for s in rt.steps("a").await? {
        println!("{} {} {}", s.path, s.name, s.attempts);
    }
    Ok(())
}
