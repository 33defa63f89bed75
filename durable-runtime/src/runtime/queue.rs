//! Queues: workflows enqueued to run under limits (concurrency across processes and
//! per process, a rate, per-partition concurrency, priority), and the loop that runs
//! what the journal dispatches to this runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::registry::{Inner, drive, mismatch};
use super::{Runtime, WorkflowHandle};
use crate::engine::call::WorkflowCall;
use crate::engine::drive::History;
use crate::engine::workflow::Outcome;
use crate::error::{Error, Result};
use crate::journal::queue::{
    Dispatched, Enqueued, Limits, LimitsFrom, QueueNews, QueueState, QueueStats, Rate, SetLimits,
};
use crate::journal::{Created, NewWorkflow, RecordStatus, blocking};
use crate::util::{lock, now_ms};

/// A queue: a name and limits on how its workflows run. Declare it in code, give it to
/// [`RuntimeBuilder::queue`](crate::RuntimeBuilder::queue), and enqueue workflows on it
/// with [`Runtime::enqueue`].
///
/// The limits hold across every process sharing the journal, and are kept in the
/// journal: [`Runtime::queue`] changes them at run time, for every process, until they
/// are changed again or reset to the declared ones.
///
/// A slot is held from the dispatch to the workflow's recorded end. A cancellation
/// (by [`Runtime::cancel`], or by an [`Enqueue::timeout`]) is such an end: the slot is
/// free once it is recorded, while a step body the workflow was running goes on to the
/// step's end (a cancelled workflow stops at its next step boundary). For that time one
/// body more than the limit runs.
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::Queue;
///
/// // At most 10 at once, 50 starts a minute, one per customer at a time.
/// let emails = Queue::new("emails")
///     .concurrency(10)
///     .rate_limit(50, Duration::from_secs(60))
///     .partition_concurrency(1);
/// assert_eq!(emails.name(), "emails");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    name: Arc<str>,
    limits: Limits,
}

/// The longest queue name, in bytes.
const MAX_QUEUE_NAME: usize = 200;

impl Queue {
    /// A queue named `name`, with no limits yet.
    pub fn new(name: impl Into<String>) -> Queue {
        Queue {
            name: Arc::from(name.into()),
            limits: Limits::default(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// At most `n` of its workflows run at once, in all processes together.
    #[must_use]
    pub fn concurrency(mut self, n: u32) -> Queue {
        self.limits.concurrency = Some(n);
        self
    }

    /// At most `n` of its workflows run at once in any one process.
    #[must_use]
    pub fn per_process(mut self, n: u32) -> Queue {
        self.limits.per_process = Some(n);
        self
    }

    /// At most `n` workflows of any one partition (see
    /// [`Enqueue::partition`]) run at once.
    #[must_use]
    pub fn partition_concurrency(mut self, n: u32) -> Queue {
        self.limits.partition_concurrency = Some(n);
        self
    }

    /// At most `count` workflows start in any window of `period`.
    #[must_use]
    pub fn rate_limit(mut self, count: u32, period: Duration) -> Queue {
        self.limits.rate = Some(Rate {
            count,
            period_ms: millis(period),
        });
        self
    }

    /// Why this queue cannot be used, if it cannot.
    pub(super) fn invalid(&self) -> Option<Error> {
        let problem = if self.name.is_empty() {
            "a queue name cannot be empty".to_owned()
        } else if self.name.len() > MAX_QUEUE_NAME {
            format!("a queue name is at most {MAX_QUEUE_NAME} bytes")
        } else if self.name.chars().any(char::is_control) {
            "a queue name cannot contain control characters".to_owned()
        } else if self.limits.rate.is_some_and(|r| r.period_ms <= 0) {
            "a rate limit's period must be at least a millisecond".to_owned()
        } else {
            return None;
        };
        Some(self.error(problem))
    }

    fn error(&self, problem: impl Into<String>) -> Error {
        Error::Queue {
            queue: self.name.to_string(),
            problem: problem.into(),
        }
    }

    pub(super) fn declared(&self) -> SetLimits {
        SetLimits {
            queue: self.name.clone(),
            limits: self.limits,
            from: LimitsFrom::Declared,
        }
    }
}

/// What to do when an enqueue finds its deduplication id taken (see
/// [`Enqueue::dedup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnDuplicate {
    /// Refuse the enqueue with [`Error::Duplicate`].
    #[default]
    Refuse,
    /// Return a handle to the workflow that holds the id instead.
    Join,
}

/// Options of one enqueue; see [`Runtime::enqueue_with`].
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::{Enqueue, OnDuplicate};
///
/// let options = Enqueue::new()
///     .id("invoice-7")
///     .dedup("customer-42", OnDuplicate::Join)
///     .priority(-1)
///     .partition("customer-42")
///     .delay(Duration::from_secs(30))
///     .timeout(Duration::from_secs(600));
/// # drop(options);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Enqueue {
    id: Option<String>,
    dedup: Option<(String, OnDuplicate)>,
    priority: i32,
    partition: String,
    delay: Option<Duration>,
    timeout: Option<Duration>,
}

impl Enqueue {
    /// No options: a generated id, priority 0, no partition, no delay, no timeout.
    pub fn new() -> Enqueue {
        Enqueue::default()
    }

