//! Cron schedules: a workflow started at each tick of a cron expression, in a time
//! zone, exactly once per tick. See [`Runtime::schedule`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Runtime;
use super::queue::{Enqueue, Queue};
use super::registry::Inner;
use crate::cron::Cron;
use crate::engine::call::WorkflowCall;
use crate::error::{Error, Result};
use crate::journal::schedule::{ScheduleChange, ScheduleState, ScheduleWrite};
use crate::util::lock;

/// A cron schedule: a name, a cron expression, a time zone, and what to do about ticks
/// missed while no runtime ran it. Given to [`Runtime::schedule_with`] with the
/// workflow each tick starts; [`Runtime::schedule`] is the short form.
///
/// The expression has 5 fields (`minute hour day-of-month month day-of-week`) or 6
/// (seconds first): `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists, the
/// names `JAN`..`DEC` and `SUN`..`SAT`, and `@hourly`, `@daily`, `@weekly`,
/// `@monthly`, `@yearly`. When both day fields are restricted, a day matches either.
///
/// # Daylight saving time
///
/// Times are civil times in the schedule's zone (UTC unless
/// [`time_zone`](Schedule::time_zone) says otherwise), and each tick fires once:
/// - a time that the change to summer time skips fires as far past the change as it
///   would have been past the hour (02:30 fires at 03:30 on the night that jumps from
///   02:00 to 03:00), if the expression names its hour; an expression that fires every
///   hour just has no such tick that night;
/// - a time that the change back repeats fires the first time only, if the expression
///   names its hour; one that fires every hour fires in both passes, keeping its pace.
///
/// So a daily job runs once every day, and an hourly one once every hour.
///
/// # Missed ticks
///
/// Ticks that passed while no runtime ran the schedule (a restart, a crash, a machine
/// asleep) are caught up at the next chance: by default only the latest of them runs,
/// never a burst; with [`backfill`](Schedule::backfill), each of them runs, oldest
/// first, up to a limit (the latest ones).
#[derive(Debug, Clone)]
pub struct Schedule {
    name: Arc<str>,
    expression: String,
    cron: Cron,
    zone: TimeZone,
    zone_name: String,
    backfill: Option<u32>,
    queue: Option<Queue>,
}

impl Schedule {
    /// A schedule named `name` firing at each tick of the cron `expression`, in UTC.
    ///
    /// # Errors
    ///
    /// [`Error::Schedule`] if the expression is not valid cron (saying what is wrong
    /// where), never fires, or the name is empty.
    pub fn new(name: impl Into<String>, expression: &str) -> Result<Schedule> {
        let name: String = name.into();
        let error = |problem: String| Error::Schedule {
            schedule: name.clone(),
            problem,
        };
        if name.is_empty() || name.chars().any(char::is_control) || name.contains('@') {
            return Err(error(
                "a schedule's name cannot be empty, or hold `@` or control characters \
                 (the workflow of each tick is named after it)"
                    .to_owned(),
            ));
        }
        if name.len() > MAX_NAME {
            return Err(error(format!(
                "a schedule's name is at most {MAX_NAME} bytes, not {}: the workflow id of \
                 each tick is the name, `@` and the tick's time, and must fit the journal's \
                 id limit",
                name.len()
            )));
        }
        let cron = Cron::parse(expression).map_err(|e| error(e.0))?;
        Ok(Schedule {
            name: Arc::from(name.as_str()),
            expression: expression.trim().to_owned(),
            cron,
            zone: TimeZone::UTC,
            zone_name: "UTC".to_owned(),
            backfill: None,
            queue: None,
        })
    }

