//! The command table (`durable_commands`, schema version 12): what clients in other
//! processes ask of the runtime that owns the journal (see
//! [`command`](crate::journal::command)).

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::Writer;
use crate::journal::NewMessage;
use crate::journal::command::{CommandKind, PendingCommand, command_crc};

/// The commands not applied yet, oldest first.
pub(super) fn pending(c: &Connection) -> rusqlite::Result<Vec<PendingCommand>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, kind, workflow_id, topic, payload, crc32, from_step, new_id
         FROM durable_commands WHERE applied_at IS NULL ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let kind: String = r.get(1)?;
        let workflow_id: String = r.get(2)?;
        let topic: Option<String> = r.get(3)?;
        let payload: Option<Vec<u8>> = r.get(4)?;
        let crc: i64 = r.get(5)?;
        let from_step: Option<String> = r.get(6)?;
        let new_id: Option<String> = r.get(7)?;
        let fork = from_step.as_deref().zip(new_id.as_deref());
        let intact = i64::from(command_crc(
            &kind,
            &workflow_id,
            topic.as_deref(),
            fork,
            payload.as_deref(),
        )) == crc;
        Ok(PendingCommand {
            seq: r.get(0)?,
            kind: CommandKind::parse(&kind),
            workflow_id,
            topic,
            payload,
            from_step,
            new_id,
            intact,
        })
    })?;
    rows.collect()
}

/// Records a command (a client's write); answers its number.
pub(crate) fn insert(
    c: &Connection,
    kind: CommandKind,
    workflow_id: &str,
    topic: Option<&str>,
    fork: Option<(&str, &str)>,
    payload: Option<&[u8]>,
    at: i64,
) -> rusqlite::Result<i64> {
    let crc = command_crc(kind.as_str(), workflow_id, topic, fork, payload);
    let (from_step, new_id) = fork.unzip();
    c.prepare_cached(
        "INSERT INTO durable_commands
             (kind, workflow_id, topic, payload, crc32, created_at, from_step, new_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        kind.as_str(),
        workflow_id,
        topic,
        payload,
        crc,
        at,
        from_step,
        new_id
    ])?;
    Ok(c.last_insert_rowid())
}

/// The outcome recorded for command `seq`: `None` while it waits; `Some(None)` if the
/// row is gone (the journal was replaced, or the row deleted by hand).
pub(crate) fn outcome(c: &Connection, seq: i64) -> rusqlite::Result<Option<Option<String>>> {
    let row: Option<Option<String>> = c
        .prepare_cached("SELECT outcome FROM durable_commands WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()?;
    Ok(match row {
        None => Some(None),
        Some(None) => None,
        Some(Some(outcome)) => Some(Some(outcome)),
    })
}

impl Writer {
    /// Records `outcome` for command `seq` unless it has one, and then sends `send`
    /// (in the batch's transaction): answers whether it did. The payload goes from the
    /// command's row (the message holds it now; a large one is not kept twice).
    pub(super) fn apply_command(
        &mut self,
        seq: i64,
        outcome: &str,
        send: Option<&NewMessage>,
        at: i64,
    ) -> rusqlite::Result<bool> {
        let marked = self
            .conn
            .prepare_cached(
                "UPDATE durable_commands SET applied_at = ?2, outcome = ?3, payload = NULL
                 WHERE seq = ?1 AND applied_at IS NULL",
            )?
            .execute(params![seq, at, outcome])?;
        if marked == 0 {
            return Ok(false);
        }
        if let Some(m) = send {
            self.insert_message(m)?;
        }
        Ok(true)
    }
}
