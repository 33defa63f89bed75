//! Durable time: `sleep` and `now`.

use std::future::{Future, pending};
use std::time::{Duration, SystemTime};
use tracing::Instrument as _;

use crate::journal::Effect;
use crate::util::now_ms;

use super::*;

/// Sleeps for `duration`, durably: the wake-up time is recorded when the sleep starts,
/// so a workflow recovered after a crash or restart sleeps only for what is left (and
/// not at all if the time has passed).
///
/// Costs one checkpoint. Outside a workflow it is `tokio::time::sleep`. A cancelled
/// workflow stops sleeping at once.
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::{Runtime, sleep, workflow};
///
/// #[workflow]
/// async fn reminder() -> String {
///     sleep(Duration::from_millis(20)).await;
///     "time's up".to_owned()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let started = std::time::Instant::now();
/// assert_eq!(rt.start(reminder()).await?.result().await?, "time's up");
/// assert!(started.elapsed() >= Duration::from_millis(20));
/// # Ok(())
/// # }
/// ```
pub fn sleep(duration: Duration) -> impl Future<Output = ()> + Send + 'static {
    let claimed = claim(SLEEP);
    let span = claimed.span(|path, replayed| {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        crate::trace::sleep(path, replayed, ms)
    });
    let sleep = async move {
        let op = op_or!(claimed, tokio::time::sleep(duration).await);
        let wake_at = match op.replayed::<i64>() {
            Some(recorded) => or_stop!(op, recorded),
            None => {
                if !op.may_run() {
                    return pending().await;
                }
                let now = now_ms();
                let wake_at = now.saturating_add(millis(duration));
                or_stop!(op, op.record_value(&wake_at, Effect::None, now).await);
                wake_at
            }
        };
        let _parked = op.claim.ctx.park(
            &op.claim.path,
            crate::engine::context::ParkedOn::Time,
            Some(wake_at),
        );
        sleep_until_ms(wake_at).await;
    };
    sleep.instrument(span)
}

/// The current time, recorded: a replay returns the time the first execution read, so
/// workflow code can branch on it. Costs one checkpoint. Outside a workflow it is
/// `SystemTime::now()`.
///
/// Read the clock this way (or inside a step), never with `SystemTime::now` directly in
/// a workflow body: `#[workflow]` refuses that.
///
/// ```
/// use durable_runtime::{Runtime, now, workflow};
///
/// #[workflow]
/// async fn stamp() -> u64 {
///     let t = now().await;
///     t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let h = rt.start_with_id("stamp-1", stamp()).await?;
/// let first = h.result().await?;
/// // The same id again replays the recorded result.
/// assert_eq!(rt.start_with_id("stamp-1", stamp()).await?.result().await?, first);
/// # Ok(())
/// # }
/// ```
pub fn now() -> impl Future<Output = SystemTime> + Send + 'static {
    let claimed = claim(NOW);
    async move {
        let op = op_or!(claimed, SystemTime::now());
        let since_epoch = match op.replayed::<Duration>() {
            Some(recorded) => or_stop!(op, recorded),
            None => {
                if !op.may_run() {
                    return pending().await;
                }
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                or_stop!(op, op.record_value(&now, Effect::None, now_ms()).await);
                now
            }
        };
        SystemTime::UNIX_EPOCH + since_epoch
    }
}