    /// Evaluates the expression in the IANA time zone `zone` (such as
    /// `"Europe/Paris"`), with its daylight saving rules.
    ///
    /// # Errors
    ///
    /// [`Error::Schedule`] if `zone` is not a zone of the IANA database (which durable
    /// bundles, so it is the same on every machine).
    pub fn time_zone(mut self, zone: &str) -> Result<Schedule> {
        self.zone = TimeZone::get(zone).map_err(|_| Error::Schedule {
            schedule: self.name.to_string(),
            problem: format!(
                "`{zone}` is not a time zone of the IANA database; use a name such as \
                 `Europe/Paris`, `America/New_York` or `UTC`"
            ),
        })?;
        self.zone_name = zone.to_owned();
        Ok(self)
    }

    /// Runs each tick missed while no runtime ran the schedule, oldest first, but at
    /// most the latest `limit` of them; the default runs the latest one only.
    pub fn backfill(mut self, limit: u32) -> Schedule {
        self.backfill = Some(limit.max(1));
        self
    }

    /// Enqueues each tick's workflow on `queue` (with the tick's workflow id), so that
    /// the queue's limits apply to it. The runtime must be built with the queue.
    pub fn through(mut self, queue: &Queue) -> Schedule {
        self.queue = Some(queue.clone());
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next `n` ticks after `after` (fewer if it stops firing).
    pub fn next_ticks(&self, after: SystemTime, n: usize) -> Vec<Tick> {
        let mut at = timestamp(millis_of(after));
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            let Some(next) = self.cron.next_after(at, &self.zone) else {
                break;
            };
            out.push(self.tick(next, false));
            at = next;
        }
        out
    }

    fn tick(&self, at: Timestamp, triggered: bool) -> Tick {
        Tick {
            schedule: self.name.to_string(),
            unix_seconds: at.as_second(),
            local: at.to_zoned_datetime(self.zone.clone()).to_string(),
            triggered,
        }
    }
}

/// What a scheduled workflow receives: its schedule and the time of its tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    schedule: String,
    unix_seconds: i64,
    local: String,
    triggered: bool,
}

impl Tick {
    /// The schedule's name.
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// The tick's time, in seconds since the Unix epoch.
    pub fn unix_seconds(&self) -> i64 {
        self.unix_seconds
    }

    /// The tick's time.
    pub fn time(&self) -> SystemTime {
        system_time(self.unix_seconds.saturating_mul(1000))
    }

    /// The tick's civil time in the schedule's zone, in RFC 9557 form, such as
    /// `2026-03-29T03:30:00+02:00[Europe/Paris]`.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Whether it was started by [`ScheduleHandle::trigger`] rather than by the clock.
    pub fn triggered(&self) -> bool {
        self.triggered
    }

    /// The id of the workflow this tick starts: the schedule's name, `@`, and the
    /// tick's time in UTC (`nightly-report@2026-12-05T03:30:00Z`); a triggered run's
    /// ends in `/triggered`.
    pub fn workflow_id(&self) -> String {
        let at = Timestamp::from_second(self.unix_seconds).unwrap_or(Timestamp::UNIX_EPOCH);
        if self.triggered {
            format!("{}@{at}/triggered", self.schedule)
        } else {
            format!("{}@{at}", self.schedule)
        }
    }
}

impl std::fmt::Display for Tick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.schedule, self.local)
    }
}

/// A clock that a test moves by hand, to drive schedules without waiting for real
/// time: give it to [`RuntimeBuilder::schedule_clock`](crate::RuntimeBuilder::schedule_clock).
/// It drives schedules only; sleeps and timeouts in workflows keep the real clock.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use durable_runtime::ManualClock;
///
/// let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
/// clock.advance(Duration::from_secs(3600));
/// assert_eq!(clock.now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_003_600));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: SystemTime) -> ManualClock {
        ManualClock {
            now_ms: Arc::new(watch::Sender::new(millis_of(at))),
        }
    }

    /// What it reads now.
    pub fn now(&self) -> SystemTime {
        system_time(*self.now_ms.borrow())
    }

    /// Moves it forward by `by`; the schedules it drives see the new time at once.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now_ms.send_modify(|ms| *ms = ms.saturating_add(by));
    }

    /// Sets it to `at` (backwards too: a schedule never runs a tick twice).
    pub fn set(&self, at: SystemTime) {
        self.now_ms.send_replace(millis_of(at));
    }
}

