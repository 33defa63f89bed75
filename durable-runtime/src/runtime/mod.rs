//! The runtime: opens the journal, recovers pending workflows, starts and drives runs.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};

use crate::Durability;
use crate::codec::Codec;
#[cfg(feature = "testkit")]
use crate::engine::context::Instrument;
use crate::engine::context::{Runs, RunsFuture, WorkflowCtx};
use crate::engine::drive::{History, execute};
use crate::engine::replay::{encode_value, recorded_result};
use crate::engine::workflow::{ErasedWorkflow, Launch, Outcome, WorkflowCall, registry};
use crate::error::{
    CancelReason, Error, Location, Result, StoreError, StoreErrorKind, undecodable,
};
use crate::journal::{
    Ack, Created, Finish, Finished, JournalOptions, JournalSpec, NewMessage, NewWorkflow,
    RecordStatus, RecordedOutcome, Store, Wait, WaitFor, WorkflowRecord, blocking,
};
use crate::path::StepPath;
use crate::util::{lock, now_ms};

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

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    running: Mutex<HashMap<Arc<str>, Running>>,
    registry: HashMap<&'static str, &'static dyn ErasedWorkflow>,
    app_version: Option<Arc<str>>,
    /// How this runtime encodes what it records.
    pub(crate) codec: Codec,
    recovered: Vec<String>,
    unrecoverable: Vec<Error>,
    /// Set by [`Runtime::close`]: no new work is taken.
    closing: std::sync::atomic::AtomicBool,
    /// The close in progress or done: started once, by the first `close`, in a task of
    /// its own (a caller that stops waiting does not leave it half done), and watched by
    /// every `close` call.
    close: Mutex<Option<watch::Receiver<Option<Result<()>>>>>,
    /// Why runs that stopped in this process without a recorded outcome (a divergence,
    /// a value that does not decode, a journal error) stopped: the journal holds them as
    /// pending, and their handles report this, not a bare "stopped".
    stopped: Mutex<HashMap<Arc<str>, Error>>,
    #[cfg(feature = "testkit")]
    instrument: Option<Arc<dyn Instrument>>,
}

/// A run this process is executing.
#[derive(Debug)]
struct Running {
    name: &'static str,
    /// The workflow that started it as its child.
    parent_id: Option<Arc<str>>,
    outcome: watch::Receiver<Option<Outcome>>,
    ctx: Arc<WorkflowCtx>,
}

/// Options for opening a [`Runtime`]; from [`Runtime::builder`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    journal: JournalSpec,
    options: JournalOptions,
    app_version: Option<String>,
    /// The testkit's probe, if one was given.
    #[cfg(feature = "testkit")]
    pub(crate) instrument: Option<Arc<dyn Instrument>>,
}

