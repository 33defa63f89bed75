//! The state one workflow run shares with its steps.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::codec::Codec;
use crate::engine::recorded::{REPLAY_BATCH, Recorded};
use crate::engine::workflow::{ErasedWorkflow, Launch, Outcome};
use crate::error::StoreError;
use crate::error::{CancelReason, Error, Result};
use crate::journal::{Builds, RecordedStep, SideRecords, StartedRecord, Store, WaitFor, Wakes};
use crate::path::StepPath;
use crate::state::States;
use crate::util::lock;

/// A future a [`Runs`] method returns.
pub(crate) type RunsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What a run needs from the runtime that runs it, for the primitives that start, watch
/// or cancel other workflows (children, deadlines). Defined here so that the engine
/// never imports the runtime; the runtime implements it.
pub(crate) trait Runs: Send + Sync + 'static {
    /// Starts `launch` as workflow `id`, or joins the run of that id; returns what its
    /// handles watch.
    fn launch(
        self: Arc<Self>,
        id: Arc<str>,
        launch: Launch,
    ) -> RunsFuture<'static, watch::Receiver<Option<Outcome>>>;
    /// What a handle of workflow `id` watches: its run in this process, or its
    /// recorded outcome.
    fn watch<'a>(&'a self, id: &'a str) -> RunsFuture<'a, watch::Receiver<Option<Outcome>>>;
    /// Cancels workflow `id` and its pending descendants.
    fn cancel_run<'a>(&'a self, id: &'a str, reason: CancelReason) -> RunsFuture<'a, ()>;
    /// The runtime itself, for operations of the runtime's own that the engine does not
    /// know (an enqueue from a workflow).
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// Fault injection and instrumentation the testkit puts between a runtime, its runs
/// and its journal. Compiled only with the `testkit` feature: a normal build has no
/// such checks on any path.
#[cfg(feature = "testkit")]
pub(crate) trait Instrument: Send + Sync + std::fmt::Debug + 'static {
    /// Whether a simulated crash happened: nothing of the "process" runs again.
    fn crashed(&self) -> bool;
    /// A step body is about to run an attempt.
    fn body_started(&self, workflow_id: &Arc<str>, path: &StepPath, name: &'static str);
    /// The store the runtime is to use in place of `store`.
    fn wrap(self: Arc<Self>, store: Arc<dyn Store>) -> Arc<dyn Store>;
    /// Set at the simulated crash; the journal commits nothing once it is.
    fn halt_switch(&self) -> Arc<std::sync::atomic::AtomicBool>;
}

