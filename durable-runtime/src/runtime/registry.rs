//! The registry of the runs this process executes: starting (or joining) a run,
//! driving it to its end, settling its handles, cancelling and resuming.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tracing::Instrument as _;

use crate::codec::Codec;
#[cfg(feature = "testkit")]
use crate::engine::context::Instrument;
use crate::engine::context::{Runs, RunsFuture, WorkflowCtx};
use crate::engine::drive::{History, Ran, execute};
use crate::engine::workflow::{ErasedWorkflow, Launch, Outcome};
use crate::error::{CancelReason, Error, Result, StoreError, StoreErrorKind};
use crate::journal::{
    Ack, Created, Finish, Finished, NewWorkflow, RecordStatus, Store, WorkflowRecord, blocking,
};
use crate::util::{lock, now_ms};

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(super) running: Mutex<HashMap<Arc<str>, Running>>,
    pub(super) registry: HashMap<&'static str, &'static dyn ErasedWorkflow>,
    pub(super) app_version: Option<Arc<str>>,
    /// How this runtime encodes what it records.
    pub(crate) codec: Codec,
    /// The app state its steps take (see [`RuntimeBuilder::state`](crate::RuntimeBuilder::state)).
    pub(crate) states: Arc<crate::state::States>,
    /// See [`RuntimeBuilder::trace_values`](crate::RuntimeBuilder::trace_values).
    pub(crate) trace_values: bool,
    pub(super) recovered: Vec<String>,
    pub(super) unrecoverable: Vec<Error>,
    /// Set by [`Runtime::close`](crate::Runtime::close): no new work is taken.
    pub(super) closing: std::sync::atomic::AtomicBool,
    /// The close in progress or done: started once, by the first `close`, in a task of
    /// its own (a caller that stops waiting does not leave it half done), and watched by
    /// every `close` call.
    pub(super) close: Mutex<Option<watch::Receiver<Option<Result<()>>>>>,
    /// Why runs that stopped in this process without a recorded outcome (a divergence,
    /// a value that does not decode, a journal error) stopped: the journal holds them as
    /// pending, and their handles report this, not a bare "stopped".
    pub(super) stopped: Mutex<HashMap<Arc<str>, Error>>,
    #[cfg(feature = "testkit")]
    pub(super) instrument: Option<Arc<dyn Instrument>>,
    /// Dormant runs: how they go dormant and are woken (see `dormant`).
    pub(super) dormancy: super::dormant::Dormancies,
    /// Resumes in progress, by the workflow resumed: its family is pending in the
    /// journal before its runs are registered, and a handle looking meanwhile waits for
    /// the resume rather than take a pending run for one that cannot run here.
    pub(super) resuming: Mutex<Vec<(String, watch::Receiver<bool>)>>,
    /// Counts resumes begun and ended: a handle that read a run as pending while it
    /// changed looks again.
    pub(super) resumes: std::sync::atomic::AtomicU64,
    /// The queues the runtime was built with, by name.
    pub(super) queues: HashMap<Arc<str>, super::queue::Queue>,
    /// Where the outcomes of queued workflows go, by id, for the handles that watch
    /// them before a dispatch hands them to this runtime: the run takes the sender.
    pub(super) waiting: Mutex<HashMap<Arc<str>, watch::Sender<Option<Outcome>>>>,
    /// Where the workflows this runtime enqueued on a shared journal go to be watched
    /// for an outcome another runtime records (see [`Inner::watch_queued`]); the
    /// watching task starts with the first.
    pub(super) queued_watch: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Arc<str>>>>,
    /// Counts the dispatched runs launched here: a handle that read a workflow as
    /// waiting while one was launched looks again.
    pub(super) dispatches: std::sync::atomic::AtomicU64,
    /// Whether other runtimes may share the journal (PostgreSQL): a queued workflow
    /// may then be dispatched to one of them.
    pub(super) shared: bool,
    /// The clock schedules read: the real one, or a test's.
    pub(super) clock: super::schedule::Clock,
    /// The schedules running here, by name.
    pub(super) schedules: super::schedule::Schedules,
    /// The task that applies clients' commands (a SQLite journal's owner only).
    pub(super) commands: Mutex<Option<super::commands::CommandTask>>,
}