impl RuntimeBuilder {
    /// How hard each checkpoint tries to survive a crash; [`Durability::Full`] by default.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.options.durability = durability;
        self
    }

    /// How the values this runtime records are encoded; [`Codec::Cbor`] by default.
    ///
    /// Each recorded value carries its format, so this can change between runs of the
    /// same journal: what was recorded before is still read with the codec that wrote
    /// it. See [`Codec`] for what each one lets a recorded type do.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.options.codec = codec;
        self
    }

    /// A version string recorded with every workflow this runtime starts (for example
    /// your application's release), for your own inspection of the journal.
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// Opens the journal (creating it, owner-only, if it does not exist), takes its lock,
    /// and resumes every pending workflow.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if another runtime holds the journal, [`Error::Store`] if the
    /// file is not a journal or cannot be read, [`Error::DuplicateWorkflowName`] if two
    /// workflows linked into the program share a name.
    pub async fn open(self) -> Result<Runtime> {
        let registry = registry()?;
        let codec = self.options.codec;
        #[cfg_attr(not(feature = "testkit"), allow(unused_mut))]
        let mut options = self.options.clone();
        #[cfg(feature = "testkit")]
        let instrument = self.instrument.clone();
        #[cfg(feature = "testkit")]
        if let Some(i) = &instrument {
            options.halt = Some(i.halt_switch());
        }
        let journal = self.journal.clone();
        // One trip to a blocking thread: open, then list what to resume.
        let (store, pending) = blocking(self.journal.path(), move || {
            #[cfg_attr(not(feature = "testkit"), allow(unused_mut))]
            let mut store = journal.open(&options)?;
            #[cfg(feature = "testkit")]
            if let Some(i) = instrument {
                store = i.wrap(store);
            }
            let pending = store.pending_workflows()?;
            Ok::<_, Error>((store, pending))
        })
        .await??;
        let mut recovered = Vec::new();
        let mut unrecoverable = Vec::new();
        let mut launches = Vec::new();
        for record in pending {
            let deadline_at = record.deadline_at;
            if let Some(e) = record.damage() {
                tracing::warn!("{e}; it stays pending");
                unrecoverable.push(e);
                continue;
            }
            match registry.get(record.name.as_str()) {
                Some(def) => {
                    recovered.push(record.id.clone());
                    let parent = record.parent_id.map(Arc::<str>::from);
                    launches.push((
                        Arc::<str>::from(record.id),
                        *def,
                        record.input,
                        deadline_at,
                        parent,
                    ));
                }
                None => {
                    let e = Error::UnknownWorkflow {
                        workflow_id: record.id,
                        name: record.name,
                    };
                    tracing::warn!("{e}; it stays pending");
                    unrecoverable.push(e);
                }
            }
        }
        let inner = Arc::new(Inner {
            store,
            running: Mutex::new(HashMap::new()),
            registry,
            app_version: self.app_version.map(Arc::from),
            codec,
            #[cfg(feature = "testkit")]
            instrument: self.instrument,
            recovered,
            unrecoverable,
            closing: std::sync::atomic::AtomicBool::new(false),
            stopped: Mutex::default(),
            close: Mutex::default(),
        });
        // Every resumed run is in `running` before any of them runs: a parent resuming
        // its child's call must find the child's run, not start a second one.
        let runs: Vec<_> = {
            let mut running = lock(&inner.running);
            launches
                .into_iter()
                .map(|(id, def, input, deadline_at, parent)| {
                    tracing::info!(workflow = %id, name = def.name(), "resuming pending workflow");
                    let (ctx, tx) = inner.register(&mut running, &id, def.name(), parent);
                    (ctx, def, input, deadline_at, tx)
                })
                .collect()
        };
        for (ctx, def, input, deadline_at, tx) in runs {
            let run = drive(
                inner.clone(),
                ctx,
                def,
                input,
                History::Journaled,
                deadline_at,
                tx,
            );
            tokio::spawn(run);
        }
        Ok(Runtime { inner })
    }
}

impl Runtime {
    /// Opens the journal at `path` with default options and resumes every pending
    /// workflow. See [`RuntimeBuilder::open`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Runtime> {
        Runtime::builder(path).open().await
    }

    /// Options for opening the journal at `path`.
    pub fn builder(path: impl AsRef<Path>) -> RuntimeBuilder {
        RuntimeBuilder {
            journal: JournalSpec::Sqlite(path.as_ref().to_owned()),
            options: JournalOptions::default(),
            app_version: None,
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
        if self
            .inner
            .cancel_recorded(id, CancelReason::Requested)
            .await?
        {
            return Ok(());
        }
        // Not pending: finished already (cancelling it does nothing), or not there.
        match self.inner.record(id).await? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound {
                workflow_id: id.to_owned(),
            }),
        }
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
            None => ack.await,
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

    /// The recorded steps of workflow `id`, ordered by path: what a replay would return
    /// without running their bodies. Empty if the workflow is unknown or recorded none.
    pub async fn steps(&self, id: &str) -> Result<Vec<StepInfo>> {
        let store = self.inner.store.clone();
        let workflow_id: Arc<str> = Arc::from(id);
        let id = workflow_id.clone();
        let steps = blocking(self.path(), move || store.steps(&id)).await??;
        Ok(steps
            .into_iter()
            .map(|s| StepInfo {
                path: s.path,
                name: s.name,
                panicked: !matches!(s.outcome, RecordedOutcome::Output(_)),
                attempts: s.attempts,
                started_at_ms: s.started_at,
                finished_at_ms: s.finished_at,
                workflow_id: workflow_id.clone(),
                args: s.args,
                outcome: s.outcome,
            })
            .collect())
    }
}