/// One execution of one workflow: its id, the steps recorded by earlier executions that
/// have not been claimed yet, and the first fatal error, if any.
#[derive(Debug)]
pub(crate) struct WorkflowCtx {
    pub(crate) id: Arc<str>,
    pub(crate) store: Arc<dyn Store>,
    /// How this execution encodes what it records.
    pub(crate) codec: Codec,
    /// The app state its steps take (see [`crate::state`]).
    pub(crate) states: Arc<States>,
    /// Whether its step spans record their arguments and outputs.
    pub(crate) trace_values: bool,
    /// The span of this execution (see [`crate::trace::workflow`]); none outside a
    /// runtime.
    pub(crate) span: tracing::Span,
    /// What earlier executions recorded, read as the run's code asks for it.
    recorded: Mutex<Recorded>,
    /// Start records of earlier executions: deadlines of waits, and steps that began
    /// their body durably (`on_interrupt = "fail"`).
    started: Mutex<HashMap<StepPath, StartedRecord>>,
    /// Patch markers: `(position, name)` of each `patched(name)` this run took.
    patches: Mutex<HashSet<(StepPath, String)>>,
    /// Branches that lost a durable select (their paths).
    abandoned: Mutex<Vec<Box<[u32]>>>,
    fatal: Mutex<Fatal>,
    /// The runtime running this execution, for the primitives that start or watch
    /// other workflows. Empty for a replay check.
    runtime: Option<Weak<dyn Runs>>,
    /// Step bodies running now: a cancelled workflow stops once none is.
    active: AtomicUsize,
    /// Steps called and not yet finished that will record a result (see
    /// [`WorkflowCtx::open_step`]).
    open_steps: AtomicUsize,
    /// Writes of the primitives (and child starts) whose answer the run awaits, and
    /// futures the body spawned that are alive (see [`WorkflowCtx::busy`]): a run with
    /// one is not parked.
    busy: AtomicUsize,
    /// Set with `Fatal::cancelled` or `Fatal::closing`, readable without the lock on
    /// every step: no new step body starts.
    stop_asked: AtomicBool,
    /// Checkpoints that asked, during the current poll of the run, for the task to stay
    /// runnable until their answer comes; see [`WorkflowCtx::take_spin`].
    spin: Mutex<SpinAsks>,
    /// What the run's parked operations wait for (see [`WorkflowCtx::park`]).
    parked: Mutex<Vec<ParkedWait>>,
    /// Whether, and after how long parked, this execution may be dropped from memory
    /// (see [`Dormancy`]); `None` for a replay check.
    pub(crate) dormancy: Option<Dormancy>,
    /// Set when something this run may wait for happened (a child finished, a write
    /// woke it) while it was going dormant: it is rebuilt at once instead.
    pub(crate) wake_asked: AtomicBool,
    /// Set for a replay check: step bodies never run. A step without a record stays
    /// pending for ever, and is listed in `unrecorded`.
    #[cfg(feature = "testkit")]
    replay_only: bool,
    #[cfg(feature = "testkit")]
    unrecorded: Mutex<Vec<(StepPath, &'static str)>>,
    #[cfg(feature = "testkit")]
    pub(crate) instrument: Option<Arc<dyn Instrument>>,
}

/// How a run's body is dropped from memory while it waits, and rebuilt by replay when
/// what it waits for comes: a dormant run costs its entry in the runtime, not its
/// body's future, its history and its waits.
#[derive(Debug, Clone)]
pub(crate) struct Dormancy {
    /// How long a run must have been parked, and its body not polled, before it goes
    /// dormant.
    pub(crate) after: Duration,
    /// Where the journal sends the ids of dormant runs a write may have woken.
    pub(crate) wakes: Wakes,
    /// The build of each workflow of the program (its executable, `app_version` and
    /// the workflow function's code), kept with each dormant run so that the next open
    /// re-parks it without replay if it is the same; `None`: the journal keeps nothing,
    /// and every dormant run is replayed at an open. Made once, at open.
    pub(crate) builds: Option<Arc<Builds>>,
}

impl Dormancy {
    /// What the journal records as the build of a run of `def` (see
    /// [`Dormancy::builds`]).
    pub(crate) fn build_of(&self, def: &dyn ErasedWorkflow) -> Option<Arc<str>> {
        self.builds.as_ref()?.get(def.name()).cloned()
    }
}

/// The build of a run of `def` in program `build`, as the journal records it with a
/// dormant run: the program's 16 hex digits, then the workflow function's.
pub(crate) fn workflow_build(build: &str, def: &dyn ErasedWorkflow) -> String {
    format!("{build}{:016x}", def.code())
}

/// What a parked operation waits for, besides its time (see [`WorkflowCtx::park`]).
#[derive(Debug)]
pub(crate) enum ParkedOn {
    /// Only its time: a sleep.
    Time,
    /// A message or an event, that the journal's writer answers.
    Write(WaitFor),
    /// The end of a child, which the runtime tells it of.
    Child(Arc<str>),
}

/// One parked operation of a run: what it waits for (see [`WorkflowCtx::park`]).
#[derive(Debug)]
struct ParkedWait {
    path: StepPath,
    on: ParkedOn,
    /// When it ends on its own (a sleep's end, a wait's deadline), in ms since the epoch.
    until: Option<i64>,
}

/// Keeps one parked operation in its run's list until dropped (see
/// [`WorkflowCtx::park`]).
#[derive(Debug)]
pub(crate) struct ParkGuard {
    ctx: Arc<WorkflowCtx>,
    path: StepPath,
}

impl Drop for ParkGuard {
    fn drop(&mut self) {
        let mut parked = lock(&self.ctx.parked);
        if let Some(i) = parked.iter().position(|p| p.path == self.path) {
            parked.swap_remove(i);
        }
    }
}

/// What a run going dormant waits for, besides what the runtime wakes it for on its
/// own (a child's outcome).
#[derive(Debug)]
pub(crate) struct DormantWaits {
    /// The messages and events, each with the position that records it.
    pub(crate) writes: Vec<(WaitFor, StepPath)>,
    /// The children whose ends it waits for.
    pub(crate) children: Vec<Arc<str>>,
    /// The earliest time one of its waits ends on its own.
    pub(crate) until: Option<i64>,
}

/// The spin requests of one poll of a run: how many, and until when.
#[derive(Debug, Default)]
struct SpinAsks {
    count: u32,
    until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Fatal {
    error: Option<Error>,
    cancelled: Option<CancelReason>,
    /// The runtime is closing: the run stops at its next step boundary (`Some(false)`),
    /// or at once, its grace period over (`Some(true)`).
    closing: Option<bool>,
    waker: Option<Waker>,
}

/// Held while a step body runs: a cancelled workflow waits for its running step bodies
/// (the next step boundary) before it stops.
#[derive(Debug)]
pub(crate) struct ActiveBody(Arc<WorkflowCtx>);

impl Drop for ActiveBody {
    fn drop(&mut self) {
        // Only a cancelled or closing workflow waits for its last step body; a running
        // one is not woken for nothing on every step.
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1
            && self.0.stop_asked.load(Ordering::Acquire)
        {
            self.0.wake();
        }
    }
}

/// Held while a primitive awaits the answer to a write, or a future the body spawned
/// is alive: see [`WorkflowCtx::busy`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<WorkflowCtx>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held by a step that will record a result, from its call until it finishes: see
/// [`WorkflowCtx::steps_open`].
#[derive(Debug)]
pub(crate) struct OpenStep(Arc<WorkflowCtx>);

impl Drop for OpenStep {
    fn drop(&mut self) {
        self.0.open_steps.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WorkflowCtx {
    pub(crate) fn new(
        id: Arc<str>,
        store: Arc<dyn Store>,
        runtime: Option<Weak<dyn Runs>>,
        codec: Codec,
    ) -> Self {
        WorkflowCtx {
            id,
            store,
            codec,
            states: Arc::default(),
            trace_values: false,
            span: tracing::Span::none(),
            recorded: Mutex::default(),
            started: Mutex::default(),
            patches: Mutex::default(),
            abandoned: Mutex::default(),
            fatal: Mutex::default(),
            runtime,
            active: AtomicUsize::new(0),
            open_steps: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            stop_asked: AtomicBool::new(false),
            spin: Mutex::default(),
            parked: Mutex::default(),
            dormancy: None,
            wake_asked: AtomicBool::new(false),
            #[cfg(feature = "testkit")]
            replay_only: false,
            #[cfg(feature = "testkit")]
            unrecorded: Mutex::default(),
            #[cfg(feature = "testkit")]
            instrument: None,
        }
    }

    /// A checkpoint of this run is pending and its journal expects the answer before
    /// `until`: the driver may keep the task runnable until then (see `take_spin`).
    pub(crate) fn ask_spin(&self, until: Instant) {
        let mut asks = lock(&self.spin);
        asks.count = asks.count.saturating_add(1);
        asks.until = Some(asks.until.map_or(until, |u| u.min(until)));
    }

    /// Called by the driver once per poll that left the run pending: until when to keep
    /// the task runnable instead of letting it sleep, if at all. Only a lone pending
    /// checkpoint spins. Where several were polled, they were queued together, the
    /// writer commits them as one batch, and the task sleeps until it wakes it. A step
    /// that spun inside its own poll would instead look to combinators such as
    /// `join_all` like a future that yielded, and they stop polling their other
    /// futures: each checkpoint then meets an idle writer and takes a commit of its
    /// own.
    pub(crate) fn take_spin(&self) -> Option<Instant> {
        let asks = std::mem::take(&mut *lock(&self.spin));
        if asks.count == 1 { asks.until } else { None }
    }

    /// Notes that the operation at `path` is parked until the journal answers `write`
    /// (a message, an event), until the time `until`, or, with neither, until the
    /// runtime wakes the run on its own (a child's outcome); until the guard is
    /// dropped. A run whose every live operation is parked this way can go dormant.
    pub(crate) fn park(
        self: &Arc<Self>,
        path: &StepPath,
        on: ParkedOn,
        until: Option<i64>,
    ) -> Option<ParkGuard> {
        self.dormancy.as_ref()?;
        lock(&self.parked).push(ParkedWait {
            path: path.clone(),
            on,
            until,
        });
        Some(ParkGuard {
            ctx: self.clone(),
            path: path.clone(),
        })
    }

    /// Whether this execution may go dormant now: it may, it is not stopping, no step
    /// body runs, no step waits for its checkpoint, no primitive for a write, and at
    /// least one operation is parked. (What else the body awaits, it cannot see:
    /// workflow bodies await only the durable operations.)
    pub(crate) fn evictable(&self) -> bool {
        self.dormancy.is_some()
            && !self.stop_asked.load(Ordering::Acquire)
            && self.active.load(Ordering::Acquire) == 0
            && self.open_steps.load(Ordering::Acquire) == 0
            && self.busy.load(Ordering::Acquire) == 0
            && !lock(&self.parked).is_empty()
    }

    /// What the parked operations of this execution wait for.
    pub(crate) fn dormant_waits(&self) -> DormantWaits {
        let parked = lock(&self.parked);
        DormantWaits {
            writes: parked
                .iter()
                .filter_map(|p| match &p.on {
                    ParkedOn::Write(what) => Some((what.clone(), p.path.clone())),
                    _ => None,
                })
                .collect(),
            children: parked
                .iter()
                .filter_map(|p| match &p.on {
                    ParkedOn::Child(id) => Some(id.clone()),
                    _ => None,
                })
                .collect(),
            until: parked.iter().filter_map(|p| p.until).min(),
        }
    }

    /// Counts, until the returned guard is dropped, a write (or a child's start) whose
    /// answer the run awaits (the answer will wake the body), or a future the body
    /// spawned (a branch passed to `tokio::spawn`, which runs outside the body's polls
    /// and would outlive a dropped body): the run is not parked meanwhile. Nothing to
    /// count (`None`) for an execution that never goes dormant.
    pub(crate) fn busy(self: &Arc<Self>) -> Option<Busy> {
        self.dormancy.as_ref()?;
        self.busy.fetch_add(1, Ordering::AcqRel);
        Some(Busy(self.clone()))
    }

    /// Stops this execution for good once its body was dropped (it went dormant):
    /// whatever of it still runs (nothing should) starts no step and writes nothing.
    pub(crate) fn retire(&self) {
        self.stop_asked.store(true, Ordering::Release);
    }

    /// Counts a step that will record a result, until the returned guard is dropped.
    pub(crate) fn open_step(self: &Arc<Self>) -> OpenStep {
        self.open_steps.fetch_add(1, Ordering::Relaxed);
        OpenStep(self.clone())
    }

    /// How many steps of this run are called and not yet finished, their results still
    /// to record. One, when a step records: the step is sequential, and its checkpoint
    /// has nothing to share a commit with. More: the steps of a fan-out (called
    /// together, however they are polled), whose checkpoints are queued together.
    pub(crate) fn steps_open(&self) -> usize {
        self.open_steps.load(Ordering::Relaxed)
    }

    /// Whether the testkit simulated a crash of this execution's "process".
    #[cfg(feature = "testkit")]
    pub(crate) fn crashed(&self) -> bool {
        self.instrument.as_ref().is_some_and(|i| i.crashed())
    }

    /// The runtime running this execution, if it still runs (never for a replay check).
    pub(crate) fn runs(&self) -> Option<Arc<dyn Runs>> {
        self.runtime.as_ref()?.upgrade()
    }

    /// Hands this execution what earlier executions recorded: the first steps of its
    /// history (read with a limit of [`REPLAY_BATCH`]; the rest is read as the run's
    /// code asks for it), and all of what it recorded beside them.
    pub(crate) fn load(&self, recorded: Vec<RecordedStep>, side: SideRecords) {
        *lock(&self.recorded) = Recorded::first(recorded, REPLAY_BATCH);
        self.load_side(side);
    }

    fn load_side(&self, side: SideRecords) {
        *lock(&self.started) = side
            .started
            .into_iter()
            .map(|s| (s.path.clone(), s))
            .collect();
        *lock(&self.patches) = side.patches.into_iter().collect();
    }

    /// Whether this run went through `patched(name)` at `path` (an earlier execution
    /// recorded it, or this one did).
    pub(crate) fn has_patch(&self, path: &StepPath, name: &str) -> bool {
        lock(&self.patches).contains(&(path.clone(), name.to_owned()))
    }

    /// Notes that this execution went through `patched(name)` at `path`.
    pub(crate) fn add_patch(&self, path: StepPath, name: &str) {
        lock(&self.patches).insert((path, name.to_owned()));
    }

    /// Whether an earlier execution recorded anything (not yet replayed) at `path` or at
    /// a later position of the same branch, or below one: such an execution went past
    /// `path` already.
    ///
    /// A journal that cannot be read stops the run (with the error) and answers
    /// `true`, so that nothing is written.
    pub(crate) fn recorded_from(&self, path: &StepPath) -> bool {
        let Some((&at, branch)) = path.positions().split_last() else {
            return false;
        };
        let found = lock(&self.recorded).any_from(branch, at, &mut |after| self.read_after(after));
        found.unwrap_or_else(|e| {
            self.fail(Error::Store(e));
            true
        })
    }

    /// The next batch of this run's history, after `after`.
    fn read_after(&self, after: Option<&StepPath>) -> Result<Vec<RecordedStep>, StoreError> {
        self.store.steps_after(&self.id, after, REPLAY_BATCH)
    }

    /// The start record an earlier execution made at `path`, if any.
    pub(crate) fn started(&self, path: &StepPath) -> Option<StartedRecord> {
        lock(&self.started).get(path).cloned()
    }

    /// Marks a step body as running, until the guard is dropped; `None` if the
    /// workflow is cancelled or its runtime is closing (the body must not start).
    pub(crate) fn begin_body(self: &Arc<Self>) -> Option<ActiveBody> {
        self.active.fetch_add(1, Ordering::AcqRel);
        // Counted before the check: a cancellation that lands in between sees this
        // body as running, and waits for it.
        let guard = ActiveBody(self.clone());
        if self.stop_asked.load(Ordering::Acquire) {
            return None;
        }
        Some(guard)
    }

    /// Whether this execution is to stop at its next step boundary (cancelled, or its
    /// runtime closing): nothing new starts.
    pub(crate) fn stopping(&self) -> bool {
        self.stop_asked.load(Ordering::Acquire)
    }

    /// Asks this execution to stop, because its runtime is closing: at its next step
    /// boundary, or at once if `now` (the grace period is over). Nothing is recorded;
    /// the workflow stays pending and resumes at the next open.
    pub(crate) fn shut_down(&self, now: bool) {
        {
            let mut f = lock(&self.fatal);
            f.closing = Some(now || f.closing == Some(true));
        }
        self.stop_asked.store(true, Ordering::Release);
        self.wake();
    }

    /// Why this execution was cancelled, if it was.
    pub(crate) fn cancelled(&self) -> Option<CancelReason> {
        lock(&self.fatal).cancelled
    }

    /// Asks this execution to stop at its next step boundary.
    pub(crate) fn cancel(&self, reason: CancelReason) {
        {
            let mut f = lock(&self.fatal);
            if f.cancelled.is_none() {
                f.cancelled = Some(reason);
            }
        }
        self.stop_asked.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        let waker = lock(&self.fatal).waker.clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// A context for a replay check: recorded steps replay, no step body ever runs.
    #[cfg(feature = "testkit")]
    pub(crate) fn replay_only(
        id: Arc<str>,
        store: Arc<dyn Store>,
        recorded: Vec<RecordedStep>,
        side: SideRecords,
    ) -> Self {
        let ctx = WorkflowCtx {
            replay_only: true,
            ..WorkflowCtx::new(id, store, None, Codec::default())
        };
        *lock(&ctx.recorded) = Recorded::all(recorded);
        ctx.load_side(side);
        ctx
    }

    /// Whether step bodies may run. If not, notes that the code waited for the
    /// unrecorded step `name` at `path`.
    #[cfg_attr(not(feature = "testkit"), inline(always))]
    pub(crate) fn may_run(&self, path: &StepPath, name: &'static str) -> bool {
        #[cfg(feature = "testkit")]
        if self.replay_only {
            lock(&self.unrecorded).push((path.clone(), name));
            return false;
        }
        #[cfg(not(feature = "testkit"))]
        let _ = (path, name);
        true
    }

    /// The unrecorded steps a replay-only execution waited for, in the order it did.
    #[cfg(feature = "testkit")]
    pub(crate) fn unrecorded(&self) -> Vec<(StepPath, &'static str)> {
        lock(&self.unrecorded).clone()
    }

    /// Takes the record of `path`, if an earlier execution recorded one. Each recorded
    /// step is handed out once; what is left at the end was never asked for.
    ///
    /// The history is read in batches as the code asks for it: a claim past what has
    /// been read reads the next batch (one query for [`REPLAY_BATCH`] steps) on the
    /// caller's thread.
    pub(crate) fn take_recorded(
        &self,
        path: &StepPath,
    ) -> Result<Option<RecordedStep>, StoreError> {
        lock(&self.recorded).take(path, &mut |after| self.read_after(after))
    }

    /// How many recorded steps this execution has not asked for (yet).
    #[cfg(feature = "testkit")]
    pub(crate) fn unclaimed(&self) -> usize {
        lock(&self.recorded).len()
    }

    /// Notes that the branch at `path` lost a durable select: what is recorded below it
    /// is not asked for again, by design.
    pub(crate) fn abandon(&self, path: &[u32]) {
        lock(&self.abandoned).push(path.into());
    }

    /// The first recorded step (by path) that this execution never asked for, outside
    /// branches that lost a durable select. Reads the rest of the history if it has to.
    pub(crate) fn first_unclaimed(&self) -> Result<Option<(StepPath, String)>, StoreError> {
        let abandoned = lock(&self.abandoned).clone();
        lock(&self.recorded).first_unclaimed(
            |p| abandoned.iter().any(|a| p.positions().starts_with(a)),
            &mut |after| self.read_after(after),
        )
    }

    /// Stops this execution: the driver sees the error at its next poll. The first
    /// error wins; later ones are consequences.
    pub(crate) fn fail(&self, error: Error) {
        let waker = {
            let mut f = lock(&self.fatal);
            if f.error.is_none() {
                f.error = Some(error);
            }
            f.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Called by the driver on every poll: remembers its waker and returns the fatal
    /// error, if one happened, or the cancellation once no step body runs.
    pub(crate) fn poll_fatal(&self, waker: &Waker) -> Option<Error> {
        let mut f = lock(&self.fatal);
        if f.error.is_none() {
            match &f.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => f.waker = Some(waker.clone()),
            }
        }
        if f.error.is_none()
            && let Some(reason) = f.cancelled
            && self.active.load(Ordering::Acquire) == 0
        {
            return Some(Error::Cancelled {
                workflow_id: self.id.to_string(),
                reason,
            });
        }
        if f.error.is_none()
            && let Some(now) = f.closing
            && (now || self.active.load(Ordering::Acquire) == 0)
        {
            return Some(Error::Stopped {
                workflow_id: self.id.to_string(),
            });
        }
        f.error.clone()
    }
}
