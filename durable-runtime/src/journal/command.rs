//! Commands from other processes: what a [`Client`](crate::Client) asks of the runtime
//! that owns a journal, recorded in the journal until that runtime applies it.
//!
//! A command is a row: the client writes it (nothing else), and the owner applies it
//! and records its outcome. The outcome is short text, so that a client of another
//! build still reads it:
//!
//! | outcome | meaning |
//! |---|---|
//! | `ok` | applied |
//! | `not_found` | the journal has no such workflow |
//! | `not_resumable:<status>` | a resume of a workflow that is `pending` or `completed` |
//! | `unknown_workflow:<name>` | a resume, fork or start of a workflow the owner's program does not link |
//! | `mismatch:<name>` | a start whose id a workflow of another name (`<name>`) has |
//! | `id_taken:<origin>` | a fork whose new id a workflow has that is not a fork of `<origin>` |
//! | `invalid:<message>` | refused as it was asked (a malformed id, for instance) |
//! | `damaged:<message>` | the command's row fails its checksum; nothing was done |
//! | `error:<message>` | applying it failed; nothing was done |

use crate::error::Error;
use crate::journal::crc::keyed_crc32;

/// What a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandKind {
    /// Send a message (`topic`, `payload`) to the workflow.
    Send,
    /// Cancel the workflow ([`Runtime::cancel`](crate::Runtime::cancel)).
    Cancel,
    /// Resume the workflow ([`Runtime::resume`](crate::Runtime::resume)).
    Resume,
    /// Fork the workflow ([`Runtime::fork`](crate::Runtime::fork)) before `from_step`,
    /// as `new_id`.
    Fork,
    /// Start the workflow: the workflow named `topic` with the input `payload`, as
    /// [`Runtime::start_with_id`](crate::Runtime::start_with_id) would.
    Start,
}

impl CommandKind {
    /// The kind as the journal writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CommandKind::Send => "send",
            CommandKind::Cancel => "cancel",
            CommandKind::Resume => "resume",
            CommandKind::Fork => "fork",
            CommandKind::Start => "start",
        }
    }

    /// The kind the journal wrote as `text`.
    pub(crate) fn parse(text: &str) -> Option<CommandKind> {
        match text {
            "send" => Some(CommandKind::Send),
            "cancel" => Some(CommandKind::Cancel),
            "resume" => Some(CommandKind::Resume),
            "fork" => Some(CommandKind::Fork),
            "start" => Some(CommandKind::Start),
            _ => None,
        }
    }
}

/// A command as the journal holds it, not applied yet.
#[derive(Debug, Clone)]
pub(crate) struct PendingCommand {
    /// Its number: commands are applied in this order.
    pub(crate) seq: i64,
    /// `None` if the row names no kind this build knows (a damaged row).
    pub(crate) kind: Option<CommandKind>,
    pub(crate) workflow_id: String,
    pub(crate) topic: Option<String>,
    pub(crate) payload: Option<Vec<u8>>,
    /// A fork's step and new id.
    pub(crate) from_step: Option<String>,
    pub(crate) new_id: Option<String>,
    /// Whether the row matches its checksum.
    pub(crate) intact: bool,
}

/// The checksum of a command's row: its kind, workflow id and topic (a fork's: its
/// step and new id) as the key, its payload as the value.
pub(crate) fn command_crc(
    kind: &str,
    workflow_id: &str,
    topic: Option<&str>,
    fork: Option<(&str, &str)>,
    payload: Option<&[u8]>,
) -> u32 {
    let value = payload.unwrap_or_default();
    match fork {
        Some((from, new_id)) => keyed_crc32(
            &[
                kind.as_bytes(),
                workflow_id.as_bytes(),
                from.as_bytes(),
                new_id.as_bytes(),
            ],
            value,
        ),
        None => keyed_crc32(
            &[
                kind.as_bytes(),
                workflow_id.as_bytes(),
                topic.unwrap_or_default().as_bytes(),
            ],
            value,
        ),
    }
}

/// The outcome recorded for a command that was applied.
pub(crate) const APPLIED: &str = "ok";

/// The outcome the owner records for a command that failed with `e`.
pub(crate) fn outcome_of(e: &Error) -> String {
    match e {
        Error::NotFound { .. } => "not_found".to_owned(),
        Error::NotResumable { status, .. } => format!("not_resumable:{status}"),
        Error::UnknownWorkflow { name, .. } => format!("unknown_workflow:{name}"),
        Error::IdTaken { origin, .. } => format!("id_taken:{origin}"),
        Error::WorkflowMismatch { existing, .. } => format!("mismatch:{existing}"),
        Error::InvalidId { .. } | Error::Encode { .. } => format!("invalid:{e}"),
        Error::Command { reason, .. } => format!("invalid:{reason}"),
        other => format!("error:{other}"),
    }
}

/// The error a client reports for workflow `id` from the outcome `outcome` the owner
/// recorded (`requested`: the workflow a start asked for); `None` for [`APPLIED`].
pub(crate) fn error_of(id: &str, outcome: &str, requested: Option<&str>) -> Option<Error> {
    let workflow_id = id.to_owned();
    let (head, rest) = outcome.split_once(':').unwrap_or((outcome, ""));
    Some(match head {
        APPLIED => return None,
        "not_found" => Error::NotFound { workflow_id },
        "not_resumable" => Error::NotResumable {
            workflow_id,
            status: match rest {
                "pending" => "pending",
                "completed" => "completed",
                "failed" => "failed",
                "cancelled" => "cancelled",
                _ => "in another state",
            },
        },
        "unknown_workflow" => Error::UnknownWorkflow {
            workflow_id,
            name: rest.to_owned(),
        },
        "id_taken" => Error::IdTaken {
            workflow_id,
            origin: rest.to_owned(),
        },
        "mismatch" if requested.is_some() => Error::WorkflowMismatch {
            workflow_id,
            existing: rest.to_owned(),
            requested: requested.unwrap_or_default().to_owned(),
        },
        _ => Error::Command {
            workflow_id,
            reason: if rest.is_empty() {
                outcome.to_owned()
            } else {
                rest.to_owned()
            },
        },
    })
}