/// How long [`Runtime::close`] lets running step bodies take.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

impl Runs for Inner {
    fn launch(
        self: Arc<Self>,
        id: Arc<str>,
        launch: Launch,
    ) -> RunsFuture<'static, watch::Receiver<Option<Outcome>>> {
        Box::pin(async move { Inner::start(&self, id, launch).await })
    }

    fn watch<'a>(&'a self, id: &'a str) -> RunsFuture<'a, watch::Receiver<Option<Outcome>>> {
        Box::pin(Inner::outcome_of(self, id))
    }

    fn cancel_run<'a>(&'a self, id: &'a str, reason: CancelReason) -> RunsFuture<'a, ()> {
        Box::pin(Inner::cancel(self, id, reason))
    }
}

impl Inner {
    /// [`Error::Closed`] once the runtime is closing.
    fn open(&self) -> Result<()> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Closed {
                path: self.store.path().to_owned(),
            });
        }
        Ok(())
    }

    /// See [`Runtime::close_with_grace`].
    async fn close(&self, grace: Duration) -> Result<()> {
        self.closing.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        // Runs admitted before the flag was set may still register; look until none is
        // left. Each is asked to stop at its next step boundary, then, after the grace
        // period, at once.
        loop {
            let runs: Vec<_> = lock(&self.running)
                .values()
                .map(|r| (r.ctx.clone(), r.outcome.clone()))
                .collect();
            if runs.is_empty() {
                break;
            }
            let forced = tokio::time::Instant::now() >= deadline;
            for (ctx, _) in &runs {
                ctx.shut_down(forced);
            }
            let all_settled = async {
                for (_, mut outcome) in runs {
                    let _ = outcome.wait_for(Option::is_some).await;
                }
            };
            let limit = if forced {
                tokio::time::Instant::now() + Duration::from_secs(1)
            } else {
                deadline
            };
            if tokio::time::timeout_at(limit, all_settled).await.is_err() && forced {
                tracing::warn!(
                    "runs did not stop within a second of being dropped; closing the journal anyway"
                );
                break;
            }
        }
        let store = self.store.clone();
        blocking(self.store.path(), move || store.close()).await??;
        Ok(())
    }

    /// Publishes a run's outcome and forgets the run.
    fn settle(&self, id: &Arc<str>, tx: &watch::Sender<Option<Outcome>>, outcome: Outcome) {
        // Both under the lock: whoever looks at `running` next sees either the entry with
        // its outcome published, or no entry; a waiter woken by the outcome finds the
        // entry gone.
        let mut running = lock(&self.running);
        {
            let mut stopped = lock(&self.stopped);
            match &*outcome {
                Err(
                    e @ (Error::Divergence { .. }
                    | Error::Corrupt { .. }
                    | Error::Incompatible { .. }
                    | Error::Unrecorded { .. }
                    | Error::ChildIdTaken { .. }
                    | Error::UnknownWorkflow { .. }
                    | Error::Store(_)),
                ) => {
                    stopped.insert(id.clone(), e.clone());
                }
                _ => {
                    stopped.remove(id);
                }
            }
        }
        tx.send_replace(Some(outcome));
        running.remove(id);
    }

    /// Adds a run to `running` (locked by the caller, who made sure the id is free) and
    /// makes its context.
    fn register(
        self: &Arc<Self>,
        running: &mut HashMap<Arc<str>, Running>,
        id: &Arc<str>,
        name: &'static str,
        parent_id: Option<Arc<str>>,
    ) -> (Arc<WorkflowCtx>, watch::Sender<Option<Outcome>>) {
        let (run, ctx, tx) = self.new_run(id, name, parent_id);
        running.insert(id.clone(), run);
        (ctx, tx)
    }

    /// A run's entry in `running`, its context, and where its outcome is published.
    fn new_run(
        self: &Arc<Self>,
        id: &Arc<str>,
        name: &'static str,
        parent_id: Option<Arc<str>>,
    ) -> (Running, Arc<WorkflowCtx>, watch::Sender<Option<Outcome>>) {
        // A new run of this id: why an earlier one stopped no longer says anything.
        lock(&self.stopped).remove(id);
        let (tx, rx) = watch::channel(None);
        #[cfg_attr(not(feature = "testkit"), allow(unused_mut))]
        let mut ctx = WorkflowCtx::new(
            id.clone(),
            self.store.clone(),
            Some(Arc::downgrade(&(self.clone() as Arc<dyn Runs>))),
            self.codec,
        );
        #[cfg(feature = "testkit")]
        {
            ctx.instrument = self.instrument.clone();
        }
        let ctx = Arc::new(ctx);
        let run = Running {
            name,
            parent_id,
            outcome: rx,
            ctx: ctx.clone(),
        };
        (run, ctx, tx)
    }

    /// Starts `launch` as workflow `id`, unless `id` exists (see
    /// [`Runtime::start_with_id`]); returns what its handles watch.
    pub(crate) async fn start(
        self: &Arc<Self>,
        id: Arc<str>,
        launch: Launch,
    ) -> Result<watch::Receiver<Option<Outcome>>> {
        self.open()?;
        let name = launch.def.name();
        let (ctx, tx) = loop {
            let mut winding_down = {
                let mut running = lock(&self.running);
                // Checked again under the lock `close` looks through: a run is either
                // in `running` before `close` looks, or refused.
                self.open()?;
                match running.entry(id.clone()) {
                    Entry::Vacant(v) => {
                        let (run, ctx, tx) = self.new_run(&id, name, launch.parent_id.clone());
                        v.insert(run);
                        break (ctx, tx);
                    }
                    Entry::Occupied(e) if e.get().ctx.cancelled().is_none() => {
                        let r = e.get();
                        if let Some(parent) = &launch.parent_id
                            && r.parent_id.as_ref() != Some(parent)
                        {
                            return Err(child_taken(&id, parent));
                        }
                        if r.name != name {
                            return Err(mismatch(&id, r.name, name));
                        }
                        return Ok(r.outcome.clone());
                    }
                    // A run winding down from a cancellation is not the run to join:
                    // what it ends with is its cancellation, while the journal may hold
                    // it resumed by now. Let it end, then look again.
                    Entry::Occupied(e) => e.get().outcome.clone(),
                }
            };
            let _ = winding_down.wait_for(Option::is_some).await;
        };
        let outcome = tx.subscribe();
        // The id is now claimed in `running`. The rest happens in a task of its own, so
        // a caller that stops waiting (a timeout, a dropped request) cannot leave the
        // claim behind without a run.
        let (reply, admitted) = oneshot::channel();
        tokio::spawn(admit(self.clone(), ctx, launch, tx, reply));
        match admitted.await {
            Ok(Ok(())) => Ok(outcome),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Stopped {
                workflow_id: id.to_string(),
            }),
        }
    }

    /// What a handle of workflow `id` watches: its run in this process, or its recorded
    /// outcome.
    pub(crate) async fn outcome_of(&self, id: &str) -> Result<watch::Receiver<Option<Outcome>>> {
        if let Some(r) = lock(&self.running).get(id) {
            return Ok(r.outcome.clone());
        }
        let record = self.record(id).await?.ok_or_else(|| Error::NotFound {
            workflow_id: id.to_owned(),
        })?;
        let (tx, rx) = watch::channel(None);
        match record.status {
            // Pending but not running here: it could not be resumed (see
            // `Runtime::unrecoverable`); the handle reports it as stopped, or as damaged.
            RecordStatus::Pending => {
                let why = record
                    .damage()
                    .or_else(|| lock(&self.stopped).get(id).cloned());
                match why {
                    Some(e) => drop(tx.send_replace(Some(Arc::new(Err(e))))),
                    None => drop(tx),
                }
            }
            _ => {
                tx.send_replace(Some(Arc::new(recorded_outcome(self.store.path(), record))));
            }
        }
        Ok(rx)
    }

    /// Workflow `id` as the journal holds it.
    pub(crate) async fn record(&self, id: &str) -> Result<Option<WorkflowRecord>> {
        let store = self.store.clone();
        let id = id.to_owned();
        let read = blocking(self.store.path(), move || store.workflow(&id)).await?;
        read.map_err(|e| self.closed_or(e))
    }

    /// The reply to one write, waited for.
    async fn acked<T>(&self, ack: Ack<T>) -> Result<T> {
        ack.await.map_err(|e| self.closed_or(e))
    }

    /// A store error as the caller should see it: the journal closed under a call
    /// because this runtime is closing is [`Error::Closed`], as if the call had come a
    /// moment later.
    fn closed_or(&self, e: StoreError) -> Error {
        if e.kind() == StoreErrorKind::Closed && self.closing.load(Ordering::Acquire) {
            return Error::Closed {
                path: self.store.path().to_owned(),
            };
        }
        e.into()
    }

    /// Records the cancellation of `id` and its pending descendants, and stops those
    /// that run in this process.
    pub(crate) async fn cancel(&self, id: &str, reason: CancelReason) -> Result<()> {
        self.cancel_recorded(id, reason).await.map(drop)
    }

    /// [`cancel`](Self::cancel), saying whether `id` itself was pending and is now
    /// cancelled.
    async fn cancel_recorded(&self, id: &str, reason: CancelReason) -> Result<bool> {
        let ids = self
            .acked(self.store.cancel(id.to_owned(), reason, now_ms()))
            .await?;
        let itself = ids.iter().any(|w| w == id);
        let running = lock(&self.running);
        for w in ids.iter().map(String::as_str).chain(std::iter::once(id)) {
            if let Some(r) = running.get(w) {
                tracing::info!(workflow = w, %reason, "cancelling workflow");
                r.ctx.cancel(reason);
            }
        }
        Ok(itself)
    }

    async fn resume(self: &Arc<Self>, id: &str) -> Result<()> {
        let record = self.record(id).await?.ok_or_else(|| Error::NotFound {
            workflow_id: id.to_owned(),
        })?;
        if !matches!(
            record.status,
            RecordStatus::Cancelled | RecordStatus::Failed
        ) {
            return Err(Error::NotResumable {
                workflow_id: id.to_owned(),
                status: record.status.as_str(),
            });
        }
        if !self.registry.contains_key(record.name.as_str()) {
            return Err(Error::UnknownWorkflow {
                workflow_id: record.id,
                name: record.name,
            });
        }
        // Runs of this family still winding down from their cancellation (a step body
        // finishing) end first: a resumed run must be the only one, and an old run must
        // not finish a row that is pending again. Children's ids start with their
        // parent's and a `/`.
        let family = format!("{id}/");
        let winding: Vec<_> = lock(&self.running)
            .iter()
            .filter(|(w, r)| (&***w == id || w.starts_with(&family)) && r.ctx.cancelled().is_some())
            .map(|(_, r)| r.outcome.clone())
            .collect();
        for mut outcome in winding {
            let _ = outcome.wait_for(Option::is_some).await;
        }
        let ids = self
            .acked(self.store.resume(id.to_owned(), now_ms()))
            .await?;
        // The resume is durable from here: each workflow it made pending runs now, or,
        // if the runtime closes meanwhile, at the next open. Either way the resume
        // happened, and says so.
        for w in ids {
            let record = match self.record(&w).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(_) if self.closing.load(Ordering::Acquire) => return Ok(()),
                Err(e) => return Err(e),
            };
            if let Some(e) = record.damage() {
                tracing::warn!("{e}; it stays pending");
                continue;
            }
            let Some(def) = self.registry.get(record.name.as_str()).copied() else {
                tracing::warn!(workflow = %w, name = %record.name, "resumed, but its workflow is not linked into this program; it stays pending");
                continue;
            };
            let id: Arc<str> = Arc::from(w);
            let mut running = lock(&self.running);
            if self.closing.load(Ordering::Acquire) {
                // Under the lock `close` looks through: it either sees this run and
                // stops it, or the run is left to the next open.
                return Ok(());
            }
            if running.contains_key(&id) {
                // Started meanwhile (a resumed parent's replay starts its children):
                // one run only.
                continue;
            }
            let parent = record.parent_id.map(Arc::<str>::from);
            let (ctx, tx) = self.register(&mut running, &id, def.name(), parent);
            drop(running);
            tracing::info!(workflow = %id, "resuming workflow");
            let run = drive(
                self.clone(),
                ctx,
                def,
                record.input,
                History::Journaled,
                None,
                tx,
            );
            tokio::spawn(run);
        }
        Ok(())
    }
}

