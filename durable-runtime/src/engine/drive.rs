//! The drive loop: one run's body polled to its end, or to the first fatal error.

use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // in rustdoc links
use crate::engine::context::Dormancy;
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

/// How an execution of a run ended.
#[derive(Debug)]
pub(crate) enum Ran {
    /// The body returned: the encoded output.
    Output(Vec<u8>),
    /// The body went dormant: it was dropped while every live operation of the run was
    /// parked (see [`Dormancy`]), to be rebuilt by replay when one may be answered.
    Dormant(Asleep),
}

/// A run whose body was dropped while it waited.
#[derive(Debug)]
pub(crate) struct Asleep {
    /// Held for as long as the run stays dormant; the journal's wake-ups of its waits
    /// hold it weakly (see [`Store::dormant`](crate::journal::Store)).
    pub(crate) alive: Arc<()>,
    /// When one of its waits ends on its own (a sleep, a deadline), if one does.
    pub(crate) until: Option<i64>,
}

/// Loads what earlier executions recorded (if the run has a history), runs the body,
/// and checks that it asked for every recorded step.
pub(crate) async fn execute(
    ctx: &Arc<WorkflowCtx>,
    def: &'static dyn ErasedWorkflow,
    input: &[u8],
    history: History,
    deadline_at: Option<i64>,
) -> Result<Ran> {
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
    let output = match run_body(ctx, def, input, deadline_at).await? {
        Ran::Output(output) => output,
        // Not finished: what it has not asked for yet, it may still.
        asleep @ Ran::Dormant(_) => return Ok(asleep),
    };
    if let Some((path, recorded)) = ctx.first_unclaimed()? {
        return Err(Error::Divergence {
            workflow_id: ctx.id.to_string(),
            path,
            recorded,
            requested: None,
            arguments: None,
        });
    }
    Ok(Ran::Output(output))
}

/// Where a run stands on its way to going dormant (see [`Dormancy`]).
enum Eviction {
    /// Not parked, or not allowed to go dormant.
    Idle,
    /// Parked: goes dormant when the timer fires, unless its body is polled first
    /// (which restarts the timer).
    Parked(Pin<Box<tokio::time::Sleep>>),
    /// Asked the journal to turn its waits into wake-ups; the body is not polled until
    /// the answer comes (its waits may be gone).
    Asking(crate::journal::Ack<bool>, Arc<()>, Option<i64>),
}