/// The clock schedules read.
#[derive(Debug, Clone, Default)]
pub(crate) enum Clock {
    #[default]
    System,
    Manual(ManualClock),
}

/// How long a schedule waiting on the real clock sleeps at most before it reads the
/// clock again: a machine that was asleep, or a clock that was set, is noticed within
/// this. A paused schedule reads its row again as often (another process sharing the
/// journal may resume it).
const NAP: Duration = Duration::from_secs(1);

impl Clock {
    fn now_ms(&self) -> i64 {
        match self {
            Clock::System => crate::util::now_ms(),
            Clock::Manual(m) => *m.now_ms.borrow(),
        }
    }

    /// Returns once the clock reads `at` or later (or, on the real clock, after a nap
    /// at most: the caller reads the clock again).
    async fn sleep_until(&self, at: i64) {
        match self {
            Clock::System => {
                let left = at.saturating_sub(crate::util::now_ms());
                if left > 0 {
                    let left = Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX));
                    tokio::time::sleep(left.min(NAP)).await;
                }
            }
            Clock::Manual(m) => {
                let mut now = m.now_ms.subscribe();
                while *now.borrow_and_update() < at {
                    if now.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// Starts a tick's workflow (type-erased over its output).
type Fire =
    Arc<dyn Fn(Runtime, Tick) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

/// A schedule running in this runtime.
pub(super) struct Scheduled {
    schedule: Arc<Schedule>,
    fire: Fire,
    /// Wakes its task after a pause or a resume.
    wake: watch::Sender<()>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Scheduled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduled")
            .field("schedule", &self.schedule.name)
            .finish_non_exhaustive()
    }
}

/// The schedules of a runtime, by name.
pub(super) type Schedules = std::sync::Mutex<HashMap<Arc<str>, Scheduled>>;

impl Runtime {
    /// Starts `workflow` at each tick of the cron `expression` (in UTC), under the
    /// schedule `name`: the short form of [`schedule_with`](Self::schedule_with).
    ///
    /// ```
    /// use durable_runtime::{Runtime, Tick, workflow};
    ///
    /// #[workflow]
    /// async fn nightly_report(tick: Tick) -> String {
    ///     format!("report for {}", tick.local())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// // At 03:30:00 every day (6 fields: seconds first).
    /// let nightly = rt.schedule("nightly-report", "0 30 3 * * *", nightly_report).await?;
    /// assert_eq!(nightly.info().await?.next.len(), 1);
    /// # rt.close().await }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`schedule_with`](Self::schedule_with), and [`Error::Schedule`] if the
    /// expression is not valid cron.
    pub async fn schedule<O>(
        &self,
        name: &str,
        expression: &str,
        workflow: impl Fn(Tick) -> WorkflowCall<O> + Send + Sync + 'static,
    ) -> Result<ScheduleHandle>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_with(Schedule::new(name, expression)?, workflow)
            .await
    }

    /// Starts `workflow` at each tick of `schedule`, from now on, in this runtime: each
    /// tick starts one workflow, given the [`Tick`], under the id
    /// [`Tick::workflow_id`]. A tick starts at most one, across restarts: the journal
    /// keeps how far the schedule's ticks are done, and the id is the tick's. Ticks
    /// missed while no runtime ran it are caught up as [`Schedule`] says.
    ///
    /// A program declares its schedules after each open; the journal keeps their state
    /// (how far done, paused) between runs.
    ///
    /// # Errors
    ///
    /// [`Error::Schedule`] if a schedule of that name already runs in this runtime,
    /// [`Error::Queue`] if it goes through a queue the runtime was not built with,
    /// [`Error::Closed`] after [`close`](Runtime::close), [`Error::Store`] if the
    /// journal cannot be written (or, on PostgreSQL, where schedules are not available
    /// yet).
    pub async fn schedule_with<O>(
        &self,
        schedule: Schedule,
        workflow: impl Fn(Tick) -> WorkflowCall<O> + Send + Sync + 'static,
    ) -> Result<ScheduleHandle>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        self.inner.open()?;
        if let Some(queue) = &schedule.queue {
            self.inner.known_queue(queue)?;
        }
        if lock(&self.inner.schedules).contains_key(&schedule.name) {
            return Err(scheduled_twice(&schedule.name));
        }
        let declare = ScheduleWrite {
            name: schedule.name.clone(),
            change: ScheduleChange::Declare {
                expression: schedule.expression.clone(),
                zone: schedule.zone_name.clone(),
                at: self.inner.clock.now_ms(),
            },
        };
        self.inner
            .acked(self.inner.store.set_schedule(declare))
            .await?;
        let queue = schedule.queue.clone();
        let workflow = Arc::new(workflow);
        let fire: Fire = Arc::new(move |rt: Runtime, tick: Tick| {
            let id = tick.workflow_id();
            let call = workflow(tick);
            let queue = queue.clone();
            Box::pin(async move {
                match queue {
                    Some(q) => rt
                        .enqueue_with(&q, call, Enqueue::new().id(id))
                        .await
                        .map(drop),
                    None => rt.start_with_id(id, call).await.map(drop),
                }
            })
        });
        let schedule = Arc::new(schedule);
        let (wake, woken) = watch::channel(());
        let mut schedules = lock(&self.inner.schedules);
        if schedules.contains_key(&schedule.name) {
            return Err(scheduled_twice(&schedule.name));
        }
        let task = tokio::spawn(run(
            Arc::downgrade(&self.inner),
            schedule.clone(),
            fire.clone(),
            woken,
        ));
        schedules.insert(
            schedule.name.clone(),
            Scheduled {
                schedule: schedule.clone(),
                fire,
                wake,
                task: task.abort_handle(),
            },
        );
        Ok(ScheduleHandle {
            inner: self.inner.clone(),
            schedule,
        })
    }

