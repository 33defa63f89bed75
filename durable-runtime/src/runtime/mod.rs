//! The runtime: opens the journal, recovers pending workflows, starts and drives runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::codec::Codec;
use crate::engine::call::WorkflowCall;
use crate::engine::replay::encode_value;
use crate::error::{Error, Location, Result, undecodable};
use crate::journal::{JournalOptions, JournalSpec, NewMessage, Wait, WaitFor, blocking};
use crate::util::{lock, now_ms};

mod builder;
mod commands;
mod dormant;
mod fork;
mod handle;
mod health;
mod queue;
mod queued_call;
mod registry;
mod retention;
mod schedule;

pub use crate::journal::{AttemptTime, StepInfo};
pub use builder::RuntimeBuilder;
pub use handle::{WorkflowHandle, WorkflowStatus};
pub use health::Health;
pub use queue::{Enqueue, OnDuplicate, Queue, QueueHandle, QueueInfo, QueuedWorkflow};
pub use queued_call::{enqueue, enqueue_with};
pub(crate) use registry::Inner;
use registry::*;
pub(crate) use registry::{refuse_in_workflow, validate_id};
pub(crate) use retention::cutoff as retention_cutoff;
pub use schedule::{ManualClock, Schedule, ScheduleHandle, ScheduleInfo, Tick};