/// Journals a new run (or finds the existing one), replies to the caller of
/// `start_with_id` if it is still waiting, and then drives the run in this same task.
async fn admit(
    inner: Arc<Inner>,
    ctx: Arc<WorkflowCtx>,
    launch: Launch,
    tx: watch::Sender<Option<Outcome>>,
    reply: oneshot::Sender<Result<()>>,
) {
    let Launch {
        def,
        input,
        parent_id,
        deadline_at,
    } = launch;
    let id = ctx.id.clone();
    let name = def.name();
    let created = inner
        .store
        .create_workflow(NewWorkflow {
            id: id.clone(),
            name,
            input: input.clone(),
            app_version: inner.app_version.clone(),
            created_at: now_ms(),
            parent_id: parent_id.clone(),
            deadline_at,
        })
        .await;
    let run = match created {
        Ok(Created::New) => Ok(Some((input, History::None, deadline_at))),
        Ok(Created::Existing(record))
            if parent_id.is_some() && record.parent_id.as_deref() != parent_id.as_deref() =>
        {
            Err(child_taken(&id, parent_id.as_deref().unwrap_or_default()))
        }
        Ok(Created::Existing(record)) if record.name != name => {
            Err(mismatch(&id, &record.name, name))
        }
        Ok(Created::Existing(record)) => match (record.damage(), record.status) {
            (None, RecordStatus::Pending) => {
                Ok(Some((record.input, History::Journaled, record.deadline_at)))
            }
            (Some(e), _) => Err(e),
            (None, RecordStatus::Completed | RecordStatus::Failed | RecordStatus::Cancelled) => {
                let outcome = recorded_outcome(inner.store.path(), *record);
                inner.settle(&id, &tx, Arc::new(outcome));
                Ok(None)
            }
        },
        Err(e) => Err(Error::Store(e)),
    };
    if let Some(reason) = ctx.cancelled()
        && run.as_ref().is_ok_and(Option::is_some)
    {
        // Cancelled while its row was being created: the cancellation found no row to
        // mark, so record it now. The run then stops at once.
        if let Err(e) = inner.cancel(&id, reason).await {
            tracing::error!(workflow = %id, "cannot record the cancellation: {e}");
        }
    }
    match run {
        Err(e) => {
            inner.settle(&id, &tx, Arc::new(Err(e.clone())));
            // The caller may have stopped waiting; nothing runs either way.
            let _ = reply.send(Err(e));
        }
        Ok(run) => {
            // The caller may have stopped waiting; the run goes on regardless.
            let _ = reply.send(Ok(()));
            if let Some((input, history, deadline_at)) = run {
                drive(inner, ctx, def, input, history, deadline_at, tx).await;
            }
        }
    }
}

