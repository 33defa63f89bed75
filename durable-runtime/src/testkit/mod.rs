//! What `durable-testkit` reaches inside the runtime: a store wrapper that injects
//! crashes and delays and records what happened, a deliberately broken store, and
//! replay without running step bodies.
//!
//! Not API: hidden from the docs and free to change in any release. Use the testkit.

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::RuntimeBuilder;
use crate::engine::context::Instrument;
use crate::error::{CancelReason, Error, StoreError};
use crate::journal::{
    Ack, Created, Dormant, Finish, NewMessage, NewWorkflow, RecordedStep, SideRecords, StepKey,
    StepRecord, Store, TxStep, Wait, WaitRecord, WorkflowRecord,
};
use crate::path::StepPath;
use crate::util::lock;

mod replay;

/// One step of one workflow run: the checked workflow's, or a child's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepAt {
    /// The run the step belongs to.
    pub workflow_id: String,
    /// The step's path in that run.
    pub path: StepPath,
}

impl StepAt {
    fn of(workflow_id: &str, path: &StepPath) -> Self {
        StepAt {
            workflow_id: workflow_id.to_owned(),
            path: path.clone(),
        }
    }
}

impl fmt::Display for StepAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Child workflow ids are `<parent>/<path>`; the checked workflow's has no `/`.
        if self.workflow_id.contains('/') {
            write!(f, "{} of child workflow {}", self.path, self.workflow_id)
        } else {
            write!(f, "{}", self.path)
        }
    }
}

/// Where a simulated crash happens, relative to one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashPoint {
    /// When the step's checkpoint reaches the store: its body has finished, its record
    /// is never written.
    BeforeCommit(StepAt),
    /// The moment the store acknowledges the step's checkpoint as durable, before the
    /// workflow hears of it.
    AfterCommit(StepAt),
    /// When the workflow's outcome reaches the store.
    BeforeFinish,
    /// The moment the store acknowledges the workflow's outcome.
    AfterFinish,
}

/// Something the probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step body started an attempt.
    BodyStarted {
        /// The step.
        at: StepAt,
        /// The step's name.
        name: &'static str,
    },
    /// The store acknowledged a step's checkpoint as durable.
    Committed {
        /// The step.
        at: StepAt,
        /// The step's name.
        name: &'static str,
    },
    /// The simulated crash happened.
    Crashed,
}

/// Fault injection and instrumentation for one runtime. Give it to
/// [`RuntimeBuilder::probe`](crate::RuntimeBuilder::probe).
pub struct Probe {
    crash_at: Option<CrashPoint>,
    delays: Option<Mutex<SplitMix>>,
    ack_before_durable: bool,
    events: Mutex<Vec<Event>>,
    crashed: watch::Sender<bool>,
    /// Replies that must never be delivered: the process they belong to has "died".
    held: Mutex<Vec<Box<dyn Any + Send>>>,
    /// Set at the crash: the journal commits nothing more.
    halt: Arc<AtomicBool>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("crash_at", &self.crash_at)
            .field("ack_before_durable", &self.ack_before_durable)
            .field("crashed", &*self.crashed.borrow())
            .finish_non_exhaustive()
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            crash_at: None,
            delays: None,
            ack_before_durable: false,
            events: Mutex::default(),
            crashed: watch::Sender::new(false),
            held: Mutex::default(),
            halt: Arc::default(),
        }
    }
}

impl Probe {
    /// A probe that only records.
    pub fn new() -> Self {
        Probe::default()
    }

    /// Crash at `point`: from then on nothing more reaches the journal, the store
    /// stops without committing what it holds, and no reply reaches the workflow.
    pub fn crash_at(mut self, point: CrashPoint) -> Self {
        self.crash_at = Some(point);
        self
    }

    /// Delay each checkpoint's acknowledgement by a seeded random amount (none, a few
    /// scheduler yields, or up to 3 ms), so concurrent steps complete in varied orders.
    pub fn delay_acks(mut self, seed: u64) -> Self {
        self.delays = Some(Mutex::new(SplitMix(seed)));
        self
    }