    /// The workflow's id (as [`Runtime::start_with_id`]: an enqueue of an id that
    /// exists enqueues nothing, and returns a handle to the existing workflow).
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Enqueue {
        self.id = Some(id.into());
        self
    }

    /// While a workflow of this queue with deduplication id `dedup` is queued or
    /// running, another enqueue with it is refused, or joins it (`on_duplicate`).
    /// Once that workflow has finished, the id is free again.
    #[must_use]
    pub fn dedup(mut self, dedup: impl Into<String>, on_duplicate: OnDuplicate) -> Enqueue {
        self.dedup = Some((dedup.into(), on_duplicate));
        self
    }

    /// Lower numbers run first (default 0; negative numbers run before it). Within one
    /// priority, workflows run in the order they were enqueued (per partition).
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Enqueue {
        self.priority = priority;
        self
    }

    /// The partition (a tenant, a customer): the queue's
    /// [`partition_concurrency`](Queue::partition_concurrency) holds per partition, and
    /// partitions are served fairly: at equal priority, the next slot goes to the
    /// partition with the fewest running, so none waits behind another's backlog.
    #[must_use]
    pub fn partition(mut self, partition: impl Into<String>) -> Enqueue {
        self.partition = partition.into();
        self
    }

    /// Not dispatched before `delay` has passed.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Enqueue {
        self.delay = Some(delay);
        self
    }

    /// Cancelled (with [`CancelReason::DeadlineExceeded`](crate::CancelReason::DeadlineExceeded)) if it
    /// has not finished `timeout` after it was dispatched. Time spent waiting in the
    /// queue does not count.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Enqueue {
        self.timeout = Some(timeout);
        self
    }
}

/// The longest delay, timeout or rate period a queue keeps, in milliseconds (about 73
/// million years): any longer is as good as for ever, and a time this far from now
/// still fits an `i64` when added to a timestamp, in Rust and in SQL.
const MAX_MS: i64 = i64::MAX / 4;

/// `d` in milliseconds, at most [`MAX_MS`].
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(MAX_MS, |ms| ms.min(MAX_MS))
}

impl Runtime {
    /// Enqueues `call` on `queue` under a generated id: it runs when the queue's limits
    /// let it. See [`enqueue_with`](Self::enqueue_with).
    ///
    /// ```
    /// use durable_runtime::{Queue, Runtime, workflow};
    ///
    /// #[workflow]
    /// async fn send_welcome(user: u64) -> String { format!("sent to {user}") }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let emails = Queue::new("emails").concurrency(2);
    /// let rt = Runtime::builder(dir.path().join("journal.db"))
    ///     .queue(emails.clone())
    ///     .open()
    ///     .await?;
    /// let handle = rt.enqueue(&emails, send_welcome(7)).await?;
    /// assert_eq!(handle.result().await?, "sent to 7");
    /// # rt.close().await }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`enqueue_with`](Self::enqueue_with).
    pub async fn enqueue<O>(
        &self,
        queue: &Queue,
        call: WorkflowCall<O>,
    ) -> Result<WorkflowHandle<O>> {
        self.enqueue_with(queue, call, Enqueue::new()).await
    }

