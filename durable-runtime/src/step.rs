//! Step futures: claim at call, replay or run, checkpoint.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::codec::fingerprint::{self, Args};
use crate::codec::{Codec, Fingerprint};
use crate::context::ActiveBody;
use crate::error::{
    ArgumentsChanged, Error, FailureKind, Location, StoreError, StoreErrorKind, undecodable,
};
use crate::scope::{self, Claim};
use crate::store::{Effect, RecordedOutcome, RecordedStep, StepKey, StepRecord, Write};

/// How a step is retried: the options of `#[step(...)]`, built by the macro.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct StepOptions {
    pub(crate) name: &'static str,
    retries: u32,
    initial: Duration,
    factor: f64,
    max: Duration,
    /// `#[step(on_interrupt = "fail")]`: a start record is made durable before the body
    /// runs, and recovery records an interrupted attempt as a failure instead of running
    /// the body again.
    pub(crate) fail_if_interrupted: bool,
}

impl StepOptions {
    /// A step named `name` that is not retried.
    pub const fn new(name: &'static str) -> Self {
        StepOptions {
            name,
            retries: 0,
            initial: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(10),
            fail_if_interrupted: false,
        }
    }

    /// Never run the body a second time after a crash interrupted it: recovery records
    /// the step as failed instead (`#[step(on_interrupt = "fail")]`).
    pub const fn fail_if_interrupted(mut self) -> Self {
        self.fail_if_interrupted = true;
        self
    }

    /// Retry a failed (`Err`) attempt up to `retries` more times.
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Wait `initial` before the first retry, multiply by `factor` for each further one,
    /// never waiting longer than `max`.
    pub const fn backoff(mut self, initial: Duration, factor: f64, max: Duration) -> Self {
        self.initial = initial;
        self.factor = factor;
        self.max = max;
        self
    }

    /// The delay before retry number `retry` (1-based).
    fn delay(&self, retry: u32) -> Duration {
        let exp = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.factor.powi(exp);
        if secs.is_finite() && secs < self.max.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The body of a step: produces one future per attempt.
///
/// Implemented only by the types `#[step]` generates; it appears in step signatures as
/// `Step<impl StepBody<Output = T>>`, which reads as "a step returning `T`".
pub trait StepBody: sealed::Sealed {
    /// What the step returns.
    type Output;
    #[doc(hidden)]
    type Attempt: Future<Output = Self::Output>;
    #[doc(hidden)]
    fn attempt(&mut self) -> Option<Self::Attempt>;
    #[doc(hidden)]
    fn is_retryable(&self, output: &Self::Output) -> bool;
}

/// A step without retries: its one attempt.
#[doc(hidden)]
#[derive(Debug)]
pub struct Once<F>(Option<F>);

impl<F> sealed::Sealed for Once<F> {}
impl<F: Future> StepBody for Once<F> {
    type Output = F::Output;
    type Attempt = F;
    fn attempt(&mut self) -> Option<F> {
        self.0.take()
    }
    fn is_retryable(&self, _: &F::Output) -> bool {
        false
    }
}

/// A retried step: a factory making one attempt per call.
#[doc(hidden)]
#[derive(Debug)]
pub struct Retry<F>(F);

impl<F> sealed::Sealed for Retry<F> {}
impl<F, Fut> StepBody for Retry<F>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Retryable,
{
    type Output = Fut::Output;
    type Attempt = Fut;
    fn attempt(&mut self) -> Option<Fut> {
        Some((self.0)())
    }
    fn is_retryable(&self, output: &Fut::Output) -> bool {
        output.is_failure()
    }
}

/// Outputs that say whether an attempt failed, so `#[step(retries = ..)]` knows when to
/// try again. Implemented for `Result`.
#[diagnostic::on_unimplemented(
    message = "`#[step(retries = ..)]` needs a step that returns `Result`, not `{Self}`",
    label = "this step is retried, so it must return `Result<_, _>`",
    note = "a step is retried when an attempt returns `Err`"
)]
pub trait Retryable {
    /// Whether this output is a failure worth retrying.
    fn is_failure(&self) -> bool;
}