    /// Put a deliberately broken store under the probe: it acknowledges each checkpoint
    /// as soon as it receives it and writes it only when the next write arrives.
    pub fn ack_before_durable(mut self) -> Self {
        self.ack_before_durable = true;
        self
    }

    /// What the probe saw, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// Whether the crash has happened.
    pub fn is_crashed(&self) -> bool {
        *self.crashed.borrow()
    }

    /// Waits for the crash.
    pub async fn crashed(&self) {
        let mut rx = self.crashed.subscribe();
        // The sender lives in `self`, so this ends only when the crash happens.
        let _ = rx.wait_for(|crashed| *crashed).await;
    }

    fn log(&self, event: Event) {
        lock(&self.events).push(event);
    }

    fn crash(&self) {
        if self.crashed.send_replace(true) {
            return;
        }
        self.halt.store(true, Ordering::SeqCst);
        self.log(Event::Crashed);
    }

    fn delay(&self) -> Delay {
        let Some(rng) = &self.delays else {
            return Delay::None;
        };
        let r = lock(rng).next();
        match r % 10 {
            0..=3 => Delay::None,
            4..=6 => Delay::Yields((r >> 8) as u32 % 20 + 1),
            _ => Delay::Sleep(Duration::from_micros((r >> 8) % 3_000)),
        }
    }
}

enum Delay {
    None,
    Yields(u32),
    Sleep(Duration),
}

/// splitmix64: small and seedable.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The store the runtime sees when a [`Probe`] is given.
#[derive(Debug)]
struct ProbeStore {
    inner: Arc<dyn Store>,
    probe: Arc<Probe>,
    journal: Arc<Path>,
}

impl ProbeStore {
    /// A reply that never arrives.
    fn hold<T: Send + 'static>(&self) -> Ack<T> {
        let (tx, ack) = Ack::channel(&self.journal);
        lock(&self.probe.held).push(Box::new(tx));
        ack
    }

    /// Forwards a checkpoint's reply to the workflow, unless the process has "died":
    /// logs it as committed, crashes if the plan says so, delays it if asked to.
    fn relay<T: Send + 'static>(
        &self,
        ack: Ack<T>,
        committed: Option<Event>,
        crash_after: bool,
    ) -> Ack<T> {
        let (tx, relayed) = Ack::channel(&self.journal);
        let probe = self.probe.clone();
        tokio::spawn(async move {
            let reply = ack.await;
            if reply.is_ok() {
                if let Some(event) = committed {
                    probe.log(event);
                }
                if crash_after {
                    probe.crash();
                }
            }
            match probe.delay() {
                Delay::None => {}
                Delay::Yields(n) => {
                    for _ in 0..n {
                        tokio::task::yield_now().await;
                    }
                }
                Delay::Sleep(d) => tokio::time::sleep(d).await,
            }
            if probe.is_crashed() {
                lock(&probe.held).push(Box::new(tx));
                return;
            }
            let _ = tx.send(reply);
        });
        relayed
    }
}

