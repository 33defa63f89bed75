//! What `#[workflow]` does to spawn calls leaves every ordinary use compiling: a closure
//! given to `std::thread::spawn` stays a closure, and futures given to tokio's spawns
//! keep their output types.

use durable_runtime::{step, workflow};

#[step]
async fn double(x: u64) -> u64 {
    x * 2
}

#[workflow]
async fn spawns(n: u64) -> u64 {
    let thread = std::thread::spawn(move || n + 1);
    let from_thread = thread.join().unwrap_or_default();
    let step = tokio::spawn(double(n));
    let block = tokio::spawn(async move { double(n).await + 1 });
    let mut set = tokio::task::JoinSet::new();
    set.spawn(async move { double(n).await });
    let handle = tokio::runtime::Handle::current();
    let other = handle.spawn(double(3));
    let mut total = from_thread;
    total += step.await.unwrap_or_default() + block.await.unwrap_or_default();
    total += other.await.unwrap_or_default();
    while let Some(v) = set.join_next().await {
        total += v.unwrap_or_default();
    }
    total
}

fn main() {
    let _ = spawns(1);
}