impl Inner {
    /// Whether every dispatch of a queued workflow comes to this runtime.
    pub(super) fn queues_run_here(&self) -> bool {
        !self.shared
    }
}

/// Holds a resume in [`Inner::resuming`] until dropped.
struct Resuming<'a> {
    inner: &'a Inner,
    done: watch::Sender<bool>,
}

impl Drop for Resuming<'_> {
    fn drop(&mut self) {
        // Counted before it leaves the list: a handle that finds neither it in the list
        // nor the count changed read the journal before the resume began.
        self.inner.resumes.fetch_add(1, Ordering::AcqRel);
        let mine = self.done.subscribe();
        lock(&self.inner.resuming).retain(|(_, rx)| !rx.same_channel(&mine));
        self.done.send_replace(true);
    }
}

/// A run this process is executing.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) name: &'static str,
    /// The workflow that started it as its child.
    pub(super) parent_id: Option<Arc<str>>,
    /// What its handles watch. Made when first asked for, for a run re-parked at open
    /// (see [`Running::outcome`]): a dormant run nobody watches costs no channel.
    pub(super) outcome: Option<watch::Receiver<Option<Outcome>>>,
    pub(super) state: RunState,
    /// For a run `start` made: what its start returns, once the journal has answered
    /// its creation. A second `start` of the id joins it only then, and returns the
    /// same: `Ok` once the run is journaled, or the first start's error. `None` for a
    /// run read from the journal.
    pub(super) admitted: Option<watch::Receiver<Option<Result<()>>>>,
}

/// Whether a run's body is in memory.
#[derive(Debug)]
pub(super) enum RunState {
    /// Its body runs (or waits) in a task of its own.
    Live(Arc<WorkflowCtx>),
    /// Its body was dropped while it waited; it is rebuilt by replay when woken.
    Dormant(Box<super::dormant::DormantRun>),
}

/// What `start` found under an id already in `running`.
enum Found {
    /// A run to join: its outcome, and whether it is journaled yet.
    Join(
        watch::Receiver<Option<Outcome>>,
        Option<watch::Receiver<Option<Result<()>>>>,
    ),
    /// A cancelled run winding down: wait for its end, then look again.
    WindingDown(watch::Receiver<Option<Outcome>>),
}

impl Running {
    /// The run's context, if its body is in memory.
    pub(super) fn live(&self) -> Option<&Arc<WorkflowCtx>> {
        match &self.state {
            RunState::Live(ctx) => Some(ctx),
            RunState::Dormant(_) => None,
        }
    }

    /// What its handles watch: its outcome, once it has one.
    pub(super) fn outcome(&mut self) -> watch::Receiver<Option<Outcome>> {
        if let Some(rx) = &self.outcome {
            return rx.clone();
        }
        // Only a dormant run has none yet (a live one's is made with it): its rebuild
        // publishes to the sender kept here.
        let (tx, rx) = watch::channel(None);
        if let RunState::Dormant(d) = &mut self.state {
            d.tx = Some(tx);
        }
        self.outcome = Some(rx.clone());
        rx
    }

    /// Why the run was cancelled, if it was (a dormant run never is: its cancellation
    /// ends it at once).
    pub(super) fn cancelled(&self) -> Option<CancelReason> {
        self.live().and_then(|ctx| ctx.cancelled())
    }
}

