//! Child workflows: a workflow call awaited (or started) inside another workflow.
//!
//! The child's id is the parent's id and the call's path (`order-42/3`), so a replay
//! of the parent finds the same child. The child is linked to its parent in the
//! journal (cancelling the parent cancels it), runs as a workflow of its own (it is
//! resumed on its own after a crash), and its result is recorded in the parent.

use std::future::{Future, IntoFuture, pending};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::Instrument as _;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{ByteBuf, Codec, nested};
use crate::engine::call::WorkflowCall;
use crate::engine::workflow::Outcome;
use crate::error::{CancelReason, Error, FailureKind, Location, Result, undecodable};
use crate::journal::Effect;
use crate::primitives::{Claimed, Op, claim_with, from_claim, op_or, or_stop};
use crate::util::now_ms;

const CHILD: &str = "durable::child";
const START_CHILD: &str = "durable::start_child";
const CHILD_RESULT: &str = "durable::child_result";

/// A child's final outcome, as its parent records it.
#[derive(Serialize, Deserialize)]
enum ChildOutcome {
    /// The child's output, as its own journal value.
    Completed(ByteBuf),
    Failed {
        kind: String,
        message: String,
    },
    Cancelled {
        reason: String,
    },
}

impl ChildOutcome {
    /// The outcome of a finished child; `None` (with the error) for one that stopped
    /// without finishing (a divergence, a journal error), which is not recorded.
    fn of(outcome: &Outcome) -> std::result::Result<ChildOutcome, Error> {
        match &**outcome {
            Ok(bytes) => Ok(ChildOutcome::Completed(ByteBuf(bytes.clone()))),
            Err(Error::Failed { kind, message, .. }) => Ok(ChildOutcome::Failed {
                kind: kind.as_str().to_owned(),
                message: message.clone(),
            }),
            Err(Error::Cancelled { reason, .. }) => Ok(ChildOutcome::Cancelled {
                reason: reason.as_str().to_owned(),
            }),
            Err(e) => Err(e.clone()),
        }
    }

    fn into_result<O: Serialize + DeserializeOwned>(self, op: &Op, child_id: &str) -> Result<O> {
        match self {
            ChildOutcome::Completed(bytes) => {
                let value = match op.recorded_bytes() {
                    Some(outer) => nested(outer, &bytes.0),
                    None => std::borrow::Cow::Borrowed(&bytes.0[..]),
                };
                Codec::decode(&value)
                    .map_err(|reason| undecodable::<O>(child_id, Location::Output, reason))
            }
            ChildOutcome::Failed { kind, message } => Err(Error::Failed {
                workflow_id: child_id.to_owned(),
                kind: FailureKind::parse(&kind).unwrap_or(FailureKind::StepPanicked),
                message,
            }),
            ChildOutcome::Cancelled { reason } => Err(Error::Cancelled {
                workflow_id: child_id.to_owned(),
                reason: CancelReason::parse(&reason).unwrap_or(CancelReason::Requested),
            }),
        }
        .inspect_err(|e| {
            tracing::debug!(parent = %op.claim.ctx.id, child = child_id, "child did not complete: {e}");
        })
    }
}

fn child_id(op: &Op) -> String {
    format!("{}/{}", op.claim.ctx.id, op.claim.path)
}

/// Starts (or finds) the child run `id` of `op`'s workflow.
async fn start<O>(
    op: &Op,
    id: &str,
    call: WorkflowCall<O>,
) -> Result<tokio::sync::watch::Receiver<Option<Outcome>>> {
    let Some(inner) = op.claim.ctx.runs() else {
        return Err(Error::Stopped {
            workflow_id: op.claim.ctx.id.to_string(),
        });
    };
    let launch = call.into_launch(id, Some(op.claim.ctx.id.clone()), op.claim.ctx.codec)?;
    let busy = op.claim.ctx.busy();
    let outcome = inner.clone().launch(Arc::from(id), launch).await?;
    drop(busy);
    if let Some(reason) = op.claim.ctx.cancelled() {
        // The parent was cancelled while the child's row was being created, so the
        // cancellation did not find the child: cancel it now.
        inner.cancel_run(id, reason).await?;
    }
    Ok(outcome)
}

