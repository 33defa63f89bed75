//! A recorded step as callers see it: [`Runtime::steps`](crate::Runtime::steps) and
//! [`JournalView::steps`](crate::JournalView::steps) both list these.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{CodecError, Fingerprint};
use crate::error::{Error, Location, Result};
use crate::journal::{RecordedOutcome, RecordedStep};
use crate::path::StepPath;

/// A recorded step, as [`Runtime::steps`](crate::Runtime::steps) and
/// [`JournalView::steps`](crate::JournalView::steps) list it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepInfo {
    /// The step's path in its workflow.
    pub path: StepPath,
    /// The step's name.
    pub name: String,
    /// Whether the step panicked, or was interrupted and not run again (its record is
    /// a message, not an output).
    pub panicked: bool,
    /// How many attempts ran before the result was recorded.
    pub attempts: u32,
    /// When the first attempt started, in milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// When the result was recorded, in milliseconds since the Unix epoch.
    pub finished_at_ms: i64,
    workflow_id: String,
    attempt_times: Option<String>,
    args: Option<Fingerprint>,
    outcome: RecordedOutcome,
    /// Whether the record matches its checksum (a journal view lists damaged records
    /// too; the runtime refuses them).
    intact: bool,
}

impl StepInfo {
    /// Step `step` of workflow `workflow_id`; `intact` says whether its record matched
    /// its checksum.
    pub(crate) fn new(workflow_id: &str, step: RecordedStep, intact: bool) -> Self {
        StepInfo {
            path: step.path,
            name: step.name,
            panicked: !matches!(step.outcome, RecordedOutcome::Output(_)),
            attempts: step.attempts,
            started_at_ms: step.started_at,
            finished_at_ms: step.finished_at,
            workflow_id: workflow_id.to_owned(),
            attempt_times: step.attempt_times,
            args: step.args,
            outcome: step.outcome,
            intact,
        }
    }

    /// When each attempt of the step started and ended, oldest first: one attempt
    /// from [`started_at_ms`](Self::started_at_ms) to
    /// [`finished_at_ms`](Self::finished_at_ms) for a step that ran once, and each of
    /// a step that retried (the gaps between them are its retry delays). Empty for a
    /// step that retried before journal schema 13 (SQLite; 6 on PostgreSQL), which
    /// recorded only its first start and its end, or whose record of them is damaged.
    ///
    /// ```
    /// # use durable_runtime::{Runtime, step, workflow};
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// static CALLS: AtomicU32 = AtomicU32::new(0);
    ///
    /// #[step(retries = 2, backoff = 5ms)]
    /// async fn flaky() -> Result<u32, String> {
    ///     match CALLS.fetch_add(1, Ordering::SeqCst) {
    ///         0 => Err("not yet".into()),
    ///         n => Ok(n),
    ///     }
    /// }
    ///
    /// #[workflow]
    /// async fn timed() -> Result<u32, String> {
    ///     flaky().await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// rt.start_with_id("t", timed()).await?.result().await?.unwrap();
    /// let steps = rt.steps("t").await?;
    /// let times = steps[0].attempt_times();
    /// assert_eq!(times.len(), 2);
    /// // The second attempt began after the first ended and the backoff passed.
    /// assert!(times[1].started_at_ms >= times[0].finished_at_ms);
    /// assert_eq!(times[1].finished_at_ms, steps[0].finished_at_ms);
    /// # Ok(())
    /// # }
    /// ```
    pub fn attempt_times(&self) -> Vec<AttemptTime> {
        let Some(text) = &self.attempt_times else {
            return if self.attempts <= 1 {
                vec![AttemptTime {
                    started_at_ms: self.started_at_ms,
                    finished_at_ms: self.finished_at_ms,
                }]
            } else {
                Vec::new()
            };
        };
        let parsed: Option<Vec<AttemptTime>> = text
            .split(',')
            .map(|pair| {
                let (start, end) = pair.split_once(':')?;
                Some(AttemptTime {
                    started_at_ms: start.parse().ok()?,
                    finished_at_ms: end.parse().ok()?,
                })
            })
            .collect();
        parsed.unwrap_or_default()
    }

    /// The fingerprint of the arguments the step was called with, as recorded with its
    /// result; `None` for records from before journal schema 4, and for operations that
    /// take none (such as `durable::sleep`). A replay that calls the step with arguments
    /// of another fingerprint diverges.
    pub fn arguments_fingerprint(&self) -> Option<Fingerprint> {
        self.args
    }

    /// A fingerprint of the recorded output's content, which does not need its Rust
    /// type: two records of equal values have equal fingerprints (maps in any order).
    /// `None` if the step recorded a panic or an interruption instead of an output, or
    /// its record is damaged.
    pub fn output_fingerprint(&self) -> Option<Fingerprint> {
        match &self.outcome {
            RecordedOutcome::Output(bytes) if self.intact => {
                Some(crate::codec::content_fingerprint(bytes))
            }
            _ => None,
        }
    }

    /// Decodes the step's recorded output as `T` (its return type).
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] if the step panicked or was interrupted (with the recorded
    /// message), [`Error::Corrupt`] if the record is damaged, [`Error::Incompatible`] if
    /// it is a value of another type.
    pub fn output<T: Serialize + DeserializeOwned>(&self) -> Result<T> {
        if !self.intact {
            return Err(Error::Corrupt {
                workflow_id: self.workflow_id.clone(),
                location: Location::Step {
                    path: self.path.clone(),
                    name: self.name.clone(),
                },
                reason: CodecError::malformed(crate::journal::DAMAGED),
            });
        }
        self.outcome
            .result(&self.workflow_id, &self.path, &self.name)
    }
}

/// When one attempt of a step started and ended ([`StepInfo::attempt_times`]), in
/// milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptTime {
    /// When the attempt started.
    pub started_at_ms: i64,
    /// When it ended (returned, failed or panicked).
    pub finished_at_ms: i64,
}