    /// The schedules running in this runtime, by name.
    pub fn schedules(&self) -> Vec<ScheduleHandle> {
        let mut all: Vec<ScheduleHandle> = lock(&self.inner.schedules)
            .values()
            .map(|s| ScheduleHandle {
                inner: self.inner.clone(),
                schedule: s.schedule.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.schedule.name.cmp(&b.schedule.name));
        all
    }
}

/// A schedule running in a runtime: read its state, pause, resume, or trigger it.
#[derive(Clone)]
pub struct ScheduleHandle {
    inner: Arc<Inner>,
    schedule: Arc<Schedule>,
}

impl std::fmt::Debug for ScheduleHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleHandle")
            .field("schedule", &self.schedule.name)
            .finish_non_exhaustive()
    }
}

/// A schedule's state, from [`ScheduleHandle::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub expression: String,
    /// Its time zone.
    pub time_zone: String,
    /// Whether it is paused.
    pub paused: bool,
    /// Every tick up to this time was started or passed over.
    pub done_through: SystemTime,
    /// Its next tick, unless it is paused or never fires again.
    pub next: Vec<Tick>,
}

impl ScheduleHandle {
    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.schedule.name
    }

    /// Its state as the journal holds it, and its next tick.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub async fn info(&self) -> Result<ScheduleInfo> {
        let state = self.state().await?;
        let after = state.done_through.max(self.inner.clock.now_ms());
        Ok(ScheduleInfo {
            name: self.schedule.name.to_string(),
            expression: self.schedule.expression.clone(),
            time_zone: self.schedule.zone_name.clone(),
            paused: state.paused,
            done_through: system_time(state.done_through),
            next: if state.paused {
                Vec::new()
            } else {
                self.schedule.next_ticks(system_time(after), 1)
            },
        })
    }

    /// Stops starting workflows until [`resume`](Self::resume), in every runtime and
    /// across restarts (the journal keeps it). Workflows already started go on.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Runtime::close), [`Error::Store`] if the
    /// journal cannot be written.
    pub async fn pause(&self) -> Result<()> {
        self.set_paused(true).await
    }

    /// Starts workflows again from the next tick on: ticks that passed while it was
    /// paused are passed over, not caught up.
    ///
    /// # Errors
    ///
    /// As [`pause`](Self::pause).
    pub async fn resume(&self) -> Result<()> {
        self.set_paused(false).await
    }

    /// Starts the schedule's workflow now, outside its ticks (paused or not), given a
    /// [`Tick`] of the current second whose [`triggered`](Tick::triggered) is true;
    /// answers its workflow id. Two triggers in the same second start one workflow.
    ///
    /// # Errors
    ///
    /// As [`Runtime::start_with_id`] (or [`Runtime::enqueue_with`], for a schedule
    /// through a queue).
    pub async fn trigger(&self) -> Result<String> {
        self.inner.open()?;
        let fire = lock(&self.inner.schedules)
            .get(&self.schedule.name)
            .map(|s| s.fire.clone())
            .ok_or_else(|| Error::Schedule {
                schedule: self.schedule.name.to_string(),
                problem: "is no longer scheduled in this runtime (it was closed)".to_owned(),
            })?;
        let now = timestamp(self.inner.clock.now_ms());
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let tick = self.schedule.tick(now, true);
        let id = tick.workflow_id();
        fire(
            Runtime {
                inner: self.inner.clone(),
            },
            tick,
        )
        .await?;
        Ok(id)
    }

    async fn set_paused(&self, paused: bool) -> Result<()> {
        self.inner.open()?;
        let write = ScheduleWrite {
            name: self.schedule.name.clone(),
            change: ScheduleChange::Paused(paused, self.inner.clock.now_ms()),
        };
        self.inner
            .acked(self.inner.store.set_schedule(write))
            .await?;
        if let Some(s) = lock(&self.inner.schedules).get(&self.schedule.name) {
            s.wake.send_replace(());
        }
        Ok(())
    }

    async fn state(&self) -> Result<ScheduleState> {
        let store = self.inner.store.clone();
        let name = self.schedule.name.clone();
        crate::journal::blocking(self.inner.store.path(), move || store.schedule_state(&name))
            .await?
            .map_err(|e| self.inner.closed_or(e))?
            .ok_or_else(|| Error::Schedule {
                schedule: self.schedule.name.to_string(),
                problem: "is not in the journal".to_owned(),
            })
    }
}

