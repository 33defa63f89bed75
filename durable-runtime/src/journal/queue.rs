//! Queues as the journal keeps them: what an enqueue writes beside its workflow's row,
//! a queue's limits, and what a dispatch hands the runtime.
//!
//! A queued workflow is a workflow row with queue columns. It is `queued` until a
//! dispatch picks it, then `running` (it holds one of its queue's slots while its row
//! is pending, so finishing or cancelling the row frees the slot in the same commit:
//! no slot can leak), or `held` (it stopped in a process without an outcome; it frees
//! its slot, and goes back to `queued` at the next open). A dispatch runs in the same
//! transaction as the write that made it possible (an enqueue, a finish, a change of
//! limits), so a freed slot is taken again in the commit that freed it.

use std::sync::Arc;

use super::WorkflowRecord;

/// The queue columns of a workflow that is enqueued rather than started.
#[derive(Debug, Clone)]
pub(crate) struct Enqueued {
    pub(crate) queue: Arc<str>,
    /// Lower runs first.
    pub(crate) priority: i32,
    /// The partition (`""`: none).
    pub(crate) partition: String,
    /// While a workflow of this queue with this deduplication id is queued or
    /// running, no other is enqueued with it.
    pub(crate) dedup: Option<String>,
    /// Not dispatched before this time (ms since the epoch).
    pub(crate) not_before: Option<i64>,
    /// Cancelled this long after it is dispatched, if it has not finished.
    pub(crate) timeout_ms: Option<i64>,
}

/// A rate limit: at most `count` dispatches in any `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) count: u32,
    pub(crate) period_ms: i64,
}

/// A queue's limits (`None`: no limit of that kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// How many of its workflows run at once, in all processes together.
    pub(crate) concurrency: Option<u32>,
    /// How many run at once in one process.
    pub(crate) per_process: Option<u32>,
    /// How many of one partition run at once.
    pub(crate) partition_concurrency: Option<u32>,
    pub(crate) rate: Option<Rate>,
    /// Whether dispatching is paused. Written only by a [`LimitsFrom::Pause`]: a pause
    /// holds across restarts, whatever limits are written meanwhile.
    pub(crate) paused: bool,
}

/// A write of a queue's limits.
#[derive(Debug, Clone)]
pub(crate) struct SetLimits {
    pub(crate) queue: Arc<str>,
    pub(crate) limits: Limits,
    pub(crate) from: LimitsFrom,
}

/// Where limits being written come from, which says whether they replace the ones the
/// journal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitsFrom {
    /// Declared by the program, written at open: unless limits set at run time hold
    /// (see [`QueueStats::set_at_run_time`]).
    Declared,
    /// Set at run time: they hold until set again or reset.
    RunTime,
    /// A reset: the declared limits hold again, over the run-time ones.
    Reset,
    /// A pause or its end: only `paused` is written (it is no limit, and pausing does
    /// not make the declared limits give way to run-time ones).
    Pause,
}

/// What a queue's dispatches tell the runtime.
#[derive(Debug)]
pub(crate) enum QueueNews {
    /// Workflows dispatched to this runtime in a commit: run them now.
    Dispatched(Vec<Dispatched>),
    /// Something may be dispatched at this time (ms since the epoch), and no write
    /// before it would find it so: a delay ends, or a rate limit's window moves on.
    DueAt(i64),
}

/// A workflow a dispatch handed this runtime.
#[derive(Debug)]
pub(crate) struct Dispatched {
    pub(crate) record: WorkflowRecord,
    /// The queue it was dispatched from.
    pub(crate) queue: Arc<str>,
    /// Dispatched for the first time: it has recorded nothing yet.
    pub(crate) fresh: bool,
}

/// A queue as the journal holds it now.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueStats {
    /// Waiting for a dispatch.
    pub(crate) queued: u64,
    /// Dispatched and not finished (holding slots).
    pub(crate) running: u64,
    /// Stopped without an outcome in a process; queued again at the next open.
    pub(crate) held: u64,
    /// The limits that hold (`None`: the journal has no row for this queue yet).
    pub(crate) limits: Option<Limits>,
    /// Whether they were set at run time (and so hold over the declared ones).
    pub(crate) set_at_run_time: bool,
}

/// One workflow waiting in a queue, as [`Store::queued`](super::Store::queued) lists
/// it.
#[derive(Debug, Clone)]
pub(crate) struct QueuedRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) priority: i32,
    pub(crate) partition: String,
    pub(crate) enqueued_at: i64,
    pub(crate) not_before: Option<i64>,
}

/// Where a queued workflow stands in its queue (its row's `queue_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueState {
    /// Waiting for a dispatch.
    Queued,
    /// Dispatched: it holds a slot while pending.
    Running,
    /// Stopped in a process without an outcome: no slot, queued again at the next
    /// open.
    Held,
}

impl QueueState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QueueState::Queued => "queued",
            QueueState::Running => "running",
            QueueState::Held => "held",
        }
    }

    /// The state a `queue_state` column holds (`None`: not one durable writes).
    pub(crate) fn parse(s: &str) -> Option<QueueState> {
        [QueueState::Queued, QueueState::Running, QueueState::Held]
            .into_iter()
            .find(|q| q.as_str() == s)
    }
}

