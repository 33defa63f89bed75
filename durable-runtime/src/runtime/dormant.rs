//! Dormant runs: a run whose every live operation has been parked for a while (in a
//! `recv`, a `get_event`, a `sleep`, a child's join) is dropped from memory, body,
//! history and all, and rebuilt by replay when what it waits for may have come.
//!
//! What wakes a dormant run:
//! - a message or an event it waits for: the journal's writer, in place of answering
//!   the wait, sends the run's id once the write commits (see `Store::dormant`);
//! - the end of a sleep, a wait's deadline or the run's own deadline: one timer for all
//!   dormant runs, kept by the task in [`wake_loop`];
//! - a child that settles: [`Inner::settle`] wakes its parent.
//!
//! A wake that finds the run's body still in memory (it is on its way to going dormant)
//! marks it, and the run is rebuilt at once instead of going dormant: nothing that may
//! answer a wait is lost between the two. A wake is only a hint: the rebuilt run
//! replays to its waits, and those that have nothing yet park again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::engine::context::{Dormancy, WorkflowCtx, workflow_build};
use crate::engine::drive::{Asleep, History};
use crate::engine::workflow::{ErasedWorkflow, Outcome};
use crate::error::Error;
use crate::journal::{Builds, RecordStatus};
use crate::util::{lock, now_ms};

use super::registry::{Inner, RunState, Running, drive, recorded_outcome};

/// A run whose body is not in memory: what it takes to rebuild it and to publish its
/// outcome. The input and the history stay in the journal until then.
#[derive(Debug)]
pub(crate) struct DormantRun {
    def: &'static dyn ErasedWorkflow,
    /// Where its outcome goes; `None` until somebody watches it (see
    /// [`Running::outcome`]).
    pub(super) tx: Option<watch::Sender<Option<Outcome>>>,
    /// The journal's wake-ups of its waits hold this weakly: they end with it.
    _alive: Arc<()>,
    /// Which dormancy of the run this is: a timer set for an earlier one is ignored.
    generation: u64,
}

/// What the runtime keeps for its dormant runs.
#[derive(Debug)]
pub(crate) struct Dormancies {
    /// How long a run must have been parked before it goes dormant; `None`: never.
    after: Option<Duration>,
    /// Where the journal sends the ids of dormant runs a write may have woken.
    wakes: crate::journal::Wakes,
    /// What the wake loop is told: timers, and when to look at the count again.
    to_loop: mpsc::UnboundedSender<Notice>,
    /// How many runs are dormant now.
    count: AtomicUsize,
    generations: AtomicU64,
    /// The build of each workflow (see [`build_id`] and `workflow_build`); `None`: the
    /// journal keeps nothing of dormant runs.
    builds: Option<Arc<Builds>>,
}

/// What the wake loop is told.
#[derive(Debug)]
enum Notice {
    /// Run `id` went dormant (its `generation`), and wakes at `until` if nothing wakes
    /// it first. Holds the runtime: a runtime whose handles were all dropped goes on
    /// while any of its runs is dormant, as it does while one runs.
    Asleep {
        id: Arc<str>,
        generation: u64,
        until: Option<i64>,
        keep: Arc<Inner>,
    },
    /// Dormancy `generation` of run `id` ended (woken, cancelled or stopped): its timer
    /// goes, and if no run is dormant, the loop lets the runtime go.
    Left { id: Arc<str>, generation: u64 },
}

/// The receiving ends of a runtime's wake-ups, for [`wake_loop`].
pub(super) struct Wakeups {
    wakes: mpsc::UnboundedReceiver<Arc<str>>,
    notices: mpsc::UnboundedReceiver<Notice>,
}

impl Dormancies {
    /// Dormancy after `after` parked (never, if `None`), in the program `build` (see
    /// [`build_id`]) whose workflows are `registry`; and the receiving ends of its
    /// wake-ups, for [`wake_loop`].
    pub(super) fn new(
        after: Option<Duration>,
        build: Option<Arc<str>>,
        registry: &HashMap<&'static str, &'static dyn ErasedWorkflow>,
    ) -> (Self, Wakeups) {
        let builds = after.and(build).map(|build| {
            let each = registry
                .iter()
                .map(|(name, def)| (*name, Arc::from(workflow_build(&build, *def))));
            Arc::new(each.collect::<Builds>())
        });
        let (wakes, wakes_rx) = mpsc::unbounded_channel();
        let (to_loop, notices) = mpsc::unbounded_channel();
        let dormancies = Dormancies {
            after,
            wakes,
            to_loop,
            count: AtomicUsize::new(0),
            generations: AtomicU64::new(0),
            builds,
        };
        let wakeups = Wakeups {
            wakes: wakes_rx,
            notices,
        };
        (dormancies, wakeups)
    }

