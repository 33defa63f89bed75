//! What the determinism guard rails let through: a `biased` `select!` in a workflow, the
//! clock read in a step body and in a function nested in a workflow body, and both
//! `on_interrupt` values, with and without retries.
#![deny(warnings)]

use std::time::{Instant, SystemTime};

use durable_runtime::{Runtime, step, workflow};

/// Steps are recorded, so a step may read the clock.
#[step]
async fn started_at() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A step that must not run twice: a crash mid-body records it as failed.
#[step(on_interrupt = "fail")]
async fn send_payment(cents: u64) -> u64 {
    cents
}

#[step(retries = 2, on_interrupt = "rerun")]
async fn fetch_rate(currency: u32) -> Result<u64, String> {
    Ok(u64::from(currency) * 10)
}

#[step(retries = 2, backoff = 10ms, on_interrupt = "fail")]
async fn refund(cents: u64) -> Result<u64, String> {
    Ok(cents)
}

#[workflow]
async fn pay(cents: u64) -> u64 {
    // A nested function is not part of the workflow body; it runs only when called.
    #[allow(dead_code)]
    fn elapsed_ms(since: Instant) -> u128 {
        let _now = Instant::now();
        since.elapsed().as_millis()
    }
    let stamp = started_at().await;
    let rate = tokio::select! {
        biased;
        r = fetch_rate(1) => r.unwrap_or(0),
        r = fetch_rate(2) => r.unwrap_or(0),
    };
    let paid = send_payment(cents * rate).await;
    let refunded = refund(0).await.unwrap_or(0);
    paid + refunded + stamp.min(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let runtime = Runtime::open(dir.path().join("journal.db")).await?;
        let handle = runtime.start_with_id("pay", pay(3)).await?;
        assert_eq!(handle.result().await?, 30);
        Ok(())
    })
}
