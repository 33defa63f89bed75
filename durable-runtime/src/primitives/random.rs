//! Durable randomness: `random` and `uuid`.

use std::future::{Future, pending};

use crate::journal::Effect;
use crate::util::{now_ms, random_u64};

use super::*;

async fn recorded_u64s(claimed: Claimed, n: usize) -> Vec<u64> {
    let fresh = || (0..n).map(|_| random_u64()).collect::<Vec<u64>>();
    let op = op_or!(claimed, fresh());
    match op.replayed::<Vec<u64>>() {
        Some(recorded) => or_stop!(op, recorded),
        None => {
            if !op.may_run() {
                return pending().await;
            }
            let values = fresh();
            or_stop!(op, op.record_value(&values, Effect::None, now_ms()).await);
            values
        }
    }
}

/// A random `u64`, recorded: a replay returns the same number. Costs one checkpoint.
/// Not cryptographically secure (draw keys inside a step with a real RNG); outside a
/// workflow it is a fresh random number.
///
/// ```
/// use durable_runtime::{Runtime, random, workflow};
///
/// #[workflow]
/// async fn coin() -> bool {
///     random().await % 2 == 0
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let first = rt.start_with_id("toss", coin()).await?.result().await?;
/// assert_eq!(rt.start_with_id("toss", coin()).await?.result().await?, first);
/// # Ok(())
/// # }
/// ```
pub fn random() -> impl Future<Output = u64> + Send + 'static {
    let claimed = claim(RANDOM);
    async move {
        recorded_u64s(claimed, 1)
            .await
            .first()
            .copied()
            .unwrap_or_default()
    }
}

/// A random (version 4) UUID in its hyphenated form, recorded: a replay returns the
/// same one. Costs one checkpoint; outside a workflow it is a fresh one.
///
/// ```
/// use durable_runtime::{Runtime, uuid, workflow};
///
/// #[workflow]
/// async fn order_number() -> String {
///     uuid().await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let id = rt.start(order_number()).await?.result().await?;
/// assert_eq!(id.len(), 36);
/// assert_eq!(&id[14..15], "4");
/// # Ok(())
/// # }
/// ```
pub fn uuid() -> impl Future<Output = String> + Send + 'static {
    let claimed = claim(UUID);
    async move {
        let v = recorded_u64s(claimed, 2).await;
        let (hi, lo) = (
            v.first().copied().unwrap_or_default(),
            v.get(1).copied().unwrap_or_default(),
        );
        // Version 4 in the high nibble of byte 6, variant 10 in the top bits of byte 8.
        let hi = (hi & !0xF000) | 0x4000;
        let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xFFFF,
            hi & 0xFFFF,
            lo >> 48,
            lo & 0xFFFF_FFFF_FFFF
        )
    }
}
