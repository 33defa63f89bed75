//! Durable select: races futures, records which one won, and on replay resolves to the
//! recorded winner whatever finishes first this time.

use std::future::{Future, pending, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use crate::primitives::{Claimed, claim, op_or, or_stop};
use crate::step::now_ms;
use crate::store::Effect;

const SELECT: &str = "durable::select";

/// Which of two futures [`select`] picked, with its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first future finished first.
    Left(A),
    /// The second future finished first.
    Right(B),
}

/// Waits for the first of two futures to finish, durably: the winner is recorded, and a
/// replay returns the recorded winner's output, even if the other would finish first
/// this time. The loser is dropped.
///
/// The futures' step ids are claimed when they are created (before `select` is called)
/// and `select` claims its own position after them, so every branch has its id before
/// anything is polled. Branches are polled in order (the first is polled first), so if
/// both are ready in the same poll, the first wins. Use this, not `tokio::select!`,
/// whose branch order is random: `#[workflow]` refuses an unbiased `select!`.
///
/// ```
/// use std::time::Duration;
/// use durable_runtime::{Either, Runtime, recv, select, sleep, workflow};
///
/// #[workflow]
/// async fn approval() -> String {
///     // A message, or give up after a while: whichever comes first is recorded.
///     let answer = match select(recv::<bool>("approve", None), sleep(Duration::from_millis(30))).await {
///         Either::Left(Ok(Some(true))) => "approved",
///         Either::Left(_) => "rejected",
///         Either::Right(()) => "timed out",
///     };
///     answer.to_owned()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// assert_eq!(rt.start(approval()).await?.result().await?, "timed out");
/// # Ok(())
/// # }
/// ```
///
/// Outside a workflow it is a plain race, first branch first.
pub fn select<A, B>(a: A, b: B) -> impl Future<Output = Either<A::Output, B::Output>> + Send
where
    A: Future + Send,
    B: Future + Send,
    A::Output: Send,
    B::Output: Send,
{
    let claimed = claim(SELECT);
    async move {
        let mut a = std::pin::pin!(a);
        let mut b = std::pin::pin!(b);
        let race = |only: Option<u32>| {
            poll_fn(move |cx| {
                if only.is_none_or(|w| w == 0)
                    && let Poll::Ready(v) = a.as_mut().poll(cx)
                {
                    return Poll::Ready(Either::Left(v));
                }
                if only.is_none_or(|w| w == 1)
                    && let Poll::Ready(v) = b.as_mut().poll(cx)
                {
                    return Poll::Ready(Either::Right(v));
                }
                Poll::Pending
            })
        };
        let op = op_or!(claimed, race(None).await);
        if let Some(recorded) = op.replayed::<u32>() {
            // Only the recorded winner is polled: its own record replays it.
            let winner = or_stop!(op, recorded);
            return race(Some(winner)).await;
        }
        if !op.may_run() {
            return pending().await;
        }
        let out = race(None).await;
        let winner: u32 = match &out {
            Either::Left(_) => 0,
            Either::Right(_) => 1,
        };
        or_stop!(op, op.record_value(&winner, Effect::None, now_ms()).await);
        out
    }
}

/// Waits for the first of any number of futures to finish, durably, and returns its
/// index and output; like [`select`], the winner is recorded and replayed, and the
/// futures are polled in order.
///
/// An empty list never finishes.
///
/// ```
/// use durable_runtime::{Runtime, select_all, step, workflow};
///
/// #[step]
/// async fn quote(vendor: u32) -> u32 { 100 + vendor }
///
/// #[workflow]
/// async fn first_quote() -> (u32, u32) {
///     let (i, price) = select_all(vec![quote(1), quote(2), quote(3)]).await;
///     (u32::try_from(i).unwrap(), price)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let (i, price) = rt.start(first_quote()).await?.result().await?;
/// assert_eq!(price, 101 + i);
/// # Ok(())
/// # }
/// ```
pub fn select_all<F>(futures: Vec<F>) -> impl Future<Output = (usize, F::Output)> + Send
where
    F: Future + Send,
    F::Output: Send,
{
    let claimed = claim(SELECT);
    async move {
        let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
        let race = |only: Option<usize>| {
            poll_fn(move |cx| {
                for (i, f) in futures.iter_mut().enumerate() {
                    if only.is_none_or(|w| w == i)
                        && let Poll::Ready(v) = f.as_mut().poll(cx)
                    {
                        return Poll::Ready((i, v));
                    }
                }
                Poll::Pending
            })
        };
        let op = op_or!(claimed, race(None).await);
        if let Some(recorded) = op.replayed::<u32>() {
            let winner = or_stop!(op, recorded);
            return race(Some(usize::try_from(winner).unwrap_or(usize::MAX))).await;
        }
        if !op.may_run() {
            return pending().await;
        }
        let (i, v) = race(None).await;
        let winner = u32::try_from(i).unwrap_or(u32::MAX);
        or_stop!(op, op.record_value(&winner, Effect::None, now_ms()).await);
        (i, v)
    }
}