    /// How a new execution goes dormant, if it may.
    pub(super) fn of_run(&self) -> Option<Dormancy> {
        Some(Dormancy {
            after: self.after?,
            wakes: self.wakes.clone(),
            builds: self.builds.clone(),
        })
    }

    /// The build of each workflow, if the journal keeps dormant runs (dormancy is on).
    pub(super) fn builds(&self) -> Option<Arc<Builds>> {
        self.builds.clone()
    }

    /// Where the journal sends the ids of dormant runs a write may have woken.
    pub(super) fn wakes(&self) -> crate::journal::Wakes {
        self.wakes.clone()
    }

    /// Wakes run `id` (see [`Inner::wake`]) from the wake loop.
    pub(super) fn wake(&self, id: Arc<str>) {
        if self.after.is_none() {
            // No run ever goes dormant: nothing to wake.
            return;
        }
        // A runtime that is gone has no runs left to wake.
        let _ = self.wakes.send(id);
    }

    /// How many runs are dormant now.
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Inner {
    /// A run whose body was just dropped while it waited: makes it dormant, or, if
    /// something may have answered one of its waits meanwhile (or its time has come),
    /// rebuilds it at once.
    pub(super) fn fall_asleep(
        self: &Arc<Self>,
        ctx: Arc<WorkflowCtx>,
        def: &'static dyn ErasedWorkflow,
        tx: watch::Sender<Option<Outcome>>,
        asleep: Asleep,
    ) {
        let id = ctx.id.clone();
        let mut running = lock(&self.running);
        let Some(run) = running
            .get_mut(&id)
            .filter(|r| r.live().is_some_and(|c| Arc::ptr_eq(c, &ctx)))
        else {
            // Not this execution's entry: nothing to put to sleep (it cannot happen;
            // the handles then see the run as stopped).
            return;
        };
        if self.closing.load(Ordering::Acquire) || ctx.cancelled().is_some() {
            drop(running);
            // As the body would have ended: stopped by the close, or cancelled (the
            // cancellation is recorded by whoever asked for it).
            let why = match ctx.cancelled() {
                Some(reason) => Error::Cancelled {
                    workflow_id: id.to_string(),
                    reason,
                },
                None => Error::Stopped {
                    workflow_id: id.to_string(),
                },
            };
            self.settle(&id, &tx, Arc::new(Err(why)));
            return;
        }
        let due = asleep.until.is_some_and(|at| at <= now_ms());
        if due || ctx.wake_asked.load(Ordering::Acquire) {
            let ctx = self.new_ctx(&id, def.name());
            run.state = RunState::Live(ctx.clone());
            drop(running);
            tracing::debug!(workflow = %id, "woken while going dormant; rebuilding it");
            tokio::spawn(rebuild(self.clone(), ctx, def, tx));
            return;
        }
        let generation = self.dormancy.generations.fetch_add(1, Ordering::Relaxed);
        // Watched by nobody but its own entry (no handle, no parent waiting): the
        // channel goes too, and is made again if somebody asks (see
        // `Running::outcome`).
        let tx = if tx.receiver_count() > 1 {
            Some(tx)
        } else {
            run.outcome = None;
            None
        };
        run.state = RunState::Dormant(Box::new(DormantRun {
            def,
            tx,
            _alive: asleep.alive,
            generation,
        }));
        self.dormancy.count.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(workflow = %id, "parked; dormant until woken");
        // Under the lock, so that the loop hears of this dormancy before it hears that
        // it ended. The loop outlives the runtime's handles while it holds `keep`.
        let _ = self.dormancy.to_loop.send(Notice::Asleep {
            id,
            generation,
            until: asleep.until,
            keep: self.clone(),
        });
    }

    /// Something run `id` may wait for happened: a dormant run is rebuilt (if
    /// `generation` is given, only that dormancy of it: a timer's); one on its way to
    /// going dormant is marked, and rebuilt instead.
    pub(super) fn wake(self: &Arc<Self>, id: &str, generation: Option<u64>) {
        let mut running = lock(&self.running);
        let Some(key) = running.get_key_value(id).map(|(k, _)| k.clone()) else {
            return;
        };
        let Some(run) = running.get_mut(id) else {
            return;
        };
        match &run.state {
            RunState::Live(ctx) => {
                if generation.is_none() {
                    ctx.wake_asked.store(true, Ordering::Release);
                }
                return;
            }
            RunState::Dormant(d) if generation.is_some_and(|g| g != d.generation) => return,
            // A closing runtime stops its dormant runs itself.
            RunState::Dormant(_) if self.closing.load(Ordering::Acquire) => return,
            RunState::Dormant(_) => {}
        }
        let ctx = self.new_ctx(&key, run.name);
        let RunState::Dormant(d) = std::mem::replace(&mut run.state, RunState::Live(ctx.clone()))
        else {
            return;
        };
        // The rebuilt run publishes its outcome: the channel is made now if nobody
        // watched the run yet.
        let def = d.def;
        let tx = d.tx.unwrap_or_else(|| {
            let (tx, rx) = watch::channel(None);
            run.outcome = Some(rx);
            tx
        });
        self.dormancy.count.fetch_sub(1, Ordering::AcqRel);
        let _ = self.dormancy.to_loop.send(Notice::Left {
            id: key,
            generation: d.generation,
        });
        drop(running);
        tracing::debug!(workflow = %id, "woken; rebuilding it by replay");
        tokio::spawn(rebuild(self.clone(), ctx, def, tx));
    }

    /// Registers run `id` (locked by the caller, who made sure the id is free),
    /// re-parked at open from what the journal kept of it (see
    /// [`Store::restore_dormant`](crate::journal::Store::restore_dormant)): dormant,
    /// without replay.
    pub(super) fn restore(
        self: &Arc<Self>,
        running: &mut HashMap<Arc<str>, Running>,
        def: &'static dyn ErasedWorkflow,
        parent_id: Option<Arc<str>>,
        restored: crate::journal::Restored,
    ) {
        let crate::journal::Restored { id, until, alive } = restored;
        let generation = self.dormancy.generations.fetch_add(1, Ordering::Relaxed);
        running.insert(
            id.clone(),
            Running {
                name: def.name(),
                parent_id,
                // Made when somebody asks: most dormant runs are not watched.
                outcome: None,
                state: RunState::Dormant(Box::new(DormantRun {
                    def,
                    tx: None,
                    _alive: alive,
                    generation,
                })),
                admitted: None,
            },
        );
        self.dormancy.count.fetch_add(1, Ordering::AcqRel);
        let _ = self.dormancy.to_loop.send(Notice::Asleep {
            id,
            generation,
            until,
            keep: self.clone(),
        });
    }

    /// Ends run `id`, if it is dormant, with `why` (its cancellation, or a stop): its
    /// handles see it as they would have seen its body end. Under `running`'s lock, as
    /// in [`Inner::settle`]; answers the run's entry, whose parent the caller wakes
    /// once it has let go of the lock.
    pub(super) fn end_dormant(
        &self,
        running: &mut HashMap<Arc<str>, Running>,
        id: &str,
        why: Error,
    ) -> Option<Running> {
        if !matches!(running.get(id)?.state, RunState::Dormant(_)) {
            return None;
        }
        let (key, run) = running.remove_entry(id)?;
        if let RunState::Dormant(d) = &run.state {
            lock(&self.stopped).remove(id);
            if let Some(tx) = &d.tx {
                tx.send_replace(Some(Arc::new(Err(why))));
            }
            self.dormancy.count.fetch_sub(1, Ordering::AcqRel);
            let _ = self.dormancy.to_loop.send(Notice::Left {
                id: key,
                generation: d.generation,
            });
        }
        Some(run)
    }

    /// Stops every dormant run (the runtime is closing): each stays pending in the
    /// journal, and its handles return [`Error::Stopped`], as a waiting run's do.
    pub(super) fn stop_dormant(&self) {
        let mut running = lock(&self.running);
        let ids: Vec<Arc<str>> = running
            .iter()
            .filter(|(_, r)| matches!(r.state, RunState::Dormant(_)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let why = Error::Stopped {
                workflow_id: id.to_string(),
            };
            // Their parents are stopping too: none is woken.
            drop(self.end_dormant(&mut running, &id, why));
        }
    }
}

/// Rebuilds a woken run: reads its input (and whether it is still pending), then runs
/// it from its recorded history, as at an open.
async fn rebuild(
    inner: Arc<Inner>,
    ctx: Arc<WorkflowCtx>,
    def: &'static dyn ErasedWorkflow,
    tx: watch::Sender<Option<Outcome>>,
) {
    let id = ctx.id.clone();
    // What the journal kept of its dormancy goes before the run can write again.
    inner.store.awake(id.clone());
    let outcome = match inner.record(&id).await {
        Ok(Some(record)) if record.status == RecordStatus::Pending && record.damage().is_none() => {
            let (input, deadline_at) = (record.input, record.deadline_at);
            return drive(inner, ctx, def, input, History::Journaled, deadline_at, tx).await;
        }
        Ok(Some(record)) => recorded_outcome(inner.store.path(), record),
        Ok(None) => Err(Error::NotFound {
            workflow_id: id.to_string(),
        }),
        Err(e) => {
            tracing::error!(workflow = %id, "cannot rebuild the woken workflow: {e}; it stays pending in the journal");
            Err(e)
        }
    };
    inner.settle(&id, &tx, Arc::new(outcome));
}

/// Wakes dormant runs: those the journal names (a message or an event they wait for
/// was written), and those whose time comes. Runs until the runtime is gone.
pub(super) async fn wake_loop(inner: Weak<Inner>, mut wakeups: Wakeups) {
    let mut timers = Timers::default();
    // The runtime, held while any run is dormant.
    let mut keep: Option<Arc<Inner>> = None;
    loop {
        let next = timers.next();
        let sleep = async {
            match next {
                Some(at) => crate::primitives::sleep_until_ms(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Unbiased: a stream of wakes must not hold back new timers.
            woken = wakeups.wakes.recv() => {
                let Some(id) = woken else { return };
                if let Some(inner) = inner.upgrade() {
                    inner.wake(&id, None);
                }
            }
            notice = wakeups.notices.recv() => match notice {
                None => return,
                Some(Notice::Asleep { id, generation, until, keep: held }) => {
                    timers.asleep(id, generation, until);
                    keep = Some(held);
                }
                Some(Notice::Left { id, generation }) => timers.left(&id, generation),
            },
            () = sleep => {
                for (id, generation) in timers.due(now_ms()) {
                    if let Some(inner) = inner.upgrade() {
                        inner.wake(&id, Some(generation));
                    }
                }
            }
        }
        if keep.as_ref().is_some_and(|k| k.dormancy.count() == 0) {
            keep = None;
        }
    }
}

/// The times at which dormant runs wake on their own: one per run, for its latest
/// dormancy, kept only while that dormancy lasts.
#[derive(Debug, Default)]
struct Timers {
    /// (when, generation, run), earliest first.
    queue: BTreeSet<(i64, u64, Arc<str>)>,
    /// Each run's entry in `queue`.
    of_run: HashMap<Arc<str>, (i64, u64)>,
}

impl Timers {
    /// Dormancy `generation` of run `id` began, to end at `until` (ms since the epoch)
    /// unless something wakes it first. It replaces the run's earlier timer.
    fn asleep(&mut self, id: Arc<str>, generation: u64, until: Option<i64>) {
        self.forget(&id);
        if let Some(at) = until {
            self.of_run.insert(id.clone(), (at, generation));
            self.queue.insert((at, generation, id));
        }
    }

    /// Dormancy `generation` of run `id` ended without its timer: the timer goes (a
    /// later dormancy's stays).
    fn left(&mut self, id: &str, generation: u64) {
        if self.of_run.get(id).is_some_and(|&(_, g)| g == generation) {
            self.forget(id);
        }
    }

    fn forget(&mut self, id: &str) {
        if let Some((id, (at, generation))) = self.of_run.remove_entry(id) {
            self.queue.remove(&(at, generation, id));
        }
    }

    /// When the earliest timer is due.
    fn next(&self) -> Option<i64> {
        self.queue.first().map(|(at, ..)| *at)
    }

    /// Takes the timers due at `now`: each run and the dormancy it wakes.
    fn due(&mut self, now: i64) -> Vec<(Arc<str>, u64)> {
        let mut due = Vec::new();
        while self.queue.first().is_some_and(|(at, ..)| *at <= now) {
            if let Some((_, generation, id)) = self.queue.pop_first() {
                self.of_run.remove(&id);
                due.push((id, generation));
            }
        }
        due
    }

    /// How many timers are set.
    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.queue.len(), self.of_run.len());
        self.queue.len()
    }
}

/// Which program this is, for what the journal keeps of dormant runs: its executable
/// file (path, size, modification time, and on Unix its device and inode) and its
/// `app_version`. A program rebuilt, replaced or given another version is another
/// build, and replays the runs an earlier one left dormant instead of trusting what
/// they waited for. `None` if the executable cannot be looked at.
pub(super) fn build_id(app_version: Option<&str>) -> Option<Arc<str>> {
    let exe = std::env::current_exe().ok()?;
    let meta = std::fs::metadata(&exe).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let mut parts = format!("{}\0{}\0{modified}", exe.display(), meta.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        parts.push_str(&format!("\0{}\0{}", meta.dev(), meta.ino()));
    }
    if let Some(version) = app_version {
        parts.push('\0');
        parts.push_str(version);
    }
    // FNV-1a, 64 bits: a short, stable name for all of that.
    let hash = parts.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Some(Arc::from(format!("{hash:016x}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What happens to a run's dormancies, as the wake loop hears of it.
    #[derive(Debug, Clone)]
    enum Op {
        /// Run `run` goes dormant (a new generation), with a timer at `until` or none.
        Asleep { run: u8, until: Option<i64> },
        /// Run `run`'s dormancy number `back` before its latest ends (0: the latest).
        Left { run: u8, back: u8 },
        /// Time moves to `now`.
        Tick { now: i64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, proptest::option::of(0i64..100))
                .prop_map(|(run, until)| Op::Asleep { run, until }),
            (0u8..6, 0u8..3).prop_map(|(run, back)| Op::Left { run, back }),
            (0i64..100).prop_map(|now| Op::Tick { now }),
        ]
    }

    proptest! {
        /// A timer is kept exactly while its dormancy lasts: a run's latest dormancy
        /// with a time, not yet ended and not yet due. Ending an earlier dormancy never
        /// takes a later one's timer, and each due timer is handed out once.
        #[test]
        fn a_timer_lasts_as_long_as_its_dormancy(ops in proptest::collection::vec(op(), 0..60)) {
            let mut timers = Timers::default();
            let mut generation = 0u64;
            // Per run: the generations it went dormant with, and the live timer the
            // model expects (generation, when).
            let mut history: HashMap<u8, Vec<u64>> = HashMap::new();
            let mut expect: HashMap<u8, (u64, i64)> = HashMap::new();
            let name = |run: u8| -> Arc<str> { Arc::from(format!("run-{run}")) };
            for op in ops {
                match op {
                    Op::Asleep { run, until } => {
                        generation += 1;
                        history.entry(run).or_default().push(generation);
                        expect.remove(&run);
                        if let Some(at) = until {
                            expect.insert(run, (generation, at));
                        }
                        timers.asleep(name(run), generation, until);
                    }
                    Op::Left { run, back } => {
                        let gens = history.get(&run).cloned().unwrap_or_default();
                        let Some(&g) = gens.iter().rev().nth(usize::from(back)) else { continue };
                        if expect.get(&run).is_some_and(|&(eg, _)| eg == g) {
                            expect.remove(&run);
                        }
                        timers.left(&name(run), g);
                    }
                    Op::Tick { now } => {
                        let mut due: Vec<(Arc<str>, u64)> = timers.due(now);
                        due.sort();
                        let mut want: Vec<(Arc<str>, u64)> = expect
                            .iter()
                            .filter(|(_, (_, at))| *at <= now)
                            .map(|(run, (g, _))| (name(*run), *g))
                            .collect();
                        want.sort();
                        expect.retain(|_, (_, at)| *at > now);
                        prop_assert_eq!(due, want);
                    }
                }
                prop_assert_eq!(timers.len(), expect.len());
                prop_assert_eq!(timers.next(), expect.values().map(|(_, at)| *at).min());
            }
        }
    }
}