/// How long [`Runtime::close`](crate::Runtime::close) lets running step bodies take.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(10);

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

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Inner {
    /// [`Error::Closed`] once the runtime is closing.
    pub(super) fn open(&self) -> Result<()> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Closed {
                path: self.store.path().to_owned(),
            });
        }
        Ok(())
    }

    /// See [`Runtime::close_with_grace`](crate::Runtime::close_with_grace).
    pub(super) async fn close(&self, grace: Duration) -> Result<()> {
        self.closing.store(true, Ordering::Release);
        self.stop_schedules();
        // Its socket's name is free once this returns.
        let commands = lock(&self.commands).take();
        if let Some(mut task) = commands {
            task.0.abort();
            let _ = (&mut task.0).await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        // Runs admitted before the flag was set may still register; look until none is
        // left. Each is asked to stop at its next step boundary, then, after the grace
        // period, at once.
        loop {
            self.stop_dormant();
            let runs: Vec<_> = lock(&self.running)
                .iter()
                .filter_map(|(id, r)| Some((id.clone(), r.live()?.clone(), r.outcome.clone()?)))
                .collect();
            if runs.is_empty() {
                break;
            }
            let forced = tokio::time::Instant::now() >= deadline;
            for (_, ctx, _) in &runs {
                ctx.shut_down(forced);
            }
            let all_settled = async {
                let mut lost = Vec::new();
                for (id, _, mut outcome) in runs {
                    if outcome.wait_for(Option::is_some).await.is_err() {
                        lost.push(id);
                    }
                }
                lost
            };
            let limit = if forced {
                tokio::time::Instant::now() + Duration::from_secs(1)
            } else {
                deadline
            };
            match tokio::time::timeout_at(limit, all_settled).await {
                // Runs whose task ended without an outcome (the tokio runtime that ran
                // them was dropped) never settle: forgotten here, they stay pending in
                // the journal, and the next open resumes them.
                Ok(lost) => self.forget_lost(&lost),
                Err(_) if forced => {
                    tracing::warn!(
                        "runs did not stop within a second of being dropped; closing the \
                         journal anyway"
                    );
                    break;
                }
                Err(_) => {}
            }
        }
        let store = self.store.clone();
        blocking(self.store.path(), move || store.close()).await??;
        Ok(())
    }

    /// Forgets the runs of `ids` whose outcome can no longer come: their task ended
    /// without one (dropped with the tokio runtime it ran on).
    fn forget_lost(&self, ids: &[Arc<str>]) {
        if ids.is_empty() {
            return;
        }
        let mut running = lock(&self.running);
        for id in ids {
            let lost = running.get(id).is_some_and(|r| {
                r.outcome
                    .as_ref()
                    .is_some_and(|o| o.has_changed().is_err() && o.borrow().is_none())
            });
            if lost {
                tracing::warn!(
                    workflow = %id,
                    "a run ended without an outcome (the tokio runtime it ran on was \
                     dropped); it stays pending, and the next open resumes it"
                );
                running.remove(id);
            }
        }
    }

    /// Publishes a run's outcome and forgets the run.
    pub(super) fn settle(
        &self,
        id: &Arc<str>,
        tx: &watch::Sender<Option<Outcome>>,
        outcome: Outcome,
    ) {
        if matches!(&*outcome, Err(Error::Store(e)) if e.kind() == StoreErrorKind::TakenOver) {
            // Another runtime sharing the journal took the workflow over, and runs it
            // now: its handles here follow it there, to the outcome it ends with.
            let parent = lock(&self.running).remove(id).and_then(|r| r.parent_id);
            self.watch_elsewhere(id.clone(), tx.clone());
            if let Some(parent) = parent {
                self.dormancy.wake(parent);
            }
            return;
        }
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
        let parent = running.remove(id).and_then(|r| r.parent_id);
        drop(running);
        // A parent waiting for this child may be dormant: it is rebuilt, and finds the
        // child's outcome.
        if let Some(parent) = parent {
            self.dormancy.wake(parent);
        }
    }

    /// Adds a run to `running` (locked by the caller, who made sure the id is free) and
    /// makes its context.
    pub(super) fn register(
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
    pub(super) fn new_run(
        self: &Arc<Self>,
        id: &Arc<str>,
        name: &'static str,
        parent_id: Option<Arc<str>>,
    ) -> (Running, Arc<WorkflowCtx>, watch::Sender<Option<Outcome>>) {
        self.new_run_publishing(id, name, parent_id, None)
    }

    /// [`new_run`](Self::new_run), publishing its outcome to `tx` if given (the
    /// handles of a queued workflow watch it from before its dispatch).
    pub(super) fn new_run_publishing(
        self: &Arc<Self>,
        id: &Arc<str>,
        name: &'static str,
        parent_id: Option<Arc<str>>,
        tx: Option<watch::Sender<Option<Outcome>>>,
    ) -> (Running, Arc<WorkflowCtx>, watch::Sender<Option<Outcome>>) {
        // A new run of this id: why an earlier one stopped no longer says anything.
        lock(&self.stopped).remove(id);
        let tx = tx.unwrap_or_else(|| watch::channel(None).0);
        let rx = tx.subscribe();
        let ctx = self.new_ctx(id, name);
        let run = Running {
            name,
            parent_id,
            outcome: Some(rx),
            state: RunState::Live(ctx.clone()),
            admitted: None,
        };
        (run, ctx, tx)
    }

    /// The context of a new execution of run `id`, a workflow `name`, with its span.
    pub(super) fn new_ctx(self: &Arc<Self>, id: &Arc<str>, name: &str) -> Arc<WorkflowCtx> {
        #[cfg_attr(not(feature = "testkit"), allow(unused_mut))]
        let mut ctx = WorkflowCtx::new(
            id.clone(),
            self.store.clone(),
            Some(Arc::downgrade(&(self.clone() as Arc<dyn Runs>))),
            self.codec,
        );
        ctx.dormancy = self.dormancy.of_run();
        ctx.states = self.states.clone();
        ctx.trace_values = self.trace_values;
        ctx.span = crate::trace::workflow(id, name, self.store.path());
        #[cfg(feature = "testkit")]
        {
            ctx.instrument = self.instrument.clone();
        }
        Arc::new(ctx)
    }

    /// Starts `launch` as workflow `id`, unless `id` exists (see
    /// [`Runtime::start_with_id`](crate::Runtime::start_with_id)); returns what its handles watch.
    pub(crate) async fn start(
        self: &Arc<Self>,
        id: Arc<str>,
        launch: Launch,
    ) -> Result<watch::Receiver<Option<Outcome>>> {
        self.open()?;
        let name = launch.def.name();
        let (ctx, tx, joiners_wait) = loop {
            let found = {
                let mut running = lock(&self.running);
                // Checked again under the lock `close` looks through: a run is either
                // in `running` before `close` looks, or refused.
                self.open()?;
                match running.entry(id.clone()) {
                    Entry::Vacant(v) => {
                        let (mut run, ctx, tx) = self.new_run(&id, name, launch.parent_id.clone());
                        let (joiners_wait, joiners) = watch::channel(None);
                        run.admitted = Some(joiners);
                        v.insert(run);
                        break (ctx, tx, joiners_wait);
                    }
                    Entry::Occupied(mut e) if e.get().cancelled().is_none() => {
                        let r = e.get_mut();
                        if let Some(parent) = &launch.parent_id
                            && r.parent_id.as_ref() != Some(parent)
                        {
                            return Err(child_taken(&id, parent));
                        }
                        if r.name != name {
                            return Err(mismatch(&id, r.name, name));
                        }
                        Found::Join(r.outcome(), r.admitted.clone())
                    }
                    // A run winding down from a cancellation is not the run to join:
                    // what it ends with is its cancellation, while the journal may hold
                    // it resumed by now. Let it end, then look again.
                    Entry::Occupied(mut e) => Found::WindingDown(e.get_mut().outcome()),
                }
            };
            match found {
                Found::Join(outcome, admitted) => {
                    // Started by another call that may not have journaled it yet: this
                    // call returns when that one does, with what it returns.
                    let Some(mut admitted) = admitted else {
                        return Ok(outcome);
                    };
                    let started = match admitted.wait_for(Option::is_some).await {
                        Ok(started) => started.clone(),
                        Err(_) => None,
                    };
                    return match started {
                        Some(Ok(())) => Ok(outcome),
                        Some(Err(e)) => Err(e),
                        // The start's task was dropped: the runtime is shutting down.
                        None => Err(Error::Stopped {
                            workflow_id: id.to_string(),
                        }),
                    };
                }
                Found::WindingDown(mut winding_down) => {
                    let _ = winding_down.wait_for(Option::is_some).await;
                }
            }
        };
        let outcome = tx.subscribe();
        // The id is now claimed in `running`. The rest happens in a task of its own, so
        // a caller that stops waiting (a timeout, a dropped request) cannot leave the
        // claim behind without a run.
        let (reply, admitted) = oneshot::channel();
        tokio::spawn(admit(self.clone(), ctx, launch, tx, reply, joiners_wait));
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
        let mut waited = false;
        let record = loop {
            let epoch = self.resumes.load(Ordering::Acquire);
            let dispatches = self.dispatches.load(Ordering::Acquire);
            let winding_down = match lock(&self.running).get_mut(id) {
                Some(r) if r.cancelled().is_none() || waited => return Ok(r.outcome()),
                Some(r) => Some(r.outcome()),
                None => None,
            };
            if let Some(mut winding_down) = winding_down {
                // A run winding down from a cancellation: what it ends with is its
                // cancellation, while the journal may hold the workflow resumed by
                // now. Let it end, then look again.
                let _ = winding_down.wait_for(Option::is_some).await;
                waited = true;
                continue;
            }
            let record = self.record(id).await?.ok_or_else(|| Error::NotFound {
                workflow_id: id.to_owned(),
            })?;
            if let Some(e) = self.why_held(&record) {
                // Stopped here, and held in its queue until the next open.
                return Ok(watch::channel(Some(Arc::new(Err(e)))).1);
            }
            if self.is_waiting(&record) {
                let running = lock(&self.running);
                if running.contains_key(id) || self.dispatches.load(Ordering::Acquire) != dispatches
                {
                    // Dispatched here meanwhile: look again.
                    continue;
                }
                // Under the lock a dispatched run is registered under: the run, once
                // launched, publishes to this.
                let (rx, _) = self.waiting_outcome(&Arc::from(id));
                drop(running);
                if !self.queues_run_here() {
                    // Dispatched to another runtime sharing the journal, perhaps.
                    let tx = lock(&self.waiting).get(id).cloned();
                    if let Some(tx) = tx {
                        self.watch_elsewhere(Arc::from(id), tx);
                    }
                }
                return Ok(rx);
            }
            if record.status == RecordStatus::Pending
                && self.resumes.load(Ordering::Acquire) != epoch
            {
                // A resume began or ended during the read: it may have made the run
                // pending and registered it. Look again.
                continue;
            }
            // Pending and not running: a resume of its family may be registering it.
            let resumes: Vec<_> = match record.status {
                RecordStatus::Pending => lock(&self.resuming)
                    .iter()
                    .filter(|(root, _)| in_family(root, id))
                    .map(|(_, rx)| rx.clone())
                    .collect(),
                _ => Vec::new(),
            };
            if resumes.is_empty() {
                break record;
            }
            for mut done in resumes {
                let _ = done.wait_for(|d| *d).await;
            }
        };
        let (tx, rx) = watch::channel(None);
        match record.status {
            RecordStatus::Pending if record.elsewhere && record.damage().is_none() => {
                self.watch_elsewhere(Arc::from(id), tx);
            }
            // Pending but not running here: it could not be resumed (see
            // `Runtime::unrecoverable`); the handle reports it as stopped, or as damaged.
            RecordStatus::Pending => {
                let why = record
                    .damage()
                    .or_else(|| lock(&self.stopped).get(id).cloned());
                match why {
                    Some(e) => drop(tx.send_replace(Some(Arc::new(Err(e))))),
                    // On a shared journal, one this runtime has just claimed (taken over,
                    // or resumed or forked by a client) and not yet registered: the
                    // handle follows it to its outcome.
                    None if self.shared => self.watch_elsewhere(Arc::from(id), tx),
                    None => drop(tx),
                }
            }
            _ => {
                tx.send_replace(Some(Arc::new(recorded_outcome(self.store.path(), record))));
            }
        }
        Ok(rx)
    }

    /// Publishes on `tx` the outcome of workflow `id`, which another runtime sharing
    /// the journal runs (or will: one that claims it), once the journal holds it: read
    /// every 50 ms at first, every half second after a while. Stops when nobody watches
    /// `tx` any more, or the journal closes.
    pub(super) fn watch_elsewhere(&self, id: Arc<str>, tx: watch::Sender<Option<Outcome>>) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut every = Duration::from_millis(50);
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(every) => {}
                }
                every = (every * 2).min(Duration::from_millis(500));
                let reader = store.clone();
                let wanted = id.clone();
                let read = blocking(store.path(), move || reader.workflow(&wanted)).await;
                match read.and_then(|r| r) {
                    Ok(Some(r)) if r.status != RecordStatus::Pending => {
                        let outcome = recorded_outcome(store.path(), r);
                        tx.send_replace(Some(Arc::new(outcome)));
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tx.send_replace(Some(Arc::new(Err(Error::NotFound {
                            workflow_id: id.to_string(),
                        }))));
                        return;
                    }
                    Err(e) if e.kind() == StoreErrorKind::Closed => return,
                    Err(e) => {
                        tracing::debug!(workflow = %id, "watching a workflow another runtime runs: {e}");
                    }
                }
            }
        });
    }

    /// Workflow `id` as the journal holds it.
    pub(crate) async fn record(&self, id: &str) -> Result<Option<WorkflowRecord>> {
        let store = self.store.clone();
        let id = id.to_owned();
        let read = blocking(self.store.path(), move || store.workflow(&id)).await?;
        read.map_err(|e| self.closed_or(e))
    }

    /// The reply to one write, waited for.
    pub(super) async fn acked<T>(&self, ack: Ack<T>) -> Result<T> {
        ack.await.map_err(|e| self.closed_or(e))
    }

    /// A store error as the caller should see it: the journal closed under a call
    /// because this runtime is closing is [`Error::Closed`], as if the call had come a
    /// moment later.
    pub(super) fn closed_or(&self, e: StoreError) -> Error {
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
    pub(super) async fn cancel_recorded(&self, id: &str, reason: CancelReason) -> Result<bool> {
        let ids = self
            .acked(self.store.cancel(id.to_owned(), reason, now_ms()))
            .await?;
        let itself = ids.iter().any(|w| w == id);
        self.stop_cancelled(Some(id), &ids, reason);
        Ok(itself)
    }

    /// Calls `then` once no run of `id` is in `running` here (the one winding down has
    /// ended), unless the runtime is gone or closing by then.
    pub(super) fn when_wound_down(
        self: &Arc<Self>,
        id: Arc<str>,
        then: impl FnOnce(&Arc<Inner>) + Send + 'static,
    ) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.closing.load(Ordering::Acquire) {
                    return;
                }
                if !lock(&inner.running).contains_key(&id) {
                    then(&inner);
                    return;
                }
            }
        });
    }

    /// Stops this runtime's runs of those of `ids` that the journal records as
    /// cancelled (by another process).
    pub(super) async fn stop_recorded_cancels(&self, ids: Vec<Arc<str>>) {
        let store = self.store.clone();
        let read = blocking(self.store.path(), move || store.finished_among(&ids)).await;
        match read.and_then(|r| r) {
            Ok(finished) => {
                for r in finished {
                    if let Some(reason) = r.cancelled {
                        self.stop_cancelled(None, &[r.id], reason);
                    }
                }
            }
            // Each stops at its next step instead, or with the runtime.
            Err(e) => tracing::debug!(error = %e, "could not read what another process cancelled"),
        }
    }

    /// Stops this runtime's runs of `ids`, which the journal records as cancelled for
    /// `reason` (by a cancel of `id` here, or by another process), and settles what
    /// waits for them.
    pub(super) fn stop_cancelled(&self, id: Option<&str>, ids: &[String], reason: CancelReason) {
        let mut dormant = Vec::new();
        {
            let mut running = lock(&self.running);
            for w in ids.iter().map(String::as_str).chain(id) {
                match running.get(w).map(|r| &r.state) {
                    Some(RunState::Live(ctx)) => {
                        tracing::info!(workflow = w, %reason, "cancelling workflow");
                        ctx.cancel(reason);
                    }
                    // Recorded as cancelled, as pending or not: a dormant run ends
                    // here, as its body would have at once.
                    Some(RunState::Dormant(_)) if ids.iter().any(|c| c == w) => {
                        tracing::info!(workflow = w, %reason, "cancelling dormant workflow");
                        let why = Error::Cancelled {
                            workflow_id: w.to_owned(),
                            reason,
                        };
                        dormant.extend(self.end_dormant(&mut running, w, why));
                    }
                    _ => {}
                }
            }
        }
        for w in ids {
            self.settle_waiting(
                w,
                Arc::new(Err(Error::Cancelled {
                    workflow_id: w.clone(),
                    reason,
                })),
            );
        }
        // Their parents, if dormant, find them cancelled.
        for parent in dormant.into_iter().filter_map(|r| r.parent_id) {
            self.dormancy.wake(parent);
        }
    }

    pub(super) async fn resume(self: &Arc<Self>, id: &str) -> Result<()> {
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
        // not finish a row that is pending again.
        let winding: Vec<_> = lock(&self.running)
            .iter_mut()
            .filter(|(w, r)| in_family(id, w) && r.cancelled().is_some())
            .map(|(_, r)| r.outcome())
            .collect();
        for mut outcome in winding {
            let _ = outcome.wait_for(Option::is_some).await;
        }
        let (done, watching) = watch::channel(false);
        lock(&self.resuming).push((id.to_owned(), watching));
        self.resumes.fetch_add(1, Ordering::AcqRel);
        let _resuming = Resuming { inner: self, done };
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
            if self.is_waiting(&record) {
                // Queued again: a dispatch runs it.
                continue;
            }
            if !self.launch_recorded(record) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Runs `record`, a pending run of the journal, in this runtime, unless one of it
    /// runs here already. Answers `false` if the runtime is closing (the run is left to
    /// the next open).
    pub(super) fn launch_recorded(self: &Arc<Self>, record: WorkflowRecord) -> bool {
        let Some(def) = self.registry.get(record.name.as_str()).copied() else {
            tracing::warn!(workflow = %record.id, name = %record.name, "its workflow is not linked into this program; it stays pending");
            return true;
        };
        let id: Arc<str> = Arc::from(record.id.as_str());
        let mut running = lock(&self.running);
        if self.closing.load(Ordering::Acquire) {
            // Under the lock `close` looks through: it either sees this run and stops
            // it, or the run is left to the next open.
            return false;
        }
        if running.contains_key(&id) {
            // Started meanwhile (a resumed parent's replay starts its children): one
            // run only.
            return true;
        }
        let parent = record.parent_id.map(Arc::<str>::from);
        let (ctx, tx) = self.register(&mut running, &id, def.name(), parent);
        drop(running);
        tracing::info!(
            target: crate::trace::TARGET,
            workflow = %id,
            name = def.name(),
            "takeover: running a workflow from its journal"
        );
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
        true
    }
}