impl<T, E> Retryable for Result<T, E> {
    fn is_failure(&self) -> bool {
        self.is_err()
    }
}

/// A step's argument, for [`ArgViaSerialize`] and [`ArgOpaque`]: the code `#[step]`
/// generates calls `(&Arg(&x)).__durable_fingerprint(args)` on each, and method
/// resolution picks the serde one when the argument's type is `Serialize` (it needs no
/// auto-reference), the opaque one otherwise.
#[doc(hidden)]
#[derive(Debug)]
pub struct Arg<'a, T: ?Sized>(pub &'a T);

/// Adds a `Serialize` argument to a call's fingerprint.
#[doc(hidden)]
pub trait ArgViaSerialize {
    fn __durable_fingerprint(&self, args: &mut Args);
}

impl<T: Serialize + ?Sized> ArgViaSerialize for Arg<'_, T> {
    fn __durable_fingerprint(&self, args: &mut Args) {
        args.arg(self.0);
    }
}

/// Adds an argument serde cannot see (a client handle) to a call's fingerprint: it
/// counts by its position.
#[doc(hidden)]
pub trait ArgOpaque {
    fn __durable_fingerprint(&self, args: &mut Args);
}

impl<T: ?Sized> ArgOpaque for &Arg<'_, T> {
    fn __durable_fingerprint(&self, args: &mut Args) {
        args.opaque(std::any::type_name::<T>());
    }
}

/// What claiming a step's position found: made by [`claim_step`] when the step is
/// called, turned into the step's future by [`step`] or [`step_retry`].
#[doc(hidden)]
#[derive(Debug)]
pub struct StepClaim {
    options: &'static StepOptions,
    begin: Begin,
}

#[derive(Debug)]
enum Begin {
    /// Called outside any workflow: a plain call.
    Outside,
    /// Nothing recorded at its position: run the body.
    Run {
        claim: Claim,
        args: Option<Fingerprint>,
    },
    /// An earlier execution recorded its result.
    Replay {
        claim: Claim,
        outcome: RecordedOutcome,
    },
    /// An `on_interrupt = "fail"` step whose body an earlier execution started.
    Interrupted {
        claim: Claim,
        args: Option<Fingerprint>,
    },
    /// The workflow has stopped (this call diverged from the journal).
    Stopped,
}

/// Claims the next position in the current workflow scope for a call of the step
/// `options` names, with the arguments `args` lists, and looks at what the journal
/// recorded there (called by the code `#[step]` generates, before the arguments move
/// into the body).
pub fn claim_step(options: &'static StepOptions, args: impl Fn(&mut Args)) -> StepClaim {
    let Some(claim) = scope::claim() else {
        let begin = if scope::refuse_if_detached(|| format!("step `{}`", options.name)) {
            Begin::Stopped
        } else {
            Begin::Outside
        };
        return StepClaim { options, begin };
    };
    let fingerprint = fingerprint::of_args(&args);
    let begin = match claim.ctx.take_recorded(&claim.path) {
        None if options.fail_if_interrupted && claim.ctx.started(&claim.path).is_some() => {
            Begin::Interrupted {
                claim,
                args: fingerprint,
            }
        }
        None => Begin::Run {
            claim,
            args: fingerprint,
        },
        Some(rec) => match diverged(&claim, options.name, &rec, fingerprint, || {
            fingerprint::preview_args(&args)
        }) {
            None => Begin::Replay {
                claim,
                outcome: rec.outcome,
            },
            Some(e) => {
                claim.ctx.fail(e);
                Begin::Stopped
            }
        },
    };
    StepClaim { options, begin }
}