    /// Enqueues `call` on `queue` with `options`. The workflow is journaled as queued
    /// before this returns: if the process dies afterwards, it is still queued (or
    /// running) at the next open. It runs when a dispatch picks it: at once if the
    /// queue has room, in the commit that journals it; otherwise when a slot frees (in
    /// the commit of the workflow that frees it), its delay ends or the rate limit's
    /// window moves on. The handle follows it as any other.
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] if the runtime was not built with `queue` (see
    /// [`RuntimeBuilder::queue`](crate::RuntimeBuilder::queue)) or was built with
    /// other limits for it, [`Error::Duplicate`] if the deduplication id is taken (and
    /// [`OnDuplicate::Refuse`]), [`Error::InvalidId`], [`Error::Encode`],
    /// [`Error::WorkflowMismatch`] and [`Error::Unrecorded`] as
    /// [`start_with_id`](Self::start_with_id), [`Error::Closed`] after
    /// [`close`](Runtime::close), [`Error::Store`] if the journal cannot be written.
    pub async fn enqueue_with<O>(
        &self,
        queue: &Queue,
        call: WorkflowCall<O>,
        options: Enqueue,
    ) -> Result<WorkflowHandle<O>> {
        super::registry::refuse_in_workflow(
            "`Runtime::enqueue`",
            "in a workflow, use `durable_runtime::enqueue` (a journaled enqueue)",
        )?;
        let (handle_id, outcome) = self
            .inner
            .enqueue_call(queue, call, options, None, crate::util::random_id)
            .await?;
        Ok(WorkflowHandle::new(handle_id, outcome))
    }

    /// The queue named `name`, to read its state or change its limits at run time.
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] if the runtime was not built with a queue of that name.
    pub fn queue(&self, name: &str) -> Result<QueueHandle> {
        let Some(queue) = self.inner.queues.get(name) else {
            return Err(Error::Queue {
                queue: name.to_owned(),
                problem: unknown_queue(name),
            });
        };
        Ok(QueueHandle {
            inner: self.inner.clone(),
            queue: queue.clone(),
        })
    }
}

impl Inner {
    /// Journals `call` as queued on `queue` with `options` (under `options`' id, or
    /// the one `default_id` makes), as a child of `parent` if given; answers the id its
    /// handle follows and what it watches.
    pub(super) async fn enqueue_call<O>(
        self: &Arc<Self>,
        queue: &Queue,
        call: WorkflowCall<O>,
        options: Enqueue,
        parent: Option<Arc<str>>,
        default_id: impl FnOnce() -> String,
    ) -> Result<(Arc<str>, watch::Receiver<Option<Outcome>>)> {
        self.open()?;
        self.known_queue(queue)?;
        let id = options.id.clone().unwrap_or_else(default_id);
        let id: Arc<str> = Arc::from(super::registry::validate_id(id)?);
        let launch = call.into_launch(&id, parent.clone(), self.codec)?;
        let now = now_ms();
        let (dedup, on_duplicate) = match options.dedup {
            Some((d, on)) => (Some(d), on),
            None => (None, OnDuplicate::Refuse),
        };
        let new = NewWorkflow {
            id: id.clone(),
            name: launch.def.name(),
            input: launch.input,
            app_version: self.app_version.clone(),
            created_at: now,
            parent_id: parent,
            deadline_at: launch.deadline_at,
            queued: Some(Box::new(Enqueued {
                queue: queue.name.clone(),
                priority: options.priority,
                partition: options.partition,
                dedup: dedup.clone(),
                not_before: options.delay.map(|d| now.saturating_add(millis(d))),
                timeout_ms: options.timeout.map(millis),
            })),
        };
        self.enqueue(new, queue, dedup.as_deref(), on_duplicate)
            .await
    }
}

fn unknown_queue(name: &str) -> String {
    format!(
        "this runtime was not built with it; declare it with \
         `Runtime::builder(..).queue(Queue::new({name:?}))`"
    )
}

