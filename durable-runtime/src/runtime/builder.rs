//! Opening a runtime: its options, and the recovery of pending workflows at open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Durability;
use crate::codec::Codec;
#[cfg(feature = "testkit")]
use crate::engine::context::Instrument;
use crate::engine::context::WorkflowCtx;
use crate::engine::drive::History;
use crate::engine::recorded::REPLAY_BATCH;
use crate::engine::workflow::Outcome;
use crate::engine::workflow::{ErasedWorkflow, registry};
use crate::error::{Error, Result};
use crate::journal::{JournalOptions, JournalSpec, Restored, WorkflowRecord, blocking};
use crate::state::States;
use crate::util::lock;

use super::*;

/// Options for opening a [`Runtime`]; from [`Runtime::builder`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    pub(super) journal: JournalSpec,
    pub(crate) options: JournalOptions,
    pub(super) app_version: Option<String>,
    /// See [`RuntimeBuilder::evict_parked_after`].
    pub(super) evict_parked_after: Option<Duration>,
    /// See [`RuntimeBuilder::queue`].
    pub(super) queues: Vec<super::queue::Queue>,
    /// The clock schedules read, if not the real one.
    pub(super) schedule_clock: Option<super::schedule::ManualClock>,
    /// See [`RuntimeBuilder::retain_finished`].
    pub(super) retain_finished: Option<Duration>,
    /// See [`RuntimeBuilder::state`].
    pub(super) states: States,
    /// A type [`RuntimeBuilder::state`] was given twice: the error `open` returns.
    pub(super) state_twice: Option<&'static str>,
    /// See [`RuntimeBuilder::trace_values`].
    pub(super) trace_values: bool,
    /// The testkit's probe, if one was given.
    #[cfg(feature = "testkit")]
    pub(crate) instrument: Option<Arc<dyn Instrument>>,
}

impl RuntimeBuilder {
    /// How long a workflow waits in memory before it goes dormant, unless
    /// [`evict_parked_after`](Self::evict_parked_after) says otherwise: a minute. Waits
    /// shorter than that cost no replay; a workflow that waits for hours or days holds
    /// a few hundred bytes after its first minute.
    pub const DEFAULT_EVICT_PARKED_AFTER: Duration = Duration::from_secs(60);

