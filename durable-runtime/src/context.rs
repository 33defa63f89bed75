//! The state one workflow run shares with its steps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use crate::error::Error;
use crate::path::StepPath;
use crate::store::{RecordedStep, Store};

/// One execution of one workflow: its id, the steps recorded by earlier executions that
/// have not been claimed yet, and the first fatal error, if any.
#[derive(Debug)]
pub(crate) struct WorkflowCtx {
    pub(crate) id: Arc<str>,
    pub(crate) store: Arc<dyn Store>,
    recorded: Mutex<HashMap<StepPath, RecordedStep>>,
    fatal: Mutex<Fatal>,
    /// Set for a replay check: step bodies never run. A step without a record stays
    /// pending for ever, and is listed in `unrecorded`.
    replay_only: bool,
    unrecorded: Mutex<Vec<(StepPath, &'static str)>>,
}

#[derive(Debug, Default)]
struct Fatal {
    error: Option<Error>,
    waker: Option<Waker>,
}

/// Locks a mutex, ignoring poisoning: every critical section here is a plain field
/// update that cannot leave the data half-written.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WorkflowCtx {
    pub(crate) fn new(id: Arc<str>, store: Arc<dyn Store>, recorded: Vec<RecordedStep>) -> Self {
        WorkflowCtx {
            id,
            store,
            recorded: Mutex::new(recorded.into_iter().map(|s| (s.path.clone(), s)).collect()),
            fatal: Mutex::default(),
            replay_only: false,
            unrecorded: Mutex::default(),
        }
    }

    /// A context for a replay check: recorded steps replay, no step body ever runs.
    pub(crate) fn replay_only(
        id: Arc<str>,
        store: Arc<dyn Store>,
        recorded: Vec<RecordedStep>,
    ) -> Self {
        WorkflowCtx {
            replay_only: true,
            ..WorkflowCtx::new(id, store, recorded)
        }
    }

    /// Whether step bodies may run. If not, notes that the code waited for the
    /// unrecorded step `name` at `path`.
    pub(crate) fn may_run(&self, path: &StepPath, name: &'static str) -> bool {
        if self.replay_only {
            lock(&self.unrecorded).push((path.clone(), name));
        }
        !self.replay_only
    }

    /// The unrecorded steps a replay-only execution waited for, in the order it did.
    pub(crate) fn unrecorded(&self) -> Vec<(StepPath, &'static str)> {
        lock(&self.unrecorded).clone()
    }

    /// Takes the record of `path`, if an earlier execution recorded one. Each recorded
    /// step is handed out once; what is left at the end was never asked for.
    pub(crate) fn take_recorded(&self, path: &StepPath) -> Option<RecordedStep> {
        lock(&self.recorded).remove(path)
    }

    /// How many recorded steps this execution has not asked for (yet).
    pub(crate) fn unclaimed(&self) -> usize {
        lock(&self.recorded).len()
    }

    /// The first recorded step (by path) that this execution never asked for.
    pub(crate) fn first_unclaimed(&self) -> Option<(StepPath, String)> {
        lock(&self.recorded)
            .values()
            .min_by(|a, b| a.path.cmp(&b.path))
            .map(|s| (s.path.clone(), s.name.clone()))
    }

    /// Stops this execution: the driver sees the error at its next poll. The first
    /// error wins; later ones are consequences.
    pub(crate) fn fail(&self, error: Error) {
        let waker = {
            let mut f = lock(&self.fatal);
            if f.error.is_none() {
                f.error = Some(error);
            }
            f.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Called by the driver on every poll: remembers its waker and returns the fatal
    /// error, if one happened.
    pub(crate) fn poll_fatal(&self, waker: &Waker) -> Option<Error> {
        let mut f = lock(&self.fatal);
        if f.error.is_none() {
            match &f.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => f.waker = Some(waker.clone()),
            }
        }
        f.error.clone()
    }
}