/// The durable-execution runtime: owns one journal and runs the workflows in it.
///
/// Opening a runtime resumes every workflow the journal holds as pending (started but
/// not finished, for example because the process was killed). Clones share the same
/// runtime. It needs a tokio runtime (multi-threaded or current-thread) to run on.
///
/// Workflows run as tokio tasks. To stop, call [`close`](Runtime::close): it takes no
/// new work, lets running steps finish (within a grace period), commits what is queued
/// and releases the journal, so it can be opened again at once, in this process or
/// another.
///
/// Dropping the last `Runtime` handle without closing it does not stop its workflows:
/// they go on, and the journal stays locked until the last of them has finished and
/// the writer has committed what was queued (a workflow that waits for days keeps it
/// locked for days). Shutting the tokio runtime down, or the process exiting, stops
/// them where they are: to the journal that is a crash, and the next open resumes
/// them.
#[derive(Clone, Debug)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Opens the journal at `path` with default options and resumes every pending
    /// workflow. See [`RuntimeBuilder::open`].
    ///
    /// `path` is a SQLite file, or, with the `postgres` cargo feature, a PostgreSQL URL
    /// (`postgres://user:password@host:port/database`, see `RuntimeBuilder::postgres`).
    pub async fn open(path: impl AsRef<Path>) -> Result<Runtime> {
        Runtime::builder(path).open().await
    }

    /// Options for opening the journal at `path`: a SQLite file, or a PostgreSQL URL
    /// (see [`open`](Runtime::open)).
    pub fn builder(path: impl AsRef<Path>) -> RuntimeBuilder {
        RuntimeBuilder {
            journal: JournalSpec::new(path.as_ref()),
            options: JournalOptions::default(),
            app_version: None,
            evict_parked_after: Some(RuntimeBuilder::DEFAULT_EVICT_PARKED_AFTER),
            queues: Vec::new(),
            schedule_clock: None,
            retain_finished: None,
            states: crate::state::States::default(),
            state_twice: None,
            trace_values: false,
            #[cfg(feature = "testkit")]
            instrument: None,
        }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        self.inner.store.path()
    }

    /// Stops this runtime and releases its journal: takes no new work (starts, sends,
    /// cancels and resumes return [`Error::Closed`]), lets every running step body
    /// finish and its checkpoint commit, stops each workflow at that step boundary
    /// (waiting ones at once), commits what is queued, and releases the journal's lock.
    /// When it returns, the journal can be opened again, here or in another process.
    ///
    /// Stopped workflows are not finished: they stay pending in the journal, their
    /// handles return [`Error::Stopped`], and the next open resumes them from their last
    /// checkpoint. Step bodies still running after 10 seconds are no longer polled, as in
    /// a crash, and their steps run again at the next open; see
    /// [`close_with_grace`](Runtime::close_with_grace) for another limit. (An async body
    /// stops at its next `.await`; work it handed to a thread, such as
    /// `spawn_blocking`, goes on until it returns, possibly while the next runtime runs
    /// the step again.)
    ///
    /// The close runs in a task of its own: a caller that stops waiting (a timeout) does
    /// not leave it half done, and every call waits for the same close.
    ///
    /// ```
    /// use durable_runtime::{Runtime, recv, workflow};
    ///
    /// #[workflow]
    /// async fn waits_for_go() -> Option<u32> {
    ///     recv::<u32>("go", None).await.ok().flatten()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("journal.db");
    /// let rt = Runtime::open(&path).await?;
    /// rt.start_with_id("w", waits_for_go()).await?;
    /// rt.close().await?;
    ///
    /// // At once, the journal opens again, and the waiting workflow resumes.
    /// let rt = Runtime::open(&path).await?;
    /// assert_eq!(rt.recovered(), ["w"]);
    /// rt.send("w", "go", &7u32).await?;
    /// assert_eq!(rt.handle::<Option<u32>>("w").await?.result().await?, Some(7));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unrecorded`] inside a workflow body or a step body of this runtime (it
    /// would wait for itself), [`Error::Store`] if the journal could not be written at
    /// the end. Closing a closed runtime does nothing.
    pub async fn close(&self) -> Result<()> {
        self.close_with_grace(CLOSE_GRACE).await
    }

    /// [`close`](Runtime::close), letting running step bodies take up to `grace` to
    /// finish before they are dropped.
    ///
    /// # Draining a service at SIGTERM
    ///
    /// A deploy sends SIGTERM, waits a grace period (Kubernetes: 30 s by default), then
    /// kills. In that time the service stops taking requests, lets what runs reach a
    /// checkpoint, and exits; the next process resumes the rest at once. Give `close`
    /// a grace shorter than the platform's, so the journal is released before the
    /// kill:
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use durable_runtime::Runtime;
    ///
    /// /// SIGTERM (a deploy, `docker stop`) or Ctrl-C.
    /// async fn shutdown_signal() {
    ///     let ctrl_c = tokio::signal::ctrl_c();
    ///     let mut term =
    ///         tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    ///             .expect("a SIGTERM handler");
    ///     tokio::select! {
    ///         _ = ctrl_c => {}
    ///         _ = term.recv() => {}
    ///     }
    /// }
    ///
    /// # async fn serve(_rt: &Runtime) {}
    /// #[tokio::main]
    /// async fn main() -> Result<(), durable_runtime::Error> {
    ///     let rt = Runtime::open("service.db").await?;
    ///     // Serve until the signal: the HTTP server stops accepting, and finishes the
    ///     // requests it has (axum: `serve(..).with_graceful_shutdown(shutdown_signal())`).
    ///     tokio::select! {
    ///         _ = serve(&rt) => {}
    ///         _ = shutdown_signal() => {}
    ///     }
    ///     // Steps running now finish and checkpoint (up to 20 s); waiting workflows
    ///     // stay pending, and the next process resumes every one of them.
    ///     rt.close_with_grace(Duration::from_secs(20)).await
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`close`](Runtime::close).
    pub async fn close_with_grace(&self, grace: Duration) -> Result<()> {
        refuse_in_workflow(
            "`Runtime::close`",
            "close the runtime from outside its workflows",
        )?;
        if let Some(step) = crate::engine::scope::step_context()
            && lock(&self.inner.running).contains_key(step.workflow_id())
        {
            return Err(Error::Unrecorded {
                workflow_id: step.workflow_id().to_owned(),
                operation: "`Runtime::close`".to_owned(),
                problem: "was called in a step body of a workflow this runtime runs, and would \
                          wait for that step to finish",
                hint: "close the runtime from outside its workflows",
            });
        }
        let mut done = {
            let mut slot = lock(&self.inner.close);
            match &*slot {
                Some(done) => done.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        let closed = inner.close(grace).await;
                        tx.send_replace(Some(closed));
                    });
                    *slot = Some(rx.clone());
                    rx
                }
            }
        };
        let closed = match done.wait_for(Option::is_some).await {
            Ok(closed) => closed.clone(),
            Err(_) => None,
        };
        closed.unwrap_or_else(|| Err(closed_error(self.path())))
    }

    /// How many transactions this runtime has committed to the journal: one per
    /// sequential step, with concurrent steps sharing commits (plus one to start and one
    /// to finish each workflow). For the benchmarks (the `bench` feature); not API.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub fn journal_commits(&self) -> u64 {
        self.inner.store.commits()
    }

    /// How many workflows of this runtime are dormant now: parked long enough that
    /// their state was dropped from memory (see
    /// [`RuntimeBuilder::evict_parked_after`]). For tests and benchmarks; not API.
    #[doc(hidden)]
    pub fn dormant_count(&self) -> usize {
        self.inner.dormancy.count()
    }

    /// The ids of the pending workflows this runtime resumed when it opened.
    pub fn recovered(&self) -> &[String] {
        &self.inner.recovered
    }

    /// Pending workflows this runtime could not resume when it opened (their workflow is
    /// not linked into this program); they stay pending in the journal.
    pub fn unrecoverable(&self) -> &[Error] {
        &self.inner.unrecoverable
    }

    /// Starts `call` under a generated id. See [`start_with_id`](Self::start_with_id).
    pub async fn start<O>(&self, call: WorkflowCall<O>) -> Result<WorkflowHandle<O>> {
        self.start_with_id(crate::util::random_id(), call).await
    }

    /// Starts `call` as workflow `id`, unless `id` already exists.
    ///
    /// The run is journaled before this returns: if the process dies afterwards, the next
    /// [`Runtime::open`] resumes it. If `id` already exists, running or finished, in this
    /// process or recorded in the journal, nothing runs again: the handle is for the
    /// existing run (and its recorded input, not this call's).
    ///
    /// Child workflows get ids of the form `<parent id>/<path>` (`order-42/3`). If one of
    /// yours takes such an id first, the parent that would start that child stops with
    /// [`Error::ChildIdTaken`] rather than take your workflow for its child: give your
    /// workflows ids of another shape if their parents could collide with them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] for an empty or oversized id,
    /// [`Error::Encode`] if the input does not encode, [`Error::WorkflowMismatch`] if
    /// `id` belongs to another workflow, [`Error::Unrecorded`] inside a workflow body
    /// (await the call instead: it runs as a child), [`Error::Closed`] after
    /// [`close`](Runtime::close), [`Error::Store`] if the journal cannot be written.
    pub async fn start_with_id<O>(
        &self,
        id: impl Into<String>,
        call: WorkflowCall<O>,
    ) -> Result<WorkflowHandle<O>> {
        refuse_in_workflow(
            "`Runtime::start`",
            "await the workflow call instead (it runs as a child workflow, recorded), or use \
             `start_child`; to start an unrelated workflow, do it in a step",
        )?;
        self.inner.open()?;
        let id: Arc<str> = Arc::from(validate_id(id.into())?);
        let launch = call.into_launch(&id, None, self.inner.codec)?;
        let outcome = self.inner.start(id.clone(), launch).await?;
        Ok(WorkflowHandle::new(id, outcome))
    }

    /// A handle to workflow `id`, running or finished, started by this runtime or found
    /// in the journal (for example a child workflow, or one started by an earlier
    /// process). `O` is the workflow's return type.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the journal has no workflow `id`, [`Error::Store`] if it
    /// cannot be read.
    pub async fn handle<O>(&self, id: &str) -> Result<WorkflowHandle<O>> {
        let outcome = self.inner.outcome_of(id).await?;
        Ok(WorkflowHandle::new(Arc::from(id), outcome))
    }

    /// Cancels workflow `id` and every workflow it started as a child, recursively.
    ///
    /// A cancelled workflow stops at its next step boundary: a step body that is
    /// running finishes and its result is recorded, and no further step starts. One that
    /// is sleeping or waiting (for a message, an event or a child) stops at once. The
    /// cancellation is recorded: the workflow is not resumed when the journal is opened
    /// again, and its handles return [`Error::Cancelled`]. [`resume`](Self::resume)
    /// continues it.
    ///
    /// Cancelling a workflow that has already finished changes nothing.
    ///
    /// ```
    /// use durable_runtime::{Error, Runtime, recv, workflow};
    ///
    /// #[workflow]
    /// async fn waits() -> Option<u32> {
    ///     recv::<u32>("go", None).await.ok().flatten()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// let h = rt.start_with_id("job-1", waits()).await?;
    /// rt.cancel("job-1").await?;
    /// assert!(matches!(h.result().await, Err(Error::Cancelled { .. })));
    ///
    /// // Resuming continues it; this time the message comes.
    /// rt.resume("job-1").await?;
    /// rt.send("job-1", "go", &7u32).await?;
    /// assert_eq!(rt.handle::<Option<u32>>("job-1").await?.result().await?, Some(7));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the journal has no workflow `id`, [`Error::Store`] if the
    /// journal cannot be written, [`Error::Closed`] if the runtime is closing.
    pub async fn cancel(&self, id: &str) -> Result<()> {
        refuse_in_workflow(
            "`Runtime::cancel`",
            "cancel it from a step, whose result is recorded",
        )?;
        self.inner.open()?;
        self.inner.cancel_by_id(id).await
    }

    /// Continues a cancelled or failed workflow from its last recorded step, with its
    /// cancelled children (also those cancelled on their own, whose cancellation the
    /// parent may have recorded already).
    ///
    /// Recorded step outputs replay as usual. What a failed workflow recorded as its
    /// failure is dropped first: a step that panicked, or that was interrupted with
    /// `on_interrupt = "fail"`, runs again. The workflow's deadline, if it had one, is
    /// removed. See [`cancel`](Self::cancel) for an example.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the journal has no workflow `id`, [`Error::NotResumable`]
    /// if it is pending or completed, [`Error::UnknownWorkflow`] if its workflow is not
    /// linked into this program, [`Error::Store`] if the journal cannot be written,
    /// [`Error::Closed`] if the runtime is closing. (A resume the journal recorded just
    /// before a [`close`](Self::close) returns `Ok`: the workflow runs at the next open.)
    pub async fn resume(&self, id: &str) -> Result<()> {
        refuse_in_workflow(
            "`Runtime::resume`",
            "resume it from a step, whose result is recorded",
        )?;
        self.inner.open()?;
        self.inner.resume(id).await
    }

    /// Sends `value` to workflow `destination` on `topic`, from outside any workflow.
    /// Inside a workflow, use [`send`](crate::send), which is recorded.
    ///
    /// The message is durable when this returns. Messages wait, per destination and
    /// topic, in the order they were sent, until a [`recv`](crate::recv) of that
    /// workflow takes them, even if the destination has not started yet. A workflow
    /// waiting for one in this process wakes at once. See [`recv`](crate::recv) for an
    /// example.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] for a malformed destination, [`Error::Encode`] if the value
    /// does not encode, [`Error::Store`] if the journal cannot be written.
    pub async fn send<T: Serialize + DeserializeOwned>(
        &self,
        destination: &str,
        topic: &str,
        value: &T,
    ) -> Result<()> {
        refuse_in_workflow(
            "`Runtime::send`",
            "use `durable_runtime::send`, which records the send so a replay does not send again",
        )?;
        self.inner.open()?;
        let destination = validate_id(destination.to_owned())?;
        let payload = encode_value(self.inner.codec, value, || {
            format!("the message on topic `{topic}`")
        })?;
        let message = NewMessage {
            destination,
            topic: topic.to_owned(),
            payload,
            sent_at: now_ms(),
        };
        self.inner.acked(self.inner.store.send(message)).await
    }

    /// Waits up to `timeout` (or for ever, with `None`) for workflow `workflow_id` to
    /// set event `key`, and returns its value; `None` if the time ran out. Returns at
    /// once if the event is set already, and wakes at once when a workflow of this
    /// process sets it. Inside a workflow, use [`get_event`](crate::get_event), which is
    /// recorded. See [`set_event`](crate::set_event) for an example.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the value does not decode as `T`, [`Error::Store`] if the
    /// journal cannot be read.
    pub async fn get_event<T: Serialize + DeserializeOwned>(
        &self,
        workflow_id: &str,
        key: &str,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<Option<T>> {
        refuse_in_workflow(
            "`Runtime::get_event`",
            "use `durable_runtime::get_event`, which records the value it saw",
        )?;
        let timeout = timeout.into();
        let ack = self.inner.store.wait(Wait {
            what: WaitFor::Event {
                workflow_id: workflow_id.to_owned(),
                key: key.to_owned(),
            },
            record: None,
            park: timeout != Some(Duration::ZERO),
        });
        let answer = match timeout {
            // Zero: the journal answers at once, without parking, with the value as it
            // is; wait for that answer however busy the writer is.
            None | Some(Duration::ZERO) => ack.await,
            Some(t) => match tokio::time::timeout(t, ack).await {
                Ok(answer) => answer,
                Err(_) => return Ok(None),
            },
        };
        answer
            .map_err(|e| self.inner.closed_or(e))?
            .map(|b| {
                Codec::decode(&b).map_err(|reason| {
                    undecodable::<T>(
                        workflow_id,
                        Location::Event {
                            key: key.to_owned(),
                        },
                        reason,
                    )
                })
            })
            .transpose()
    }

    /// Reads the whole journal looking for damage, and reports it per workflow where it
    /// can: the journal's own consistency check (on SQLite, its full
    /// `integrity_check`: every page, every index against its rows), every recorded
    /// value against its checksum, every step against its workflow. Empty when nothing
    /// is damaged.
    ///
    /// Every open already checks what recovery relies on (the pending workflows and
    /// their index) and every read checks the values it returns; this looks at the
    /// rest, such as finished workflows nobody reads. It reads every page, so it takes
    /// time in proportion to the journal's size, and changes nothing.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> durable_runtime::Result<()> {
    /// let rt = durable_runtime::Runtime::open("journal.db").await?;
    /// let damage = rt.check().await?;
    /// for d in &damage {
    ///     eprintln!("damaged: {d}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check(&self) -> Result<Vec<crate::Damage>> {
        let store = self.inner.store.clone();
        Ok(blocking(self.path(), move || store.check()).await??)
    }

    /// The names of the workflows linked into this program, sorted: what a runtime
    /// opened here can run and resume. Fails as [`open`](Self::open) would if two
    /// `#[workflow]` functions share a name; call it in a test to catch that before a
    /// deploy rather than at the open.
    ///
    /// ```
    /// use durable_runtime::{Runtime, workflow};
    ///
    /// #[workflow]
    /// async fn registry_checked_nightly_report() -> u32 {
    ///     0
    /// }
    ///
    /// let names = Runtime::check_registry().expect("no two workflows share a name");
    /// assert!(names.contains(&"registry_checked_nightly_report"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateWorkflowName`] naming the name two workflows share.
    pub fn check_registry() -> Result<Vec<&'static str>> {
        let mut names: Vec<&'static str> =
            crate::engine::workflow::registry()?.into_keys().collect();
        names.sort_unstable();
        Ok(names)
    }

    /// The recorded steps of workflow `id`, ordered by path: what a replay would return
    /// without running their bodies. Empty if the workflow is unknown or recorded none.
    pub async fn steps(&self, id: &str) -> Result<Vec<StepInfo>> {
        let store = self.inner.store.clone();
        let workflow_id = id.to_owned();
        let id = workflow_id.clone();
        let steps = blocking(self.path(), move || store.steps(&id)).await??;
        Ok(steps
            .into_iter()
            // The store refuses a damaged record: every record it returns is intact.
            .map(|s| StepInfo::new(&workflow_id, s, true))
            .collect())
    }

    /// Workflow run `id` as the journal holds it now: its name, status, input, output
    /// or failure, times and parent, whichever runtime of the journal runs it; `None`
    /// if the journal has no such run. The same view as
    /// [`Client::workflow`](crate::Client::workflow), without a second connection.
    ///
    /// ```
    /// use durable_runtime::{RecordedStatus, Runtime, workflow};
    ///
    /// #[workflow]
    /// async fn double(n: u32) -> u32 {
    ///     n * 2
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// rt.start_with_id("d-1", double(21)).await?.result().await?;
    /// let run = rt.workflow("d-1").await?.expect("recorded");
    /// assert_eq!(run.status, RecordedStatus::Completed);
    /// assert_eq!(run.input::<(u32,)>()?, (21,));
    /// assert!(rt.workflow("d-2").await?.is_none());
    /// # rt.close().await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub async fn workflow(&self, id: &str) -> Result<Option<crate::WorkflowView>> {
        let store = self.inner.store.clone();
        let id = id.to_owned();
        Ok(blocking(self.path(), move || store.view(&id)).await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, step, workflow};

    #[step(crate = crate)]
    async fn echo(x: u32) -> u32 {
        x
    }

    #[workflow(crate = crate)]
    async fn sequential(n: u32) -> u32 {
        let mut total = 0;
        for i in 0..n {
            total += echo(i).await;
        }
        total
    }

    #[workflow(crate = crate)]
    async fn concurrent(n: u32) -> u32 {
        let all = (0..n).map(echo);
        let mut total = 0;
        for v in futures::future::join_all(all).await {
            total += v;
        }
        total
    }

    async fn commits_for<O: Serialize + DeserializeOwned>(call: WorkflowCall<O>) -> u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = Runtime::builder(dir.path().join("j.db"))
            .durability(Durability::Normal)
            .open()
            .await
            .expect("open");
        let before = rt.inner.store.commits();
        rt.start(call)
            .await
            .expect("start")
            .result()
            .await
            .expect("result");
        rt.inner.store.commits() - before
    }

    #[tokio::test]
    async fn a_sequential_step_costs_exactly_one_commit() {
        // One for the start, one per step, one for the outcome.
        assert_eq!(commits_for(sequential(20)).await, 1 + 20 + 1);
    }

    #[tokio::test]
    async fn concurrent_steps_share_commits() {
        let commits = commits_for(concurrent(200)).await;
        // The 200 checkpoints are queued within one poll; the writer takes what is
        // queued whenever it is free, so they land in a handful of commits.
        assert!(
            commits <= 1 + 10 + 1,
            "200 concurrent steps took {commits} commits"
        );
    }
}
