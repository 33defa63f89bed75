//! The workflow primitives that are not user steps: durable time and randomness,
//! messages, events, version patches and transaction steps.
//!
//! Each is a journaled operation. Like a step, it claims its position when it is
//! *called* (so it replays deterministically under concurrency) and records its result
//! under a name starting with `durable::`, which user steps cannot take. On replay it
//! returns the recorded result instead of doing its work again.

use std::future::{Future, pending};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::fingerprint::{self, Args};
use crate::codec::{ByteBuf, Codec, Fingerprint, encode_checked, nested};
use crate::engine::replay::{Found, claim_recorded, encode_value, recorded_result};
use crate::engine::scope::{self, Claim};
use crate::error::{Error, FailureKind, Location, Result, undecodable};
use crate::journal::{
    Ack, Effect, NewMessage, RecordedOutcome, StepKey, StepRecord, TxStep, TxWork, Wait, WaitFor,
    WaitRecord,
};
use crate::util::{lock, now_ms, panic_message, random_u64};

pub(crate) mod child;
pub(crate) mod select;

pub(crate) const SLEEP: &str = "durable::sleep";
pub(crate) const NOW: &str = "durable::now";
pub(crate) const RANDOM: &str = "durable::random";
pub(crate) const UUID: &str = "durable::uuid";
pub(crate) const PATCHED: &str = "durable::patched";
pub(crate) const SEND: &str = "durable::send";
pub(crate) const RECV: &str = "durable::recv";
pub(crate) const SET_EVENT: &str = "durable::set_event";
pub(crate) const GET_EVENT: &str = "durable::get_event";

/// What claiming a journaled operation found.
pub(crate) enum Claimed {
    /// Called outside any workflow.
    Outside,
    /// The workflow has stopped (a divergence at this position): the operation never
    /// completes.
    Stopped,
    /// A position in a running workflow.
    Op(Op),
}

/// A claimed journaled operation.
pub(crate) struct Op {
    pub(crate) claim: Claim,
    pub(crate) name: &'static str,
    /// The fingerprint of the operation's arguments, recorded with its result.
    pub(crate) args: Option<Fingerprint>,
    /// What an earlier execution recorded here.
    pub(crate) recorded: Option<RecordedOutcome>,
}

/// An operation's arguments, each added to a fingerprint (or a preview) in turn.
pub(crate) type ArgList<'a> = &'a dyn Fn(&mut Args);

impl Claimed {
    /// How the claiming workflow encodes what it records (the default outside one).
    pub(crate) fn codec(&self) -> Codec {
        match self {
            Claimed::Op(op) => op.claim.ctx.codec,
            _ => Codec::default(),
        }
    }
}

/// Claims the next position in the current scope for the operation `name`, which
/// takes no arguments worth checking on replay.
pub(crate) fn claim(name: &'static str) -> Claimed {
    from_claim(scope::claim(), name, None)
}

/// Claims the next position for the operation `name` called with `args`: a replay
/// that calls it with other arguments diverges.
pub(crate) fn claim_with(name: &'static str, args: ArgList<'_>) -> Claimed {
    from_claim(scope::claim(), name, Some(args))
}

/// Takes the record at a position claimed earlier, checking that it is `name`'s and,
/// if `args` are given, that it was recorded with the same arguments.
pub(crate) fn from_claim(
    claim: Option<Claim>,
    name: &'static str,
    args: Option<ArgList<'_>>,
) -> Claimed {
    let Some(claim) = claim else {
        return if scope::refuse_if_detached(|| format!("`{name}`")) {
            Claimed::Stopped
        } else {
            Claimed::Outside
        };
    };
    let fingerprint = args.and_then(fingerprint::of_args);
    let preview = || args.map(fingerprint::preview_args).unwrap_or_default();
    let recorded = match claim_recorded(&claim, name, fingerprint, preview) {
        Found::Nothing => None,
        Found::Recorded(outcome) => Some(outcome),
        Found::Diverged => return Claimed::Stopped,
    };
    Claimed::Op(Op {
        claim,
        name,
        args: fingerprint,
        recorded,
    })
}

impl Op {
    pub(crate) fn key(&self) -> StepKey {
        StepKey {
            workflow_id: self.claim.ctx.id.clone(),
            path: self.claim.path.clone(),
            name: self.name,
            args: self.args,
        }
    }

    fn undecodable<T>(&self, reason: crate::codec::CodecError) -> Error {
        undecodable::<T>(
            &*self.claim.ctx.id,
            Location::Step {
                path: self.claim.path.clone(),
                name: self.name.to_owned(),
            },
            reason,
        )
    }

