//! What `#[workflow]` does to spawn calls leaves every ordinary use compiling: a closure
//! given to `std::thread::spawn` stays a closure, and futures given to tokio's spawns
//! keep their output types; a method of one's own named `spawn` keeps inferring its
//! closure's signature, and the temporaries of its argument live as long as before.
//! Object-safe spawners still get the boxed futures they take, arguments typed by the
//! parameter (`.into()`, `Default::default()`) are still typed by it, and a method
//! called through its type still reborrows its receiver.

use std::future::Future;
use std::pin::Pin;

use durable_runtime::{step, workflow};
use futures::FutureExt;

type BoxJob = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The shape of `opentelemetry`'s runtime: object-safe, so it takes a boxed future.
trait Spawner {
    fn spawn(&self, job: BoxJob);
}

struct Tokio;

impl Spawner for Tokio {
    fn spawn(&self, job: BoxJob) {
        drop(tokio::spawn(job));
    }
}

struct Exec;

impl Exec {
    fn spawn(&self, job: futures::future::BoxFuture<'static, ()>) {
        drop(tokio::spawn(job));
    }

    fn spawn_local(&self, job: futures::future::LocalBoxFuture<'static, ()>) -> usize {
        drop(job);
        1
    }
}

struct Threads;

impl Threads {
    fn spawn(&self, job: Box<dyn FnOnce() + Send + 'static>) {
        drop(std::thread::spawn(job));
    }
}

struct Named;

impl Named {
    fn spawn(&self, name: String) -> usize {
        name.len()
    }

    fn spawn_on(&self, count: i32, job: Box<dyn FnOnce(&str) -> usize>) -> usize {
        job("job") + count as usize
    }
}

type SyncJob = Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>>;

struct SyncSpawner;

impl SyncSpawner {
    fn spawn(&self, job: SyncJob) {
        drop(job);
    }
}

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
    let job: BoxJob = Box::pin(async move {
        let _ = n;
    });
    Tokio.spawn(job);
    Tokio.spawn(Box::pin(async move {
        let _ = n;
    }));
    Exec.spawn(
        async move {
            let _ = n;
        }
        .boxed(),
    );
    let local = Exec.spawn_local(std::future::ready(()).boxed_local());
    Threads.spawn(Box::new(move || {
        let _ = n;
    }));
    let named = Named.spawn("job".into()) + Named.spawn(Default::default());
    let parsed: Result<usize, std::convert::Infallible> = (|| {
        let k = 3u32;
        Ok(Named.spawn("7".parse()?)
            + pool.spawn({
                let k = k;
                move |x| *x + k
            }) as usize
            + Named.spawn_on(n as _, Box::new(move |s| s.len())))
    })();
    let sync_job: SyncJob = Box::pin(async move {
        let _ = n;
    });
    SyncSpawner.spawn(sync_job);
    let mut through_type = tokio::task::JoinSet::new();
    let set_ref = &mut through_type;
    tokio::task::JoinSet::spawn(set_ref, double(1));
    tokio::task::JoinSet::spawn(set_ref, double(2));
    while let Some(v) = through_type.join_next().await {
        let _ = v;
    }
    let mut total = from_thread + u64::from(inferred) + borrowed as u64;
    total += (local + named + parsed.unwrap_or_default()) as u64;
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
