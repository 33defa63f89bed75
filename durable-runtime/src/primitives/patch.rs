//! Version patches: `patched`.

use std::future::{Future, pending};

use crate::engine::scope::{self};

use super::*;

/// Whether this execution takes the new code path of patch `name`: `true` for
/// executions that started after the patch was deployed, `false` for those that had
/// already gone past this point under the old code.
///
/// Put it where new code changes which steps a workflow calls, so pending workflows
/// recorded by the old code keep replaying the old path:
///
/// ```
/// use durable_runtime::{Runtime, patched, step, workflow};
///
/// #[step]
/// async fn email(to: String) -> String { format!("emailed {to}") }
/// #[step]
/// async fn sms(to: String) -> String { format!("texted {to}") }
///
/// #[workflow]
/// async fn notify(to: String) -> String {
///     if patched("sms-instead-of-email").await {
///         sms(to).await
///     } else {
///         email(to).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// assert_eq!(rt.start(notify("ada".into())).await?.result().await?, "texted ada");
/// # Ok(())
/// # }
/// ```
///
/// How it decides: the check takes no position of its own (the step after it takes
/// the position it looks at). If the run's journal has this patch's marker there, the
/// answer is `true`. Otherwise, if the journal holds a record at that position or a
/// later one of the same branch, the execution was recorded by the old code past this
/// point: the answer is `false`, and nothing is written. Otherwise the execution has
/// not got here before: it records the marker (one commit, in `durable_patches`) and
/// the answer is `true`, in this execution and every replay of it.
///
/// Because the check takes no position, removing it later does not shift what follows:
/// once no execution from before the patch is pending, delete the check and the old
/// branch, and executions that took the new path keep replaying. Outside a workflow it
/// is `true`.
pub fn patched(name: &'static str) -> impl Future<Output = bool> + Send + 'static {
    // Decided now, at the call, like a claim: what the journal holds at this position.
    let decision = match scope::next_position() {
        None => Ok(true),
        Some((ctx, path)) => {
            if ctx.has_patch(&path, name) {
                Ok(true)
            } else if ctx.recorded_from(&path) {
                // The old code's execution, past this point already.
                Ok(false)
            } else {
                Err((ctx, path))
            }
        }
    };
    async move {
        let (ctx, path) = match decision {
            Ok(answer) => return answer,
            Err(new) => new,
        };
        if ctx.stopping() {
            return pending().await;
        }
        if !ctx.may_run(&path, PATCHED) {
            // A replay check writes nothing; a new execution would take the new path.
            return true;
        }
        let busy = ctx.busy();
        let recorded = ctx
            .store
            .record_patch(ctx.id.clone(), path.clone(), name)
            .await;
        drop(busy);
        if let Err(e) = recorded {
            ctx.fail(e.into());
            return pending().await;
        }
        ctx.add_patch(path, name);
        true
    }
}