    /// Puts the journal in a PostgreSQL database instead: `url` is
    /// `postgres://user:password@host:port/database`, with libpq's URL options that
    /// tokio-postgres reads (`connect_timeout`, `application_name`, several hosts...)
    /// and one of durable's own, `schema=name`: the PostgreSQL schema that holds the
    /// journal's tables (`durable` by default), created and migrated at the first open.
    /// The same URL given to [`Runtime::builder`] does the same.
    ///
    /// The password never appears in an error, a log line or `Debug` output:
    /// [`Runtime::path`] and every error show the URL without it. One runtime holds a
    /// journal at a time (an advisory lock held by its connection, released when its
    /// process ends, however it ends); a second open fails until the first is closed.
    /// [`durability`](Self::durability) does not apply: a commit is as durable as the
    /// server's `synchronous_commit` makes it.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn open(url: &str) -> Result<(), durable_runtime::Error> {
    /// use durable_runtime::Runtime;
    ///
    /// // The URL from the environment; the same as `Runtime::open(url)`.
    /// let rt = Runtime::builder("journal.db").postgres(url).open().await?;
    /// println!("journal: {}", rt.path().display()); // no password
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: &str) -> Self {
        self.journal = JournalSpec::postgres(url);
        self
    }

    /// On a journal that several runtimes share (PostgreSQL): how long this runtime
    /// may be out of touch with the journal (paused, or cut off from the database)
    /// before another runtime takes over its pending workflows. 10 seconds by default,
    /// at least 200 ms. A runtime whose process ends (a crash, SIGKILL, an exit) is
    /// taken over sooner, as soon as the server has dropped its connection and a live
    /// runtime next looks (every half of its own lease). A runtime taken over records
    /// nothing more for those workflows: its writes fail with
    /// [`StoreErrorKind::TakenOver`](crate::StoreErrorKind::TakenOver). A shorter lease
    /// takes over sooner after a lost machine, and costs a heartbeat (one small
    /// `UPDATE`) every third of it. A SQLite journal, which one runtime holds at a
    /// time, ignores it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.options.lease = Some(lease);
        self
    }

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
    ///
    /// It is also part of the *build* the journal keeps with dormant workflows (see
    /// [`evict_parked_after`](Self::evict_parked_after)): a new version replays them at
    /// the next open instead of re-parking them from what they waited for. Give a new
    /// one with every release whose workflows may wait for something else than the last
    /// one's where the executable file alone does not show it (durable inside a library
    /// that a host program loads, or configuration that workflow code reads).
    pub fn app_version(mut self, version: impl Into<String>) -> Self {
        self.app_version = Some(version.into());
        self
    }

    /// How long a workflow must have been waiting before its state is dropped from
    /// memory, to be rebuilt by replay when what it waits for comes:
    /// [`DEFAULT_EVICT_PARKED_AFTER`](Self::DEFAULT_EVICT_PARKED_AFTER) (a minute) by
    /// default; `None`: never.
    ///
    /// A workflow is *parked* when every one of its live operations waits: a
    /// [`recv`](crate::recv), a [`get_event`](crate::get_event), a
    /// [`sleep`](crate::sleep) or a child workflow's result, and no step runs. Once it
    /// has been parked this long, its body (its future, its replay state, its waits) is
    /// dropped, and what is left costs a few hundred bytes: its entry in the runtime,
    /// and one wake-up per wait in the journal's writer. When a message or an event it
    /// waits for is written, its time comes or a child it waits for finishes, it is
    /// rebuilt by replaying its history, as after a restart, and goes on. A workflow
    /// that waits for days costs almost nothing in the meantime; one woken often pays
    /// a replay of its history at each wake-up after a wait this long.
    ///
    /// The journal keeps what each dormant workflow waits for, so the next open of the
    /// same build (the same executable file, [`app_version`](Self::app_version) and
    /// code of the workflow's function) re-parks it without replaying it. One whose
    /// message, event or child came while the program was down is replayed at the
    /// open instead, and so is every one a different build left dormant: a changed
    /// program finds out what its own code waits for.
    ///
    /// A workflow body must await only durable operations (steps, the primitives,
    /// child workflows, and combinations of them such as [`select`](crate::select)):
    /// anything else it awaits, such as a tokio timer or channel, is lost with its
    /// body when it goes dormant, as it is in a crash.
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_runtime::{Runtime, recv, workflow};
    ///
    /// #[workflow]
    /// async fn leave_approval() -> bool {
    ///     recv::<bool>("approved", None).await.ok().flatten().unwrap_or(false)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::builder(dir.path().join("journal.db"))
    ///     .evict_parked_after(Duration::from_millis(10))
    ///     .open()
    ///     .await?;
    /// let h = rt.start_with_id("leave-7", leave_approval()).await?;
    /// // Long enough for the workflow to go dormant; the message rebuilds it.
    /// tokio::time::sleep(Duration::from_millis(50)).await;
    /// rt.send("leave-7", "approved", &true).await?;
    /// assert!(h.result().await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn evict_parked_after(mut self, after: impl Into<Option<Duration>>) -> Self {
        self.evict_parked_after = after.into();
        self
    }

    /// Declares `queue`: the runtime can enqueue on it (see [`Runtime::enqueue`]),
    /// and dispatches its workflows under its limits. The declared limits are written
    /// to the journal at open, unless limits set at run time hold there (see
    /// [`QueueHandle::reset`](crate::QueueHandle::reset)).
    ///
    /// A runtime built with no queue dispatches nothing: workflows an earlier build
    /// queued wait for a runtime that declares a queue. One that declares any queue
    /// dispatches every queue the journal has limits for, also those it does not
    /// declare (a queue renamed in code, say), under the limits the journal holds for
    /// them, and only the workflows this program has. [`Runtime::queue`] reads and
    /// changes only the queues it declares.
    #[must_use]
    pub fn queue(mut self, queue: super::queue::Queue) -> Self {
        self.queues.push(queue);
        self
    }

    /// Deletes the workflow runs that finished more than `keep` ago, with everything
    /// recorded for them, at the open and then every tenth of `keep` (between a second
    /// and an hour), while the runtime runs: [`Runtime::gc`] on a timer. A pending run
    /// is never deleted, nor a run a pending or resumable one may still need (see
    /// [`Runtime::gc`]).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// let rt = durable_runtime::Runtime::builder("journal.db")
    ///     .retain_finished(Duration::from_secs(30 * 24 * 3600))
    ///     .open()
    ///     .await?;
    /// # rt.close().await
    /// # }
    /// ```
    #[must_use]
    pub fn retain_finished(mut self, keep: Duration) -> Self {
        self.retain_finished = Some(keep);
        self
    }

    /// Drives this runtime's schedules (see [`Runtime::schedule`]) with `clock`, a
    /// clock a test moves by hand, instead of the real one. Sleeps and timeouts in
    /// workflows keep the real clock.
    pub fn schedule_clock(mut self, clock: super::schedule::ManualClock) -> Self {
        self.schedule_clock = Some(clock);
        self
    }

    /// Gives the steps of this runtime's workflows `value`: a database pool, an HTTP
    /// client, a configuration. A step takes it through a `#[state]` parameter, as
    /// `&T` or `Arc<T>` (or through [`StepContext::state`](crate::StepContext::state)).
    ///
    /// State is never recorded. It is not one of the step's arguments (callers do not
    /// pass it), it is not part of the step's fingerprint, and a step replayed from the
    /// journal does not look at it. One value per type: register a type of your own to
    /// keep two values of one type apart.
    ///
    /// A step whose state was not given fails with [`Error::MissingState`], naming the
    /// type, before its body runs; its workflow stays pending, and runs on at the next
    /// open of a runtime given the state.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use durable_runtime::{Runtime, step, workflow};
    ///
    /// /// A connection pool, an HTTP client: anything `Send + Sync + 'static`.
    /// struct Db { pool: Vec<String> }
    /// struct Http { base_url: String }
    ///
    /// #[step]
    /// async fn lookup(#[state] db: &Db, id: u32) -> Option<String> {
    ///     db.pool.get(id as usize).cloned()
    /// }
    ///
    /// #[step]
    /// async fn notify(#[state] http: Arc<Http>, name: String) -> String {
    ///     format!("POST {}/notify?name={name}", http.base_url)
    /// }
    ///
    /// #[workflow]
    /// async fn greet_by_id(id: u32) -> String {
    ///     let name = lookup(id).await.unwrap_or_default();
    ///     notify(name).await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("journal.db");
    /// let rt = Runtime::builder(&path)
    ///     .state(Arc::new(Db { pool: vec!["ann".into(), "bo".into()] }))
    ///     .state(Arc::new(Http { base_url: "https://api.example".into() }))
    ///     .open()
    ///     .await?;
    /// let out = rt.start(greet_by_id(1)).await?.result().await?;
    /// assert_eq!(out, "POST https://api.example/notify?name=bo");
    /// # rt.close().await
    /// # }
    /// ```
    ///
    /// `T` may be a trait object: `.state::<dyn Gateway>(Arc::new(Stripe { .. }))`, taken
    /// as `#[state] gateway: &dyn Gateway`, lets tests register a fake. Registering a
    /// type twice makes [`open`](Self::open) fail with [`Error::StateTwice`].
    pub fn state<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        if let Err(type_name) = self.states.insert(value) {
            self.state_twice.get_or_insert(type_name);
        }
        self
    }

    /// Records each step's arguments and output on its `step` span, as the fields
    /// `input` and `output`: rendered JSON-like, cut at 1,024 characters. Off by
    /// default, since they may hold what a log must not (personal data, secrets).
    /// See the README's "Tracing" section for every span and field.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// let rt = durable_runtime::Runtime::builder("journal.db")
    ///     .trace_values(true)
    ///     .open()
    ///     .await?;
    /// # drop(rt); Ok(()) }
    /// ```
    pub fn trace_values(mut self, on: bool) -> Self {
        self.trace_values = on;
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
        if let Some(type_name) = self.state_twice {
            return Err(Error::StateTwice { type_name });
        }
        let registry = registry()?;
        let queues = super::queue::declared_queues(&self.queues)?;
        #[cfg(feature = "postgres")]
        let shared = matches!(self.journal, JournalSpec::Postgres(_));
        #[cfg(not(feature = "postgres"))]
        let shared = false;
        let codec = self.options.codec;
        #[cfg_attr(not(feature = "testkit"), allow(unused_mut))]
        let mut options = self.options.clone();
        #[cfg(feature = "testkit")]
        let instrument = self.instrument.clone();
        #[cfg(feature = "testkit")]
        if let Some(i) = &instrument {
            options.halt = Some(i.halt_switch());
        }
        options.workflows = Some(registry.keys().copied().collect());
        let journal = self.journal.clone();
        let build = super::dormant::build_id(self.app_version.as_deref());
        let (dormancy, wakeups) =
            super::dormant::Dormancies::new(self.evict_parked_after, build, &registry);
        // The build of each workflow, for what the journal kept of dormant runs.
        let builds = dormancy.builds();
        let wakes = dormancy.wakes();
        // One trip to a blocking thread: open, then list what to resume, and which of
        // those were dormant and may stay so.
        let (store, pending, restored) = blocking(self.journal.path(), move || {
            #[cfg_attr(not(feature = "testkit"), allow(unused_mut))]
            let mut store = journal.open(&options)?;
            #[cfg(feature = "testkit")]
            if let Some(i) = instrument {
                store = i.wrap(store);
            }
            // What stays (the dormant runs' wake-ups) is made before what goes (the
            // pending rows, read and dropped here): memory freed at the top of the
            // heap goes back to the system, not memory between live allocations.
            let restored = store.restore_dormant(builds.as_deref(), wakes)?;
            let pending = store.pending_workflows()?;
            Ok::<_, Error>((store, pending, restored))
        })
        .await??;
        let Recovery {
            recovered,
            unrecoverable,
            launches,
            dormant,
            stranded,
            held,
        } = Recovery::sort(pending, &registry, restored);
        let inner = Arc::new(Inner {
            store,
            running: Mutex::new(HashMap::new()),
            registry,
            app_version: self.app_version.map(Arc::from),
            codec,
            states: Arc::new(self.states),
            trace_values: self.trace_values,
            #[cfg(feature = "testkit")]
            instrument: self.instrument,
            recovered,
            unrecoverable,
            closing: std::sync::atomic::AtomicBool::new(false),
            stopped: Mutex::default(),
            close: Mutex::default(),
            dormancy,
            resuming: Mutex::default(),
            resumes: std::sync::atomic::AtomicU64::new(0),
            queues,
            waiting: Mutex::default(),
            queued_watch: Mutex::default(),
            dispatches: std::sync::atomic::AtomicU64::new(0),
            shared,
            clock: self.schedule_clock.map_or(
                super::schedule::Clock::System,
                super::schedule::Clock::Manual,
            ),
            schedules: std::sync::Mutex::default(),
            commands: Mutex::default(),
        });
        // Dispatched workflows that cannot run here free their slots first (as at a
        // dispatch): held, they are queued again at the next open.
        for id in held {
            if let Err(e) = inner.acked(inner.store.hold(id.clone())).await {
                tracing::warn!(workflow = %id, "cannot free the queue slot of a workflow that cannot run here: {e}");
            }
        }
        // The declared limits, then dispatching, in one commit: it dispatches every
        // queue (what waited while no runtime had the journal open). A program that
        // declares no queue dispatches nothing, and its open commits nothing for them.
        if !inner.queues.is_empty() {
            // In name order: processes opening at once lock the queues' rows in the
            // same order (PostgreSQL), so they never deadlock.
            let mut queues: Vec<_> = inner.queues.values().collect();
            queues.sort_by(|a, b| a.name().cmp(b.name()));
            let declared: Vec<_> = queues
                .into_iter()
                .map(|q| inner.store.set_queue(q.declared()))
                .collect();
            let (news_tx, news) = tokio::sync::mpsc::unbounded_channel();
            inner.store.queue_news(news_tx);
            tokio::spawn(super::queue::queue_loop(Arc::downgrade(&inner), news));
            for ack in declared {
                inner.acked(ack).await?;
            }
        }
        tokio::spawn(super::dormant::wake_loop(Arc::downgrade(&inner), wakeups));
        let (takeovers, taken) = tokio::sync::mpsc::unbounded_channel();
        inner.store.takeovers(takeovers.clone());
        tokio::spawn(adopt_loop(Arc::downgrade(&inner), takeovers, taken));
        let (cancels, cancelled) = tokio::sync::mpsc::unbounded_channel();
        inner.store.cancellations(cancels);
        tokio::spawn(cancel_loop(Arc::downgrade(&inner), cancelled));
        // Every resumed run is in `running` before any of them runs: a parent resuming
        // its child's call must find the child's run, not start a second one.
        if !(dormant.is_empty() && launches.is_empty()) {
            // One line for the open, however many runs it resumes; each run's own is at
            // debug level.
            tracing::info!(
                target: crate::trace::TARGET,
                journal = %self.journal.path().display(),
                replayed = launches.len(),
                dormant = dormant.len(),
                "resuming pending workflows"
            );
        }
        if !launches.is_empty() {
            // What the runs replay is marked in the journal (for timelines); a failure
            // to mark it costs nothing else.
            let ids = launches.iter().map(|(id, ..)| id.clone()).collect();
            if let Err(e) = inner.acked(inner.store.replayed(ids, now_ms())).await {
                tracing::debug!(error = %e, "could not mark the resumed runs as replayed");
            }
        }
        let runs: Vec<_> = {
            let mut running = lock(&inner.running);
            for (def, parent, restored) in dormant {
                tracing::debug!(workflow = %restored.id, name = def.name(), "resuming pending workflow, dormant");
                inner.restore(&mut running, def, parent, restored);
            }
            launches
                .into_iter()
                .map(|(id, def, input, deadline_at, parent)| {
                    tracing::debug!(target: crate::trace::TARGET, workflow = %id, name = def.name(), "resuming pending workflow");
                    let (ctx, tx) = inner.register(&mut running, &id, def.name(), parent);
                    (ctx, def, input, deadline_at, tx)
                })
                .collect()
        };
        for parent in stranded {
            // Rebuilt by replay if it is dormant (a no-op otherwise): it finds its
            // child cannot run here, as at any other open.
            inner.wake(&parent, None);
        }
        if !runs.is_empty() {
            tokio::spawn(resume(inner.clone(), runs));
        }
        if let Some(keep) = self.retain_finished {
            tokio::spawn(super::retention::retain_loop(Arc::downgrade(&inner), keep));
        }
        // Clients' commands (SQLite: on PostgreSQL every process opens the journal).
        if !shared {
            let bell = crate::journal::sqlite::wake::Doorbell::bind(inner.store.path());
            let task = super::commands::command_loop(Arc::downgrade(&inner), bell);
            *lock(&inner.commands) = Some(super::commands::CommandTask(tokio::spawn(task)));
        }
        Ok(Runtime { inner })
    }
}

