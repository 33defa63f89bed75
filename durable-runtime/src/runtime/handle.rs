//! What callers hold: handles of runs, their status, and recorded steps.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::codec::Codec;
use crate::engine::workflow::Outcome;
use crate::error::{Error, Location, Result, undecodable};
use crate::journal::RecordedOutcome;
use crate::path::StepPath;

/// Where a workflow run stands, as seen by a [`WorkflowHandle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkflowStatus {
    /// Running (or waiting to run) in this process.
    Running,
    /// Finished: the workflow function returned, and its return value is recorded.
    Completed,
    /// Failed for good, and the failure is recorded ([`Error::Failed`]).
    Failed,
    /// Cancelled ([`Runtime::cancel`], its deadline, or its parent's cancellation), and
    /// the cancellation is recorded ([`Error::Cancelled`]).
    Cancelled,
    /// This process stopped running it (replay divergence, a corrupt row, a journal
    /// error, or the runtime itself stopped). The journal still holds it as pending; the
    /// next [`Runtime::open`] tries again.
    Stopped,
}

/// A handle to a workflow run: its id, its status, and its result once it finishes.
///
/// Handles are cheap to clone; every clone sees the same run.
pub struct WorkflowHandle<O> {
    id: Arc<str>,
    outcome: watch::Receiver<Option<Outcome>>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for WorkflowHandle<O> {
    fn clone(&self) -> Self {
        WorkflowHandle::new(self.id.clone(), self.outcome.clone())
    }
}

impl<O> std::fmt::Debug for WorkflowHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowHandle")
            .field("id", &self.id)
            .field("status", &self.status())
            .finish()
    }
}

impl<O> WorkflowHandle<O> {
    pub(super) fn new(id: Arc<str>, outcome: watch::Receiver<Option<Outcome>>) -> Self {
        WorkflowHandle {
            id,
            outcome,
            _output: PhantomData,
        }
    }

    /// The workflow id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the run stands now.
    pub fn status(&self) -> WorkflowStatus {
        match &*self.outcome.borrow() {
            // No outcome, and nobody left to publish one: the runtime stopped.
            None if self.outcome.has_changed().is_err() => WorkflowStatus::Stopped,
            None => WorkflowStatus::Running,
            Some(o) => match &**o {
                Ok(_) => WorkflowStatus::Completed,
                Err(Error::Failed { .. }) => WorkflowStatus::Failed,
                Err(Error::Cancelled { .. }) => WorkflowStatus::Cancelled,
                Err(_) => WorkflowStatus::Stopped,
            },
        }
    }

    /// Waits for the run to finish and returns the workflow function's return value.
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] for a recorded failure (a panic), [`Error::Divergence`] or
    /// [`Error::Corrupt`] if replay could not continue, [`Error::Store`] if the journal
    /// failed, [`Error::Stopped`] if the runtime stopped before the run finished.
    pub async fn result(&self) -> Result<O>
    where
        O: Serialize + DeserializeOwned,
    {
        let mut rx = self.outcome.clone();
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        let Some(outcome) = outcome else {
            return Err(Error::Stopped {
                workflow_id: self.id.to_string(),
            });
        };
        match &*outcome {
            Ok(bytes) => Codec::decode(bytes)
                .map_err(|reason| undecodable::<O>(&*self.id, Location::Output, reason)),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A recorded step, as [`Runtime::steps`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepInfo {
    /// The step's path in its workflow.
    pub path: StepPath,
    /// The step's name.
    pub name: String,
    /// Whether the step panicked (its record is the panic message, not an output).
    pub panicked: bool,
    /// How many attempts ran before the result was recorded.
    pub attempts: u32,
    /// When the first attempt started, in milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// When the result was recorded, in milliseconds since the Unix epoch.
    pub finished_at_ms: i64,
    pub(super) workflow_id: Arc<str>,
    pub(super) args: Option<crate::codec::Fingerprint>,
    pub(super) outcome: RecordedOutcome,
}

impl StepInfo {
    /// The fingerprint of the arguments the step was called with, as recorded with its
    /// result; `None` for records from before journal schema 4, and for operations that
    /// take none (such as `durable::sleep`). A replay that calls the step with arguments
    /// of another fingerprint diverges.
    pub fn arguments_fingerprint(&self) -> Option<crate::codec::Fingerprint> {
        self.args
    }

    /// A fingerprint of the recorded output's content, which does not need its Rust
    /// type: two records of equal values have equal fingerprints (maps in any order).
    /// `None` if the step recorded a panic or an interruption instead of an output.
    pub fn output_fingerprint(&self) -> Option<crate::codec::Fingerprint> {
        match &self.outcome {
            RecordedOutcome::Output(bytes) => Some(crate::codec::content_fingerprint(bytes)),
            _ => None,
        }
    }

    /// Decodes the step's recorded output as `T` (its return type).
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] if the step panicked (the record is the panic message), and
    /// [`Error::Corrupt`] if the record does not decode as `T`.
    pub fn output<T: Serialize + DeserializeOwned>(&self) -> Result<T> {
        self.outcome
            .result(&self.workflow_id, &self.path, &self.name)
    }
}