/// The reads of a wrapping store: each goes to `self.inner`.
macro_rules! forward_reads {
    () => {
        fn takeovers(&self, to: tokio::sync::mpsc::UnboundedSender<Arc<str>>) {
            self.inner.takeovers(to);
        }

        fn cancellations(&self, to: tokio::sync::mpsc::UnboundedSender<Option<Arc<str>>>) {
            self.inner.cancellations(to);
        }

        fn queue_news(
            &self,
            to: tokio::sync::mpsc::UnboundedSender<crate::journal::queue::QueueNews>,
        ) {
            self.inner.queue_news(to);
        }

        fn set_queue(&self, set: crate::journal::queue::SetLimits) -> Ack {
            self.inner.set_queue(set)
        }

        fn dispatch(&self) -> Ack {
            self.inner.dispatch()
        }

        fn hold(&self, id: Arc<str>) -> Ack {
            self.inner.hold(id)
        }

        fn queue_stats(
            &self,
            queue: &str,
        ) -> Result<crate::journal::queue::QueueStats, StoreError> {
            self.inner.queue_stats(queue)
        }

        fn queued(
            &self,
            queue: &str,
            limit: usize,
        ) -> Result<Vec<crate::journal::queue::QueuedRow>, StoreError> {
            self.inner.queued(queue, limit)
        }
        fn list(
            &self,
            query: &crate::journal::listing::ListQuery,
        ) -> Result<crate::journal::listing::ListPage, StoreError> {
            self.inner.list(query)
        }

        fn view(&self, id: &str) -> Result<Option<crate::WorkflowView>, StoreError> {
            self.inner.view(id)
        }

        fn fork(
            &self,
            spec: crate::journal::ForkSpec,
        ) -> Result<crate::journal::Forked, StoreError> {
            self.inner.fork(spec)
        }

        fn gc_batch(
            &self,
            cutoff_ms: i64,
            after: i64,
        ) -> Result<crate::journal::retention::GcBatch, StoreError> {
            self.inner.gc_batch(cutoff_ms, after)
        }

        fn gc_commands(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
            self.inner.gc_commands(cutoff_ms)
        }

        fn vacuum_step(&self) -> Result<i64, StoreError> {
            self.inner.vacuum_step()
        }

        fn reclaims(&self) -> Result<bool, StoreError> {
            self.inner.reclaims()
        }

        fn commands(&self) -> Result<Vec<crate::journal::command::PendingCommand>, StoreError> {
            self.inner.commands()
        }

        fn apply_command(&self, seq: i64, outcome: String, send: Option<NewMessage>) -> Ack<bool> {
            self.inner.apply_command(seq, outcome, send)
        }

        fn queue_of(&self, id: &str) -> Result<Option<Option<String>>, StoreError> {
            self.inner.queue_of(id)
        }

        fn set_schedule(&self, write: crate::journal::schedule::ScheduleWrite) -> Ack {
            self.inner.set_schedule(write)
        }

        fn schedule_state(
            &self,
            name: &str,
        ) -> Result<Option<crate::journal::schedule::ScheduleState>, StoreError> {
            self.inner.schedule_state(name)
        }

        fn steps_after(
            &self,
            workflow_id: &str,
            after: Option<&crate::path::StepPath>,
            limit: usize,
        ) -> Result<Vec<RecordedStep>, StoreError> {
            self.inner.steps_after(workflow_id, after, limit)
        }

        fn side_records(&self, workflow_id: &str) -> Result<SideRecords, StoreError> {
            self.inner.side_records(workflow_id)
        }

        fn histories(
            &self,
            ids: &[Arc<str>],
            limit: usize,
        ) -> Result<Vec<Result<crate::journal::History, StoreError>>, StoreError> {
            self.inner.histories(ids, limit)
        }

        fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
            self.inner.workflow(id)
        }

        fn pending_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
            self.inner.pending_workflows()
        }

        fn pending_summary(&self) -> Result<(u64, Option<i64>), StoreError> {
            self.inner.pending_summary()
        }

        fn writer_alive(&self) -> bool {
            self.inner.writer_alive()
        }

        fn restore_dormant(
            &self,
            builds: Option<&crate::journal::Builds>,
            wakes: crate::journal::Wakes,
        ) -> Result<Vec<crate::journal::Restored>, StoreError> {
            self.inner.restore_dormant(builds, wakes)
        }

        fn check(&self) -> Result<Vec<crate::journal::Damage>, StoreError> {
            self.inner.check()
        }

        #[cfg(any(test, feature = "bench"))]
        fn commits(&self) -> u64 {
            self.inner.commits()
        }
    };
}

