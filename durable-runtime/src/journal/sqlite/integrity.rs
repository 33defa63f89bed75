//! Damage the journal's checksums cannot see: the pending-workflows index checked
//! against the rows it points at (at every open), and SQLite's full integrity check
//! with the journal's own checksums, reported per workflow (on demand).

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::sql_error;
use crate::error::{Error, StoreError, StoreErrorKind};

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
    let problems = pending_index_problems(conn).map_err(|e| sql_error(path, e))?;
    if problems.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        journal = %path.display(),
        problems = ?problems,
        "the journal's index of pending workflows disagrees with the workflows' rows \
         (damaged on disk?); rebuilding it from the rows"
    );
    conn.execute_batch(&format!("REINDEX {PENDING_INDEX};"))
        .map_err(|e| damaged(path, &problems, &e.to_string()))?;
    let left = pending_index_problems(conn).map_err(|e| sql_error(path, e))?;
    if left.is_empty() {
        return Ok(());
    }
    Err(damaged(path, &left, "rebuilding the index did not help"))
}

/// What is wrong between the pending index and the rows, in words; empty if nothing.
fn pending_index_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
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
    Ok(problems)
}

/// The error for a journal whose rows are damaged: `problems`, then `detail`.
fn damaged(path: &Path, problems: &[String], detail: &str) -> Error {
    StoreError::new(
        path,
        StoreErrorKind::NotAJournal,
        format!(
            "the journal is damaged: its index of pending workflows disagrees with the rows \
             ({}); {detail}. Restore the file from a backup, or look at it with \
             `JournalView::check`",
            problems.join("; ")
        ),
    )
    .into()
}
