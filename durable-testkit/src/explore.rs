//! Completion-order exploration: the same workflow under many seeded schedules must
//! record the same step at every path.

use std::collections::BTreeMap;
use std::fmt::{self, Debug, Display};
use std::sync::Arc;

use durable_runtime::testkit::Probe;
use durable_runtime::{StepPath, WorkflowCall};
use serde::de::DeserializeOwned;

use crate::crash::WORKFLOW_ID;
use crate::journal::{Compare, Recorded, TempJournal, on_fresh_runtime, open};

/// The environment variable that sets the first seed of an exploration.
pub const SEED_VAR: &str = "DURABLE_TESTKIT_SEED";

/// Checks that a workflow's step ids do not depend on the order in which concurrent
/// steps complete: builder for [`explore_completion_orders`].
///
/// Each schedule runs the workflow on a fresh journal with every checkpoint's
/// acknowledgement delayed by a seeded random amount (none, a few scheduler yields, or up
/// to 3 ms), so concurrent steps complete, and the workflow observes them, in a
/// different order each time. At every path, each schedule must record the same step,
/// with the same arguments and the same output (compared by fingerprint; the outputs of
/// `sleep`, `now`, `random` and `uuid`, new on every run by design, are not compared).
///
/// Anything that makes a workflow call different steps, or pass them different
/// arguments, on different runs shows up here too: branching on the wall clock, on
/// random numbers, on `HashMap` iteration order, or on which of two concurrent steps
/// finished first; a step called per `HashMap` entry; follow-up steps pushed into a
/// `FuturesUnordered` as earlier ones finish. A step body that returns something new on
/// every run (it reads a clock or an id service) shows up as an output that differs:
/// give it a fake in the test. On failure the error names both seeds, the first path
/// where the two schedules differ, what differs there (the step, its arguments or its
/// output), and the two step sequences side by side.
///
/// Seeds are `base, base + 1, ...`; the base comes from [`seed`](Self::seed), else from
/// the `DURABLE_TESTKIT_SEED` environment variable, else from the clock. The check
/// blocks: call it from a plain `#[test]`.
///
/// ```
/// use durable_runtime::{step, workflow};
///
/// #[step]
/// async fn fetch(n: u32) -> u32 { n * 10 }
///
/// #[workflow]
/// async fn total(n: u32) -> u32 {
///     // Steps claim their ids when called, so completion order cannot change them.
///     let all = futures::future::join_all((0..n).map(fetch)).await;
///     all.into_iter().sum()
/// }
///
/// let report = durable_testkit::explore_completion_orders(|| total(5))
///     .schedules(20)
///     .run()
///     .expect("step ids do not depend on completion order");
/// assert_eq!(report.steps(), 5);
/// ```
#[derive(Debug)]
pub struct ExploreCheck<F> {
    make: F,
    schedules: u64,
    base: Option<u64>,
}

/// Starts an [`ExploreCheck`] of the workflow call `make` returns (called once per
/// schedule).
pub fn explore_completion_orders<O, F>(make: F) -> ExploreCheck<F>
where
    F: FnMut() -> WorkflowCall<O>,
{
    ExploreCheck {
        make,
        schedules: 32,
        base: None,
    }
}

type StepMap = BTreeMap<StepPath, Recorded>;

impl<F> ExploreCheck<F> {
    /// How many schedules to run (32 by default).
    pub fn schedules(mut self, n: u64) -> Self {
        self.schedules = n.max(2);
        self
    }

    /// The first seed; the others follow it. To reproduce a failure, pass the first
    /// seed it names and as many schedules as reach the second.
    pub fn seed(mut self, base: u64) -> Self {
        self.base = Some(base);
        self
    }