fn child_taken(id: &str, parent: &str) -> Error {
    Error::ChildIdTaken {
        workflow_id: id.to_owned(),
        parent_id: parent.to_owned(),
    }
}

fn mismatch(id: &str, existing: &str, requested: &str) -> Error {
    Error::WorkflowMismatch {
        workflow_id: id.to_owned(),
        existing: existing.to_owned(),
        requested: requested.to_owned(),
    }
}

/// What a finished run recorded as its outcome; never a value that fails its checksum.
fn recorded_outcome(path: &Path, record: WorkflowRecord) -> Result<Vec<u8>> {
    if let Some(e) = record.damage() {
        return Err(e);
    }
    match (record.status, record.output, record.failure) {
        (RecordStatus::Completed, Some(output), _) => Ok(output),
        (RecordStatus::Failed, _, Some((kind, message))) => Err(Error::Failed {
            workflow_id: record.id,
            kind,
            message,
        }),
        (RecordStatus::Cancelled, _, _) => Err(Error::Cancelled {
            workflow_id: record.id,
            reason: record.cancelled.unwrap_or(CancelReason::Requested),
        }),
        _ => Err(Error::Store(StoreError::new(
            path,
            StoreErrorKind::Invariant,
            format!(
                "workflow {} is finished but records no output or error",
                record.id
            ),
        ))),
    }
}

