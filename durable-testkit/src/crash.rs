//! Crash at every step: run a workflow once, then crash it on both sides of every
//! checkpoint and check that recovery finishes it exactly as the uninterrupted run did.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug, Display};
use std::sync::Arc;

use durable_runtime::testkit::{CrashPoint, Event, Probe, StepAt};
use durable_runtime::{Error, StepPath, WorkflowCall};
use serde::de::DeserializeOwned;

use crate::journal::{Compare, Recorded, TempJournal, on_fresh_runtime, open};

/// The workflow id the checks run their workflow under.
pub(crate) const WORKFLOW_ID: &str = "durable-testkit";

/// Checks that a workflow survives a crash at every step: builder for
/// [`crash_at_every_step`].
///
/// It runs the workflow once, uninterrupted, to learn its checkpoints (one per step that
/// records a result, plus the workflow's outcome). Then, for each checkpoint and on
/// both sides of it, it runs the workflow on a fresh journal and crashes it there:
///
/// - **before the commit**: the step's body has finished and its checkpoint has
///   reached the store, but the record is never written;
/// - **after the commit**: the store has acknowledged the record as durable, but the
///   workflow never hears of it.
///
/// The crash is injected inside the store, not by a polite shutdown: from the crash
/// point on, nothing more reaches the journal, the journal's writer stops without
/// committing what it holds (as SIGKILL would), no reply reaches the workflow, and its
/// tokio runtime is dropped without running its tasks any further. Then a fresh runtime
/// opens the same journal and recovers the workflow, and the check asserts that:
///
/// 1. the recovered result equals the uninterrupted one;
/// 2. no step whose checkpoint the store had acknowledged before the crash ran again;
/// 3. the journal ends up recording the same step at every path as the uninterrupted
///    run.
///
/// The report counts how many times each step's body ran. Step bodies should be
/// deterministic in the test (fakes for the outside world), since the recovered result
/// is compared with the uninterrupted one. The check blocks: call it from a plain
/// `#[test]` (each run gets a tokio runtime of its own).
///
/// ```
/// use durable_runtime::{step, workflow};
///
/// #[step]
/// async fn reserve(sku: String) -> String { format!("rsv-{sku}") }
///
/// #[step]
/// async fn charge(cents: u64) -> String { format!("ch-{cents}") }
///
/// #[workflow]
/// async fn buy(sku: String, cents: u64) -> (String, String) {
///     tokio::join!(reserve(sku), charge(cents))
/// }
///
/// let report = durable_testkit::crash_at_every_step(|| buy("tea".into(), 450))
///     .run()
///     .expect("checkout survives a crash at every step");
/// // Two steps and the outcome, each crashed before and after its commit.
/// assert_eq!(report.scenarios(), 6);
/// println!("{report}");
/// ```
#[derive(Debug)]
pub struct CrashCheck<F> {
    make: F,
    probe: fn() -> Probe,
    /// Where each run's journal is made.
    journal: fn() -> std::io::Result<TempJournal>,
}

/// Starts a [`CrashCheck`] of the workflow call `make` returns (it is called once per
/// run).
pub fn crash_at_every_step<O, F>(make: F) -> CrashCheck<F>
where
    F: FnMut() -> WorkflowCall<O>,
{
    CrashCheck {
        make,
        probe: Probe::new,
        journal: TempJournal::new,
    }
}

/// One run of the workflow.
struct Run<O> {
    /// What the handle returned; `None` if the run crashed first.
    result: Option<Result<O, Error>>,
    /// The journal's steps after the run (path to name), for finished runs.
    steps: BTreeMap<StepPath, Recorded>,
    events: Vec<Event>,
    crashed: bool,
}

impl<F> CrashCheck<F> {
    /// Tests the check itself: puts a deliberately broken store under every run, one
    /// that acknowledges a checkpoint before it is durable. The check must fail.
    #[doc(hidden)]
    pub fn with_store_that_acks_before_durable(mut self) -> Self {
        self.probe = || Probe::new().ack_before_durable();
        self
    }

    /// Runs every scenario on a PostgreSQL journal (a schema of its own in the test
    /// server, see [`postgres::database_url`](crate::postgres::database_url)) instead
    /// of a SQLite file. A crash there is the runtime's process dying: its connection
    /// closes, and the recovering runtime takes its workflows over at its open.
    #[cfg(feature = "postgres")]
    pub fn on_postgres(mut self) -> Self {
        self.journal = TempJournal::postgres;
        self
    }

