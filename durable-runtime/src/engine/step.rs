//! Step futures: claim at call, replay or run, checkpoint.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Fingerprint;
use crate::codec::fingerprint::{self, Args};
use crate::engine::context::{ActiveBody, OpenStep, WorkflowCtx};
use crate::engine::replay::{Found, claim_recorded};
use crate::engine::scope::{self, Claim};
use crate::error::{Error, FailureKind};
use crate::journal::{Ack, Effect, RecordedOutcome, StepKey, StepRecord, sequential_write};
use crate::state::StateType;
use crate::util::{now_ms, panic_message};

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
    /// The app state its `#[state]` parameters take: checked before the body runs.
    state: &'static [StateType],
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
            state: &[],
        }
    }

    /// The step takes app state of these types (its `#[state]` parameters).
    pub const fn state(mut self, state: &'static [StateType]) -> Self {
        self.state = state;
        self
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
    /// The step's span (see [`crate::trace::step`]), made here, where the caller's
    /// span is current.
    span: tracing::Span,
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
        return StepClaim {
            options,
            begin,
            span: tracing::Span::none(),
        };
    };
    let fingerprint = fingerprint::of_args(&args);
    let preview = || fingerprint::preview_args(&args);
    let begin = match claim_recorded(&claim, options.name, fingerprint, preview) {
        Found::Nothing
            if options.fail_if_interrupted && claim.ctx.started(&claim.path).is_some() =>
        {
            Begin::Interrupted {
                claim,
                args: fingerprint,
            }
        }
        Found::Nothing => Begin::Run {
            claim,
            args: fingerprint,
        },
        Found::Recorded(outcome) => Begin::Replay { claim, outcome },
        Found::Stopped => Begin::Stopped,
    };
    let span = match &begin {
        Begin::Run { claim, .. } | Begin::Interrupted { claim, .. } => {
            crate::trace::step(&claim.path, options.name, false)
        }
        Begin::Replay { claim, .. } => crate::trace::step(&claim.path, options.name, true),
        Begin::Outside | Begin::Stopped => tracing::Span::none(),
    };
    if let Begin::Run { claim, .. } | Begin::Replay { claim, .. } = &begin
        && claim.ctx.trace_values
        && !span.is_disabled()
    {
        span.record("input", preview());
    }
    StepClaim {
        options,
        begin,
        span,
    }
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

/// The attempts of a step that retried: when each ended one started and ended, and
/// when the current one started (ms since the Unix epoch). Recorded with the step's
/// result, so a timeline shows every attempt and the waits between them.
#[derive(Debug, Default)]
struct Retried {
    ended: Vec<(i64, i64)>,
    current_start: i64,
}

/// The text a step's record keeps of its attempts' times: `start:end` per attempt,
/// comma-separated, the last ending at `finished_at`. `None` for a step that ran once
/// (its one attempt is `started_at` to `finished_at`).
fn attempt_times(retried: Option<&Retried>, finished_at: i64) -> Option<String> {
    let r = retried?;
    let mut text = String::new();
    for (start, end) in r
        .ended
        .iter()
        .chain(std::iter::once(&(r.current_start, finished_at)))
    {
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&format!("{start}:{end}"));
    }
    Some(text)
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
        /// The times of its attempts, once one failed and the step retries.
        retried: Option<Box<Retried>>,
    },
    /// The start record is being written; the body runs once it is durable.
    Starting {
        claim: Claim,
        args: Option<Fingerprint>,
        ack: Ack,
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
        ack: Ack,
        spin_until: Option<Instant>,
        value: Option<T>,
    },
    /// The panic (or interruption) is being checkpointed; then the workflow fails.
    CommitPanic {
        claim: Claim,
        ack: Ack,
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
    #[project = StepProj]
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
        // Held from the call until the result is recorded (or the step stops): tells a
        // sequential step from one of a fan-out.
        open: Option<OpenStep>,
        // Entered on each poll: the body's own spans and events nest under it.
        span: tracing::Span,
    }
}

impl<B: StepBody> std::fmt::Debug for Step<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.options.name)
            .finish_non_exhaustive()
    }
}

