//! Enqueueing from inside a workflow: a journaled operation, so that a replay finds
//! what the first execution enqueued instead of enqueueing again.

use std::future::{Future, pending};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::queue::{Enqueue, Queue};
use super::registry::Inner;
use crate::engine::call::WorkflowCall;
use crate::error::{Error, Result};
use crate::journal::Effect;
use crate::primitives::child::ChildHandle;
use crate::primitives::{Claimed, from_claim, op_or, or_stop};
use crate::util::now_ms;

const ENQUEUE: &str = "durable::enqueue";

/// What an enqueue from a workflow recorded.
#[derive(Serialize, Deserialize)]
enum Recorded {
    /// Enqueued (or joined, or found again after a crash): the workflow's id.
    Enqueued(String),
    /// Refused: another workflow held the deduplication id.
    Duplicate { dedup_id: String, existing: String },
}

fn outside() -> Error {
    Error::NotInWorkflow {
        operation: "`durable_runtime::enqueue`",
        hint: "outside a workflow, use `Runtime::enqueue`",
    }
}

/// Inside a workflow, enqueues `call` on `queue` as a child of the current workflow,
/// and returns a handle to it without waiting: [`ChildHandle::result`] waits for its
/// result and records it.
///
/// The enqueue is recorded: a replay of the workflow does not enqueue again, and finds
/// the same child. The child's id is `<parent id>/<path>`, like any child's, unless
/// [`Enqueue::id`] gives one. It is linked to its parent (cancelling the parent
/// cancels it) and runs under the queue's limits like any queued workflow.
///
/// ```
/// use durable_runtime::{Queue, Runtime, enqueue, step, workflow};
///
/// #[step]
/// async fn resize(image: String) -> String { format!("small-{image}") }
///
/// #[workflow]
/// async fn thumbnail(image: String) -> String { resize(image).await }
///
/// #[workflow]
/// async fn album(images: Vec<String>) -> Result<Vec<String>, String> {
///     let e = |e: durable_runtime::Error| e.to_string();
///     let queue = Queue::new("thumbnails").concurrency(2);
///     let mut handles = Vec::new();
///     for image in images {
///         handles.push(enqueue(&queue, thumbnail(image)).await.map_err(e)?);
///     }
///     let mut out = Vec::new();
///     for h in handles {
///         out.push(h.result().await.map_err(e)?);
///     }
///     Ok(out)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::builder(dir.path().join("journal.db"))
///     .queue(Queue::new("thumbnails").concurrency(2))
///     .open()
///     .await?;
/// let h = rt.start(album(vec!["a.png".into(), "b.png".into()])).await?;
/// assert_eq!(h.result().await?.unwrap(), ["small-a.png", "small-b.png"]);
/// # rt.close().await }
/// ```
///
/// # Errors
///
/// As [`enqueue_with`].
pub fn enqueue<O>(
    queue: &Queue,
    call: WorkflowCall<O>,
) -> impl Future<Output = Result<ChildHandle<O>>> + Send + 'static
where
    O: Serialize + DeserializeOwned + Send + 'static,
{
    enqueue_with(queue, call, Enqueue::new())
}

/// [`enqueue`] with `options`: an id, a deduplication id, a priority, a partition, a
/// delay, a timeout (see [`Enqueue`]).
///
/// # Errors
///
/// [`Error::NotInWorkflow`] outside a workflow; [`Error::Duplicate`] if the
/// deduplication id is taken and [`OnDuplicate::Refuse`](crate::OnDuplicate) (recorded:
/// a replay answers the same); [`Error::Queue`] if the runtime was not built with the
/// queue; [`Error::InvalidId`], [`Error::Encode`] and [`Error::WorkflowMismatch`] as
/// [`Runtime::enqueue_with`](crate::Runtime::enqueue_with). Those four are not recorded
/// (the code that caused them decides again on replay). A journal error stops the
/// workflow, pending, as a failed checkpoint does.
pub fn enqueue_with<O>(
    queue: &Queue,
    mut call: WorkflowCall<O>,
    options: Enqueue,
) -> impl Future<Output = Result<ChildHandle<O>>> + Send + 'static
where
    O: Serialize + DeserializeOwned + Send + 'static,
{
    let queue = queue.clone();
    let claimed = from_claim(
        call.claim.take(),
        ENQUEUE,
        Some(&|a| {
            a.arg(queue.name());
            call.fingerprint(a);
        }),
    );
    async move {
        let op = op_or!(claimed, Err(outside()));
        let recorded = match op.replayed::<Recorded>() {
            Some(recorded) => or_stop!(op, recorded),
            None => {
                if !op.may_run() {
                    return pending().await;
                }
                let Some(runs) = op.claim.ctx.runs() else {
                    return pending().await;
                };
                let Ok(inner) = runs.as_any().downcast::<Inner>() else {
                    return pending().await;
                };
                let parent = op.claim.ctx.id.clone();
                let default_id = format!("{parent}/{}", op.claim.path);
                let busy = op.claim.ctx.busy();
                let enqueued = inner
                    .enqueue_call(&queue, call, options, Some(parent), || default_id)
                    .await;
                drop(busy);
                let recorded = match enqueued {
                    Ok((id, _)) => Recorded::Enqueued(id.to_string()),
                    Err(Error::Duplicate {
                        dedup_id, existing, ..
                    }) => Recorded::Duplicate { dedup_id, existing },
                    Err(
                        e @ (Error::Queue { .. }
                        | Error::InvalidId { .. }
                        | Error::Encode { .. }
                        | Error::WorkflowMismatch { .. }),
                    ) => return Err(e),
                    Err(e) => return op.stop(e).await,
                };
                or_stop!(op, op.record_value(&recorded, Effect::None, now_ms()).await);
                recorded
            }
        };
        match recorded {
            Recorded::Enqueued(id) => Ok(ChildHandle::new(id)),
            Recorded::Duplicate { dedup_id, existing } => Err(Error::Duplicate {
                queue: queue.name().to_owned(),
                dedup_id,
                existing,
            }),
        }
    }
}