    /// Runs the check.
    ///
    /// # Errors
    ///
    /// A [`CrashFailure`] listing every crash point at which recovery went wrong (its
    /// `Debug` output is the same readable report, for `expect`).
    pub fn run<O>(mut self) -> Result<CrashReport, CrashFailure>
    where
        F: FnMut() -> WorkflowCall<O>,
        O: serde::Serialize + DeserializeOwned + PartialEq + Debug + Send + 'static,
    {
        let first = (self.make)();
        let workflow = first.name();
        let fail = |problems: Vec<String>| CrashFailure { workflow, problems };
        let journal = (self.journal)()
            .map_err(|e| fail(vec![format!("cannot create a temporary journal: {e}")]))?;
        let reference = run_once(&journal, first, (self.probe)(), true)
            .map_err(|e| fail(vec![format!("the uninterrupted run failed to start: {e}")]))?;
        let Some(expected) = reference.result else {
            return Err(fail(vec!["the uninterrupted run did not finish".into()]));
        };
        let mut points = Vec::new();
        let mut steps = BTreeMap::new();
        for event in &reference.events {
            match event {
                Event::Committed { at, name } => {
                    points.push(CrashPoint::BeforeCommit(at.clone()));
                    points.push(CrashPoint::AfterCommit(at.clone()));
                    steps
                        .entry(at.clone())
                        .or_insert_with(|| StepRuns::new(at, name));
                }
                Event::BodyStarted { at, name } => {
                    steps
                        .entry(at.clone())
                        .or_insert_with(|| StepRuns::new(at, name))
                        .reference += 1;
                }
                Event::Crashed => {}
            }
        }
        // Only a result or a recorded failure has an outcome checkpoint.
        if matches!(expected, Ok(_) | Err(Error::Failed { .. })) {
            points.push(CrashPoint::BeforeFinish);
            points.push(CrashPoint::AfterFinish);
        }

        let mut problems = Vec::new();
        for point in &points {
            let outcome = self.crash_and_recover(point, &expected, &reference.steps, &mut steps);
            if let Err(problem) = outcome {
                problems.push(format!("crash {}: {problem}", describe(point)));
            }
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(CrashReport {
            workflow,
            scenarios: points.len(),
            steps: steps.into_values().collect(),
        })
    }

    /// One scenario: crash at `point` on a fresh journal, recover, compare.
    fn crash_and_recover<O>(
        &mut self,
        point: &CrashPoint,
        expected: &Result<O, Error>,
        expected_steps: &BTreeMap<StepPath, Recorded>,
        counts: &mut BTreeMap<StepAt, StepRuns>,
    ) -> Result<(), String>
    where
        F: FnMut() -> WorkflowCall<O>,
        O: serde::Serialize + DeserializeOwned + PartialEq + Debug + Send + 'static,
    {
        let journal =
            (self.journal)().map_err(|e| format!("cannot create a temporary journal: {e}"))?;
        let probe = (self.probe)().crash_at(point.clone());
        let crashed = run_once(&journal, (self.make)(), probe, false)
            .map_err(|e| format!("the run to crash failed to start: {e}"))?;
        if !crashed.crashed {
            return Err(format!(
                "the crash point was never reached: this run finished ({:?}) without \
                 writing that checkpoint, so the workflow does not make the same steps on \
                 every run (are its step bodies deterministic in this test?)",
                crashed.result
            ));
        }
        let acknowledged: BTreeSet<StepAt> = crashed
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Committed { at, .. } => Some(at.clone()),
                _ => None,
            })
            .collect();
        let recovered = run_once(&journal, (self.make)(), (self.probe)(), true)
            .map_err(|e| format!("recovery failed: {e}"))?;

        // Per path: body runs in the crashed run, and in the recovery.
        let mut runs: BTreeMap<&StepAt, [u32; 2]> = BTreeMap::new();
        for (events, i) in [(&crashed.events, 0), (&recovered.events, 1)] {
            for e in events {
                if let Event::BodyStarted { at, .. } = e {
                    runs.entry(at).or_default()[i] += 1;
                }
            }
        }
        for (at, [before, after]) in &runs {
            if let Some(c) = counts.get_mut(*at) {
                c.min = c.min.min(before + after);
                c.max = c.max.max(before + after);
                c.reran += u32::from(*before > 0 && *after > 0);
            }
        }
        for (at, c) in counts.iter_mut() {
            if !runs.contains_key(at) {
                c.min = 0;
            }
        }

        let mut problems = Vec::new();
        for e in &recovered.events {
            if let Event::BodyStarted { at, name } = e
                && acknowledged.contains(at)
            {
                problems.push(format!(
                    "step {at} (`{name}`) ran again after recovery, although the store had \
                     acknowledged its checkpoint as durable before the crash"
                ));
            }
        }
        match &recovered.result {
            None => problems.push("the recovered run did not finish".into()),
            Some(got) if !same(got, expected) => problems.push(format!(
                "the recovered result differs from the uninterrupted run's:\n      \
                 uninterrupted: {expected:?}\n      recovered:     {got:?}"
            )),
            Some(_) => {}
        }
        if crate::journal::first_difference(&recovered.steps, expected_steps, Compare::Calls)
            .is_some()
        {
            problems.push(format!(
                "the journal records different steps than the uninterrupted run's:\n      \
                 uninterrupted: {}\n      recovered:     {}",
                list(expected_steps, &recovered.steps),
                list(&recovered.steps, expected_steps)
            ));
        }
        let mut unique = BTreeSet::new();
        problems.retain(|p| unique.insert(p.clone()));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n    "))
        }
    }
}