    /// Runs the check.
    ///
    /// # Errors
    ///
    /// An [`ExploreFailure`] naming two seeds whose schedules recorded different steps,
    /// or a run that failed (its `Debug` output is the readable report, for `expect`).
    pub fn run<O>(mut self) -> Result<ExploreReport, ExploreFailure>
    where
        F: FnMut() -> WorkflowCall<O>,
        O: serde::Serialize + DeserializeOwned + Send + 'static,
    {
        let base = self.base.unwrap_or_else(|| {
            std::env::var(SEED_VAR)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(clock_seed)
        });
        let mut first: Option<(u64, StepMap)> = None;
        let mut workflow = "";
        for seed in (0..self.schedules).map(|i| base.wrapping_add(i)) {
            let call = (self.make)();
            workflow = call.name();
            let steps = schedule(call, seed).map_err(|message| ExploreFailure {
                workflow,
                seed,
                base,
                problem: Problem::Run(message),
            })?;
            match &first {
                None => first = Some((seed, steps)),
                Some((first_seed, expected)) => {
                    if let Some(problem) = compare(*first_seed, expected, seed, &steps) {
                        return Err(ExploreFailure {
                            workflow,
                            seed,
                            base,
                            problem,
                        });
                    }
                }
            }
        }
        let steps = first.map_or(0, |(_, s)| s.len());
        Ok(ExploreReport {
            workflow,
            base,
            schedules: self.schedules,
            steps,
        })
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs one schedule and returns what it recorded.
fn schedule<O>(call: WorkflowCall<O>, seed: u64) -> Result<StepMap, String>
where
    O: serde::Serialize + DeserializeOwned + Send + 'static,
{
    let journal = TempJournal::new().map_err(|e| format!("cannot create a journal: {e}"))?;
    let probe = Arc::new(Probe::new().delay_acks(seed));
    let path = journal.path().to_owned();
    on_fresh_runtime(false, async move {
        let rt = open(&path, Some(probe)).await.map_err(|e| e.to_string())?;
        let handle = rt
            .start_with_id(WORKFLOW_ID, call)
            .await
            .map_err(|e| e.to_string())?;
        // A recorded failure is an outcome like any other; anything else stopped the run.
        match handle.result().await {
            Ok(_) | Err(durable_runtime::Error::Failed { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        let steps = rt.steps(WORKFLOW_ID).await.map_err(|e| e.to_string())?;
        Ok(crate::journal::step_map(steps))
    })
}

/// The first difference between two schedules' steps, if any.
fn compare(seed_a: u64, a: &StepMap, seed_b: u64, b: &StepMap) -> Option<Problem> {
    let mut paths: Vec<&StepPath> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    let first = crate::journal::first_difference(a, b, Compare::CallsAndOutputs)?;
    let at = paths.iter().position(|p| *p == first)?;
    let rows = paths
        .iter()
        .map(|p| {
            let (x, y) = (a.get(*p), b.get(*p));
            (
                p.to_string(),
                x.map(|r| r.describe(y)),
                y.map(|r| r.describe(x)),
            )
        })
        .collect();
    let (x, y) = (a.get(first), b.get(first));
    let what = match (x, y) {
        (Some(x), Some(y)) if x.name == y.name && x.describe(Some(y)).contains("(output ") => {
            What::Output
        }
        (Some(x), Some(y)) if x.name == y.name => What::Arguments,
        _ => What::Step,
    };
    Some(Problem::Differs {
        seed_a,
        seed_b,
        rows,
        at,
        what,
    })
}

/// A passing [`ExploreCheck`].
#[derive(Debug, Clone)]
pub struct ExploreReport {
    workflow: &'static str,
    base: u64,
    schedules: u64,
    steps: usize,
}

impl ExploreReport {
    /// How many steps every schedule recorded.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The first seed.
    pub fn base_seed(&self) -> u64 {
        self.base
    }
}

impl Display for ExploreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "completion orders of `{}`: {} schedules (seeds {}..), each recorded the same {} steps",
            self.workflow, self.schedules, self.base, self.steps
        )
    }
}

#[derive(Clone)]
enum Problem {
    Run(String),
    Differs {
        seed_a: u64,
        seed_b: u64,
        /// Every path of either schedule: (path, step in a, step in b).
        rows: Vec<(String, Option<String>, Option<String>)>,
        /// The first row that differs.
        at: usize,
        what: What,
    },
}

/// What differs at the first differing path.
#[derive(Clone, Copy)]
enum What {
    /// Another step, or none.
    Step,
    /// The same step, with other arguments.
    Arguments,
    /// The same step and arguments, with another output.
    Output,
}

/// A failed [`ExploreCheck`].
#[derive(Clone)]
pub struct ExploreFailure {
    workflow: &'static str,
    seed: u64,
    base: u64,
    problem: Problem,
}

impl ExploreFailure {
    /// The seed of the schedule that failed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The first path where two schedules recorded different steps, with the step each
    /// recorded there (`None`: nothing); `None` if a run failed instead.
    pub fn divergence(&self) -> Option<(&str, Option<&str>, Option<&str>)> {
        match &self.problem {
            Problem::Run(_) => None,
            Problem::Differs { rows, at, .. } => {
                let (path, a, b) = &rows[*at];
                Some((path, a.as_deref(), b.as_deref()))
            }
        }
    }
}

impl Display for ExploreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.seed.wrapping_sub(self.base) + 1;
        match &self.problem {
            Problem::Run(message) => write!(
                f,
                "workflow `{}` failed under the schedule of seed {}: {message}\n\
                 reproduce: .seed({}).schedules({count})",
                self.workflow, self.seed, self.base
            ),
            Problem::Differs {
                seed_a,
                seed_b,
                rows,
                at,
                what,
            } => {
                let (path, a, b) = &rows[*at];
                let name = |s: &Option<String>| {
                    s.as_ref()
                        .map_or_else(|| "(nothing)".to_owned(), |s| format!("`{s}`"))
                };
                let (differs, why) = match what {
                    What::Step => (
                        "different steps",
                        "something other than the input and step outputs decides which steps \
                         it calls (the clock, randomness, HashMap order, which concurrent step \
                         finished first)",
                    ),
                    What::Arguments => (
                        "a step with different arguments",
                        "something other than the input and step outputs decides the arguments \
                         it passes (HashMap or HashSet order, the order concurrent steps \
                         finished in, the clock, randomness); a replay would diverge there",
                    ),
                    What::Output => (
                        "a step with a different output",
                        "the step's body returned another value for the same arguments: make \
                         it deterministic in this test (a fake clock or id source), or, if it \
                         reads HashMap order, sort what it returns",
                    ),
                };
                writeln!(
                    f,
                    "workflow `{}` records {differs} depending on the schedule: at step {path}, \
                     seed {seed_a} recorded {} and seed {seed_b} recorded {}",
                    self.workflow,
                    name(a),
                    name(b)
                )?;
                writeln!(f, "{why}")?;
                writeln!(f, "reproduce: .seed({}).schedules({count})", self.base)?;
                writeln!(
                    f,
                    "  {:<8} {:<24} {:<24}",
                    "path",
                    format!("seed {seed_a}"),
                    format!("seed {seed_b}")
                )?;
                let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
                for (i, (p, x, y)) in rows.iter().enumerate().skip(at.saturating_sub(3)).take(8) {
                    let mark = if i == *at {
                        "  <-- first difference"
                    } else {
                        ""
                    };
                    writeln!(f, "  {p:<8} {:<24} {:<24}{mark}", show(x), show(y))?;
                }
                Ok(())
            }
        }
    }
}

impl Debug for ExploreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

impl std::error::Error for ExploreFailure {}