    /// The bytes an earlier execution recorded here, if it recorded an output.
    pub(crate) fn recorded_bytes(&self) -> Option<&[u8]> {
        match &self.recorded {
            Some(RecordedOutcome::Output(bytes)) => Some(bytes),
            _ => None,
        }
    }

    /// The recorded result, decoded; `None` if nothing is recorded here.
    pub(crate) fn replayed<T: Serialize + DeserializeOwned>(&self) -> Option<Result<T>> {
        let outcome = self.recorded.as_ref()?;
        Some(recorded_result(
            outcome,
            &self.claim.ctx.id,
            &self.claim.path,
            self.name,
        ))
    }

    /// Decodes a value nested in this operation's result (a message, an event).
    pub(crate) fn decode<T: Serialize + DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let value = match self.recorded_bytes() {
            Some(outer) => nested(outer, bytes),
            None => std::borrow::Cow::Borrowed(bytes),
        };
        Codec::decode(&value).map_err(|reason| self.undecodable::<T>(reason))
    }

    /// Whether the operation may do its work (not in a replay check, which only
    /// replays what is recorded).
    pub(crate) fn may_run(&self) -> bool {
        // A cancelled (or closing) workflow starts nothing new; it stops at this boundary.
        !self.claim.ctx.stopping() && self.claim.ctx.may_run(&self.claim.path, self.name)
    }

    /// Records `output` (encoded) with `effect` in one transaction, and waits until it
    /// is durable.
    pub(crate) async fn record(
        &self,
        output: Vec<u8>,
        effect: Effect,
        started_at: i64,
    ) -> Result<()> {
        let ctx = &self.claim.ctx;
        let ack = ctx.store.record_step(StepRecord {
            workflow_id: ctx.id.clone(),
            path: self.claim.path.clone(),
            name: self.name,
            args: self.args,
            outcome: RecordedOutcome::Output(output),
            attempts: 1,
            started_at,
            finished_at: now_ms(),
            effect,
        });
        ack.await.map_err(Error::from)
    }

    /// Encodes and records `value`, and returns it (as decoded from its encoding, which
    /// is what a replay returns).
    pub(crate) async fn record_value<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
        effect: Effect,
        started_at: i64,
    ) -> Result<()> {
        let bytes = encode_value(self.claim.ctx.codec, value, || {
            format!(
                "the result of {} at {} in workflow {}",
                self.name, self.claim.path, self.claim.ctx.id
            )
        })?;
        self.record(bytes, effect, started_at).await
    }

    /// The reply to one write of a primitive, waited for.
    pub(crate) async fn acked<T>(&self, ack: Ack<T>) -> Result<T> {
        ack.await.map_err(Error::from)
    }

    /// Stops the workflow with `error`; the operation never completes (the driver drops
    /// it).
    pub(crate) async fn stop<T>(&self, error: Error) -> T {
        self.claim.ctx.fail(error);
        pending().await
    }
}

/// Unwraps `r`, or stops the workflow with its error (the operation then never
/// completes).
macro_rules! or_stop {
    ($op:expr, $r:expr) => {
        match $r {
            Ok(v) => v,
            Err(e) => return $op.stop(e).await,
        }
    };
}
pub(crate) use or_stop;

/// Gets the claimed operation, or returns what an operation does outside a workflow
/// (`$outside`); a stopped workflow's operation never completes.
macro_rules! op_or {
    ($claimed:expr, $outside:expr) => {
        match $claimed {
            Claimed::Op(op) => op,
            Claimed::Outside => return $outside,
            Claimed::Stopped => return pending().await,
        }
    };
}
pub(crate) use op_or;

fn millis(d: Duration) -> i64 {
    // Rounded up: a durable sleep never ends early.
    i64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// Waits until the wall clock reads `at` (ms since the epoch); never returns earlier.
async fn sleep_until_ms(at: i64) {
    loop {
        let left = at.saturating_sub(now_ms());
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0))).await;
    }
}

fn not_in_workflow(operation: &'static str, hint: &'static str) -> Error {
    Error::NotInWorkflow { operation, hint }
}

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
    async move {
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
        sleep_until_ms(wake_at).await;
    }
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
        if let Err(e) = ctx
            .store
            .record_patch(ctx.id.clone(), path.clone(), name)
            .await
        {
            ctx.fail(e.into());
            return pending().await;
        }
        ctx.add_patch(path, name);
        true
    }
}

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

