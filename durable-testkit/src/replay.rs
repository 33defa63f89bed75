//! Replay check: re-run every workflow a journal records against today's code, without
//! running any step body.

use std::fmt::{self, Debug, Display};
use std::path::{Path, PathBuf};

pub use durable_runtime::testkit::{Replayed, Verdict};

use crate::journal::on_fresh_runtime;

/// Replays every workflow recorded in the journal at `journal` against the code linked
/// into this program, without running any step body, and reports per workflow whether
/// the code still asks for exactly the recorded steps.
///
/// This is the check to run in CI before deploying a change to a workflow: copy a
/// journal your production wrote (or one your tests recorded) into `tests/fixtures/`,
/// and a change that would make pending workflows diverge fails the build, naming the
/// workflow, the path, the recorded step and the step the new code asks for.
///
/// The journal file is not touched: the check works on a copy (the file and its
/// `-wal`, if any). Recorded steps replay their outputs; a workflow that is still
/// pending replays up to the first step it has no record of (the one it would run
/// next); a workflow the journal records as finished must ask for every recorded step
/// and nothing else.
///
/// ```
/// use durable_runtime::{step, workflow};
/// use durable_testkit::{TempJournal, Verdict};
///
/// #[step]
/// async fn greet(name: String) -> String { format!("hello {name}") }
///
/// #[workflow]
/// async fn welcome(name: String) -> String { greet(name).await }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Record a journal (in a real project: a file in tests/fixtures/).
/// let (journal, rt) = TempJournal::with_runtime().await?;
/// rt.start_with_id("w-1", welcome("ada".into())).await?.result().await?;
/// drop(rt);
///
/// let report = durable_testkit::replay_check(journal.path()).expect("today's code replays it");
/// assert!(matches!(report.workflows()[0].verdict, Verdict::Ok { replayed: 1 }));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// A [`ReplayFailure`] if the journal cannot be read, or if any workflow diverges or
/// cannot be replayed; it holds the whole report (its `Debug` output is the readable
/// report, for `expect`).
pub fn replay_check(journal: impl AsRef<Path>) -> Result<ReplayReport, ReplayFailure> {
    let journal = journal.as_ref();
    let report = replay(journal).map_err(|message| ReplayFailure {
        report: ReplayReport {
            journal: journal.to_owned(),
            workflows: Vec::new(),
        },
        message: Some(message),
    })?;
    if report.workflows.iter().all(|w| passes(&w.verdict)) {
        Ok(report)
    } else {
        Err(ReplayFailure {
            report,
            message: None,
        })
    }
}

fn passes(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Ok { .. } | Verdict::Pending { .. })
}

fn replay(journal: &Path) -> Result<ReplayReport, String> {
    if !journal.is_file() {
        return Err(format!("{} is not a journal file", journal.display()));
    }
    let dir =
        tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let copy = dir.path().join("journal.db");
    for suffix in ["", "-wal"] {
        let (mut from, mut to) = (journal.as_os_str().to_owned(), copy.as_os_str().to_owned());
        from.push(suffix);
        to.push(suffix);
        if Path::new(&from).exists() {
            std::fs::copy(&from, &to)
                .map_err(|e| format!("cannot copy {}: {e}", Path::new(&from).display()))?;
        }
    }
    let workflows = on_fresh_runtime(false, async {
        durable_runtime::testkit::replay_journal(&copy).await
    })
    .map_err(|e| e.to_string())?;
    Ok(ReplayReport {
        journal: journal.to_owned(),
        workflows,
    })
}

/// What [`replay_check`] found, per workflow.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    journal: PathBuf,
    workflows: Vec<Replayed>,
}

impl ReplayReport {
    /// Every workflow of the journal, oldest first.
    pub fn workflows(&self) -> &[Replayed] {
        &self.workflows
    }

    /// The verdict for workflow `id`.
    pub fn verdict(&self, id: &str) -> Option<&Verdict> {
        self.workflows
            .iter()
            .find(|w| w.workflow_id == id)
            .map(|w| &w.verdict)
    }
}

impl Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failing = self
            .workflows
            .iter()
            .filter(|w| !passes(&w.verdict))
            .count();
        writeln!(
            f,
            "replay of {}: {} workflow(s), {} ok, {} failing",
            self.journal.display(),
            self.workflows.len(),
            self.workflows.len() - failing,
            failing
        )?;
        for w in &self.workflows {
            let what = match &w.verdict {
                Verdict::Ok { replayed } => format!("ok ({replayed} recorded steps replayed)"),
                Verdict::Pending { replayed, next } => match next {
                    Some((path, name)) => format!(
                        "ok, pending: {replayed} recorded steps replayed; it runs `{name}` at {path} next"
                    ),
                    None => format!("ok, pending: {replayed} recorded steps replayed"),
                },
                Verdict::Diverged {
                    path,
                    recorded,
                    requested: _,
                    arguments: Some(a),
                } => format!(
                    "DIVERGED at step {path}: `{}` was recorded with other arguments \
                     (fingerprint {}), the code passes {} (fingerprint {})",
                    recorded.as_deref().unwrap_or_default(),
                    a.recorded,
                    a.requested_preview,
                    a.requested
                ),
                Verdict::Diverged {
                    path,
                    recorded,
                    requested,
                    arguments: None,
                } => {
                    let quote = |s: &Option<String>, none: &str| {
                        s.as_ref()
                            .map_or_else(|| none.to_owned(), |s| format!("`{s}`"))
                    };
                    format!(
                        "DIVERGED at step {path}: recorded {}, the code asks for {}",
                        quote(recorded, "nothing"),
                        quote(requested, "nothing (it finished without it)")
                    )
                }
                Verdict::Stuck { replayed } => format!(
                    "STUCK after {replayed} recorded steps: it neither finished nor asked for an unrecorded step within 10 s"
                ),
                Verdict::Error(e) => format!("ERROR: {e}"),
            };
            writeln!(
                f,
                "  {} (`{}`, {}): {what}",
                w.workflow_id, w.name, w.status
            )?;
        }
        Ok(())
    }
}

/// A failed [`replay_check`].
#[derive(Clone)]
pub struct ReplayFailure {
    report: ReplayReport,
    /// Set when the journal could not be replayed at all.
    message: Option<String>,
}

impl ReplayFailure {
    /// The report: every workflow's verdict (empty if the journal could not be read).
    pub fn report(&self) -> &ReplayReport {
        &self.report
    }
}

impl Display for ReplayFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "cannot replay {}: {m}", self.report.journal.display()),
            None => Display::fmt(&self.report, f),
        }
    }
}

impl Debug for ReplayFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

impl std::error::Error for ReplayFailure {}