/// Runs (or resumes) the workflow once on `journal` until it finishes, or, unless
/// `finish` is set, until the probe's crash happens.
fn run_once<O>(
    journal: &TempJournal,
    call: WorkflowCall<O>,
    probe: Probe,
    finish: bool,
) -> durable_runtime::Result<Run<O>>
where
    O: serde::Serialize + DeserializeOwned + Send + 'static,
{
    let probe = Arc::new(probe);
    let path = journal.path().to_owned();
    let p = probe.clone();
    let (result, steps) = on_fresh_runtime(true, async move {
        let rt = open(&path, Some(p.clone())).await?;
        let handle = rt.start_with_id(WORKFLOW_ID, call).await?;
        let result = tokio::select! {
            r = handle.result() => Some(r),
            () = p.crashed(), if !finish => None,
        };
        let steps = match result {
            Some(_) => crate::journal::step_map(rt.steps(WORKFLOW_ID).await?),
            None => BTreeMap::new(),
        };
        Ok::<_, durable_runtime::Error>((result, steps))
    })?;
    Ok(Run {
        result,
        steps,
        events: probe.events(),
        crashed: probe.is_crashed(),
    })
}

/// Whether two runs returned the same: equal outputs, or errors that read the same.
fn same<O: PartialEq>(a: &Result<O, Error>, b: &Result<O, Error>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.to_string() == b.to_string(),
        _ => false,
    }
}

fn describe(point: &CrashPoint) -> String {
    match point {
        CrashPoint::BeforeCommit(p) => format!("before step {p}'s checkpoint committed"),
        CrashPoint::AfterCommit(p) => format!("after step {p}'s checkpoint committed"),
        CrashPoint::BeforeFinish => "before the workflow's outcome committed".into(),
        CrashPoint::AfterFinish => "after the workflow's outcome committed".into(),
    }
}

fn list(steps: &BTreeMap<StepPath, Recorded>, other: &BTreeMap<StepPath, Recorded>) -> String {
    let items: Vec<String> = steps
        .iter()
        .map(|(p, r)| format!("{p} {}", r.describe(other.get(p))))
        .collect();
    items.join(", ")
}

/// How often one step's body ran, over the uninterrupted run and every crash scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRuns {
    /// The workflow run the step belongs to: the checked workflow, or one of its child
    /// workflows (`<parent id>/<path>`).
    pub workflow_id: String,
    /// The step's path in that run.
    pub path: StepPath,
    /// The step's name.
    pub name: String,
    /// Body runs (attempts) in the uninterrupted run.
    pub reference: u32,
    /// The fewest body runs in one scenario (the crashed run and its recovery).
    pub min: u32,
    /// The most body runs in one scenario.
    pub max: u32,
    /// In how many scenarios the body ran both before the crash and again after it
    /// (allowed only when its checkpoint had not been acknowledged).
    pub reran: u32,
}

impl StepRuns {
    fn new(at: &StepAt, name: &str) -> Self {
        StepRuns {
            workflow_id: at.workflow_id.clone(),
            path: at.path.clone(),
            name: name.to_owned(),
            reference: 0,
            min: u32::MAX,
            max: 0,
            reran: 0,
        }
    }
}

/// What a passing [`CrashCheck`] ran; its `Display` is a table of step body runs.
#[derive(Debug, Clone)]
pub struct CrashReport {
    workflow: &'static str,
    scenarios: usize,
    steps: Vec<StepRuns>,
}

impl CrashReport {
    /// How many crash scenarios ran (two per checkpoint).
    pub fn scenarios(&self) -> usize {
        self.scenarios
    }

    /// Body run counts of every step that recorded a result, in path order.
    pub fn steps(&self) -> &[StepRuns] {
        &self.steps
    }
}

impl Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash check of `{}`: {} crash scenarios, every one recovered to the uninterrupted result;",
            self.workflow, self.scenarios
        )?;
        writeln!(f, "step body runs (attempts), per step:")?;
        writeln!(
            f,
            "  {:<6} {:<16} {:>13} {:>23} {:>26}",
            "path", "step", "uninterrupted", "per scenario (min-max)", "ran before and after crash"
        )?;
        for s in &self.steps {
            let min = if s.min == u32::MAX { 0 } else { s.min };
            let at = StepAt {
                workflow_id: s.workflow_id.clone(),
                path: s.path.clone(),
            };
            writeln!(
                f,
                "  {:<6} {:<16} {:>13} {:>23} {:>26}",
                at.to_string(),
                s.name,
                s.reference,
                format!("{min}-{}", s.max),
                format!("{} of {}", s.reran, self.scenarios)
            )?;
        }
        Ok(())
    }
}

/// A failed [`CrashCheck`]: every crash point where recovery went wrong, and how.
#[derive(Clone)]
pub struct CrashFailure {
    workflow: &'static str,
    problems: Vec<String>,
}

impl CrashFailure {
    /// One line (or a few) per crash point that failed.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl Display for CrashFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workflow `{}` does not survive every crash ({} failing crash point(s)):",
            self.workflow,
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Debug for CrashFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

impl std::error::Error for CrashFailure {}