impl Inner {
    /// Stops every schedule's task (at a close).
    pub(super) fn stop_schedules(&self) {
        for s in lock(&self.schedules).values() {
            s.task.abort();
        }
    }
}

/// The ticks of `s` due at `now` when those up to `done` are done, oldest first: the
/// latest one only, or with a backfill limit the latest ones up to it.
fn due(s: &Schedule, done: i64, now: i64) -> Vec<Timestamp> {
    let keep = s.backfill.map_or(1, |n| n as usize);
    // Read from a window that grows until it holds enough ticks (or reaches `done`), so
    // that a long downtime of a schedule that fires every second costs little.
    const WINDOWS_S: [i64; 6] = [60, 3_600, 86_400, 32 * 86_400, 400 * 86_400, 3_000 * 86_400];
    for window in WINDOWS_S.iter().map(|w| w * 1000).chain([i64::MAX]) {
        let from = now.saturating_sub(window).max(done);
        let mut ticks = VecDeque::with_capacity(keep.min(1024));
        let mut at = timestamp(from);
        while let Some(next) = s.cron.next_after(at, &s.zone) {
            if next.as_millisecond() > now {
                break;
            }
            if ticks.len() == keep {
                ticks.pop_front();
            }
            ticks.push_back(next);
            at = next;
        }
        if ticks.len() == keep || from == done {
            return ticks.into();
        }
    }
    Vec::new()
}

