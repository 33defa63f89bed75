//! The worker process of `tests/queue_history.rs`: a mixed load on three queues, built
//! to be SIGKILLed at any moment. A test fixture, not an example to copy.
//!
//! ```text
//! queue-worker --journal PATH|URL --log PATH [--scale S] [--lease-ms MS]
//! ```
//!
//! Several workers may share a PostgreSQL journal: they enqueue the same items under
//! the same ids, and each runs what the queues dispatch to it.
//!
//! The worker opens the journal (resuming what is pending), enqueues every item under a
//! fixed id (finding those an earlier run enqueued), waits for all of them, and exits.
//! The queues, with `S` times these items (default 1):
//! - `global`: at most 3 at once and 8 dispatches in any 500 ms; items `g-0000` to
//!   `g-0049`, and for every third of them a pair `d-NNNNa`, `d-NNNNb` sharing the
//!   deduplication id `d-NNNN` (the second of a pair is refused while the first is
//!   queued or running);
//! - `tenants`: at most 3 at once, 1 per partition; 36 items of partition `big` and 24
//!   spread over `p0`, `p1`, `p2`;
//! - `prio`: one at a time; items `r-0000` to `r-0039` with priorities 0 to 4, all
//!   enqueued while the queue is paused, then released at once;
//! - `local`: at most 4 at once, 2 per process; items `l-0000` to `l-0029`.
//!
//! Each step body appends `<wall-clock µs> <pid> start <id>` and `... end <id>` around
//! its sleep to the log; each enqueue appends `enqueued <id>` or `refused <id>`.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durable_runtime::{Enqueue, OnDuplicate, Queue, Runtime, WorkflowHandle, step, workflow};

type Res<T> = Result<T, Box<dyn Error>>;

static LOG: OnceLock<File> = OnceLock::new();

/// Appends `<µs> <pid> <line>` to the log, in one write.
fn log(line: &str) {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    if let Some(mut file) = LOG.get() {
        file.write_all(format!("{at} {} {line}\n", std::process::id()).as_bytes())
            .expect("cannot write the log");
    }
}

#[step]
async fn work(id: String, ms: u64) -> String {
    log(&format!("start {id}"));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    log(&format!("end {id}"));
    id
}

#[workflow]
async fn item(id: String, ms: u64) -> String {
    work(id, ms).await
}

/// A body's length: 40 to 89 ms, fixed by the id.
fn length(id: &str) -> u64 {
    40 + id
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 50
}

fn queues() -> [Queue; 4] {
    [
        Queue::new("global")
            .concurrency(3)
            .rate_limit(8, Duration::from_millis(500)),
        Queue::new("tenants")
            .concurrency(3)
            .partition_concurrency(1),
        Queue::new("prio").concurrency(1),
        Queue::new("local").concurrency(4).per_process(2),
    ]
}

async fn enqueue(
    rt: &Runtime,
    queue: &Queue,
    id: String,
    options: Enqueue,
    handles: &mut Vec<WorkflowHandle<String>>,
) -> Res<()> {
    let ms = length(&id);
    match rt
        .enqueue_with(queue, item(id.clone(), ms), options.id(id.clone()))
        .await
    {
        Ok(handle) => {
            log(&format!("enqueued {id}"));
            handles.push(handle);
        }
        Err(durable_runtime::Error::Duplicate { .. }) => log(&format!("refused {id}")),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn run(journal: &str, scale: u32, lease: Option<Duration>) -> Res<()> {
    let [global, tenants, prio, local] = queues();
    let mut builder = Runtime::builder(journal)
        .queue(global.clone())
        .queue(tenants.clone())
        .queue(prio.clone())
        .queue(local.clone());
    if let Some(lease) = lease {
        builder = builder.lease(lease);
    }
    let rt = builder.open().await?;
    log("open");
    let mut handles = Vec::new();
    // Every priority item is queued before any of them is dispatched.
    let held = rt.queue("prio")?;
    held.pause().await?;
    for i in 0..40 * scale {
        let options = Enqueue::new().priority(i32::try_from((i * 7) % 5)?);
        enqueue(&rt, &prio, format!("r-{i:04}"), options, &mut handles).await?;
    }
    held.unpause().await?;
    for i in 0..60 * scale {
        let partition = if i < 36 * scale {
            "big".to_owned()
        } else {
            format!("p{}", i % 3)
        };
        let options = Enqueue::new().partition(partition);
        enqueue(&rt, &tenants, format!("t-{i:04}"), options, &mut handles).await?;
    }
    for i in 0..50 * scale {
        enqueue(
            &rt,
            &global,
            format!("g-{i:04}"),
            Enqueue::new(),
            &mut handles,
        )
        .await?;
        if i % 3 == 0 {
            let k = i / 3;
            for side in ["a", "b"] {
                let options = Enqueue::new().dedup(format!("d-{k:04}"), OnDuplicate::Refuse);
                enqueue(
                    &rt,
                    &global,
                    format!("d-{k:04}{side}"),
                    options,
                    &mut handles,
                )
                .await?;
            }
        }
    }
    for i in 0..30 * scale {
        enqueue(
            &rt,
            &local,
            format!("l-{i:04}"),
            Enqueue::new(),
            &mut handles,
        )
        .await?;
    }
    for handle in handles {
        let id = handle.id().to_owned();
        let got = handle.result().await?;
        if got != id {
            return Err(format!("{id} returned {got}").into());
        }
    }
    log("done");
    rt.close().await?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(journal), Some(log_path)) = (
        args.iter()
            .position(|a| a == "--journal")
            .and_then(|i| args.get(i + 1)),
        args.iter()
            .position(|a| a == "--log")
            .and_then(|i| args.get(i + 1)),
    ) else {
        eprintln!("usage: queue-worker --journal PATH|URL --log PATH [--scale S] [--lease-ms MS]");
        return ExitCode::from(2);
    };
    let scale = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let lease = args
        .iter()
        .position(|a| a == "--lease-ms")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .map(Duration::from_millis);
    let file = match OpenOptions::new().create(true).append(true).open(log_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("queue-worker: cannot open {log_path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = LOG.set(file);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("queue-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(journal, scale, lease)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("queue-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
