//! Damage the journal's checksums cannot see: the pending-workflows index checked
//! against the rows it points at and the messages' table and index checked by SQLite
//! (at every open), and SQLite's full integrity check
//! with the journal's own checksums, reported per workflow (on demand).

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::rows::checks;
use super::sql_error;
use crate::error::{Error, StoreError, StoreErrorKind};
use crate::journal::Damage;

/// The index recovery finds pending workflows through.
const PENDING_INDEX: &str = "durable_workflows_pending";

/// Checks every entry of the pending-workflows index against the row it points at:
/// the row exists, is pending, was created when the entry says, and no two entries
/// point at it. Costs one row read per pending workflow, so an open stays as fast as
/// the pending work is small.
///
/// An index that disagrees with its rows could hide a pending workflow (never resumed)
/// or relaunch a finished one. The rows are the record and the index only a copy of
/// part of them, so it is rebuilt from them, with a warning; if it still disagrees,
/// the damage is in the rows, and the journal is refused.
pub(super) fn verify_pending_index(conn: &Connection, path: &Path) -> Result<(), Error> {
    let (problems, rows_damaged) =
        pending_index_problems(conn).map_err(|e| Error::from(sql_error(path, e)))?;
    if problems.is_empty() {
        return Ok(());
    }
    if rows_damaged {
        // The index is right about a row whose status durable never wrote: rebuilding
        // the index from the rows would drop the entry, and hide the workflow.
        return Err(damaged(path, &problems, "the rows themselves are damaged"));
    }
    tracing::warn!(
        journal = %path.display(),
        problems = ?problems,
        "the journal's index of pending workflows disagrees with the workflows' rows \
         (damaged on disk?); rebuilding it from the rows"
    );
    conn.execute_batch(&format!("REINDEX {PENDING_INDEX};"))
        .map_err(|e| damaged(path, &problems, &e.to_string()))?;
    let (left, _) = pending_index_problems(conn).map_err(|e| Error::from(sql_error(path, e)))?;
    if left.is_empty() {
        return Ok(());
    }
    Err(damaged(path, &left, "rebuilding the index did not help"))
}

/// What is wrong between the pending index and the rows, in words (empty if nothing),
/// and whether a row itself is damaged (a status durable never writes).
fn pending_index_problems(conn: &Connection) -> rusqlite::Result<(Vec<String>, bool)> {
    // One read transaction for the whole check: each statement run outside one takes
    // and lets go of SQLite's locks (system calls), which with 100,000 pending
    // workflows was a third of the time an open took. Rolled back: it writes nothing.
    let conn = conn.unchecked_transaction()?;
    // Covering: the entries as the index holds them, without reading the table.
    let mut entries = conn.prepare_cached(&format!(
        "SELECT created_at, rowid FROM durable_workflows INDEXED BY {PENDING_INDEX}
          WHERE status = 'pending'"
    ))?;
    let mut row = conn.prepare_cached(
        "SELECT id, status, created_at FROM durable_workflows NOT INDEXED WHERE rowid = ?1",
    )?;
    let mut seen = HashSet::new();
    let mut problems = Vec::new();
    let mut rows_damaged = false;
    let listed = entries
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (created_at, rowid) in listed {
        if !seen.insert(rowid) {
            problems.push(format!("row {rowid} is listed twice"));
            continue;
        }
        let found = row
            .query_row([rowid], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        match found {
            None => problems.push(format!("row {rowid} does not exist")),
            Some((id, status, _))
                if !["pending", "completed", "failed", "cancelled"].contains(&status.as_str()) =>
            {
                rows_damaged = true;
                problems.push(format!(
                    "workflow `{id}` (row {rowid}) has status `{status}`, which durable never \
                     writes"
                ));
            }
            Some((id, status, _)) if status != "pending" => {
                problems.push(format!(
                    "workflow `{id}` (row {rowid}) is {status}, not pending"
                ));
            }
            Some((id, _, at)) if at != created_at => problems.push(format!(
                "workflow `{id}` (row {rowid}) was created at {at}, the index says {created_at}"
            )),
            Some(_) => {}
        }
    }
    Ok((problems, rows_damaged))
}

/// The index `recv` finds a workflow's messages through.
const MESSAGE_INDEX: &str = "durable_messages_queue";

/// Checks the table of messages not yet received, and its index, with SQLite's
/// integrity check of that table alone (it is as small as the messages in flight).
///
/// A damaged entry of the index hides a message: a `recv` would wait for ever for a
/// message that was sent, and the send reported as done. A damaged index is rebuilt
/// from the rows, with a warning; if the check still fails, the rows are damaged, and
/// the journal is refused.
pub(super) fn verify_message_index(conn: &Connection, path: &Path) -> Result<(), Error> {
    let problems = message_problems(conn).map_err(|e| Error::from(sql_error(path, e)))?;
    if problems.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        journal = %path.display(),
        problems = ?problems,
        "the journal's index of messages disagrees with the messages (damaged on disk?); \
         rebuilding it from the messages"
    );
    let rebuilt = conn.execute_batch(&format!("REINDEX {MESSAGE_INDEX};"));
    let left = message_problems(conn).map_err(|e| Error::from(sql_error(path, e)))?;
    if rebuilt.is_ok() && left.is_empty() {
        return Ok(());
    }
    let left = if left.is_empty() { problems } else { left };
    Err(StoreError::new(
        path,
        StoreErrorKind::Damaged,
        format!(
            "the journal is damaged: its table of messages not yet received is ({}), and \
             rebuilding its index did not help. Restore the file from a backup, or look at \
             it with `JournalView::check`",
            left.join("; ")
        ),
    )
    .into())
}

