//! The queue workloads: `queue`, [`ITEMS`] one-step workflows through a queue that
//! runs at most [`CONCURRENCY`] at once, and `queue_wake`, how soon a queue of
//! concurrency 1 starts its next workflow once the one running has finished.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use durable_runtime::{Durability, Queue, Runtime, step, workflow};
use tokio::sync::mpsc;

use crate::{Res, Run, median, one_step, usage};

/// Workflows `queue` enqueues at once.
pub(crate) const ITEMS: u32 = 10_000;

/// How many of them the queue runs at once.
pub(crate) const CONCURRENCY: u32 = 100;

/// Turns of the queue `queue_wake` times (after one more, not timed, to warm up).
pub(crate) const TURNS: u32 = 100;

async fn open(path: &Path, durability: Durability, queue: &Queue) -> Res<Runtime> {
    Ok(Runtime::builder(path)
        .durability(durability)
        .queue(queue.clone())
        .open()
        .await?)
}

/// Enqueues [`ITEMS`] one-step workflows at once, each from its own task, on a queue
/// of concurrency [`CONCURRENCY`], and waits for every result.
pub(crate) async fn through_queue(path: &Path, durability: Durability) -> Res<Run> {
    let queue = Queue::new("bench").concurrency(CONCURRENCY);
    let rt = open(path, durability, &queue).await?;
    let before = rt.journal_commits();
    let cpu = usage::cpu_seconds();
    let start = Instant::now();
    let runs: Vec<_> = (0..ITEMS)
        .map(|i| {
            let (rt, queue) = (rt.clone(), queue.clone());
            tokio::spawn(async move { rt.enqueue(&queue, one_step(i)).await?.result().await })
        })
        .collect();
    for (i, run) in (0..ITEMS).zip(runs) {
        let value = run.await??;
        if value != i {
            return Err(format!("queued workflow {i} returned {value}").into());
        }
    }
    let run = Run {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: usage::cpu_seconds() - cpu,
        commits: rt.journal_commits() - before,
        from_call_s: None,
    };
    rt.close().await?;
    Ok(run)
}

/// Where [`mark`] reports to the `queue_wake` run in progress, if any.
static STARTED: Mutex<Option<mpsc::UnboundedSender<(u32, Instant)>>> = Mutex::new(None);

fn started() -> std::sync::MutexGuard<'static, Option<mpsc::UnboundedSender<(u32, Instant)>>> {
    STARTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tells the `queue_wake` driver when workflow `i`'s step began. Instrumentation: the
/// instant never reaches the journal.
#[step]
async fn mark(i: u32) -> u32 {
    if let Some(tx) = started().as_ref() {
        let _ = tx.send((i, Instant::now()));
    }
    i
}

#[workflow]
async fn marked(i: u32) -> u32 {
    mark(i).await
}

/// Enqueues [`TURNS`] + 1 one-step workflows on a paused queue of concurrency 1, then
/// unpauses it. Returns the median time from a workflow's handle returning its result
/// (the commit that recorded its end, and so freed the slot, has happened) to the next
/// workflow's step starting; the median whole turn, from one step starting to the
/// next one's (its checkpoint, the commit of its end with the next dispatch in it, and
/// the launch); and the CPU time and commits per turn.
pub(crate) async fn wake(path: &Path, durability: Durability) -> Res<Run> {
    let queue = Queue::new("wake").concurrency(1);
    let rt = open(path, durability, &queue).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    *started() = Some(tx);
    let control = rt.queue("wake")?;
    control.pause().await?;
    let mut waiters = Vec::new();
    for i in 0..=TURNS {
        let handle = rt.enqueue(&queue, marked(i)).await?;
        waiters.push(tokio::spawn(async move {
            let value = handle.result().await?;
            Ok::<_, durable_runtime::Error>((value, Instant::now()))
        }));
    }
    let before = rt.journal_commits();
    let cpu = usage::cpu_seconds();
    control.unpause().await?;
    let mut ended = Vec::new();
    for (i, waiter) in (0..=TURNS).zip(waiters) {
        let (value, at) = waiter.await??;
        if value != i {
            return Err(format!("queue_wake's workflow {i} returned {value}").into());
        }
        ended.push(at);
    }
    let cpu_s = (usage::cpu_seconds() - cpu) / f64::from(TURNS);
    let commits = rt.journal_commits() - before;
    started().take();
    let mut starts = Vec::new();
    while let Ok((i, at)) = rx.try_recv() {
        starts.push((i, at));
    }
    if starts.iter().map(|s| s.0).ne(0..=TURNS) {
        return Err("queue_wake's workflows did not start one by one, in order".into());
    }
    let (mut after_end, mut turn) = (Vec::new(), Vec::new());
    for i in 1..=TURNS as usize {
        // Zero when the next step started before the waiter saw the result: both
        // follow the same commit.
        after_end.push(
            starts[i]
                .1
                .saturating_duration_since(ended[i - 1])
                .as_secs_f64(),
        );
        turn.push(
            starts[i]
                .1
                .saturating_duration_since(starts[i - 1].1)
                .as_secs_f64(),
        );
    }
    rt.close().await?;
    Ok(Run {
        wall_s: median(after_end),
        cpu_s,
        commits,
        from_call_s: Some(median(turn)),
    })
}

/// The pause between the baseline's commits for `queue_wake`: none, as a queue turns
/// with no idle time.
pub(crate) const BACK_TO_BACK: Duration = Duration::ZERO;