/// Waits for a child's outcome and records it at `op`.
async fn finish<O: Serialize + DeserializeOwned>(
    op: &Op,
    id: &str,
    mut outcome: tokio::sync::watch::Receiver<Option<Outcome>>,
) -> Result<O> {
    // Parked until the child settles, which wakes a dormant parent.
    let parked = op.claim.ctx.park(
        &op.claim.path,
        crate::engine::context::ParkedOn::Child(Arc::from(id)),
        None,
    );
    let outcome = match outcome.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    };
    drop(parked);
    // No outcome: the child is pending but not running here (it could not be resumed,
    // or stopped on a divergence), or this process's runtime is going away. The parent
    // stops with it, pending, and both are tried again at the next open.
    let Some(outcome) = outcome else {
        return op
            .stop(Error::Stopped {
                workflow_id: id.to_owned(),
            })
            .await;
    };
    let recorded = or_stop!(op, ChildOutcome::of(&outcome));
    or_stop!(op, op.record_value(&recorded, Effect::None, now_ms()).await);
    recorded.into_result(op, id)
}

fn outside() -> Error {
    Error::NotInWorkflow {
        operation: "awaiting a workflow call",
        hint: "outside a workflow, pass the call to `Runtime::start` or `Runtime::start_with_id`",
    }
}

/// Inside a workflow, awaiting a workflow call runs it as a child and returns its
/// result.
///
/// The child's id is `<parent id>/<path>` (`order-42/3`). It is started (and its link
/// to the parent recorded) the first time, found again on replay, and runs as a
/// workflow of its own: a crash resumes it on its own, and cancelling the parent
/// cancels it. Its result is recorded in the parent, so once recorded, a replay of the
/// parent does not wait for it again. A child that fails or is cancelled returns that
/// error ([`Error::Failed`], [`Error::Cancelled`]); the parent decides what to do.
///
/// ```
/// use durable_runtime::{Runtime, step, workflow};
///
/// #[step]
/// async fn pack(item: String) -> String { format!("box({item})") }
///
/// #[workflow]
/// async fn ship(item: String) -> String {
///     pack(item).await
/// }
///
/// #[workflow]
/// async fn parcel(items: Vec<String>) -> Result<Vec<String>, String> {
///     // Each call claims its position now; the children run concurrently.
///     let children = items.into_iter().map(ship);
///     let results = durable_runtime::join_all(children).await;
///     // Workflow outputs are recorded, so they hold serializable errors.
///     results.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let h = rt.start_with_id("order-7", parcel(vec!["tea".into(), "cup".into()])).await?;
/// assert_eq!(h.result().await?.unwrap(), ["box(tea)", "box(cup)"]);
/// // The children are workflows of their own, named after their parent.
/// let child = rt.handle::<String>("order-7/1").await?;
/// assert_eq!(child.result().await?, "box(tea)");
/// # Ok(())
/// # }
/// ```
///
/// Outside a workflow, awaiting a call returns [`Error::NotInWorkflow`]: start it with
/// [`Runtime::start`](crate::Runtime::start) instead.
impl<O> IntoFuture for WorkflowCall<O>
where
    O: Serialize + DeserializeOwned + Send + 'static,
{
    type Output = Result<O>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<O>> + Send + 'static>>;

    fn into_future(mut self) -> Self::IntoFuture {
        let claimed = from_claim(self.claim.take(), CHILD, Some(&|a| self.fingerprint(a)));
        Box::pin(async move {
            let op = op_or!(claimed, Err(outside()));
            let id = child_id(&op);
            if let Some(recorded) = op.replayed::<ChildOutcome>() {
                return or_stop!(op, recorded).into_result(&op, &id);
            }
            if !op.may_run() {
                return pending().await;
            }
            let outcome = or_stop!(op, start(&op, &id, self).await);
            finish(&op, &id, outcome).await
        })
    }
}

