//! Workflow events: `set_event` and `get_event`.

use std::future::{Future, pending};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::replay::encode_value;
use crate::error::Result;
use crate::journal::{Effect, WaitFor};

use super::waits::{record_effect, wait};
use super::*;

/// Sets event `key` of this workflow to `value` (replacing an earlier value), for
/// [`get_event`] and [`Runtime::get_event`](crate::Runtime::get_event) callers, who
/// wake at once. Recorded like a step, in the same transaction as the event.
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::{Runtime, set_event, workflow};
///
/// #[workflow]
/// async fn pay() -> Result<(), String> {
///     let url = "https://pay.example/42".to_string();
///     set_event("payment_url", &url).await.map_err(|e| e.to_string())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// rt.start_with_id("order-42", pay()).await?;
/// // A web handler waits for the workflow to publish the URL.
/// let url: Option<String> = rt.get_event("order-42", "payment_url", Duration::from_secs(5)).await?;
/// assert_eq!(url.as_deref(), Some("https://pay.example/42"));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::NotInWorkflow`] outside a workflow, [`Error::Encode`] if the value does not
/// encode.
pub fn set_event<T: Serialize + DeserializeOwned>(
    key: &str,
    value: &T,
) -> impl Future<Output = Result<()>> + Send + 'static {
    let key = key.to_owned();
    let claimed = claim_with(SET_EVENT, &|a| {
        a.arg(key.as_str());
        a.arg(value);
    });
    let effect = encode_value(claimed.codec(), value, || {
        format!("the value of event `{key}`")
    })
    .map(|value| move |_| Effect::SetEvent(Box::new((key, value))));
    record_effect(
        claimed,
        not_in_workflow(
            "durable_runtime::set_event",
            "events belong to a workflow: call it in a `#[workflow]` body",
        ),
        effect,
    )
}

/// Waits up to `timeout` (or for ever, with `None`) for workflow `workflow_id` to set
/// event `key`, from inside a workflow, and records the value it saw: a replay sees
/// the same value, whatever the event holds by then. `Ok(None)` if the time ran out.
/// Outside a workflow use [`Runtime::get_event`](crate::Runtime::get_event).
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::{Runtime, get_event, set_event, workflow};
///
/// #[workflow]
/// async fn producer() -> Result<(), String> {
///     set_event("ready", &3u32).await.map_err(|e| e.to_string())
/// }
///
/// #[workflow]
/// async fn consumer(of: String) -> Option<u32> {
///     get_event::<u32>(&of, "ready", Duration::from_secs(5)).await.ok().flatten()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let c = rt.start(consumer("producer-1".into())).await?;
/// rt.start_with_id("producer-1", producer()).await?;
/// assert_eq!(c.result().await?, Some(3));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::NotInWorkflow`] outside a workflow.
pub fn get_event<T: Serialize + DeserializeOwned + Send + 'static>(
    workflow_id: &str,
    key: &str,
    timeout: impl Into<Option<Duration>>,
) -> impl Future<Output = Result<Option<T>>> + Send + 'static {
    let claimed = claim_with(GET_EVENT, &|a| {
        a.arg(workflow_id);
        a.arg(key);
    });
    let what = WaitFor::Event {
        workflow_id: workflow_id.to_owned(),
        key: key.to_owned(),
    };
    let timeout = timeout.into();
    async move {
        let op = op_or!(
            claimed,
            Err(not_in_workflow(
                "durable_runtime::get_event",
                "outside a workflow, use `Runtime::get_event`"
            ))
        );
        Ok(wait(&op, what, timeout, None).await)
    }
}