/// The error of a close whose task went away (its tokio runtime shut down).
fn closed_error(path: &Path) -> Error {
    Error::Store(StoreError::new(
        path,
        StoreErrorKind::Closed,
        "the close did not finish: the tokio runtime it ran on shut down",
    ))
}

/// Refuses `operation` inside a workflow body, where a replay would do it again.
fn refuse_in_workflow(operation: &'static str, hint: &'static str) -> Result<()> {
    match crate::engine::scope::current_workflow() {
        Some(ctx) => Err(Error::Unrecorded {
            workflow_id: ctx.id.to_string(),
            operation: operation.to_owned(),
            problem: "was called in a workflow body, where it is not recorded: every replay \
                      would do it again",
            hint,
        }),
        None => Ok(()),
    }
}

const MAX_ID_BYTES: usize = 512;

fn validate_id(id: String) -> Result<String> {
    let reason = if id.is_empty() {
        "a workflow id cannot be empty"
    } else if id.len() > MAX_ID_BYTES {
        "a workflow id is at most 512 bytes"
    } else if id.chars().any(char::is_control) {
        "a workflow id cannot contain control characters"
    } else {
        return Ok(id);
    };
    Err(Error::InvalidId { id, reason })
}

async fn drive(
    inner: Arc<Inner>,
    ctx: Arc<WorkflowCtx>,
    def: &'static dyn ErasedWorkflow,
    input: Vec<u8>,
    history: History,
    deadline_at: Option<i64>,
    tx: watch::Sender<Option<Outcome>>,
) {
    let id = ctx.id.clone();
    let result = execute(&ctx, def, &input, history, deadline_at).await;
    let finished = match &result {
        Ok(output) => Some(Finished::Completed(output.clone())),
        Err(Error::Failed { kind, message, .. }) => Some(Finished::Failed(*kind, message.clone())),
        // Recorded by whoever cancelled it (see `admit` for a cancel that came first).
        Err(Error::Cancelled { .. }) => None,
        // Stopped by a closing runtime: pending, resumed at the next open.
        Err(e @ (Error::Stopped { .. } | Error::Closed { .. }))
            if inner.closing.load(Ordering::Acquire) =>
        {
            tracing::info!(workflow = %id, "{e}");
            None
        }
        // Divergence, corrupt rows and journal errors leave the run pending: they are
        // fixed outside the workflow (code, data, disk), and the next open resumes it.
        Err(e) => {
            tracing::error!(workflow = %id, "{e}; the workflow stays pending in the journal");
            None
        }
    };
    let result = match finished {
        None => result,
        Some(outcome) => {
            let ack = inner.store.finish_workflow(Finish {
                id: id.clone(),
                outcome,
                at: now_ms(),
            });
            match ack.await {
                Ok(true) => result,
                // The row was not pending any more: a cancellation committed first, and
                // the journal's outcome is the one every handle must see.
                Ok(false) => match inner.record(&id).await {
                    Ok(Some(record)) => recorded_outcome(inner.store.path(), record),
                    Ok(None) => result,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e.into()),
            }
        }
    };
    inner.settle(&id, &tx, Arc::new(result));
}