impl<B: StepBody> Step<B> {
    fn new(
        StepClaim {
            options,
            begin,
            span,
        }: StepClaim,
        body: B,
    ) -> Self {
        let run = |claim, args| State::Run {
            claim,
            args,
            attempts: 0,
            started_at: 0,
            start_recorded: false,
            retried: None,
        };
        // An interrupted step's record of its interruption is a write the run awaits
        // too: the run is not parked until it is answered.
        let open = match &begin {
            Begin::Run { claim, .. } | Begin::Interrupted { claim, .. } => {
                Some(claim.ctx.open_step())
            }
            _ => None,
        };
        let state = match begin {
            Begin::Outside => run(None, None),
            Begin::Run { claim, args } => run(Some(claim), args),
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
            open,
            span,
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
        attempt_times: None,
        effect: Effect::None,
    });
    State::CommitPanic {
        claim,
        ack,
        kind: FailureKind::StepInterrupted,
        message,
    }
}

/// What one state of a step's poll decided.
enum Next<T> {
    /// The state changed: poll the new one.
    Again,
    /// The step returns this.
    Ready(T),
    /// Nothing to do until the waker fires (or ever, once stopped).
    Wait,
}

impl<B> Future for Step<B>
where
    B: StepBody,
    B::Output: Serialize + DeserializeOwned,
{
    type Output = B::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<B::Output> {
        let mut this = self.project();
        let span = this.span.clone();
        let _entered = span.enter();
        loop {
            let next = match this.state {
                State::Stopped => Next::Wait,
                State::Replay { .. } => replay(&mut this),
                State::Starting { .. } => starting(&mut this, cx),
                State::Run { .. } => run(&mut this, cx),
                State::Commit { .. } => commit(&mut this, cx),
                State::CommitPanic { .. } => commit_panic(&mut this, cx),
            };
            match next {
                Next::Again => {}
                Next::Ready(value) => return Poll::Ready(value),
                Next::Wait => return Poll::Pending,
            }
        }
    }
}

/// Ends the step without a value: the workflow has stopped, and its driver drops the
/// step.
fn stop<B: StepBody>(this: &mut StepProj<'_, B>) -> Next<B::Output> {
    *this.state = State::Stopped;
    *this.open = None;
    Next::Wait
}

