//! The replay rules, each written once: how a call is compared with what the journal
//! recorded at its position (a recorded outcome becomes the call's result through
//! [`RecordedOutcome::result`], next to the record type).
//! Steps and every workflow primitive go through these, and through the one way a value
//! is encoded for the journal.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Fingerprint};
use crate::engine::scope::Claim;
use crate::error::{ArgumentsChanged, Error, Result};
use crate::journal::{RecordedOutcome, RecordedStep};

/// What the journal holds at a claimed position, for a call of operation `name` with
/// arguments fingerprinted as `args`.
pub(crate) enum Found {
    /// Nothing: the call does its work and records it.
    Nothing,
    /// The call's recorded outcome: the call returns it without doing its work again.
    Recorded(RecordedOutcome),
    /// Another operation, or this one with other arguments (the workflow has stopped
    /// with [`Error::Divergence`]), or a journal that could not be read (it has
    /// stopped with that error): the call never completes.
    Stopped,
}

/// Takes what an earlier execution recorded at `claim`'s position and compares it with
/// this call: the operation's `name`, and its arguments' fingerprint when both sides
/// have one (rows from before schema 4, and operations without arguments, have none).
/// `preview` renders the arguments for the error message. On a divergence the workflow
/// is stopped with the error.
pub(crate) fn claim_recorded(
    claim: &Claim,
    name: &str,
    args: Option<Fingerprint>,
    preview: impl FnOnce() -> String,
) -> Found {
    let recorded = match claim.ctx.take_recorded(&claim.path) {
        Ok(Some(recorded)) => recorded,
        Ok(None) => return Found::Nothing,
        Err(e) => {
            claim.ctx.fail(Error::Store(e));
            return Found::Stopped;
        }
    };
    match divergence(claim, name, &recorded, args, preview) {
        None => Found::Recorded(recorded.outcome),
        Some(e) => {
            claim.ctx.fail(e);
            Found::Stopped
        }
    }
}

fn divergence(
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

/// Encodes a value for the journal, checking that it round-trips.
pub(crate) fn encode_value<T: Serialize + DeserializeOwned>(
    codec: Codec,
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<Vec<u8>> {
    crate::codec::encode_checked(codec, value)
        .map(|(_, bytes)| bytes)
        .map_err(|reason| Error::Encode {
            what: what(),
            reason,
        })
}