/// What SQLite's integrity check of `durable_messages` (and its index) finds, empty
/// if nothing.
fn message_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check(durable_messages)")?;
    let found = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(found.into_iter().filter(|f| f != "ok").collect())
}

/// The error for a journal whose rows are damaged: `problems`, then `detail`.
fn damaged(path: &Path, problems: &[String], detail: &str) -> Error {
    StoreError::new(
        path,
        StoreErrorKind::Damaged,
        format!(
            "the journal is damaged: its index of pending workflows disagrees with the rows \
             ({}); {detail}. Restore the file from a backup, or look at it with \
             `JournalView::check`",
            problems.join("; ")
        ),
    )
    .into()
}

/// Looks for damage everywhere in the journal `conn` reads: SQLite's `integrity_check`
/// (every page, every index against its table), then every recorded value against its
/// checksum and every step against its workflow. A table too damaged to read is
/// reported, and the check goes on with the next. Runs in one read transaction (one
/// snapshot) if the journal lets one begin; a journal too damaged for that is still
/// checked, and every failure is a finding, never an error.
pub(crate) fn check(conn: &Connection) -> Vec<Damage> {
    let began = conn.execute_batch("BEGIN").is_ok();
    let mut found = Vec::new();
    sqlite_check(conn, &mut found);
    for (sql, what) in VALUE_CHECKS {
        if let Err(e) = checksums(conn, sql, &mut found) {
            found.push(Damage::new(None, format!("cannot read the {what}: {e}")));
        }
    }
    if began {
        // Nothing was written: ending the read cannot lose anything.
        let _ = conn.execute_batch("COMMIT");
    }
    found
}

/// SQLite's own `integrity_check`, one [`Damage`] per line it reports (at most 1,000).
fn sqlite_check(conn: &Connection, found: &mut Vec<Damage>) {
    let lines = conn
        .prepare("PRAGMA integrity_check(1000)")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    match lines {
        Ok(lines) if lines == ["ok"] => {}
        Ok(lines) => {
            for line in lines {
                let id = workflow_of_row(conn, &line);
                found.push(Damage::new(id.as_deref(), format!("SQLite: {line}")));
            }
        }
        Err(e) => found.push(Damage::new(None, format!("SQLite cannot check it: {e}"))),
    }
}

/// The workflow of an `integrity_check` line about a row of `durable_workflows` (such
/// as `row 12 missing from index durable_workflows_pending`), if the row still reads.
fn workflow_of_row(conn: &Connection, line: &str) -> Option<String> {
    if !line.contains("durable_workflows") {
        return None;
    }
    let rest = line.split("row ").nth(1)?;
    let rowid: i64 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    conn.query_row(
        "SELECT id FROM durable_workflows NOT INDEXED WHERE rowid = ?1",
        [rowid],
        |r| r.get(0),
    )
    .ok()
}

/// A query of [`VALUE_CHECKS`] that finds the rows of `$table` whose run is no
/// workflow's, each named by `$what` (SQL over the row, `r`) and "of run N".
macro_rules! orphans_of {
    ($table:literal, $what:literal) => {
        concat!(
            "SELECT NULL, ",
            $what,
            " || ' of run ' || r.run || ' belongs to no workflow', NULL, NULL, NULL, NULL, NULL
               FROM ",
            $table,
            " r WHERE NOT EXISTS (SELECT 1 FROM durable_workflows w WHERE w.run = r.run)"
        )
    };
}

