//! Durable select: races futures, records which one won, and on replay resolves to the
//! recorded winner whatever finishes first this time.

use std::future::{Future, pending, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use crate::engine::scope;
use crate::error::Error;
use crate::journal::Effect;
use crate::primitives::{Claimed, claim, or_stop};
use crate::util::now_ms;

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
        let mut a = Some(Box::pin(a));
        let mut b = Some(Box::pin(b));
        let op = match claimed {
            Claimed::Op(op) => op,
            Claimed::Outside => return race2(&mut a, &mut b, None).await,
            Claimed::Stopped => return pending().await,
        };
        if let Some(recorded) = op.replayed::<u32>() {
            // Only the recorded winner is polled: its own record replays it.
            let winner = or_stop!(op, recorded);
            if winner > 1 {
                return op.stop(out_of_range(&op, winner, 2)).await;
            }
            scope::drop_losers(|| if winner == 0 { b = None } else { a = None });
            return race2(&mut a, &mut b, Some(winner)).await;
        }
        if !op.may_run() {
            return pending().await;
        }
        let out = race2(&mut a, &mut b, None).await;
        let winner: u32 = match &out {
            Either::Left(_) => 0,
            Either::Right(_) => 1,
        };
        scope::drop_losers(|| if winner == 0 { b = None } else { a = None });
        or_stop!(op, op.record_value(&winner, Effect::None, now_ms()).await);
        out
    }
}

type Branch<F> = Option<Pin<Box<F>>>;

/// Polls `a` then `b` (or only the one `only` names) until one is ready.
async fn race2<A: Future, B: Future>(
    a: &mut Branch<A>,
    b: &mut Branch<B>,
    only: Option<u32>,
) -> Either<A::Output, B::Output> {
    poll_fn(|cx| {
        if only.is_none_or(|w| w == 0)
            && let Some(f) = a.as_mut()
            && let Poll::Ready(v) = f.as_mut().poll(cx)
        {
            return Poll::Ready(Either::Left(v));
        }
        if only.is_none_or(|w| w == 1)
            && let Some(f) = b.as_mut()
            && let Poll::Ready(v) = f.as_mut().poll(cx)
        {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
}

fn out_of_range(op: &crate::primitives::Op, winner: u32, branches: usize) -> Error {
    Error::Divergence {
        workflow_id: op.claim.ctx.id.to_string(),
        path: op.claim.path.clone(),
        recorded: format!("{SELECT} won by branch {winner}"),
        requested: Some(format!("{SELECT} of {branches} branches")),
        arguments: None,
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
        let mut futures: Vec<Branch<F>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
        let op = match claimed {
            Claimed::Op(op) => op,
            Claimed::Outside => return race_all(&mut futures, None).await,
            Claimed::Stopped => return pending().await,
        };
        if let Some(recorded) = op.replayed::<u32>() {
            let winner = or_stop!(op, recorded);
            let Some(w) = usize::try_from(winner).ok().filter(|w| *w < futures.len()) else {
                return op.stop(out_of_range(&op, winner, futures.len())).await;
            };
            drop_all_but(&mut futures, w);
            return race_all(&mut futures, Some(w)).await;
        }
        if !op.may_run() {
            return pending().await;
        }
        let (i, v) = race_all(&mut futures, None).await;
        drop_all_but(&mut futures, i);
        let winner = u32::try_from(i).unwrap_or(u32::MAX);
        or_stop!(op, op.record_value(&winner, Effect::None, now_ms()).await);
        (i, v)
    }
}

fn drop_all_but<F>(futures: &mut [Branch<F>], winner: usize) {
    scope::drop_losers(|| {
        // Last first: losing `recv`s took their messages in branch order, and each
        // gives its message back to the front of the queue, so the queue ends up in its
        // original order.
        for (i, f) in futures.iter_mut().enumerate().rev() {
            if i != winner {
                *f = None;
            }
        }
    });
}

/// Polls the futures in order (or only the one `only` names) until one is ready.
async fn race_all<F: Future>(futures: &mut [Branch<F>], only: Option<usize>) -> (usize, F::Output) {
    poll_fn(|cx| {
        for (i, f) in futures.iter_mut().enumerate() {
            if only.is_none_or(|w| w == i)
                && let Some(f) = f.as_mut()
                && let Poll::Ready(v) = f.as_mut().poll(cx)
            {
                return Poll::Ready((i, v));
            }
        }
        Poll::Pending
    })
    .await
}