/// Where a workflow run stands, as seen by a [`WorkflowHandle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkflowStatus {
    /// Running (or waiting to run) in this process.
    Running,
    /// Finished: the workflow function returned, and its return value is recorded.
    Completed,
    /// Failed for good, and the failure is recorded ([`Error::Failed`]).
    Failed,
    /// Cancelled ([`Runtime::cancel`], its deadline, or its parent's cancellation), and
    /// the cancellation is recorded ([`Error::Cancelled`]).
    Cancelled,
    /// This process stopped running it (replay divergence, a corrupt row, a journal
    /// error, or the runtime itself stopped). The journal still holds it as pending; the
    /// next [`Runtime::open`] tries again.
    Stopped,
}

/// A handle to a workflow run: its id, its status, and its result once it finishes.
///
/// Handles are cheap to clone; every clone sees the same run.
pub struct WorkflowHandle<O> {
    id: Arc<str>,
    outcome: watch::Receiver<Option<Outcome>>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for WorkflowHandle<O> {
    fn clone(&self) -> Self {
        WorkflowHandle::new(self.id.clone(), self.outcome.clone())
    }
}

impl<O> std::fmt::Debug for WorkflowHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowHandle")
            .field("id", &self.id)
            .field("status", &self.status())
            .finish()
    }
}