/// The primitives' writes of a wrapping store: each goes to `self.inner` after
/// `$before` (an expression that may return early with an `Ack`).
macro_rules! forward_primitive_writes {
    ($self:ident => $before:expr) => {
        fn record_started(&$self, key: StepKey, at: i64) -> Ack {
            $before;
            $self.inner.record_started(key, at)
        }

        fn record_patch(&$self, workflow_id: Arc<str>, path: StepPath, name: &'static str) -> Ack {
            $before;
            $self.inner.record_patch(workflow_id, path, name)
        }

        fn send(&$self, message: NewMessage) -> Ack {
            $before;
            $self.inner.send(message)
        }

        fn wait(&$self, wait: Wait) -> Ack<Option<Vec<u8>>> {
            $before;
            $self.inner.wait(wait)
        }

        fn expire(&$self, wait: WaitRecord) -> Ack<Option<Vec<u8>>> {
            $before;
            $self.inner.expire(wait)
        }

        fn give_back(&$self, key: StepKey, topic: String) -> Ack {
            $before;
            $self.inner.give_back(key, topic)
        }

        fn cancel(&$self, id: String, reason: CancelReason, at: i64) -> Ack<Vec<String>> {
            $before;
            $self.inner.cancel(id, reason, at)
        }

        fn resume(&$self, id: String, at: i64) -> Ack<Vec<String>> {
            $before;
            $self.inner.resume(id, at)
        }

        fn replayed(&$self, ids: Vec<Arc<str>>, at: i64) -> Ack {
            $before;
            $self.inner.replayed(ids, at)
        }

        fn transaction(&$self, step: TxStep) -> Ack {
            $before;
            $self.inner.transaction(step)
        }

        fn dormant(&$self, dormant: Dormant) -> Ack<bool> {
            $before;
            $self.inner.dormant(dormant)
        }
    };
}

impl Store for ProbeStore {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    forward_primitive_writes!(self => if self.probe.is_crashed() {
        return self.hold();
    });

    fn awake(&self, run: Arc<str>) {
        // After a simulated crash nothing is written.
        if !self.probe.is_crashed() {
            self.inner.awake(run);
        }
    }

    fn create_workflow(&self, workflow: NewWorkflow) -> Ack<Created> {
        if self.probe.is_crashed() {
            return self.hold();
        }
        self.inner.create_workflow(workflow)
    }

    fn record_step(&self, step: StepRecord) -> Ack {
        if self.probe.is_crashed() {
            return self.hold();
        }
        let at = StepAt::of(&step.workflow_id, &step.path);
        let crash_after = match &self.probe.crash_at {
            Some(CrashPoint::BeforeCommit(p)) if *p == at => {
                self.probe.crash();
                return self.hold();
            }
            Some(CrashPoint::AfterCommit(p)) => *p == at,
            _ => false,
        };
        let committed = Event::Committed {
            at,
            name: step.name,
        };
        let ack = self.inner.record_step(step);
        self.relay(ack, Some(committed), crash_after)
    }

    fn finish_workflow(&self, finish: Finish) -> Ack<bool> {
        if self.probe.is_crashed() {
            return self.hold();
        }
        let crash_after = match &self.probe.crash_at {
            Some(CrashPoint::BeforeFinish) => {
                self.probe.crash();
                return self.hold();
            }
            Some(CrashPoint::AfterFinish) => true,
            _ => false,
        };
        let ack = self.inner.finish_workflow(finish);
        self.relay(ack, None, crash_after)
    }

    forward_reads!();

    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

/// A deliberately broken store, for testing the crash check itself: it acknowledges a
/// checkpoint the moment it receives it, and writes it only when the next write
/// arrives (a write-behind buffer without a flush before the acknowledgement). After
/// the simulated crash nothing it forwards commits: the journal is halted.
#[derive(Debug)]
struct AckBeforeDurable {
    inner: Arc<dyn Store>,
    buffer: Mutex<Vec<StepRecord>>,
    journal: Arc<Path>,
}

impl AckBeforeDurable {
    fn flush(&self) {
        for step in lock(&self.buffer).drain(..) {
            // Nobody waits for these: their checkpoints were acknowledged long ago.
            drop(self.inner.record_step(step));
        }
    }
}

impl Store for AckBeforeDurable {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    forward_primitive_writes!(self => self.flush());

    fn awake(&self, run: Arc<str>) {
        self.flush();
        self.inner.awake(run);
    }

    fn create_workflow(&self, workflow: NewWorkflow) -> Ack<Created> {
        self.flush();
        self.inner.create_workflow(workflow)
    }

    fn record_step(&self, step: StepRecord) -> Ack {
        self.flush();
        lock(&self.buffer).push(step);
        let (tx, ack) = Ack::channel(&self.journal);
        let _ = tx.send(Ok(()));
        ack
    }

    fn finish_workflow(&self, finish: Finish) -> Ack<bool> {
        self.flush();
        self.inner.finish_workflow(finish)
    }

    forward_reads!();