/// A queue of a runtime: its state, and its limits changed at run time. From
/// [`Runtime::queue`].
#[derive(Debug, Clone)]
pub struct QueueHandle {
    inner: Arc<Inner>,
    queue: Queue,
}

/// A queue's state, as the journal holds it; from [`QueueHandle::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// Workflows waiting for a dispatch (delayed ones included).
    pub queued: u64,
    /// Workflows dispatched and not finished: the slots in use, in all processes.
    pub running: u64,
    /// Workflows that stopped without an outcome (a divergence, a value that does not
    /// decode): they hold no slot, and are queued again at the next open.
    pub held: u64,
    /// The concurrency limit that holds now.
    pub concurrency: Option<u32>,
    /// The per-process limit.
    pub per_process: Option<u32>,
    /// The per-partition limit.
    pub partition_concurrency: Option<u32>,
    /// The rate limit: starts per period.
    pub rate_limit: Option<(u32, Duration)>,
    /// Whether dispatching is paused.
    pub paused: bool,
    /// Whether the limits were set at run time, and hold over the declared ones.
    pub set_at_run_time: bool,
}

/// A workflow waiting in a queue; from [`QueueHandle::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueuedWorkflow {
    /// Its id.
    pub id: String,
    /// Its workflow's name.
    pub name: String,
    /// Its priority.
    pub priority: i32,
    /// Its partition (empty: none).
    pub partition: String,
    /// When it was enqueued, in ms since the Unix epoch.
    pub enqueued_at_ms: i64,
    /// Not dispatched before this time, if it was enqueued with a delay.
    pub not_before_ms: Option<i64>,
}

impl QueueHandle {
    /// The queue's name.
    pub fn name(&self) -> &str {
        self.queue.name()
    }