/// The checksummed values: a query yielding, for each, the workflow it belongs to (NULL
/// for none),
/// what it is, the one to three parts of the key it is checksummed with (see
/// [`keyed_crc32`](crate::journal::crc::keyed_crc32); NULL for an absent part), the value and
/// its checksum; and what its rows are called. Rows from before schema 2 have no
/// checksum.
const VALUE_CHECKS: &[(&str, &str)] = &[
    (
        "SELECT id, 'its input', id, NULL, NULL, input, input_crc32
           FROM durable_workflows NOT INDEXED
         UNION ALL
         SELECT id, 'its output', id, NULL, NULL, output, output_crc32
           FROM durable_workflows NOT INDEXED WHERE output IS NOT NULL",
        "workflows",
    ),
    (
        "SELECT w.id, 'the result of step ' || s.path || ' (' || s.name || ')',
                w.id, s.path, s.name, COALESCE(s.output, CAST(s.error AS BLOB)), s.crc32
           FROM durable_steps s JOIN durable_workflows w ON w.run = s.run",
        "steps",
    ),
    (
        "SELECT w.id, 'the start record of step ' || t.path || ' (' || t.name || ')',
                w.id, t.path, t.name,
                CAST(t.started_at || COALESCE(':' || t.wake_at, '') AS BLOB), t.crc32
           FROM durable_started t JOIN durable_workflows w ON w.run = t.run",
        "start records",
    ),
    (
        "SELECT w.id, 'the patch marker ' || p.name || ' at ' || p.path,
                w.id, p.path, p.name, x'', p.crc32
           FROM durable_patches p JOIN durable_workflows w ON w.run = p.run",
        "patch markers",
    ),
    (
        "SELECT destination, 'message ' || seq || ' on topic ' || topic,
                destination, topic, NULL, payload, crc32
           FROM durable_messages",
        "messages",
    ),
    (
        "SELECT w.id, 'event ' || e.key, w.id, e.key, NULL, e.value, e.crc32
           FROM durable_events e JOIN durable_workflows w ON w.run = e.run",
        "events",
    ),
    (
        orphans_of!(
            "durable_steps",
            "'step ' || r.path || ' (' || r.name || ')'"
        ),
        "steps",
    ),
    (orphans_of!("durable_events", "'event ' || r.key"), "events"),
    (
        orphans_of!("durable_started", "'the start record of step ' || r.path"),
        "start records",
    ),
    (
        orphans_of!("durable_patches", "'the patch marker ' || r.name"),
        "patch markers",
    ),
];

/// Runs one of [`VALUE_CHECKS`], adding a [`Damage`] for every value whose checksum
/// does not match, and every row the query selects without a value (its finding).
/// Every column is read as the bytes stored, so that one row durable could not have
/// written (text that is not UTF-8, a number where a text belongs) is reported as
/// damaged and the rows after it are still checked.
fn checksums(conn: &Connection, sql: &str, found: &mut Vec<Damage>) -> rusqlite::Result<()> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let bytes = |i| -> rusqlite::Result<Option<&[u8]>> {
            Ok(match row.get_ref(i)? {
                ValueRef::Text(b) | ValueRef::Blob(b) => Some(b),
                _ => None,
            })
        };
        let text = |i| -> rusqlite::Result<String> {
            Ok(bytes(i)?
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned())
        };
        // NULL for a row that belongs to no workflow.
        let id = bytes(0)?.map(|_| text(0)).transpose()?;
        let thing = text(1)?;
        let key: Vec<&[u8]> = [bytes(2)?, bytes(3)?, bytes(4)?]
            .into_iter()
            .flatten()
            .collect();
        // A checksum durable wrote is NULL (rows older than schema 2) or a u32.
        let crc = match row.get_ref(6)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(c) => u32::try_from(c).map(Some).map_err(|_| ()),
            _ => Err(()),
        };
        let damaged = match (bytes(5)?, crc) {
            (None, _) if row.get_ref(5)? == ValueRef::Null => Some(thing),
            (None, _) => Some(format!("{thing} is not a value durable wrote")),
            (Some(_), Err(())) => Some(format!("{thing} has a checksum durable never writes")),
            (Some(_), _) if key.iter().any(|k| std::str::from_utf8(k).is_err()) => {
                Some(format!("{thing} is recorded under a key that is not UTF-8"))
            }
            (Some(v), Ok(crc)) if !checks(&key, v, crc) => {
                Some(format!("{thing} does not match its checksum"))
            }
            (Some(_), Ok(_)) => None,
        };
        if let Some(what_is) = damaged {
            found.push(Damage::new(id.as_deref(), what_is));
        }
    }
    Ok(())
}