    fn close(&self) -> Result<(), StoreError> {
        self.flush();
        self.inner.close()
    }
}

impl Instrument for Probe {
    fn crashed(&self) -> bool {
        self.is_crashed()
    }

    fn body_started(&self, workflow_id: &Arc<str>, path: &StepPath, name: &'static str) {
        self.log(Event::BodyStarted {
            at: StepAt::of(workflow_id, path),
            name,
        });
    }

    fn wrap(self: Arc<Self>, store: Arc<dyn Store>) -> Arc<dyn Store> {
        let journal: Arc<Path> = Arc::from(store.path());
        let inner: Arc<dyn Store> = if self.ack_before_durable {
            Arc::new(AckBeforeDurable {
                inner: store,
                buffer: Mutex::default(),
                journal: journal.clone(),
            })
        } else {
            store
        };
        Arc::new(ProbeStore {
            inner,
            probe: self,
            journal,
        })
    }

    fn halt_switch(&self) -> Arc<AtomicBool> {
        self.halt.clone()
    }
}

impl RuntimeBuilder {
    /// Puts fault injection and instrumentation between the runtime and its journal.
    /// For `durable-testkit` (the `testkit` feature); not API.
    #[doc(hidden)]
    pub fn probe(mut self, probe: Arc<Probe>) -> Self {
        self.instrument = Some(probe);
        self
    }

    /// Opens every connection to the journal through the SQLite VFS registered as
    /// `name` (the testkit's fault-injecting file layer). For `durable-testkit` (the
    /// `testkit` feature); not API.
    #[doc(hidden)]
    pub fn sqlite_vfs(mut self, name: impl Into<String>) -> Self {
        self.options.vfs = Some(name.into());
        self
    }
}

/// One workflow of a journal, replayed against this program's code.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The workflow id.
    pub workflow_id: String,
    /// The workflow's recorded name.
    pub name: String,
    /// Its recorded status: `pending`, `completed` or `failed`.
    pub status: &'static str,
    /// What replaying it found.
    pub verdict: Verdict,
}

/// What replaying one recorded workflow found.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The code asked for exactly the recorded steps.
    Ok {
        /// How many recorded steps were replayed.
        replayed: usize,
    },
    /// A pending workflow: the code asked for the recorded steps, then for a step the
    /// journal does not record yet (the one it would run next).
    Pending {
        /// How many recorded steps were replayed.
        replayed: usize,
        /// The step it would run next.
        next: Option<(StepPath, String)>,
    },
    /// The code and the journal disagree at `path`.
    Diverged {
        /// Where.
        path: StepPath,
        /// The step recorded there (`None`: nothing is recorded there).
        recorded: Option<String>,
        /// The step the code asked for there (`None`: the code finished without it).
        requested: Option<String>,
        /// Set when the code asked for the recorded step with other arguments.
        arguments: Option<Box<crate::error::ArgumentsChanged>>,
    },
    /// The workflow neither finished nor waited for an unrecorded step within 10 s.
    Stuck {
        /// How many recorded steps were replayed.
        replayed: usize,
    },
    /// The workflow could not be replayed: a corrupt row, or a workflow not linked into
    /// this program.
    Error(Error),
}

/// Replays every workflow in the journal at `path` (open a copy: this migrates it).
///
/// # Errors
///
/// If the journal cannot be opened or read.
pub async fn replay_journal(path: &Path) -> Result<Vec<Replayed>, Error> {
    replay::replay_journal(path).await
}

/// An I/O failure around a journal, as a [`StoreError`].
pub fn io_error(path: &Path, e: &dyn fmt::Display) -> StoreError {
    StoreError::new(path, crate::error::StoreErrorKind::Io, e.to_string())
}

/// A PostgreSQL server for tests, as a URL: the one `DATABASE_URL` names, or else one
/// started once per test process in a temporary directory from the PostgreSQL installed
/// under `/usr/lib/postgresql`, stopped (and its directory removed) when the process
/// ends, however it ends. Panics, saying what to install or set, if there is neither.
#[cfg(feature = "postgres")]
pub fn postgres_url() -> String {
    crate::journal::postgres::testing::database_url()
}

#[cfg(feature = "postgres")]
pub use crate::journal::postgres::testing::{Fsync as PostgresFsync, Server as PostgresServer};