    /// Its counts and the limits that hold now.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub async fn info(&self) -> Result<QueueInfo> {
        let stats = self.stats().await?;
        let limits = stats.limits.unwrap_or(self.queue.limits);
        Ok(QueueInfo {
            queued: stats.queued,
            running: stats.running,
            held: stats.held,
            concurrency: limits.concurrency,
            per_process: limits.per_process,
            partition_concurrency: limits.partition_concurrency,
            rate_limit: limits.rate.map(|r| {
                (
                    r.count,
                    Duration::from_millis(u64::try_from(r.period_ms).unwrap_or(0)),
                )
            }),
            paused: limits.paused,
            set_at_run_time: stats.set_at_run_time,
        })
    }

    /// The workflows waiting in the queue, at most `limit`, in the order a dispatch
    /// takes them within a partition: by priority, then in the order they came.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub async fn list(&self, limit: usize) -> Result<Vec<QueuedWorkflow>> {
        let store = self.inner.store.clone();
        let name = self.queue.name.clone();
        let rows = blocking(self.inner.store.path(), move || store.queued(&name, limit))
            .await?
            .map_err(|e| self.inner.closed_or(e))?;
        Ok(rows
            .into_iter()
            .map(|r| QueuedWorkflow {
                id: r.id,
                name: r.name,
                priority: r.priority,
                partition: r.partition,
                enqueued_at_ms: r.enqueued_at,
                not_before_ms: r.not_before,
            })
            .collect())
    }

    /// Cancels a workflow of this queue, waiting or running (as
    /// [`Runtime::cancel`]).
    ///
    /// # Errors
    ///
    /// As [`Runtime::cancel`], and [`Error::Queue`] if workflow `id` was not enqueued
    /// on this queue (nothing is cancelled).
    pub async fn cancel(&self, id: &str) -> Result<()> {
        super::registry::refuse_in_workflow(
            "`QueueHandle::cancel`",
            "cancel it from a step, whose result is recorded",
        )?;
        self.inner.open()?;
        let store = self.inner.store.clone();
        let of = id.to_owned();
        let queue = blocking(self.inner.store.path(), move || store.queue_of(&of))
            .await?
            .map_err(|e| self.inner.closed_or(e))?;
        let problem = match queue {
            None => {
                return Err(Error::NotFound {
                    workflow_id: id.to_owned(),
                });
            }
            Some(Some(q)) if *q == *self.queue.name => {
                return self
                    .inner
                    .cancel(id, crate::error::CancelReason::Requested)
                    .await;
            }
            Some(Some(q)) => format!("workflow {id} was enqueued on queue {q:?}, not on this one"),
            Some(None) => {
                format!("workflow {id} was not enqueued: cancel it with `Runtime::cancel`")
            }
        };
        Err(self.queue.error(problem))
    }

    /// Sets the concurrency limit (`None`: none), in every process, until it is set
    /// again or [`reset`](Self::reset). Lowering it does not stop what runs: no new
    /// workflow starts until fewer run than the new limit.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be written.
    pub async fn set_concurrency(&self, n: Option<u32>) -> Result<()> {
        self.change(|l| l.concurrency = n).await
    }

    /// Sets the per-process limit (`None`: none), as
    /// [`set_concurrency`](Self::set_concurrency).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be written.
    pub async fn set_per_process(&self, n: Option<u32>) -> Result<()> {
        self.change(|l| l.per_process = n).await
    }

    /// Sets the per-partition limit (`None`: none), as
    /// [`set_concurrency`](Self::set_concurrency).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be written.
    pub async fn set_partition_concurrency(&self, n: Option<u32>) -> Result<()> {
        self.change(|l| l.partition_concurrency = n).await
    }

    /// Sets the rate limit to `count` starts per `period` (`None`: none), as
    /// [`set_concurrency`](Self::set_concurrency).
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] for a period under a millisecond, [`Error::Store`] if the
    /// journal cannot be written.
    pub async fn set_rate_limit(&self, rate: Option<(u32, Duration)>) -> Result<()> {
        let rate = rate.map(|(count, period)| Rate {
            count,
            period_ms: millis(period),
        });
        if rate.is_some_and(|r| r.period_ms <= 0) {
            return Err(self
                .queue
                .error("a rate limit's period must be at least a millisecond"));
        }
        self.change(|l| l.rate = rate).await
    }

    /// Stops dispatching: what runs goes on, nothing new starts, in every process,
    /// until [`unpause`](Self::unpause), across restarts too. Pausing is not a change
    /// of limits: the declared ones still hold, unless some were set at run time.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be written.
    pub async fn pause(&self) -> Result<()> {
        self.set_paused(true).await
    }

    /// Dispatches again after [`pause`](Self::pause).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be written.
    pub async fn unpause(&self) -> Result<()> {
        self.set_paused(false).await
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        self.inner.open()?;
        let set = SetLimits {
            limits: Limits {
                paused,
                ..self.queue.limits
            },
            from: LimitsFrom::Pause,
            ..self.queue.declared()
        };
        self.inner.acked(self.inner.store.set_queue(set)).await
    }

    /// Drops the limits set at run time: the ones this program declares hold again.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be written.
    pub async fn reset(&self) -> Result<()> {
        let set = SetLimits {
            from: LimitsFrom::Reset,
            ..self.queue.declared()
        };
        self.inner.acked(self.inner.store.set_queue(set)).await
    }

    /// The queue's counts and limits, as the journal holds them.
    async fn stats(&self) -> Result<QueueStats> {
        let store = self.inner.store.clone();
        let name = self.queue.name.clone();
        blocking(self.inner.store.path(), move || store.queue_stats(&name))
            .await?
            .map_err(|e| self.inner.closed_or(e))
    }

    /// Changes the limits that hold now with `f`, and writes them as set at run time.
    async fn change(&self, f: impl FnOnce(&mut Limits)) -> Result<()> {
        self.inner.open()?;
        let mut limits = self.stats().await?.limits.unwrap_or(self.queue.limits);
        f(&mut limits);
        let set = SetLimits {
            queue: self.queue.name.clone(),
            limits,
            from: LimitsFrom::RunTime,
        };
        self.inner.acked(self.inner.store.set_queue(set)).await
    }
}

impl Inner {
    /// Refuses a queue this runtime was not built with (or with other limits).
    pub(super) fn known_queue(&self, queue: &Queue) -> Result<()> {
        match self.queues.get(queue.name()) {
            Some(q) if q == queue => Ok(()),
            Some(_) => Err(queue.error(
                "this runtime was built with another declaration of this queue (other \
                 limits); enqueue with the `Queue` given to `RuntimeBuilder::queue`",
            )),
            None => Err(queue.error(unknown_queue(queue.name()))),
        }
    }