/// Journals a new run (or finds the existing one), replies to the caller of
/// `start_with_id` if it is still waiting, and then drives the run in this same task.
pub(super) async fn admit(
    inner: Arc<Inner>,
    ctx: Arc<WorkflowCtx>,
    launch: Launch,
    tx: watch::Sender<Option<Outcome>>,
    reply: oneshot::Sender<Result<()>>,
    admitted: watch::Sender<Option<Result<()>>>,
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
            queued: None,
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
            (None, RecordStatus::Pending) if inner.is_waiting(&record) => {
                // Waiting in a queue: its handles follow it there.
                lock(&inner.running).remove(&id);
                match inner.outcome_of(&id).await {
                    Ok(mut waiting) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let outcome = waiting
                                .wait_for(Option::is_some)
                                .await
                                .ok()
                                .map(|o| o.clone());
                            if let Some(outcome) = outcome.flatten() {
                                tx.send_replace(Some(outcome));
                            }
                        });
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            (None, RecordStatus::Pending) if record.elsewhere => {
                // Another runtime sharing the journal runs it: watch for its outcome.
                lock(&inner.running).remove(&id);
                inner.watch_elsewhere(id.clone(), tx.clone());
                Ok(None)
            }
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
        Ok(Created::Duplicate(record)) => Err(Error::Store(StoreError::new(
            inner.store.path(),
            StoreErrorKind::Invariant,
            format!(
                "a start of workflow {id} was answered as a duplicate of {}",
                record.id
            ),
        ))),
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
            // Calls that joined this start return what it returns.
            admitted.send_replace(Some(Err(e.clone())));
            // The caller may have stopped waiting; nothing runs either way.
            let _ = reply.send(Err(e));
        }
        Ok(run) => {
            admitted.send_replace(Some(Ok(())));
            // The caller may have stopped waiting; the run goes on regardless.
            let _ = reply.send(Ok(()));
            if let Some((input, history, deadline_at)) = run {
                drive(inner, ctx, def, input, history, deadline_at, tx).await;
            }
        }
    }
}