impl<O> WorkflowHandle<O> {
    fn new(id: Arc<str>, outcome: watch::Receiver<Option<Outcome>>) -> Self {
        WorkflowHandle {
            id,
            outcome,
            _output: PhantomData,
        }
    }

    /// The workflow id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the run stands now.
    pub fn status(&self) -> WorkflowStatus {
        match &*self.outcome.borrow() {
            // No outcome, and nobody left to publish one: the runtime stopped.
            None if self.outcome.has_changed().is_err() => WorkflowStatus::Stopped,
            None => WorkflowStatus::Running,
            Some(o) => match &**o {
                Ok(_) => WorkflowStatus::Completed,
                Err(Error::Failed { .. }) => WorkflowStatus::Failed,
                Err(Error::Cancelled { .. }) => WorkflowStatus::Cancelled,
                Err(_) => WorkflowStatus::Stopped,
            },
        }
    }

    /// Waits for the run to finish and returns the workflow function's return value.
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] for a recorded failure (a panic), [`Error::Divergence`] or
    /// [`Error::Corrupt`] if replay could not continue, [`Error::Store`] if the journal
    /// failed, [`Error::Stopped`] if the runtime stopped before the run finished.
    pub async fn result(&self) -> Result<O>
    where
        O: Serialize + DeserializeOwned,
    {
        let mut rx = self.outcome.clone();
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        let Some(outcome) = outcome else {
            return Err(Error::Stopped {
                workflow_id: self.id.to_string(),
            });
        };
        match &*outcome {
            Ok(bytes) => Codec::decode(bytes)
                .map_err(|reason| undecodable::<O>(&*self.id, Location::Output, reason)),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A recorded step, as [`Runtime::steps`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepInfo {
    /// The step's path in its workflow.
    pub path: StepPath,
    /// The step's name.
    pub name: String,
    /// Whether the step panicked (its record is the panic message, not an output).
    pub panicked: bool,
    /// How many attempts ran before the result was recorded.
    pub attempts: u32,
    /// When the first attempt started, in milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// When the result was recorded, in milliseconds since the Unix epoch.
    pub finished_at_ms: i64,
    workflow_id: Arc<str>,
    args: Option<crate::codec::Fingerprint>,
    outcome: RecordedOutcome,
}

impl StepInfo {
    /// The fingerprint of the arguments the step was called with, as recorded with its
    /// result; `None` for records from before journal schema 4, and for operations that
    /// take none (such as `durable::sleep`). A replay that calls the step with arguments
    /// of another fingerprint diverges.
    pub fn arguments_fingerprint(&self) -> Option<crate::codec::Fingerprint> {
        self.args
    }

    /// A fingerprint of the recorded output's content, which does not need its Rust
    /// type: two records of equal values have equal fingerprints (maps in any order).
    /// `None` if the step recorded a panic or an interruption instead of an output.
    pub fn output_fingerprint(&self) -> Option<crate::codec::Fingerprint> {
        match &self.outcome {
            RecordedOutcome::Output(bytes) => Some(crate::codec::content_fingerprint(bytes)),
            _ => None,
        }
    }

    /// Decodes the step's recorded output as `T` (its return type).
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] if the step panicked (the record is the panic message), and
    /// [`Error::Corrupt`] if the record does not decode as `T`.
    pub fn output<T: Serialize + DeserializeOwned>(&self) -> Result<T> {
        recorded_result(&self.outcome, &self.workflow_id, &self.path, &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{step, workflow};

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
