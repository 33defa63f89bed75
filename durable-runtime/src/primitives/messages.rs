//! Messages between workflows: `send` and `recv`.

use std::future::{Future, pending};
use std::time::Duration;
use tracing::Instrument as _;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::replay::encode_value;
use crate::error::Result;
use crate::journal::{Effect, NewMessage, WaitFor};

use super::waits::{Undelivered, record_effect, wait};
use super::*;

/// Sends `value` to workflow `destination` on `topic`, from inside a workflow.
///
/// Recorded like a step, in the same transaction as the message itself: a replay does
/// not send again, and a crash cannot leave one without the other. Outside a workflow
/// use [`Runtime::send`](crate::Runtime::send).
///
/// ```
/// use durable_runtime::{Runtime, recv, send, workflow};
///
/// #[workflow]
/// async fn ping(peer: String) -> Result<(), String> {
///     // Workflow outputs are recorded, so they hold serializable errors.
///     send(&peer, "greeting", &"hello".to_string()).await.map_err(|e| e.to_string())
/// }
///
/// #[workflow]
/// async fn pong() -> Option<String> {
///     recv("greeting", None).await.ok().flatten()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let receiver = rt.start_with_id("pong-1", pong()).await?;
/// rt.start(ping("pong-1".into())).await?.result().await?.unwrap();
/// assert_eq!(receiver.result().await?.as_deref(), Some("hello"));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::NotInWorkflow`] outside a workflow, [`Error::Encode`] if the value does not
/// encode. (Journal errors stop the workflow, as for a step.)
pub fn send<T: Serialize + DeserializeOwned>(
    destination: &str,
    topic: &str,
    value: &T,
) -> impl Future<Output = Result<()>> + Send + 'static {
    let (destination, topic) = (destination.to_owned(), topic.to_owned());
    let claimed = claim_with(SEND, &|a| {
        a.arg(destination.as_str());
        a.arg(topic.as_str());
        a.arg(value);
    });
    let effect = encode_value(claimed.codec(), value, || {
        format!("the message on topic `{topic}`")
    })
    .map(|payload| {
        move |sent_at| {
            Effect::Send(Box::new(NewMessage {
                destination,
                topic,
                payload,
                sent_at,
            }))
        }
    });
    record_effect(
        claimed,
        not_in_workflow(
            "durable_runtime::send",
            "outside a workflow, use `Runtime::send`",
        ),
        effect,
    )
}

/// Waits for the next message on `topic` sent to this workflow, for up to `timeout`
/// (or for ever, with `None`); `Ok(None)` if the time ran out.
///
/// Messages for one workflow and topic are received in the order they were sent, each
/// exactly once: taking the message and recording the `recv` happen in one transaction.
/// A message sent before the workflow waits (or before it started) is kept until it
/// does. A `recv` waiting in this process wakes as soon as a `send` commits, without
/// polling. The deadline is recorded when the wait begins, so after a restart the wait
/// ends at the original time. A cancelled workflow stops waiting at once.
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::{Runtime, recv, workflow};
///
/// #[workflow]
/// async fn expense_approval() -> String {
///     match recv::<bool>("approved", Duration::from_secs(60)).await {
///         Ok(Some(true)) => "approved".into(),
///         Ok(Some(false)) => "rejected".into(),
///         Ok(None) => "nobody answered".into(),
///         Err(e) => e.to_string(), // only outside a workflow
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let h = rt.start_with_id("expense-9", expense_approval()).await?;
/// rt.send("expense-9", "approved", &true).await?;
/// assert_eq!(h.result().await?, "approved");
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::NotInWorkflow`] outside a workflow. (A message that does not decode as `T`
/// stops the workflow with [`Error::Corrupt`]; it stays recorded at this step.)
pub fn recv<T: Serialize + DeserializeOwned + Send + 'static>(
    topic: &str,
    timeout: impl Into<Option<Duration>>,
) -> impl Future<Output = Result<Option<T>>> + Send + 'static {
    let claimed = claim_with(RECV, &|a| a.arg(topic));
    let topic = topic.to_owned();
    let timeout = timeout.into();
    let undelivered = match &claimed {
        Claimed::Op(op) => Some(Undelivered::new(op, &topic)),
        _ => None,
    };
    let span = claimed.span(|path, replayed| crate::trace::recv(path, replayed, &topic));
    let recv = async move {
        let op = op_or!(
            claimed,
            Err(not_in_workflow(
                "durable_runtime::recv",
                "only a workflow receives messages: call it in a `#[workflow]` body"
            ))
        );
        let what = WaitFor::Message {
            destination: op.claim.ctx.id.to_string(),
            topic,
        };
        Ok(wait(&op, what, timeout, undelivered).await)
    };
    recv.instrument(span)
}