/// Starts a workflow body on `input` and polls it to its end, to the first fatal
/// error, or until it goes dormant. The body (and any step it still holds) is dropped
/// before this returns.
pub(crate) async fn run_body(
    ctx: &Arc<WorkflowCtx>,
    def: &'static dyn ErasedWorkflow,
    input: &[u8],
    deadline_at: Option<i64>,
) -> Result<Ran> {
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
    let mut eviction = Eviction::Idle;
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
        match go_dormant(ctx, def, &mut eviction, cx) {
            Some(Poll::Ready(asleep)) => return Poll::Ready(Ok(asleep)),
            Some(Poll::Pending) => return Poll::Pending,
            None => {}
        }
        if ctx.dormancy.is_some() {
            // What woke the run before this poll, the poll sees (see `go_dormant`).
            ctx.wake_asked
                .store(false, std::sync::atomic::Ordering::Release);
        }
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut body).poll(cx))) {
            // Finished after a cancellation was asked for (its last step ran to its
            // end): the cancellation stands, as the journal records it.
            Ok(Poll::Ready(output)) => Poll::Ready(match ctx.cancelled() {
                Some(reason) => Err(Error::Cancelled {
                    workflow_id: id.to_string(),
                    reason,
                }),
                None => Ok(Done::Output(output)),
            }),
            Ok(Poll::Pending) => match ctx.poll_fatal(cx.waker()) {
                Some(e) => Poll::Ready(Err(e)),
                None => {
                    if let Some(dormancy) = &ctx.dormancy {
                        park(ctx, &mut eviction, dormancy.after, cx);
                    }
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
    match result? {
        // Its own deadline wakes it too (the rebuilt run then cancels itself).
        Done::Dormant(mut asleep) => {
            asleep.until = asleep.until.into_iter().chain(deadline_at).min();
            Ok(Ran::Dormant(asleep))
        }
        Done::Output(output) => output.map(Ran::Output).map_err(|reason| Error::Failed {
            workflow_id: id.to_string(),
            kind: FailureKind::OutputNotEncodable,
            message: format!("cannot encode the workflow's output: {reason}"),
        }),
    }
}

/// How the polling of a body ended.
enum Done {
    /// It returned its output, to encode.
    Output(std::result::Result<Vec<u8>, crate::codec::CodecError>),
    Dormant(Asleep),
}

/// After a poll that left the body pending: starts (or restarts) the timer after which
/// it goes dormant if it is parked, or stops it if it is not.
fn park(ctx: &WorkflowCtx, eviction: &mut Eviction, after: Duration, cx: &mut Context<'_>) {
    if !ctx.evictable() {
        *eviction = Eviction::Idle;
        return;
    }
    let at = tokio::time::Instant::now() + after;
    let timer = match eviction {
        Eviction::Parked(timer) => {
            timer.as_mut().reset(at);
            timer
        }
        _ => {
            *eviction = Eviction::Parked(Box::pin(tokio::time::sleep_until(at)));
            let Eviction::Parked(timer) = eviction else {
                return;
            };
            timer
        }
    };
    if timer.as_mut().poll(cx).is_ready() {
        // No time to wait (`after` is zero): look again at the next poll.
        cx.waker().wake_by_ref();
    }
}

/// Before a poll of the body: moves a parked run on its way to going dormant.
/// `Some(Ready)`: it is dormant (the body is to be dropped unpolled); `Some(Pending)`:
/// the journal has not answered yet (the body must not be polled); `None`: poll the
/// body.
fn go_dormant(
    ctx: &WorkflowCtx,
    def: &dyn ErasedWorkflow,
    eviction: &mut Eviction,
    cx: &mut Context<'_>,
) -> Option<Poll<Done>> {
    match eviction {
        Eviction::Idle => None,
        Eviction::Parked(timer) => {
            if timer.as_mut().poll(cx).is_pending() {
                // Not parked long enough: poll the body (which restarts the timer if it
                // is still parked).
                return None;
            }
            if !ctx.evictable() {
                *eviction = Eviction::Idle;
                return None;
            }
            // Something may have answered a wait since the body's last poll (a child
            // settled): the body sees it first.
            if ctx.wake_asked.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            let dormancy = ctx.dormancy.as_ref()?;
            let waits = ctx.dormant_waits();
            let alive = Arc::new(());
            let ack = ctx.store.dormant(crate::journal::Dormant {
                run: ctx.id.clone(),
                waits: waits.writes,
                alive: Arc::downgrade(&alive),
                wakes: dormancy.wakes.clone(),
                kept: dormancy.build_of(def).map(|build| crate::journal::Kept {
                    build,
                    children: waits.children,
                    until: waits.until,
                }),
            });
            *eviction = Eviction::Asking(ack, alive, waits.until);
            go_dormant(ctx, def, eviction, cx)
        }
        Eviction::Asking(ack, ..) => match Pin::new(ack).poll(cx) {
            Poll::Pending => Some(Poll::Pending),
            Poll::Ready(Ok(true)) => {
                let Eviction::Asking(_, alive, until) = std::mem::replace(eviction, Eviction::Idle)
                else {
                    return None;
                };
                ctx.retire();
                Some(Poll::Ready(Done::Dormant(Asleep { alive, until })))
            }
            // One of its waits was answered (or the journal could not say): nothing
            // changed, the body goes on.
            Poll::Ready(_) => {
                *eviction = Eviction::Idle;
                None
            }
        },
    }
}