/// A primitive whose record is `()` and whose work is an [`Effect`] committed with it
/// (`send`, `set_event`): a replay does nothing, a first execution writes the effect,
/// made with the record's time.
async fn record_effect(
    claimed: Claimed,
    outside: Error,
    effect: Result<impl FnOnce(i64) -> Effect>,
) -> Result<()> {
    let op = op_or!(claimed, Err(outside));
    if let Some(recorded) = op.replayed::<()>() {
        or_stop!(op, recorded);
        return Ok(());
    }
    let effect = effect?;
    if !op.may_run() {
        return pending().await;
    }
    let now = now_ms();
    or_stop!(op, op.record_value(&(), effect(now), now).await);
    Ok(())
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
    async move {
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
    }
}

/// A message a `recv` of this execution took (recorded at its step) but has not
/// returned to the workflow code yet. If the `recv` is dropped before it returns it (a
/// durable `select` it lost, a cancelled workflow, a timeout around it), the message is
/// given back: its record is deleted and it goes back to the front of its queue.
///
/// Only this execution's own waits give back. A message an earlier execution recorded
/// may have reached the code then, even if this replay drops the `recv` unpolled (a
/// `recv` created before a select and moved into its losing branch), so it stays taken.
/// The window that leaves a message taken and never delivered is narrow: a crash after
/// the wait's answer committed and before its select's winner was recorded (a give-back
/// is queued before the winner's record, so it commits first).
struct Undelivered {
    ctx: Arc<crate::engine::context::WorkflowCtx>,
    key: StepKey,
    topic: String,
    /// The writer's answer to this execution's wait, not yet received. Dropped with
    /// it, the wait may have been answered (or be answered in the batch being written):
    /// the writer, which answers in order, gives back whatever it recorded.
    answer: Option<Ack<Option<Vec<u8>>>>,
}

impl Undelivered {
    fn new(op: &Op, topic: &str) -> Self {
        Undelivered {
            ctx: op.claim.ctx.clone(),
            key: op.key(),
            topic: topic.to_owned(),
            answer: None,
        }
    }

    /// The message reached the workflow code (or will not be given back).
    fn delivered(&mut self) {
        self.answer = None;
    }
}

impl Drop for Undelivered {
    fn drop(&mut self) {
        let Some(answer) = self.answer.as_mut() else {
            return;
        };
        if matches!(answer.try_reply(), Some(Ok(None) | Err(_))) {
            // Timed out, failed, or answered and taken already: nothing to give back.
            return;
        }
        if self.ctx.runs().is_none() {
            // A replay check: nothing is written.
            return;
        }
        #[cfg(feature = "testkit")]
        if self.ctx.crashed() {
            // A simulated crash: nothing of the "process" runs again.
            return;
        }
        tracing::debug!(workflow = %self.key.workflow_id, path = %self.key.path, "giving back a message its recv never delivered");
        // Nobody waits for the answer: if it fails, the message stays recorded at the
        // recv (taken once, not lost from the journal).
        drop(
            self.ctx
                .store
                .give_back(self.key.clone(), std::mem::take(&mut self.topic)),
        );
    }
}

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

/// A recorded wait for a message or an event: replays what it recorded, or waits in the
/// journal writer (woken by the write it waits for) until its deadline.
async fn wait<T: Serialize + DeserializeOwned>(
    op: &Op,
    what: WaitFor,
    timeout: Option<Duration>,
    mut undelivered: Option<Undelivered>,
) -> Option<T> {
    let answer: Option<ByteBuf> = match op.replayed::<Option<ByteBuf>>() {
        Some(recorded) => or_stop!(op, recorded),
        None => {
            if !op.may_run() {
                return pending().await;
            }
            let now = now_ms();
            // A wait that began before a restart keeps the deadline it recorded then.
            let deadline_at = op
                .claim
                .ctx
                .started(&op.claim.path)
                .and_then(|s| s.wake_at)
                .or_else(|| timeout.map(|t| now.saturating_add(millis(t))));
            let record = WaitRecord {
                key: op.key(),
                started_at: now,
                deadline_at,
            };
            let ack = op.claim.ctx.store.wait(Wait {
                what,
                record: Some(record.clone()),
                park: true,
            });
            // Held where a drop can see it: see `Undelivered`.
            let mut own = None;
            let slot = match undelivered.as_mut() {
                Some(u) => &mut u.answer,
                None => &mut own,
            };
            let ack = slot.insert(ack);
            let answered = match deadline_at {
                None => ack.await,
                Some(at) => {
                    tokio::select! {
                        biased;
                        answer = &mut *ack => answer,
                        () = sleep_until_ms(at) => {
                            // Gives the wait up, unless it was answered meanwhile; the
                            // writer decides, so a message is never both taken and missed.
                            let expired = op.claim.ctx.store.expire(record);
                            *slot = Some(expired);
                            match slot.as_mut() {
                                Some(expired) => expired.await,
                                None => return pending().await,
                            }
                        }
                    }
                }
            };
            match answered {
                Ok(v) => v.map(ByteBuf),
                Err(e) => return op.stop(e.into()).await,
            }
        }
    };
    if let Some(u) = undelivered.as_mut() {
        u.delivered();
    }
    match answer {
        None => None,
        Some(bytes) => Some(or_stop!(op, op.decode::<T>(&bytes.0))),
    }
}

