//! The owner's side of [`Client`](crate::Client) commands on a SQLite journal: the
//! runtime that holds the journal applies what clients in other processes recorded,
//! at its open and whenever a client rings (see `journal::sqlite::wake`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::registry::{Inner, validate_id};
use crate::error::{CancelReason, Error};
use crate::journal::command::{APPLIED, CommandKind, PendingCommand, outcome_of};
use crate::journal::sqlite::wake::Doorbell;
use crate::journal::{NewMessage, blocking};
use crate::util::now_ms;

/// The task that applies commands: all those waiting, then again each time a client
/// rings, until the runtime closes or is dropped.
pub(super) async fn command_loop(inner: Weak<Inner>, mut bell: Doorbell) {
    loop {
        {
            let Some(inner) = inner.upgrade() else { return };
            if inner.closing.load(Ordering::Acquire) {
                return;
            }
            inner.apply_commands().await;
        }
        bell.rung().await;
    }
}

/// Aborts the command task when the runtime goes, so that its socket's name is free
/// for the next runtime of this process.
#[derive(Debug)]
pub(super) struct CommandTask(pub(super) tokio::task::JoinHandle<()>);

impl Drop for CommandTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Inner {
    /// Applies every command waiting in the journal, in order. Stops at the first
    /// that cannot be recorded (the journal failed, or the runtime is closing): the
    /// next ring, or the next open, starts again from there.
    pub(super) async fn apply_commands(self: &Arc<Self>) {
        let store = self.store.clone();
        let pending = match blocking(self.store.path(), move || store.commands()).await {
            Ok(Ok(pending)) => pending,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "cannot read the commands clients recorded; trying again at the next one");
                return;
            }
        };
        for command in pending {
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let (seq, id, kind) = (command.seq, command.workflow_id.clone(), command.kind);
            let (outcome, send) = self.command_outcome(command).await;
            match self
                .acked(self.store.apply_command(seq, outcome.clone(), send))
                .await
            {
                Ok(_) => tracing::info!(
                    workflow = %id,
                    command = kind.map_or("damaged", CommandKind::as_str),
                    outcome = %outcome,
                    "applied a client's command"
                ),
                Err(e) => {
                    tracing::warn!(workflow = %id, error = %e, "cannot record a client's command as applied; it is applied again later");
                    return;
                }
            }
        }
    }

    /// Applies `command` (except a send, whose message goes with its outcome, in one
    /// transaction): its outcome, and the message to send.
    async fn command_outcome(
        self: &Arc<Self>,
        command: PendingCommand,
    ) -> (String, Option<NewMessage>) {
        let damaged = || {
            (
                "damaged:the command's row in durable_commands does not match its checksum, so it was not applied".to_owned(),
                None,
            )
        };
        let (true, Some(kind)) = (command.intact, command.kind) else {
            return damaged();
        };
        let id = command.workflow_id;
        let done = |r: Result<(), Error>| match r {
            Ok(()) => (APPLIED.to_owned(), None),
            Err(e) => (outcome_of(&e), None),
        };
        match kind {
            CommandKind::Send => {
                let (Some(topic), Some(payload)) = (command.topic, command.payload) else {
                    return damaged();
                };
                match validate_id(id) {
                    Ok(destination) => (
                        APPLIED.to_owned(),
                        Some(NewMessage {
                            destination,
                            topic,
                            payload,
                            sent_at: now_ms(),
                        }),
                    ),
                    Err(e) => (outcome_of(&e), None),
                }
            }
            CommandKind::Cancel => done(self.cancel_by_id(&id).await),
            CommandKind::Resume => done(self.resume(&id).await),
            CommandKind::Start => {
                let (Some(name), Some(input)) = (command.topic, command.payload) else {
                    return damaged();
                };
                done(self.start_named(&id, &name, input).await)
            }
            CommandKind::Fork => {
                let (Some(from), Some(new_id)) = (command.from_step, command.new_id) else {
                    return damaged();
                };
                done(self.fork(&id, &from, &new_id).await)
            }
        }
    }

    /// Starts workflow `id` as a run of the workflow named `name` with the encoded
    /// `input` (a client's start), unless `id` exists: then nothing happens if it is a
    /// run of `name`.
    pub(super) async fn start_named(
        self: &Arc<Self>,
        id: &str,
        name: &str,
        input: Vec<u8>,
    ) -> Result<(), Error> {
        let id = validate_id(id.to_owned())?;
        let Some(def) = self.registry.get(name).copied() else {
            return Err(Error::UnknownWorkflow {
                workflow_id: id,
                name: name.to_owned(),
            });
        };
        if let Err((reason, ty)) = def.accepts(&input) {
            return Err(Error::Command {
                workflow_id: id,
                reason: format!(
                    "the input does not decode as the arguments of workflow `{name}`, `{ty}` \
                     (give them as a tuple, `(a,)` for one): {reason}"
                ),
            });
        }
        let launch = crate::engine::workflow::Launch {
            def,
            input,
            parent_id: None,
            deadline_at: None,
        };
        self.start(Arc::from(id), launch).await.map(drop)
    }

    /// Cancels `id` and its pending descendants ([`Runtime::cancel`](crate::Runtime::cancel),
    /// and a client's command): cancelling a finished workflow does nothing.
    pub(super) async fn cancel_by_id(&self, id: &str) -> Result<(), Error> {
        if self.cancel_recorded(id, CancelReason::Requested).await? {
            return Ok(());
        }
        // Not pending: finished already (cancelling it does nothing), or not there.
        match self.record(id).await? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound {
                workflow_id: id.to_owned(),
            }),
        }
    }
}