/// `State::Replay`: the recorded result, decoded.
fn replay<B>(this: &mut StepProj<'_, B>) -> Next<B::Output>
where
    B: StepBody,
    B::Output: Serialize + DeserializeOwned,
{
    let State::Replay { claim, outcome } = &*this.state else {
        return Next::Again;
    };
    let name = this.options.name;
    match outcome.result::<B::Output>(&claim.ctx.id, &claim.path, name) {
        Ok(value) => {
            if claim.ctx.trace_values && !this.span.is_disabled() {
                this.span.record(
                    "output",
                    crate::codec::preview(&value, crate::trace::VALUE_LIMIT),
                );
            }
            *this.state = State::Stopped;
            Next::Ready(value)
        }
        Err(e) => {
            claim.ctx.fail(e);
            stop(this)
        }
    }
}

/// `State::Starting`: once the start record is durable, the body runs.
fn starting<B: StepBody>(this: &mut StepProj<'_, B>, cx: &mut Context<'_>) -> Next<B::Output> {
    let State::Starting { claim, ack, .. } = this.state else {
        return Next::Again;
    };
    match Pin::new(ack).poll(cx) {
        Poll::Pending => Next::Wait,
        Poll::Ready(Err(e)) => {
            claim.ctx.fail(e.into());
            stop(this)
        }
        Poll::Ready(Ok(())) => {
            let State::Starting {
                claim,
                args,
                started_at,
                ..
            } = std::mem::replace(this.state, State::Stopped)
            else {
                return Next::Again;
            };
            *this.state = State::Run {
                claim: Some(claim),
                args,
                attempts: 0,
                started_at,
                start_recorded: true,
                retried: None,
            };
            Next::Again
        }
    }
}

/// `State::Commit`: once the checkpoint is durable, the step returns its value.
fn commit<B: StepBody>(this: &mut StepProj<'_, B>, cx: &mut Context<'_>) -> Next<B::Output> {
    let State::Commit {
        claim,
        ack,
        spin_until,
        value,
    } = this.state
    else {
        return Next::Again;
    };
    match poll_ack(ack, &claim.ctx, *spin_until, cx) {
        Poll::Pending => Next::Wait,
        Poll::Ready(Ok(())) => match value.take() {
            Some(value) => {
                *this.state = State::Stopped;
                *this.active = None;
                *this.open = None;
                Next::Ready(value)
            }
            None => stop(this),
        },
        Poll::Ready(Err(e)) => {
            claim.ctx.fail(e.into());
            stop(this)
        }
    }
}

/// `State::CommitPanic`: once the panic (or interruption) is recorded, the workflow
/// fails with it.
fn commit_panic<B: StepBody>(this: &mut StepProj<'_, B>, cx: &mut Context<'_>) -> Next<B::Output> {
    let State::CommitPanic {
        claim,
        ack,
        kind,
        message,
    } = this.state
    else {
        return Next::Again;
    };
    let error = match Pin::new(ack).poll(cx) {
        Poll::Pending => return Next::Wait,
        Poll::Ready(Ok(())) => Error::Failed {
            workflow_id: claim.ctx.id.to_string(),
            kind: *kind,
            message: std::mem::take(message),
        },
        Poll::Ready(Err(e)) => e.into(),
    };
    claim.ctx.fail(error);
    stop(this)
}

/// `State::Run`: waits out a retry's backoff, starts an attempt if none runs, polls it,
/// and once it is done retries it or records its output.
fn run<B>(this: &mut StepProj<'_, B>, cx: &mut Context<'_>) -> Next<B::Output>
where
    B: StepBody,
    B::Output: Serialize + DeserializeOwned,
{
    #[cfg(feature = "testkit")]
    if let State::Run { claim: Some(c), .. } = &*this.state
        && c.ctx.crashed()
    {
        // A simulated crash: nothing of the "process" runs again.
        return Next::Wait;
    }
    if let Some(sleep) = this.backoff.as_mut().as_pin_mut() {
        if sleep.poll(cx).is_pending() {
            return Next::Wait;
        }
        this.backoff.set(None);
    }
    if this.attempt.is_none()
        && let Some(next) = start_attempt(this)
    {
        return next;
    }
    let output = match poll_attempt(this, cx) {
        Ok(Poll::Ready(output)) => output,
        Ok(Poll::Pending) => return Next::Wait,
        Err(next) => return next,
    };
    finish_attempt(this, output)
}

/// Starts the next attempt of the body, unless it must not start: returns what the
/// step does instead (stop, or wait for the start record to be durable).
fn start_attempt<B: StepBody>(this: &mut StepProj<'_, B>) -> Option<Next<B::Output>> {
    let options = *this.options;
    let State::Run {
        claim,
        args,
        attempts,
        started_at,
        start_recorded,
        retried,
    } = this.state
    else {
        return Some(Next::Again);
    };
    if let Some(c) = claim.as_ref() {
        if *attempts > 0 && c.ctx.stopping() {
            // Cancelled, or the runtime is closing: a retry is a new attempt, and none
            // starts. Nothing is recorded; the step runs again when the workflow does.
            *this.active = None;
            return Some(stop(this));
        }
        if !c.ctx.may_run(&c.path, options.name) {
            // A replay check: the body never runs, and the step never completes.
            return Some(stop(this));
        }
        if let Some(type_name) = c.ctx.states.missing(options.state) {
            // Before the body runs, so a `#[state]` parameter always finds its value.
            // Nothing is recorded: once the runtime has the state, the step runs.
            c.ctx
                .fail(crate::state::missing(&c.ctx.id, options.name, type_name));
            *this.active = None;
            return Some(stop(this));
        }
        if this.active.is_none() {
            match c.ctx.begin_body() {
                Some(guard) => *this.active = Some(guard),
                // Cancelled: this step does not start.
                None => return Some(stop(this)),
            }
        }
        if *attempts == 0 && options.fail_if_interrupted && !*start_recorded {
            // Durable before the body runs, so recovery knows the body may have had its
            // effect.
            let at = now_ms();
            let key = StepKey {
                workflow_id: c.ctx.id.clone(),
                path: c.path.clone(),
                name: options.name,
                args: *args,
            };
            let ack = c.ctx.store.record_started(key, at);
            let args = *args;
            let Some(claim) = claim.take() else {
                return Some(Next::Wait);
            };
            *this.state = State::Starting {
                claim,
                args,
                ack,
                started_at: at,
            };
            return Some(Next::Again);
        }
        #[cfg(feature = "testkit")]
        if let Some(i) = &c.ctx.instrument {
            i.body_started(&c.ctx.id, &c.path, options.name);
        }
    }
    if *attempts == 0 && !*start_recorded {
        *started_at = now_ms();
    }
    if let Some(r) = retried {
        r.current_start = now_ms();
    }
    match this.body.attempt() {
        Some(fut) => {
            this.attempt.set(Some(fut));
            None
        }
        // `Once` hands out its body once; a step is never polled for a second attempt
        // without retries, so this is unreachable.
        None => Some(Next::Wait),
    }
}

/// Polls the running attempt, outside any workflow scope (a step called from a step
/// body is a plain call). A panic is recorded as the step's outcome: `Err` says what
/// the step does meanwhile.
fn poll_attempt<B: StepBody>(
    this: &mut StepProj<'_, B>,
    cx: &mut Context<'_>,
) -> Result<Poll<B::Output>, Next<B::Output>> {
    let options = *this.options;
    let State::Run {
        claim,
        args,
        attempts,
        started_at,
        retried,
        ..
    } = this.state
    else {
        return Err(Next::Again);
    };
    let Some(fut) = this.attempt.as_mut().as_pin_mut() else {
        return Err(Next::Wait);
    };
    let Some(c) = claim.as_ref() else {
        return Ok(scope::in_step_body(None, || fut.poll(cx)));
    };
    let payload = match catch_unwind(AssertUnwindSafe(|| {
        scope::in_step_body(
            Some((&c.ctx.id, &c.path, *attempts + 1, &c.ctx.states)),
            || fut.poll(cx),
        )
    })) {
        Ok(polled) => return Ok(polled),
        Err(payload) => payload,
    };
    this.attempt.set(None);
    if let Some(missing) = payload.downcast_ref::<scope::MissingState>() {
        // A step the body called takes state this runtime lacks: a deployment's
        // mistake, not the step's. Nothing is recorded; the workflow stays pending and
        // the step runs again once a runtime has the state.
        c.ctx.fail(crate::state::missing(
            &c.ctx.id,
            missing.step,
            missing.type_name,
        ));
        *this.active = None;
        return Err(stop(this));
    }
    let message = format!(
        "step {} (`{}`) panicked: {}",
        c.path,
        options.name,
        panic_message(&*payload)
    );
    let (args, attempts, started_at) = (*args, *attempts + 1, *started_at);
    let Some(claim) = claim.take() else {
        return Err(Next::Wait);
    };
    let finished_at = now_ms();
    // Recorded once, at the end: an OpenTelemetry layer keeps every value recorded.
    this.span.record("attempt", attempts);
    this.span
        .record("duration_ms", finished_at.saturating_sub(started_at));
    crate::trace::failed(this.span);
    tracing::error!(target: crate::trace::TARGET, attempt = attempts, "{message}");
    let ack = claim.ctx.store.record_step(StepRecord {
        workflow_id: claim.ctx.id.clone(),
        path: claim.path.clone(),
        name: options.name,
        args,
        outcome: RecordedOutcome::Panicked(message.clone()),
        attempts,
        started_at,
        finished_at,
        attempt_times: attempt_times(retried.as_deref(), finished_at),
        effect: Effect::None,
    });
    *this.state = State::CommitPanic {
        claim,
        ack,
        kind: FailureKind::StepPanicked,
        message,
    };
    Err(Next::Again)
}

/// An attempt returned `output`: retries it if it failed and retries are left,
/// returns it outside a workflow, and otherwise checkpoints it.
fn finish_attempt<B>(this: &mut StepProj<'_, B>, output: B::Output) -> Next<B::Output>
where
    B: StepBody,
    B::Output: Serialize + DeserializeOwned,
{
    let options = *this.options;
    this.attempt.set(None);
    let State::Run {
        claim,
        args,
        attempts,
        started_at,
        retried,
        ..
    } = this.state
    else {
        return Next::Again;
    };
    *attempts += 1;
    if *attempts <= options.retries && this.body.is_retryable(&output) {
        let began = retried.as_ref().map_or(*started_at, |r| r.current_start);
        retried
            .get_or_insert_with(Box::default)
            .ended
            .push((began, now_ms()));
        let delay = options.delay(*attempts);
        tracing::warn!(
            target: crate::trace::TARGET,
            attempt = *attempts,
            retries_left = options.retries + 1 - *attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "step attempt failed; retrying"
        );
        this.backoff.set(Some(tokio::time::sleep(delay)));
        // No body runs while the step waits to retry: a cancel or a close does not wait
        // out the backoff (and no retry starts after one, see `start_attempt`).
        *this.active = None;
        return Next::Again;
    }
    let Some(claim) = claim.take() else {
        // Outside a workflow: a plain call, nothing to record.
        *this.state = State::Stopped;
        return Next::Ready(output);
    };
    let (value, bytes) = match crate::codec::encode_checked(claim.ctx.codec, &output) {
        Ok(encoded) => encoded,
        Err(reason) => {
            claim.ctx.fail(Error::Encode {
                what: format!(
                    "the output of step {} (`{}`) in workflow {}",
                    claim.path, options.name, claim.ctx.id
                ),
                reason,
            });
            return stop(this);
        }
    };
    // Hand back the decoded copy, not `output`: the caller sees exactly what a replay
    // will see.
    let sequential = claim.ctx.steps_open() <= 1;
    let finished_at = now_ms();
    if !this.span.is_disabled() {
        // Recorded once, at the end: an OpenTelemetry layer keeps every value recorded.
        this.span.record("attempt", *attempts);
        this.span
            .record("duration_ms", finished_at.saturating_sub(*started_at));
        if claim.ctx.trace_values {
            this.span.record(
                "output",
                crate::codec::preview(&output, crate::trace::VALUE_LIMIT),
            );
        }
    }
    let ack = sequential_write(sequential, || {
        claim.ctx.store.record_step(StepRecord {
            workflow_id: claim.ctx.id.clone(),
            path: claim.path.clone(),
            name: options.name,
            args: *args,
            outcome: RecordedOutcome::Output(bytes),
            attempts: *attempts,
            started_at: *started_at,
            finished_at,
            attempt_times: attempt_times(retried.as_deref(), finished_at),
            effect: Effect::None,
        })
    });
    let spin = ack.spin();
    *this.state = State::Commit {
        claim,
        ack,
        spin_until: (!spin.is_zero()).then(|| Instant::now() + spin),
        value: Some(value),
    };
    Next::Again
}

/// Polls a checkpoint's ack. A pending ack whose journal expects to answer before
/// `spin_until` asks the run's driver to keep the task runnable until then (see
/// [`WorkflowCtx::take_spin`]); the
/// step itself never wakes its own task.
fn poll_ack(
    ack: &mut Ack,
    ctx: &WorkflowCtx,
    spin_until: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), crate::error::StoreError>> {
    let polled = Pin::new(ack).poll(cx);
    if polled.is_pending()
        && let Some(until) = spin_until
        && Instant::now() < until
    {
        ctx.ask_spin(until);
    }
    polled
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

    /// Counts the wake-ups of the task it is the waker of.
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_pending_checkpoint_asks_its_driver_to_spin_and_never_wakes_its_own_task() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::journal::JournalSpec::Sqlite(dir.path().join("j.db"))
            .open(&crate::journal::JournalOptions::default())
            .expect("open");
        let ctx = WorkflowCtx::new(
            "w".into(),
            store.clone(),
            None,
            crate::codec::Codec::default(),
        );
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let until = Instant::now() + Duration::from_secs(60);

        // One pending checkpoint: the driver is asked to spin. A step that woke its own
        // task instead would look, to `join_all`, like a future that yielded, and
        // would stop it polling the other steps of a fan-out.
        let (_reply, mut ack) = Ack::<()>::channel(&Arc::from(dir.path()));
        assert!(poll_ack(&mut ack, &ctx, Some(until), &mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert_eq!(ctx.take_spin(), Some(until));
        // Asked once per poll: the next poll starts with no request.
        assert_eq!(ctx.take_spin(), None);

        // Two pending in one poll were queued together: they share a commit, and the
        // task sleeps until the writer wakes it.
        let (_r1, mut a1) = Ack::<()>::channel(&Arc::from(dir.path()));
        let (_r2, mut a2) = Ack::<()>::channel(&Arc::from(dir.path()));
        assert!(poll_ack(&mut a1, &ctx, Some(until), &mut cx).is_pending());
        assert!(poll_ack(&mut a2, &ctx, Some(until), &mut cx).is_pending());
        assert_eq!(ctx.take_spin(), None);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        // A checkpoint with no spin asks for none.
        let (_r3, mut a3) = Ack::<()>::channel(&Arc::from(dir.path()));
        assert!(poll_ack(&mut a3, &ctx, None, &mut cx).is_pending());
        assert_eq!(ctx.take_spin(), None);
        store.close().expect("close");
    }
}
