//! The drive loop: one run's body polled to its end, or to the first fatal error.

use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::engine::context::WorkflowCtx;
use crate::engine::recorded::REPLAY_BATCH;
use crate::engine::scope::{self, Branch};
use crate::engine::workflow::ErasedWorkflow;
use crate::error::{CancelReason, Error, FailureKind, Location, Result, StoreError, undecodable};
use crate::journal::{self, blocking};
use crate::util::now_ms;

/// Whether a run can have recorded steps to replay.
#[derive(Debug)]
pub(crate) enum History {
    /// Just created by this start: nothing can be recorded yet, so nothing is loaded.
    None,
    /// Found pending in the journal: its first recorded steps (the rest are read as
    /// the code asks for them), start records and patch markers are loaded, in one trip
    /// to a blocking thread.
    Journaled,
    /// Found pending in the journal, and loaded already (with other runs', at open), or
    /// the error of loading it.
    Loaded(Box<Result<journal::History, StoreError>>),
}

/// Loads what earlier executions recorded (if the run has a history), runs the body,
/// and checks that it asked for every recorded step.
pub(crate) async fn execute(
    ctx: &Arc<WorkflowCtx>,
    def: &'static dyn ErasedWorkflow,
    input: &[u8],
    history: History,
    deadline_at: Option<i64>,
) -> Result<Vec<u8>> {
    match history {
        History::None => {}
        History::Journaled => {
            let store = ctx.store.clone();
            let id = ctx.id.clone();
            let (recorded, side) = blocking(ctx.store.path(), move || {
                Ok::<_, StoreError>((
                    store.steps_after(&id, None, REPLAY_BATCH)?,
                    store.side_records(&id)?,
                ))
            })
            .await??;
            ctx.load(recorded, side);
        }
        History::Loaded(loaded) => {
            let (recorded, side) = (*loaded)?;
            ctx.load(recorded, side);
        }
    }
    let output = run_body(ctx, def, input, deadline_at).await?;
    if let Some((path, recorded)) = ctx.first_unclaimed()? {
        return Err(Error::Divergence {
            workflow_id: ctx.id.to_string(),
            path,
            recorded,
            requested: None,
            arguments: None,
        });
    }
    Ok(output)
}

/// Starts a workflow body on `input` and polls it to its end or to the first fatal
/// error. The body (and any step it still holds) is dropped before this returns.
pub(crate) async fn run_body(
    ctx: &Arc<WorkflowCtx>,
    def: &'static dyn ErasedWorkflow,
    input: &[u8],
    deadline_at: Option<i64>,
) -> Result<Vec<u8>> {
    let id = &ctx.id;
    let body = def.start(input, ctx.codec).map_err(|(reason, type_name)| {
        match undecodable::<()>(&**id, Location::Input, reason) {
            Error::Incompatible {
                workflow_id,
                location,
                reason,
                ..
            } => Error::Incompatible {
                workflow_id,
                location,
                type_name,
                reason,
            },
            e => e,
        }
    })?;
    let mut body = scope::root(Branch::root(ctx.clone()), body);
    // The deadline, as a timer: when it fires, the run and its children are cancelled
    // (and stop at their next step boundary).
    // Boxed: most runs have none, and a `Sleep` would make every run's future bigger.
    let mut deadline = deadline_at.map(|at| {
        let left = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
        Box::pin(tokio::time::sleep(Duration::from_millis(left)))
    });
    let result = poll_fn(|cx| {
        #[cfg(feature = "testkit")]
        if ctx.crashed() {
            // A simulated crash: the "process" is gone, nothing of it runs again.
            return Poll::Pending;
        }
        if let Some(timer) = deadline.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            deadline = None;
            if let Some(inner) = ctx.runs() {
                let id = ctx.id.clone();
                tracing::info!(workflow = %id, "deadline passed; cancelling the workflow");
                tokio::spawn(async move {
                    if let Err(e) = inner.cancel_run(&id, CancelReason::DeadlineExceeded).await {
                        tracing::error!(workflow = %id, "cannot record the cancellation: {e}");
                    }
                });
            }
        }
        if let Some(e) = ctx.poll_fatal(cx.waker()) {
            return Poll::Ready(Err(e));
        }
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut body).poll(cx))) {
            // Finished after a cancellation was asked for (its last step ran to its
            // end): the cancellation stands, as the journal records it.
            Ok(Poll::Ready(output)) => Poll::Ready(match ctx.cancelled() {
                Some(reason) => Err(Error::Cancelled {
                    workflow_id: id.to_string(),
                    reason,
                }),
                None => Ok(output),
            }),
            Ok(Poll::Pending) => match ctx.poll_fatal(cx.waker()) {
                Some(e) => Poll::Ready(Err(e)),
                None => {
                    if ctx.take_spin().is_some_and(|until| Instant::now() < until) {
                        // A lone checkpoint whose commit is about as fast as a sleep
                        // and a wake-up: stay runnable, but let the writer have this
                        // core if it is waiting for one.
                        std::thread::yield_now();
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending
                }
            },
            Err(payload) => Poll::Ready(Err(Error::Failed {
                workflow_id: id.to_string(),
                kind: FailureKind::WorkflowPanicked,
                message: format!(
                    "workflow body panicked: {}",
                    crate::util::panic_message(&*payload)
                ),
            })),
        }
    })
    .await;
    // Drop the body (and any step it still holds) before deciding the outcome.
    drop(body);
    result?.map_err(|reason| Error::Failed {
        workflow_id: id.to_string(),
        kind: FailureKind::OutputNotEncodable,
        message: format!("cannot encode the workflow's output: {reason}"),
    })
}
