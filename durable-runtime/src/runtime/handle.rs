//! What callers hold: handles of runs, their status, and recorded steps.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::codec::Codec;
use crate::engine::workflow::Outcome;
use crate::error::{Error, Location, Result, undecodable};

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
    /// Cancelled ([`Runtime::cancel`](crate::Runtime::cancel), its deadline, or its parent's cancellation), and
    /// the cancellation is recorded ([`Error::Cancelled`]).
    Cancelled,
    /// This process stopped running it (replay divergence, a corrupt row, a journal
    /// error, or the runtime itself stopped). The journal still holds it as pending; the
    /// next [`Runtime::open`](crate::Runtime::open) tries again.
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