/// A schedule's task: starts each tick's workflow when it comes, until the runtime is
/// closed or gone.
async fn run(inner: Weak<Inner>, s: Arc<Schedule>, fire: Fire, mut woken: watch::Receiver<()>) {
    'read: loop {
        let Some(rt) = inner.upgrade() else { return };
        if rt.closing.load(Ordering::Acquire) {
            return;
        }
        let clock = rt.clock.clone();
        let store = rt.store.clone();
        let name = s.name.clone();
        let state =
            crate::journal::blocking(rt.store.path(), move || store.schedule_state(&name)).await;
        let mut state = match state {
            Ok(Ok(Some(state))) => state,
            Ok(Ok(None)) => return,
            Ok(Err(e)) | Err(e) => {
                if rt.closing.load(Ordering::Acquire) {
                    return;
                }
                tracing::warn!(schedule = %s.name, "cannot read the schedule's state: {e}; trying again");
                drop(rt);
                tokio::time::sleep(NAP).await;
                continue;
            }
        };
        drop(rt);
        if state.paused {
            // Resumed here (woken), or by another process sharing the journal: read
            // again every so often.
            tokio::select! {
                changed = woken.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(NAP) => {}
            }
            continue 'read;
        }
        let now = clock.now_ms();
        for tick in due(&s, state.done_through, now) {
            // A pause (or resume, or trigger) here stops a backfill between ticks.
            match woken.has_changed() {
                Ok(false) => {}
                Ok(true) => {
                    woken.borrow_and_update();
                    continue 'read;
                }
                Err(_) => return,
            }
            let Some(rt) = inner.upgrade() else { return };
            let runtime = Runtime { inner: rt.clone() };
            match fire(runtime, s.tick(tick, false)).await {
                Ok(()) => {}
                Err(Error::Closed { .. }) => return,
                Err(Error::Store(e)) => {
                    tracing::warn!(schedule = %s.name, tick = %tick, "cannot start the tick's workflow: {e}; trying again");
                    drop(rt);
                    tokio::time::sleep(NAP).await;
                    continue 'read;
                }
                Err(e) => {
                    // It cannot start (its id is another workflow's, say): passed over.
                    tracing::warn!(schedule = %s.name, tick = %tick, "the tick's workflow cannot start: {e}; the tick is passed over");
                }
            }
            let done = tick.as_millisecond();
            let write = ScheduleWrite {
                name: s.name.clone(),
                change: ScheduleChange::DoneThrough(done),
            };
            if let Err(e) = rt.acked(rt.store.set_schedule(write)).await {
                // Its workflow is started; a second start of the same id joins it.
                tracing::warn!(schedule = %s.name, "cannot record the tick as done: {e}");
            }
            state.done_through = state.done_through.max(done);
        }
        let after = state.done_through.max(now);
        let Some(next) = s.cron.next_after(timestamp(after), &s.zone) else {
            // It never fires again.
            if woken.changed().await.is_err() {
                return;
            }
            continue 'read;
        };
        tokio::select! {
            () = clock.sleep_until(next.as_millisecond()) => {}
            changed = woken.changed() => {
                if changed.is_err() {
                    return;
                }
                continue 'read;
            }
        }
        // Read again at each tick: on a shared journal another process may have
        // paused the schedule, or done the tick.
    }
}

/// The longest schedule name: a tick's workflow id (`name@2026-01-01T00:00:00Z`, or
/// `.../triggered` after a trigger, with milliseconds) must fit the journal's id limit.
const MAX_NAME: usize = super::registry::MAX_ID_BYTES - "@0000-00-00T00:00:00.000Z/triggered".len();

fn scheduled_twice(name: &str) -> Error {
    Error::Schedule {
        schedule: name.to_owned(),
        problem: "is already scheduled in this runtime; declare each schedule once".to_owned(),
    }
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

fn system_time(ms: i64) -> SystemTime {
    match u64::try_from(ms) {
        Ok(ms) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs()),
    }
}

fn millis_of(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}