    /// Journals `new` as queued; answers the id its handle follows and what it watches.
    async fn enqueue(
        self: &Arc<Self>,
        new: NewWorkflow,
        queue: &Queue,
        dedup: Option<&str>,
        on_duplicate: OnDuplicate,
    ) -> Result<(Arc<str>, watch::Receiver<Option<Outcome>>)> {
        let id = new.id.clone();
        let name = new.name;
        // Waiting for the dispatch before the write: the dispatch may come in the
        // enqueue's own commit, and the run it starts must find where to publish.
        let (outcome, ours) = self.waiting_outcome(&id);
        let created = self.acked(self.store.create_workflow(new)).await;
        let existing = match created {
            Ok(Created::New) => {
                if !self.queues_run_here() {
                    // Another runtime sharing the journal may be the one it is
                    // dispatched to: its outcome is then read from the journal.
                    self.watch_queued(id.clone());
                }
                return Ok((id, outcome));
            }
            Ok(Created::Existing(record)) => record,
            Ok(Created::Duplicate(record)) => {
                self.drop_waiting(&id, ours);
                return match on_duplicate {
                    // Its handle would read another workflow's output as this one's.
                    OnDuplicate::Join if record.name != name => {
                        Err(mismatch(&record.id, &record.name, name))
                    }
                    OnDuplicate::Join => {
                        let existing: Arc<str> = Arc::from(record.id.as_str());
                        let outcome = self.outcome_of(&existing).await?;
                        Ok((existing, outcome))
                    }
                    _ => Err(Error::Duplicate {
                        queue: queue.name().to_owned(),
                        dedup_id: dedup.unwrap_or_default().to_owned(),
                        existing: record.id,
                    }),
                };
            }
            Err(e) => {
                self.drop_waiting(&id, ours);
                return Err(e);
            }
        };
        self.drop_waiting(&id, ours);
        if existing.name != name {
            return Err(mismatch(&id, &existing.name, name));
        }
        Ok((id.clone(), self.outcome_of(&id).await?))
    }

    /// What a handle of queued workflow `id` watches until it is dispatched here; and
    /// whether this call made it (see [`Inner::drop_waiting`]).
    pub(super) fn waiting_outcome(
        &self,
        id: &Arc<str>,
    ) -> (watch::Receiver<Option<Outcome>>, bool) {
        let mut waiting = lock(&self.waiting);
        if let Some(tx) = waiting.get(id) {
            return (tx.subscribe(), false);
        }
        // Now and then, forget the entries nobody needs: settled (a workflow another
        // runtime ran, whose outcome was read from the journal), or no longer watched.
        if waiting.len() >= 64 && waiting.len().is_power_of_two() {
            waiting.retain(|_, tx| tx.receiver_count() > 0 && tx.borrow().is_none());
        }
        let (tx, rx) = watch::channel(None);
        waiting.insert(id.clone(), tx);
        (rx, true)
    }

    /// Forgets the waiting outcome [`Inner::waiting_outcome`] made (`ours`), if nobody
    /// launched the workflow with it meanwhile.
    fn drop_waiting(&self, id: &Arc<str>, ours: bool) {
        if ours {
            let mut waiting = lock(&self.waiting);
            if waiting.get(id).is_some_and(|tx| tx.receiver_count() <= 1) {
                waiting.remove(id);
            }
        }
    }

    /// Publishes `outcome` to the handles of a queued workflow that ended without
    /// being dispatched here (a cancellation).
    pub(super) fn settle_waiting(&self, id: &str, outcome: Outcome) {
        if let Some(tx) = lock(&self.waiting).remove(id) {
            tx.send_replace(Some(outcome));
        }
    }

    /// Watches queued workflow `id` (enqueued here, on a shared journal) for an outcome
    /// another runtime records, for its handles: one task watches them all, reading
    /// the journal for those still waiting every [`QUEUED_WATCH`], in one read.
    fn watch_queued(self: &Arc<Self>, id: Arc<str>) {
        let mut to = lock(&self.queued_watch);
        let sent = match to.as_ref() {
            Some(tx) => tx.send(id),
            None => Err(mpsc::error::SendError(id)),
        };
        if let Err(mpsc::error::SendError(id)) = sent {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(id);
            *to = Some(tx);
            tokio::spawn(queued_watch(Arc::downgrade(self), rx));
        }
    }