/// A transaction step: runs `f` in a transaction on the journal's own SQLite database,
/// and commits the step's checkpoint in that same transaction, so its writes happen
/// exactly once: a crash before the commit loses both, and a replay returns the
/// recorded result without running `f`.
///
/// `f` runs on the journal's writer thread while it holds the database's write lock:
/// keep it to a few statements. Create your own tables (any name not starting with
/// `durable_`) in the same file. If `f` returns `Err`, its writes are rolled back and
/// the `Err` is recorded (and replayed); if it panics, its writes are rolled back and
/// the workflow fails as for a panicking step. `f` must not end the transaction
/// itself.
///
/// Only the journal's file: SQLite does not commit a transaction atomically across
/// attached databases when the main one is in WAL mode, so a write to an attached file
/// could survive a crash without its checkpoint.
///
/// ```
/// use durable_runtime::{Runtime, transaction, workflow};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct DbError(String);
/// impl From<rusqlite::Error> for DbError {
///     fn from(e: rusqlite::Error) -> Self { DbError(e.to_string()) }
/// }
///
/// #[workflow]
/// async fn record_order(sku: String) -> Result<i64, DbError> {
///     transaction("insert_order", move |tx| {
///         tx.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, sku TEXT)", [])?;
///         tx.execute("INSERT INTO orders (sku) VALUES (?1)", [&sku])?;
///         Ok(tx.last_insert_rowid())
///     })
///     .await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let id = rt.start(record_order("tea".into())).await?.result().await?;
/// assert_eq!(id.unwrap(), 1);
/// # Ok(())
/// # }
/// ```
///
/// Outside a workflow there is no journal to write to: the future returns
/// `Err(E::from(..))` with a [`rusqlite::Error::ToSqlConversionFailure`] that wraps
/// [`Error::NotInWorkflow`].
pub fn transaction<T, E, F>(
    name: &'static str,
    f: F,
) -> impl Future<Output = Result<T, E>> + Send + 'static
where
    F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E> + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + From<rusqlite::Error> + Send + 'static,
{
    let claimed = claim(name);
    async move {
        let op = op_or!(
            claimed,
            Err(E::from(rusqlite::Error::ToSqlConversionFailure(Box::new(
                not_in_workflow(
                    "durable_runtime::transaction",
                    "a transaction step writes to the journal's database: call it in a `#[workflow]` body"
                )
            ))))
        );
        if let Some(recorded) = op.replayed::<Result<T, E>>() {
            return or_stop!(op, recorded);
        }
        if !op.may_run() {
            return pending().await;
        }
        let slot: Arc<Mutex<Option<Result<T, E>>>> = Arc::default();
        let out = slot.clone();
        let key = op.key();
        let codec = op.claim.ctx.codec;
        let label = format!("step {} (`{}`)", key.path, key.name);
        let work: crate::journal::sqlite::TxFn =
            Box::new(move |tx| {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx))) {
                    Ok(result) => {
                        let keep = result.is_ok();
                        let (back, bytes) = encode_checked(codec, &result).map_err(|e| {
                            format!("cannot encode the result of transaction {label}: {e}")
                        })?;
                        *lock(&out) = Some(back);
                        Ok((RecordedOutcome::Output(bytes), keep))
                    }
                    Err(payload) => Ok((
                        RecordedOutcome::Panicked(format!(
                            "{label} panicked: {}",
                            panic_message(&*payload)
                        )),
                        false,
                    )),
                }
            });
        let step = TxStep {
            key,
            started_at: now_ms(),
            work: TxWork::Sqlite(work),
        };
        or_stop!(op, op.acked(op.claim.ctx.store.transaction(step)).await);
        let result = lock(&slot).take();
        match result {
            Some(result) => result,
            None => {
                let error = Error::Failed {
                    workflow_id: op.claim.ctx.id.to_string(),
                    kind: FailureKind::StepPanicked,
                    message: format!("transaction step {} (`{name}`) panicked", op.claim.path),
                };
                op.stop(error).await
            }
        }
    }
}
