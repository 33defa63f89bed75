//! The workflow primitives that are not user steps: durable time and randomness,
//! messages, events, version patches, children and select, one file each, and the
//! claim-replay-record path they all share ([`Op`]). Transaction steps are in
//! [`crate::sqlite`].
//!
//! Each is a journaled operation. Like a step, it claims its position when it is
//! *called* (so it replays deterministically under concurrency) and records its result
//! under a name starting with `durable::`, which user steps cannot take. On replay it
//! returns the recorded result instead of doing its work again.

use std::future::pending;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::fingerprint::{self, Args};
use crate::codec::{Codec, Fingerprint, nested};
use crate::engine::replay::{Found, claim_recorded, encode_value};
use crate::engine::scope::{self, Claim};
use crate::error::{Error, Location, Result, undecodable};
use crate::journal::{Ack, Effect, RecordedOutcome, StepKey, StepRecord};
use crate::path::StepPath;
use crate::util::now_ms;

pub(crate) mod child;
pub(crate) mod events;
pub(crate) mod messages;
pub(crate) mod patch;
pub(crate) mod random;
pub(crate) mod select;
pub(crate) mod time;
pub(crate) mod transaction;
pub(crate) mod waits;

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

    /// The operation's span, made by `make` from its path and whether it is replayed;
    /// none outside a running workflow.
    pub(crate) fn span(
        &self,
        make: impl FnOnce(&StepPath, bool) -> tracing::Span,
    ) -> tracing::Span {
        match self {
            Claimed::Op(op) => make(&op.claim.path, op.recorded.is_some()),
            _ => tracing::Span::none(),
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
        Found::Stopped => return Claimed::Stopped,
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
        Some(outcome.result(&self.claim.ctx.id, &self.claim.path, self.name))
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
        let _busy = ctx.busy();
        let ack = ctx.store.record_step(StepRecord {
            workflow_id: ctx.id.clone(),
            path: self.claim.path.clone(),
            name: self.name,
            args: self.args,
            outcome: RecordedOutcome::Output(output),
            attempts: 1,
            started_at,
            finished_at: now_ms(),
            attempt_times: None,
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
        let _busy = self.claim.ctx.busy();
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

pub(crate) fn millis(d: Duration) -> i64 {
    // Rounded up: a durable sleep never ends early.
    i64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// Waits until the wall clock reads `at` (ms since the epoch); never returns earlier.
pub(crate) async fn sleep_until_ms(at: i64) {
    loop {
        let left = at.saturating_sub(now_ms());
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0))).await;
    }
}

pub(crate) fn not_in_workflow(operation: &'static str, hint: &'static str) -> Error {
    Error::NotInWorkflow { operation, hint }
}