    /// Runs what a dispatch handed this runtime.
    fn launch_dispatched(self: &Arc<Self>, dispatched: Vec<Dispatched>) {
        for d in dispatched {
            let record = &d.record;
            let id: Arc<str> = Arc::from(record.id.as_str());
            let def = match (self.registry.get(record.name.as_str()), record.damage()) {
                (Some(def), None) => *def,
                (_, damage) => {
                    // It cannot run here.
                    let e = damage.unwrap_or_else(|| Error::UnknownWorkflow {
                        workflow_id: record.id.clone(),
                        name: record.name.clone(),
                    });
                    self.hold_later(id.clone(), &e);
                    // Its handles report why, as those of a run that stopped do.
                    self.settle_waiting(&id, Arc::new(Err(e)));
                    continue;
                }
            };
            let mut running = lock(&self.running);
            if self.closing.load(Ordering::Acquire) {
                // Left running in the journal: the next open resumes it.
                return;
            }
            if running.contains_key(&id) {
                // A run of it here still winds down (a cancellation, then a resume that
                // queued it again): it keeps its slot, and runs once that run is over.
                drop(running);
                self.when_wound_down(id, move |inner| inner.launch_dispatched(vec![d]));
                continue;
            }
            let Dispatched { record, fresh, .. } = d;
            let tx = lock(&self.waiting).remove(&id);
            let parent = record.parent_id.map(Arc::<str>::from);
            // A workflow enqueued by a workflow that runs here: its span follows from
            // the parent's, as a child's does.
            let parent_span = parent
                .as_ref()
                .and_then(|p| running.get(p)?.live().map(|c| c.span.clone()))
                .unwrap_or_else(tracing::Span::none);
            let (run, ctx, tx) =
                parent_span.in_scope(|| self.new_run_publishing(&id, def.name(), parent, tx));
            running.insert(id.clone(), run);
            self.dispatches.fetch_add(1, Ordering::AcqRel);
            drop(running);
            tracing::debug!(workflow = %id, name = def.name(), "dispatched from its queue");
            let history = if fresh {
                History::None
            } else {
                History::Journaled
            };
            tokio::spawn(drive(
                self.clone(),
                ctx,
                def,
                record.input,
                history,
                record.deadline_at,
                tx,
            ));
        }
    }

    /// Frees the slot of dispatched workflow `id`, which cannot run here (`why`): it
    /// is held until the next open queues it again.
    fn hold_later(&self, id: Arc<str>, why: &dyn std::fmt::Display) {
        tracing::warn!(workflow = %id, "{why}; it is held in its queue until the next open");
        let ack = self.store.hold(id);
        tokio::spawn(async move { drop(ack.await) });
    }

    /// Why held workflow `record` stopped, if it stopped in this runtime (or cannot
    /// run anywhere: its row is damaged). Its handles report that at once rather than
    /// wait for the next open to queue it again. `None` for a workflow that is not
    /// held, or held by another runtime sharing the journal (its handles wait).
    pub(super) fn why_held(&self, record: &crate::journal::WorkflowRecord) -> Option<Error> {
        if record.status != RecordStatus::Pending || record.queue_state != Some(QueueState::Held) {
            return None;
        }
        record
            .damage()
            .or_else(|| lock(&self.stopped).get(record.id.as_str()).cloned())
    }

    /// Whether `record` (of a workflow not running here) is pending in a queue and will
    /// run here, or elsewhere, once dispatched: waiting for a dispatch, or dispatched to
    /// this runtime and not launched yet (the dispatch committed, and its news is on its
    /// way to [`queue_loop`]). Not one that could not run here (see
    /// [`Runtime::unrecoverable`]).
    pub(super) fn is_waiting(&self, record: &crate::journal::WorkflowRecord) -> bool {
        if record.status != RecordStatus::Pending || record.queue_state.is_none() {
            return false;
        }
        if record.waiting() {
            return true;
        }
        // Dispatched: here if every dispatch comes here, or if this runtime's executor
        // owns it (on a shared journal).
        (self.queues_run_here() || !record.elsewhere)
            && !lock(&self.stopped).contains_key(record.id.as_str())
            && !self
                .unrecoverable
                .iter()
                .any(|e| e.workflow_id() == Some(record.id.as_str()))
    }
}

