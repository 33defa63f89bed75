//! A tokio timer in a workflow body starts again from zero after a crash or when the
//! workflow is rebuilt from its journal: refused, pointing at the durable sleep. The
//! same timer inside a step is fine.
use std::time::Duration;

use durable_runtime::{step, workflow};

#[step]
async fn slow_call() -> u32 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    7
}

#[workflow]
async fn reminder() -> u32 {
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    let v = slow_call().await;
    std::thread::sleep(Duration::from_millis(1));
    v
}

fn main() {}