/// How many workflows a dispatch may start now under `limits`, given how many of the
/// queue's run (`running`), how many of them run in this process (`mine`), and how many
/// dispatches fall in the rate window ending now (`in_window`); `u64::MAX` for none.
pub(crate) fn free_slots(limits: &Limits, running: u64, mine: u64, in_window: u64) -> u64 {
    if limits.paused {
        return 0;
    }
    let room = |limit: Option<u32>, used: u64| {
        limit.map_or(u64::MAX, |l| u64::from(l).saturating_sub(used))
    };
    room(limits.concurrency, running)
        .min(room(limits.per_process, mine))
        .min(room(limits.rate.map(|r| r.count), in_window))
}

/// One partition's next candidate, for [`pick`].
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) priority: i32,
    /// Its run number: its order of arrival.
    pub(crate) run: i64,
    /// How many of its partition run now (counting those picked so far).
    pub(crate) running: u64,
}

/// The most candidates one read of a partition takes during a dispatch (more are read
/// as they go).
pub(crate) const READ_AT_MOST: u64 = 1000;

/// A workflow a dispatch may take: what picking needs.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) run: i64,
    pub(crate) priority: i32,
    /// Whether it was never dispatched before (it has recorded nothing).
    pub(crate) fresh: bool,
}

/// One partition's candidates, in order, during a dispatch.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) name: String,
    /// Its running workflows, counting those picked so far.
    pub(crate) running: u64,
    pub(crate) next: std::collections::VecDeque<Candidate>,
    /// The last candidate read (priority, run): a read of more starts after it.
    pub(crate) after: (i32, i64),
    /// Whether a read found as many as it asked for: more may wait.
    pub(crate) more: bool,
}

impl Partition {
    /// A partition with `running` workflows running and no candidate read yet.
    pub(crate) fn new(name: String, running: u64) -> Partition {
        Partition {
            name,
            running,
            next: std::collections::VecDeque::new(),
            after: (i32::MIN, 0),
            more: true,
        }
    }

    /// Adds candidate `c`, read after the others.
    pub(crate) fn push(&mut self, c: Candidate) {
        self.after = (c.priority, c.run);
        self.next.push_back(c);
    }
}

/// The heads of `partitions`, one per partition in their order, for [`pick`] (one
/// without a candidate, which callers drop first, comes last of all).
pub(crate) fn heads(partitions: &[Partition]) -> Vec<Head> {
    partitions
        .iter()
        .map(|p| match p.next.front() {
            Some(c) => Head {
                priority: c.priority,
                run: c.run,
                running: p.running,
            },
            None => Head {
                priority: i32::MAX,
                run: i64::MAX,
                running: u64::MAX,
            },
        })
        .collect()
}

/// Which partition's head to dispatch next: the lowest priority number first; among
/// equal priorities, the partition with the fewest running (so that no partition waits
/// behind another's backlog); then the oldest. `None` if every partition is at
/// `partition_limit`.
pub(crate) fn pick(heads: &[Head], partition_limit: Option<u32>) -> Option<usize> {
    heads
        .iter()
        .enumerate()
        .filter(|(_, h)| partition_limit.is_none_or(|l| h.running < u64::from(l)))
        .min_by_key(|(_, h)| (h.priority, h.running, h.run))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(_partition: &str, priority: i32, run: i64, running: u64) -> Head {
        Head {
            priority,
            run,
            running,
        }
    }

    #[test]
    fn a_partition_with_fewer_running_goes_first_at_equal_priority() {
        let heads = [head("big", 0, 1, 3), head("small", 0, 900, 0)];
        assert_eq!(pick(&heads, None), Some(1));
        let heads = [head("big", 0, 1, 0), head("small", 1, 900, 0)];
        assert_eq!(pick(&heads, None), Some(0), "priority outranks fairness");
        let heads = [head("a", 0, 1, 2), head("b", 0, 2, 2)];
        assert_eq!(pick(&heads, Some(2)), None);
    }

    proptest! {
        #[test]
        fn free_slots_never_exceed_a_limit(
            concurrency in proptest::option::of(0u32..50),
            per_process in proptest::option::of(0u32..50),
            rate in proptest::option::of(0u32..50),
            running in 0u64..60,
            mine in 0u64..60,
            in_window in 0u64..60,
        ) {
            let limits = Limits {
                concurrency,
                per_process,
                rate: rate.map(|count| Rate { count, period_ms: 1000 }),
                ..Limits::default()
            };
            let free = free_slots(&limits, running, mine, in_window);
            if let Some(c) = concurrency { prop_assert!(running + free <= u64::from(c).max(running)); }
            if let Some(p) = per_process { prop_assert!(mine + free <= u64::from(p).max(mine)); }
            if let Some(r) = rate { prop_assert!(in_window + free <= u64::from(r).max(in_window)); }
        }
    }
}
