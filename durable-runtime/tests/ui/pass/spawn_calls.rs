//! What `#[workflow]` does to spawn calls leaves every ordinary use compiling: a closure
//! given to `std::thread::spawn` stays a closure, and futures given to tokio's spawns
//! keep their output types; a method of one's own named `spawn` keeps inferring its
//! closure's signature, and the temporaries of its argument live as long as before.

use durable_runtime::{step, workflow};

struct Pool;

impl Pool {
    fn spawn<F: FnOnce(&u32) -> u32>(&self, f: F) -> u32 {
        f(&41)
    }

    fn spawn_on(&self, name: &str) -> usize {
        name.len()
    }
}

fn make() -> String {
    "temporary".to_owned()
}

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
    let pool = Pool;
    let inferred = pool.spawn(|x| *x + 1);
    let borrowed = pool.spawn_on(make().as_str());
    let mut total = from_thread + u64::from(inferred) + borrowed as u64;
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