/// Stops this runtime's runs of the workflows other processes sharing the journal
/// cancel (each heard as the id cancelled with its descendants; `None`: any), until
/// the runtime is gone. A run not stopped here (a cancel not heard) stops at its next
/// record, which the journal refuses: the workflow has no owner any more.
async fn cancel_loop(
    inner: std::sync::Weak<Inner>,
    mut heard: tokio::sync::mpsc::UnboundedReceiver<Option<Arc<str>>>,
) {
    while let Some(first) = heard.recv().await {
        let mut roots = vec![first];
        while let Ok(root) = heard.try_recv() {
            roots.push(root);
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let any = roots.iter().any(Option::is_none);
        let under = |id: &str| {
            roots.iter().flatten().any(|root| {
                id.strip_prefix(&**root)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        };
        let ids: Vec<Arc<str>> = lock(&inner.running)
            .keys()
            .filter(|id| any || under(id))
            .cloned()
            .collect();
        if ids.is_empty() {
            continue;
        }
        inner.stop_recorded_cancels(ids).await;
    }
}

/// Resumes the runs the journal hands this runtime after its open (taken over from
/// another runtime sharing it), as the open resumes its pending runs, until the
/// runtime is gone.
async fn adopt_loop(
    inner: std::sync::Weak<Inner>,
    again: tokio::sync::mpsc::UnboundedSender<Arc<str>>,
    mut taken: tokio::sync::mpsc::UnboundedReceiver<Arc<str>>,
) {
    while let Some(first) = taken.recv().await {
        let mut ids = vec![first];
        while let Ok(id) = taken.try_recv() {
            ids.push(id);
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let store = inner.store.clone();
        let read = blocking(inner.store.path(), move || {
            ids.iter()
                .map(|id| store.workflow(id))
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .await;
        let records: Vec<WorkflowRecord> = match read {
            // Only what is still pending here: a workflow cancelled, finished or taken
            // elsewhere since it was handed over is not run.
            Ok(Ok(records)) => records
                .into_iter()
                .flatten()
                .filter(|r| r.status == crate::journal::RecordStatus::Pending && !r.elsewhere)
                .collect(),
            Ok(Err(e)) | Err(e) => {
                // Still this runtime's in the journal: the next open resumes them.
                tracing::warn!(error = %e, "could not read workflows taken over; they \
                    resume at the next open");
                continue;
            }
        };
        let Recovery {
            launches,
            unrecoverable,
            ..
        } = Recovery::sort(records, &inner.registry, Vec::new());
        drop(unrecoverable); // Each was logged.
        let runs: Vec<_> = {
            let mut running = lock(&inner.running);
            let mut runs = Vec::new();
            for (id, def, input, deadline_at, parent) in launches {
                if running.contains_key(&id) {
                    // A run of it here is still winding down (this runtime was taken
                    // over, and has claimed the workflow back): once it has left
                    // `running` (its handles may follow the journal meanwhile, and
                    // publish nothing), the workflow runs again from its journal.
                    let again = again.clone();
                    let wound = id.clone();
                    inner.when_wound_down(id, move |_| drop(again.send(wound)));
                    continue;
                }
                tracing::info!(
                    target: crate::trace::TARGET,
                    workflow = %id,
                    name = def.name(),
                    "takeover: resuming a workflow handed to this runtime (taken over from one that \
                     stopped, or resumed by a client)"
                );
                let (ctx, tx) = inner.register(&mut running, &id, def.name(), parent);
                runs.push((ctx, def, input, deadline_at, tx));
            }
            runs
        };
        if !runs.is_empty() {
            // A cancel made after the read above and before the runs were registered
            // found no run to stop here: look once more, now that they are.
            let ids: Vec<Arc<str>> = runs.iter().map(|(ctx, ..)| ctx.id.clone()).collect();
            inner.stop_recorded_cancels(ids).await;
            tokio::spawn(resume(inner.clone(), runs));
        }
    }
}

/// A resumed run, registered and not started: its context, workflow, input, deadline
/// and the sender of its outcome.
type Registered = (
    Arc<WorkflowCtx>,
    &'static dyn ErasedWorkflow,
    Vec<u8>,
    Option<i64>,
    watch::Sender<Option<Outcome>>,
);

/// How many resumed runs' histories are read in one trip to a blocking thread (and one
/// read transaction).
const RESUME_CHUNK: usize = 512;

/// Starts the runs resumed at open, in chunks of [`RESUME_CHUNK`]: the histories of a
/// chunk are read together, then each of its runs starts with its own. One read per
/// run would cost a trip to a blocking thread and SQLite's locking twice per run,
/// which for many small histories (workflows parked in a wait) is most of the time a
/// reopen takes.
async fn resume(inner: Arc<Inner>, runs: Vec<Registered>) {
    let mut runs = runs.into_iter().peekable();
    while runs.peek().is_some() {
        let chunk: Vec<_> = runs.by_ref().take(RESUME_CHUNK).collect();
        let ids: Vec<Arc<str>> = chunk.iter().map(|(ctx, ..)| ctx.id.clone()).collect();
        let store = inner.store.clone();
        let loaded = blocking(inner.store.path(), move || {
            store.histories(&ids, REPLAY_BATCH)
        })
        .await;
        // A read that failed as a whole leaves each run to read its own history, and to
        // fail with its own error.
        let mut histories = match loaded {
            Ok(Ok(h)) if h.len() == chunk.len() => Some(h.into_iter()),
            _ => None,
        };
        for (ctx, def, input, deadline_at, tx) in chunk {
            let history = match histories.as_mut().and_then(Iterator::next) {
                Some(h) => History::Loaded(Box::new(h)),
                None => History::Journaled,
            };
            tokio::spawn(drive(
                inner.clone(),
                ctx,
                def,
                input,
                history,
                deadline_at,
                tx,
            ));
        }
    }
}

/// A pending run to resume at open: its id, workflow, input, deadline and parent.
type Resumed = (
    Arc<str>,
    &'static dyn ErasedWorkflow,
    Vec<u8>,
    Option<i64>,
    Option<Arc<str>>,
);

/// The journal's pending runs, sorted at open into those this program resumes and
/// those it cannot (damaged, or of a workflow it does not have).
struct Recovery {
    recovered: Vec<String>,
    unrecoverable: Vec<Error>,
    launches: Vec<Resumed>,
    /// Those that stay dormant, re-parked without replay: their workflow, parent, and
    /// what the journal kept of them.
    dormant: Vec<(&'static dyn ErasedWorkflow, Option<Arc<str>>, Restored)>,
    /// The parents of the runs this program cannot resume: any of them kept dormant is
    /// woken at once.
    stranded: Vec<Arc<str>>,
    /// The runs this program cannot resume that hold a queue's slot.
    held: Vec<Arc<str>>,
}

impl Recovery {
    fn sort(
        pending: Vec<WorkflowRecord>,
        registry: &HashMap<&'static str, &'static dyn ErasedWorkflow>,
        restored: Vec<Restored>,
    ) -> Self {
        let mut restored: HashMap<Arc<str>, Restored> =
            restored.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut out = Recovery {
            recovered: Vec::new(),
            unrecoverable: Vec::new(),
            launches: Vec::new(),
            dormant: Vec::new(),
            stranded: Vec::new(),
            held: Vec::new(),
        };
        for record in pending {
            if record.damage().is_some() || !registry.contains_key(record.name.as_str()) {
                // Its parent, if it waits for it dormant, must find out now, as a
                // replayed one would (this child never runs here to wake it).
                out.stranded
                    .extend(record.parent_id.as_deref().map(Arc::<str>::from));
                if record.queue_state == Some(crate::journal::queue::QueueState::Running) {
                    out.held.push(Arc::from(record.id.as_str()));
                }
            }
            if let Some(e) = record.damage() {
                tracing::warn!("{e}; it stays pending");
                out.unrecoverable.push(e);
                continue;
            }
            let Some(def) = registry.get(record.name.as_str()) else {
                let e = Error::UnknownWorkflow {
                    workflow_id: record.id,
                    name: record.name,
                };
                tracing::warn!("{e}; it stays pending");
                out.unrecoverable.push(e);
                continue;
            };
            out.recovered.push(record.id.clone());
            let parent = record.parent_id.map(Arc::<str>::from);
            if let Some(r) = restored.remove(record.id.as_str()) {
                out.dormant.push((*def, parent, r));
                continue;
            }
            out.launches.push((
                Arc::<str>::from(record.id),
                *def,
                record.input,
                record.deadline_at,
                parent,
            ));
        }
        out
    }
}