/// Starts a workflow call as a child of the current workflow and returns a handle to
/// it, without waiting for it: the parent goes on, and awaits
/// [`ChildHandle::result`] when it needs the result.
///
/// The start is recorded (the handle's id on replay is the same child). See
/// [`IntoFuture for WorkflowCall`](WorkflowCall#impl-IntoFuture-for-WorkflowCall<O>)
/// for what a child is.
///
/// ```
/// use durable_runtime::{Runtime, start_child, step, workflow};
///
/// #[step]
/// async fn render(page: u32) -> String { format!("page {page}") }
///
/// #[workflow]
/// async fn report(page: u32) -> String { render(page).await }
///
/// #[workflow]
/// async fn book() -> Result<String, String> {
///     let e = |e: durable_runtime::Error| e.to_string();
///     let first = start_child(report(1)).await.map_err(e)?;
///     let second = start_child(report(2)).await.map_err(e)?;
///     Ok(format!("{} / {}", first.result().await.map_err(e)?, second.result().await.map_err(e)?))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// assert_eq!(rt.start(book()).await?.result().await?.unwrap(), "page 1 / page 2");
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::NotInWorkflow`] outside a workflow, [`Error::Encode`] if the input does not
/// encode, [`Error::WorkflowMismatch`] if the child's id belongs to another workflow.
pub fn start_child<O>(
    mut call: WorkflowCall<O>,
) -> impl Future<Output = Result<ChildHandle<O>>> + Send + 'static
where
    O: Serialize + DeserializeOwned + Send + 'static,
{
    let claimed = from_claim(
        call.claim.take(),
        START_CHILD,
        Some(&|a| call.fingerprint(a)),
    );
    let span =
        claimed.span(|path, replayed| crate::trace::start_child(path, replayed, call.name()));
    let record_id = span.clone();
    let start_child = async move {
        let op = op_or!(claimed, Err(outside()));
        let id = match op.replayed::<String>() {
            Some(recorded) => or_stop!(op, recorded),
            None => {
                if !op.may_run() {
                    return pending().await;
                }
                let id = child_id(&op);
                start(&op, &id, call).await?;
                or_stop!(op, op.record_value(&id, Effect::None, now_ms()).await);
                id
            }
        };
        record_id.record("child_id", id.as_str());
        Ok(ChildHandle {
            id,
            _output: PhantomData,
        })
    };
    start_child.instrument(span)
}

/// A child workflow started with [`start_child`] (or enqueued from a workflow with
/// [`enqueue`](crate::enqueue)).
#[derive(Debug, Clone)]
pub struct ChildHandle<O> {
    id: String,
    _output: PhantomData<fn() -> O>,
}

impl<O> ChildHandle<O> {
    /// A handle of child `id`.
    pub(crate) fn new(id: String) -> Self {
        ChildHandle {
            id,
            _output: PhantomData,
        }
    }
}

impl<O: Serialize + DeserializeOwned + Send + 'static> ChildHandle<O> {
    /// The child's workflow id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the child to finish and returns its result, recorded in the parent.
    /// Claims its position in the parent when called, like a step.
    ///
    /// # Errors
    ///
    /// The child's [`Error::Failed`] or [`Error::Cancelled`]; [`Error::NotInWorkflow`]
    /// outside a workflow.
    pub fn result(&self) -> impl Future<Output = Result<O>> + Send + 'static {
        let claimed = claim_with(CHILD_RESULT, &|a| a.arg(&self.id));
        let id = self.id.clone();
        async move {
            let op = op_or!(claimed, Err(outside()));
            if let Some(recorded) = op.replayed::<ChildOutcome>() {
                return or_stop!(op, recorded).into_result(&op, &id);
            }
            if !op.may_run() {
                return pending().await;
            }
            let Some(inner) = op.claim.ctx.runs() else {
                return pending().await;
            };
            let busy = op.claim.ctx.busy();
            let outcome = or_stop!(op, inner.watch(&id).await);
            drop(busy);
            finish(&op, &id, outcome).await
        }
    }
}

/// Runs every future to its end, concurrently, and returns their outputs in order: a
/// join for child workflow calls (and any other futures) that needs no other crate.
///
/// Each call claims its position when it is created (before this runs), so the order
/// in which the children finish does not matter on replay. See
/// [`IntoFuture for WorkflowCall`](WorkflowCall#impl-IntoFuture-for-WorkflowCall<O>).
pub fn join_all<I>(futures: I) -> JoinAll<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture,
{
    JoinAll {
        slots: futures
            .into_iter()
            .map(|f| Slot::Running(Box::pin(f.into_future())))
            .collect(),
    }
}

/// The future of [`join_all`].
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct JoinAll<F: Future> {
    slots: Vec<Slot<F>>,
}

enum Slot<F: Future> {
    Running(Pin<Box<F>>),
    Done(Option<F::Output>),
}

impl<F: Future> std::fmt::Debug for JoinAll<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinAll")
            .field("len", &self.slots.len())
            .finish_non_exhaustive()
    }
}

// The futures are boxed and the outputs are never pinned.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut all_done = true;
        for slot in &mut this.slots {
            if let Slot::Running(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Slot::Done(Some(v)),
                    Poll::Pending => all_done = false,
                }
            }
        }
        if !all_done {
            return Poll::Pending;
        }
        Poll::Ready(
            this.slots
                .iter_mut()
                .filter_map(|s| match s {
                    Slot::Done(v) => v.take(),
                    Slot::Running(_) => None,
                })
                .collect(),
        )
    }
}