/// Whether asking for operation `name` with arguments `args` at `claim`'s position
/// diverges from what the journal recorded there (`rec`): another name, or the same
/// name with other arguments (when both fingerprints are known: rows from before schema
/// 4, and operations without arguments, have none).
pub(crate) fn diverged(
    claim: &Claim,
    name: &str,
    rec: &RecordedStep,
    args: Option<Fingerprint>,
    preview: impl FnOnce() -> String,
) -> Option<Error> {
    let arguments = match (rec.args, args) {
        _ if rec.name != name => None,
        (Some(recorded), Some(requested)) if recorded != requested => {
            Some(Box::new(ArgumentsChanged {
                recorded,
                requested,
                requested_preview: preview(),
            }))
        }
        _ => return None,
    };
    Some(Error::Divergence {
        workflow_id: claim.ctx.id.to_string(),
        path: claim.path.clone(),
        recorded: rec.name.clone(),
        requested: Some(name.to_owned()),
        arguments,
    })
}

/// Builds a step without retries (called by the code `#[step]` generates).
pub fn step<T, F: Future<Output = T>>(claim: StepClaim, body: F) -> Step<Once<F>> {
    Step::new(claim, Once(Some(body)))
}

/// Builds a retried step (called by the code `#[step(retries = ..)]` generates).
pub fn step_retry<T, F, Fut>(claim: StepClaim, body: F) -> Step<Retry<F>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    T: Retryable,
{
    Step::new(claim, Retry(body))
}

enum State<T> {
    /// Run the body; record the result if the step was called inside a workflow.
    Run {
        claim: Option<Claim>,
        /// The fingerprint of the step's arguments, recorded with its result.
        args: Option<Fingerprint>,
        attempts: u32,
        started_at: i64,
        /// Whether the durable start record (`on_interrupt = "fail"`) is written.
        start_recorded: bool,
    },
    /// The start record is being written; the body runs once it is durable.
    Starting {
        claim: Claim,
        args: Option<Fingerprint>,
        ack: oneshot::Receiver<Result<crate::store::Written, StoreError>>,
        started_at: i64,
    },
    /// An earlier execution recorded this step's result.
    Replay {
        claim: Claim,
        outcome: RecordedOutcome,
    },
    /// The result is being checkpointed; `value` is what the caller gets once it is.
    Commit {
        claim: Claim,
        ack: oneshot::Receiver<Result<(), StoreError>>,
        spin_until: Option<Instant>,
        value: Option<T>,
    },
    /// The panic (or interruption) is being checkpointed; then the workflow fails.
    CommitPanic {
        claim: Claim,
        ack: oneshot::Receiver<Result<(), StoreError>>,
        kind: FailureKind,
        message: String,
    },
    /// The workflow has failed (divergence, corrupt row, store error, panic); this step
    /// never completes, and the workflow's driver drops it.
    Stopped,
}

pin_project_lite::pin_project! {
    /// A call to a `#[step]` function.
    ///
    /// The step's position in its workflow was claimed when the function was called, so
    /// the step keeps its id whether it is awaited here, moved into `tokio::spawn`,
    /// raced in a `select!`, or dropped without being polled. Awaiting it returns the
    /// recorded output when an earlier execution of the workflow recorded one, and
    /// otherwise runs the body (with retries, if configured) and checkpoints its output
    /// before returning it.
    #[must_use = "a step does nothing unless awaited, but its step id is claimed either way"]
    pub struct Step<B: StepBody> {
        options: &'static StepOptions,
        body: B,
        #[pin]
        attempt: Option<B::Attempt>,
        #[pin]
        backoff: Option<tokio::time::Sleep>,
        state: State<B::Output>,
        // Held while the body runs and its result is recorded: a cancelled workflow
        // stops at the next step boundary, not inside a step.
        active: Option<ActiveBody>,
    }
}

impl<B: StepBody> std::fmt::Debug for Step<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.options.name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl<B: StepBody> Step<B> {
    fn new(StepClaim { options, begin }: StepClaim, body: B) -> Self {
        let state = match begin {
            Begin::Outside => State::Run {
                claim: None,
                args: None,
                attempts: 0,
                started_at: 0,
                start_recorded: false,
            },
            Begin::Run { claim, args } => State::Run {
                claim: Some(claim),
                args,
                attempts: 0,
                started_at: 0,
                start_recorded: false,
            },
            Begin::Replay { claim, outcome } => State::Replay { claim, outcome },
            Begin::Interrupted { claim, args } => interrupted(options, claim, args),
            Begin::Stopped => State::Stopped,
        };
        Step {
            options,
            body,
            attempt: None,
            backoff: None,
            state,
            active: None,
        }
    }
}