/// Whether workflow `id` is `root` or one of its descendants, whose ids start with
/// their parent's and a `/`.
fn in_family(root: &str, id: &str) -> bool {
    id.strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub(super) fn child_taken(id: &str, parent: &str) -> Error {
    Error::ChildIdTaken {
        workflow_id: id.to_owned(),
        parent_id: parent.to_owned(),
    }
}

pub(super) fn mismatch(id: &str, existing: &str, requested: &str) -> Error {
    Error::WorkflowMismatch {
        workflow_id: id.to_owned(),
        existing: existing.to_owned(),
        requested: requested.to_owned(),
    }
}

/// What a finished run recorded as its outcome; never a value that fails its checksum.
pub(super) fn recorded_outcome(path: &Path, record: WorkflowRecord) -> Result<Vec<u8>> {
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
pub(super) fn closed_error(path: &Path) -> Error {
    Error::Store(StoreError::new(
        path,
        StoreErrorKind::Closed,
        "the close did not finish: the tokio runtime it ran on shut down",
    ))
}

/// Refuses `operation` inside a workflow body, where a replay would do it again.
pub(crate) fn refuse_in_workflow(operation: &'static str, hint: &'static str) -> Result<()> {
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

pub(super) const MAX_ID_BYTES: usize = 512;

pub(crate) fn validate_id(id: String) -> Result<String> {
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

pub(super) async fn drive(
    inner: Arc<Inner>,
    ctx: Arc<WorkflowCtx>,
    def: &'static dyn ErasedWorkflow,
    input: Vec<u8>,
    history: History,
    deadline_at: Option<i64>,
    tx: watch::Sender<Option<Outcome>>,
) {
    let id = ctx.id.clone();
    let span = ctx.span.clone();
    let executed = execute(&ctx, def, &input, history, deadline_at)
        .instrument(span.clone())
        .await;
    let result = match executed {
        Ok(Ran::Output(output)) => Ok(output),
        Ok(Ran::Dormant(asleep)) => {
            crate::trace::outcome(&span, "dormant");
            drop(input);
            inner.fall_asleep(ctx, def, tx, asleep);
            return;
        }
        Err(e) => Err(e),
    };
    let (finished, outcome) = match &result {
        Ok(output) => (Some(Finished::Completed(output.clone())), "completed"),
        Err(Error::Failed { kind, message, .. }) => {
            (Some(Finished::Failed(*kind, message.clone())), "failed")
        }
        // Recorded by whoever cancelled it (see `admit` for a cancel that came first).
        Err(Error::Cancelled { .. }) => (None, "cancelled"),
        // Stopped by a closing runtime: pending, resumed at the next open.
        Err(e @ (Error::Stopped { .. } | Error::Closed { .. }))
            if inner.closing.load(Ordering::Acquire) =>
        {
            tracing::info!(workflow = %id, "{e}");
            (None, "closed")
        }
        // Divergence, corrupt rows and journal errors leave the run pending: they are
        // fixed outside the workflow (code, data, disk), and the next open resumes it.
        Err(e) => {
            let diverged_at = match e {
                Error::Divergence { path, .. } => Some(tracing::field::display(path)),
                _ => None,
            };
            tracing::error!(
                target: crate::trace::TARGET,
                parent: &span,
                workflow = %id,
                path = diverged_at,
                "{}{e}; the workflow stays pending in the journal",
                if diverged_at.is_some() { "divergence: " } else { "" }
            );
            // A queued workflow frees its slot (held until the next open); a no-op
            // for any other.
            if let Err(e) = inner.store.hold(id.clone()).await {
                tracing::warn!(workflow = %id, "cannot free its queue slot: {e}");
            }
            (None, "stopped")
        }
    };
    crate::trace::outcome(&span, outcome);
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