/// Runs what the journal dispatches to this runtime, and asks it to dispatch again
/// when a delay ends or a rate window moves on, until the runtime is gone.
pub(super) async fn queue_loop(
    inner: std::sync::Weak<Inner>,
    mut news: mpsc::UnboundedReceiver<QueueNews>,
) {
    let mut due: Option<i64> = None;
    loop {
        let wait = due.map(|at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0))
        });
        let next = tokio::select! {
            n = news.recv() => match n {
                Some(n) => Some(n),
                None => return,
            },
            () = sleep_or_never(wait) => None,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        match next {
            Some(QueueNews::Dispatched(list)) => inner.launch_dispatched(list),
            Some(QueueNews::DueAt(at)) => due = Some(due.map_or(at, |d| d.min(at))),
            None => {
                due = None;
                let ack = inner.store.dispatch();
                if let Err(e) = ack.await {
                    tracing::warn!("cannot dispatch the queues: {e}");
                }
            }
        }
    }
}

/// How often [`queued_watch`] reads the outcomes of the workflows it watches.
const QUEUED_WATCH: Duration = Duration::from_millis(100);

/// Publishes the outcomes of the queued workflows `ids` sends (see
/// [`Inner::watch_queued`]) that another runtime records. A workflow launched here
/// (its run publishes), or no longer watched by any handle, is dropped.
async fn queued_watch(inner: std::sync::Weak<Inner>, mut ids: mpsc::UnboundedReceiver<Arc<str>>) {
    let mut watched: Vec<Arc<str>> = Vec::new();
    loop {
        if watched.is_empty() {
            match ids.recv().await {
                Some(id) => watched.push(id),
                None => return,
            }
        }
        tokio::time::sleep(QUEUED_WATCH).await;
        while let Ok(id) = ids.try_recv() {
            watched.push(id);
        }
        let Some(rt) = inner.upgrade() else { return };
        if rt.closing.load(Ordering::Acquire) {
            return;
        }
        {
            let mut waiting = lock(&rt.waiting);
            watched.retain(|id| match waiting.get(id) {
                Some(tx) if tx.receiver_count() > 0 => true,
                Some(_) => {
                    waiting.remove(id);
                    false
                }
                None => false,
            });
        }
        if watched.is_empty() {
            continue;
        }
        let (store, ask) = (rt.store.clone(), watched.clone());
        let path = rt.store.path().to_owned();
        let read = crate::journal::blocking(&path, move || store.finished_among(&ask)).await;
        match read.and_then(|r| r) {
            Ok(records) => {
                for record in records {
                    let id = record.id.clone();
                    watched.retain(|w| **w != *id);
                    if let Some(tx) = lock(&rt.waiting).remove(id.as_str()) {
                        let outcome = super::registry::recorded_outcome(&path, record);
                        tx.send_replace(Some(Arc::new(outcome)));
                    }
                }
            }
            Err(e) if e.kind() == crate::StoreErrorKind::Closed => return,
            Err(e) => {
                tracing::debug!("watching queued workflows another runtime may run: {e}");
            }
        }
    }
}

async fn sleep_or_never(wait: Option<Duration>) {
    match wait {
        Some(w) => tokio::time::sleep(w).await,
        None => std::future::pending().await,
    }
}

/// Checks the queues a runtime is built with: valid, and each name once.
pub(super) fn declared_queues(queues: &[Queue]) -> Result<HashMap<Arc<str>, Queue>> {
    let mut out = HashMap::new();
    for q in queues {
        if let Some(e) = q.invalid() {
            return Err(e);
        }
        if out.insert(q.name.clone(), q.clone()).is_some() {
            return Err(q.error("declared twice: give each queue to the builder once"));
        }
    }
    Ok(out)
}