/// A `fail_if_interrupted` step whose body started in an earlier execution and never
/// recorded a result: records that, without running the body, and fails the workflow.
fn interrupted<T>(options: &StepOptions, claim: Claim, args: Option<Fingerprint>) -> State<T> {
    let message = format!(
        "step {} (`{}`) was interrupted by a crash after its body started, and it is marked \
         `on_interrupt = \"fail\"`, so it was not run again; check whether its effect happened, \
         then resume the workflow to run it again",
        claim.path, options.name
    );
    let now = now_ms();
    let ack = claim.ctx.store.record_step(StepRecord {
        workflow_id: claim.ctx.id.clone(),
        path: claim.path.clone(),
        name: options.name,
        args,
        outcome: RecordedOutcome::Interrupted(message.clone()),
        attempts: 0,
        started_at: now,
        finished_at: now,
        effect: Effect::None,
    });
    State::CommitPanic {
        claim,
        ack,
        kind: FailureKind::StepInterrupted,
        message,
    }
}

impl<B> Future for Step<B>
where
    B: StepBody,
    B::Output: Serialize + DeserializeOwned,
{
    type Output = B::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<B::Output> {
        let mut this = self.project();
        let options: &StepOptions = this.options;
        loop {
            match this.state {
                State::Stopped => return Poll::Pending,
                State::Replay { claim, outcome } => {
                    let result = match outcome {
                        RecordedOutcome::Output(bytes) => Codec::decode::<B::Output>(bytes)
                            .map_err(|reason| {
                                undecodable::<B::Output>(
                                    &*claim.ctx.id,
                                    Location::Step {
                                        path: claim.path.clone(),
                                        name: options.name.to_owned(),
                                    },
                                    reason,
                                )
                            }),
                        RecordedOutcome::Panicked(message) => Err(Error::Failed {
                            workflow_id: claim.ctx.id.to_string(),
                            kind: FailureKind::StepPanicked,
                            message: message.clone(),
                        }),
                        RecordedOutcome::Interrupted(message) => Err(Error::Failed {
                            workflow_id: claim.ctx.id.to_string(),
                            kind: FailureKind::StepInterrupted,
                            message: message.clone(),
                        }),
                    };
                    match result {
                        Ok(value) => {
                            tracing::debug!(workflow = %claim.ctx.id, path = %claim.path, step = options.name, "step replayed from the journal");
                            *this.state = State::Stopped;
                            return Poll::Ready(value);
                        }
                        Err(e) => {
                            claim.ctx.fail(e);
                            *this.state = State::Stopped;
                        }
                    }
                }
                State::Commit {
                    claim,
                    ack,
                    spin_until,
                    value,
                } => {
                    match ready!(poll_ack(ack, *spin_until, cx)) {
                        Ok(Ok(())) => {
                            if let Some(value) = value.take() {
                                *this.state = State::Stopped;
                                *this.active = None;
                                return Poll::Ready(value);
                            }
                        }
                        Ok(Err(e)) => claim.ctx.fail(e.into()),
                        Err(_) => claim.ctx.fail(writer_gone(claim)),
                    }
                    *this.state = State::Stopped;
                }
                State::Starting {
                    claim,
                    ack,
                    started_at,
                    ..
                } => {
                    match ready!(Pin::new(ack).poll(cx)) {
                        Ok(Ok(_)) => {
                            let started_at = *started_at;
                            let State::Starting { claim, args, .. } =
                                std::mem::replace(this.state, State::Stopped)
                            else {
                                return Poll::Pending;
                            };
                            *this.state = State::Run {
                                claim: Some(claim),
                                args,
                                attempts: 0,
                                started_at,
                                start_recorded: true,
                            };
                            continue;
                        }
                        Ok(Err(e)) => claim.ctx.fail(e.into()),
                        Err(_) => claim.ctx.fail(writer_gone(claim)),
                    }
                    *this.state = State::Stopped;
                }
                State::CommitPanic {
                    claim,
                    ack,
                    kind,
                    message,
                } => {
                    let error = match ready!(Pin::new(ack).poll(cx)) {
                        Ok(Ok(())) => Error::Failed {
                            workflow_id: claim.ctx.id.to_string(),
                            kind: *kind,
                            message: std::mem::take(message),
                        },
                        Ok(Err(e)) => e.into(),
                        Err(_) => writer_gone(claim),
                    };
                    claim.ctx.fail(error);
                    *this.state = State::Stopped;
                }
                State::Run {
                    claim,
                    args,
                    attempts,
                    started_at,
                    start_recorded,
                } => {
                    if claim.as_ref().is_some_and(|c| c.ctx.store.is_halted()) {
                        // A simulated crash: nothing of the "process" runs again.
                        return Poll::Pending;
                    }
                    if let Some(sleep) = this.backoff.as_mut().as_pin_mut() {
                        ready!(sleep.poll(cx));
                        this.backoff.set(None);
                    }
                    if this.attempt.is_none() {
                        if let Some(c) = claim.as_ref() {
                            if *attempts > 0 && c.ctx.stopping() {
                                // Cancelled, or the runtime is closing: a retry is a new
                                // attempt, and none starts. Nothing is recorded; the
                                // step runs again when the workflow does.
                                *this.state = State::Stopped;
                                *this.active = None;
                                return Poll::Pending;
                            }
                            if !c.ctx.may_run(&c.path, options.name) {
                                // A replay check: the body never runs, and the step
                                // never completes.
                                *this.state = State::Stopped;
                                return Poll::Pending;
                            }
                            if this.active.is_none() {
                                match c.ctx.begin_body() {
                                    Some(guard) => *this.active = Some(guard),
                                    // Cancelled: this step does not start.
                                    None => {
                                        *this.state = State::Stopped;
                                        return Poll::Pending;
                                    }
                                }
                            }
                            if *attempts == 0 && options.fail_if_interrupted && !*start_recorded {
                                // Durable before the body runs, so recovery knows the
                                // body may have had its effect.
                                let at = now_ms();
                                let ack = c.ctx.store.write(Write::Started(
                                    StepKey {
                                        workflow_id: c.ctx.id.clone(),
                                        path: c.path.clone(),
                                        name: options.name,
                                        args: *args,
                                    },
                                    at,
                                ));
                                let Some(claim) = claim.take() else {
                                    return Poll::Pending;
                                };
                                *this.state = State::Starting {
                                    claim,
                                    args: *args,
                                    ack,
                                    started_at: at,
                                };
                                continue;
                            }
                            c.ctx.store.step_started(&c.ctx.id, &c.path, options.name);
                        }
                        if *attempts == 0 && !*start_recorded {
                            *started_at = now_ms();
                        }
                        match this.body.attempt() {
                            Some(fut) => this.attempt.set(Some(fut)),
                            // `Once` hands out its body once; a step is never polled for
                            // a second attempt without retries, so this is unreachable.
                            None => return Poll::Pending,
                        }
                    }
                    let Some(fut) = this.attempt.as_mut().as_pin_mut() else {
                        return Poll::Pending;
                    };
                    // The body runs outside any workflow scope: a step called from a
                    // step body is a plain call.
                    let polled = match claim {
                        None => scope::in_step_body(None, || fut.poll(cx)),
                        Some(c) => match catch_unwind(AssertUnwindSafe(|| {
                            scope::in_step_body(Some((&c.ctx.id, &c.path)), || fut.poll(cx))
                        })) {
                            Ok(p) => p,
                            Err(payload) => {
                                this.attempt.set(None);
                                let message = format!(
                                    "step {} (`{}`) panicked: {}",
                                    claim
                                        .as_ref()
                                        .map(|c| c.path.to_string())
                                        .unwrap_or_default(),
                                    options.name,
                                    panic_message(&*payload)
                                );
                                let Some(claim) = claim.take() else {
                                    return Poll::Pending;
                                };
                                let ack = claim.ctx.store.record_step(StepRecord {
                                    workflow_id: claim.ctx.id.clone(),
                                    path: claim.path.clone(),
                                    name: options.name,
                                    args: *args,
                                    outcome: RecordedOutcome::Panicked(message.clone()),
                                    attempts: *attempts + 1,
                                    started_at: *started_at,
                                    finished_at: now_ms(),
                                    effect: Effect::None,
                                });
                                *this.state = State::CommitPanic {
                                    claim,
                                    ack,
                                    kind: FailureKind::StepPanicked,
                                    message,
                                };
                                continue;
                            }
                        },
                    };
                    let output = ready!(polled);
                    this.attempt.set(None);
                    *attempts += 1;
                    if *attempts <= options.retries && this.body.is_retryable(&output) {
                        let delay = options.delay(*attempts);
                        tracing::debug!(
                            step = options.name,
                            attempt = *attempts,
                            ?delay,
                            "step attempt failed; retrying"
                        );
                        this.backoff.set(Some(tokio::time::sleep(delay)));
                        // No body runs while the step waits to retry: a cancel or a
                        // close does not wait out the backoff (and no retry starts
                        // after one, see above).
                        *this.active = None;
                        continue;
                    }
                    let Some(claim) = claim.take() else {
                        // Outside a workflow: a plain call, nothing to record.
                        *this.state = State::Stopped;
                        return Poll::Ready(output);
                    };
                    match crate::codec::encode_checked(claim.ctx.codec, &output) {
                        Ok(bytes) => {
                            // Hand back the decoded copy, not `output`: the caller sees
                            // exactly what a replay will see.
                            let (value, bytes) = bytes;
                            let ack = claim.ctx.store.record_step(StepRecord {
                                workflow_id: claim.ctx.id.clone(),
                                path: claim.path.clone(),
                                name: options.name,
                                args: *args,
                                outcome: RecordedOutcome::Output(bytes),
                                attempts: *attempts,
                                started_at: *started_at,
                                finished_at: now_ms(),
                                effect: Effect::None,
                            });
                            let spin = claim.ctx.store.ack_spin();
                            *this.state = State::Commit {
                                claim,
                                ack,
                                spin_until: (!spin.is_zero()).then(|| Instant::now() + spin),
                                value: Some(value),
                            };
                        }
                        Err(reason) => {
                            claim.ctx.fail(Error::Encode {
                                what: format!(
                                    "the output of step {} (`{}`) in workflow {}",
                                    claim.path, options.name, claim.ctx.id
                                ),
                                reason,
                            });
                            *this.state = State::Stopped;
                        }
                    }
                }
            }
        }
    }
}

/// Polls a checkpoint's ack. Until `spin_until`, a pending ack keeps the task runnable
/// (see [`Store::ack_spin`](crate::store::Store::ack_spin)) instead of letting it sleep.
fn poll_ack<T>(
    ack: &mut oneshot::Receiver<T>,
    spin_until: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, oneshot::error::RecvError>> {
    match Pin::new(ack).poll(cx) {
        Poll::Pending if spin_until.is_some_and(|t| Instant::now() < t) => {
            // Let the writer have this core if it is waiting for one.
            std::thread::yield_now();
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        polled => polled,
    }
}

fn writer_gone(claim: &Claim) -> Error {
    Error::Store(StoreError::new(
        claim.ctx.store.path(),
        StoreErrorKind::Closed,
        "the journal writer stopped before the step was recorded",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        const O: StepOptions = StepOptions::new("s").retries(10).backoff(
            Duration::from_millis(100),
            2.0,
            Duration::from_millis(500),
        );
        let delays: Vec<u128> = (1..=5).map(|n| O.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(O.delay(u32::MAX), Duration::from_millis(500));
    }
}
