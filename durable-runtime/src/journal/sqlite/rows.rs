//! Reading rows back: the queries of workflow runs, steps and side records, and the
//! checks every row goes through before its values are used. Free functions of a
//! connection, so the store's reader and [`JournalView`](super::view::JournalView) read
//! the journal the same way.

use rusqlite::{Connection, OptionalExtension, Params, Row, params};

use super::ops::INTERRUPTED;
use crate::codec::Fingerprint;
use crate::error::{CancelReason, FailureKind, Location};
use crate::journal::crc::{
    event_key, keyed_crc32, message_key, started_value, step_key, workflow_key,
};
use crate::journal::queue::QueueState;
use crate::journal::{
    RecordStatus, RecordedOutcome, RecordedStep, SideRecords, StartedRecord, WorkflowRecord,
};
use crate::path::StepPath;

/// The columns [`workflow_row`] reads, in its order, for `concat!`.
macro_rules! workflow_columns {
    () => {
        "id, name, status, input, output, error_kind, error, input_crc32, output_crc32, \
         deadline_at, parent_id, queue_state"
    };
}
pub(super) use workflow_columns;

/// The columns [`workflow_row`] reads, in its order.
pub(super) const WORKFLOW_COLUMNS: &str = workflow_columns!();

/// Why a damaged value cannot be used.
pub(super) use crate::journal::DAMAGED;

pub(super) use crate::journal::crc::checks;

/// Checks a recorded value against its checksum (none in rows older than schema 2).
fn verify(
    key: &[&[u8]],
    bytes: &[u8],
    crc: Option<u32>,
    what: impl FnOnce() -> String,
) -> rusqlite::Result<()> {
    match crc {
        Some(crc) if crc != keyed_crc32(key, bytes) => Err(invalid(format!(
            "{} does not match its checksum: the journal is damaged (restore it from a backup, \
             or remove the workflow's rows to give it up)",
            what()
        ))),
        _ => Ok(()),
    }
}

/// Reads a workflow row. The inner `Result` rejects rows no runtime could have written
/// (an unknown status), which point at a damaged or hand-edited journal.
pub(super) fn workflow_row(r: &Row<'_>) -> rusqlite::Result<rusqlite::Result<WorkflowRecord>> {
    let id: String = r.get(0)?;
    let status: String = r.get(2)?;
    let status = match status.as_str() {
        "pending" => RecordStatus::Pending,
        "completed" => RecordStatus::Completed,
        "failed" => RecordStatus::Failed,
        "cancelled" => RecordStatus::Cancelled,
        other => {
            return Ok(Err(invalid(format!(
                "workflow {id} has unknown status `{other}`"
            ))));
        }
    };
    let kind: Option<String> = r.get(5)?;
    let error: Option<String> = r.get(6)?;
    let cancelled = match (status, kind.as_deref().map(CancelReason::parse)) {
        (RecordStatus::Cancelled, Some(Some(reason))) => Some(reason),
        (RecordStatus::Cancelled, _) => {
            return Ok(Err(invalid(format!(
                "workflow {id} is cancelled but records no known reason"
            ))));
        }
        _ => None,
    };
    let failure = match (status, kind, error) {
        (RecordStatus::Failed, Some(k), m) => match FailureKind::parse(&k) {
            Some(k) => Some((k, m.unwrap_or_default())),
            None => {
                return Ok(Err(invalid(format!(
                    "workflow {id} has unknown error kind `{k}`"
                ))));
            }
        },
        (RecordStatus::Failed, None, _) => {
            return Ok(Err(invalid(format!(
                "workflow {id} is failed but records no error kind"
            ))));
        }
        _ => None,
    };
    let input: Vec<u8> = r.get(3)?;
    let output: Option<Vec<u8>> = r.get(4)?;
    // A damaged value is reported for this workflow alone, when it is resumed or asked
    // for: the other workflows of the journal are not held up by it.
    let crc_output: Option<u32> = r.get(8)?;
    let damaged = if !checks(&workflow_key(&id), &input, r.get(7)?) {
        Some((Location::Input, DAMAGED.to_owned()))
    } else if !output
        .as_ref()
        .is_none_or(|o| checks(&workflow_key(&id), o, crc_output))
    {
        Some((Location::Output, DAMAGED.to_owned()))
    } else {
        None
    };
    let queue_state = match r.get::<_, Option<String>>(11)? {
        None => None,
        Some(s) => match QueueState::parse(&s) {
            Some(state) => Some(state),
            None => {
                return Ok(Err(invalid(format!(
                    "workflow {id} has unknown queue state `{s}`"
                ))));
            }
        },
    };
    Ok(Ok(WorkflowRecord {
        elsewhere: false,
        queue_state,
        damaged,
        cancelled,
        deadline_at: r.get(9)?,
        parent_id: r.get(10)?,
        name: r.get(1)?,
        status,
        input,
        output,
        failure,
        id,
    }))
}

/// A row no runtime could have written, as the error of its read.
pub(super) fn invalid(message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, message.into())
}

/// A read that the journal's damage sent astray, as the error of that read: it reaches
/// the user as [`StoreErrorKind::Damaged`](crate::StoreErrorKind::Damaged).
#[derive(Debug)]
pub(super) struct DamagedRow(pub(super) String);

impl std::fmt::Display for DamagedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DamagedRow {}

/// The error for a lookup of `what` that an index sent to the row of `found`: the
/// index disagrees with its table. A checksum cannot see this, since the row itself
/// is intact; its key is not the one asked for.
fn misdirected(what: &str, found: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(DamagedRow(format!(
            "the journal is damaged: looking up {what} found the row of {found} (an index \
             disagrees with its table); restore it from a backup"
        ))),
    )
}

/// `Ok` if a row looked up as workflow `asked`'s (`what` it is, such as `workflow
/// w-1`) belongs to workflow `found`, else the error of a misdirected lookup.
pub(super) fn same_workflow(asked: &str, found: &str, what: &str) -> rusqlite::Result<()> {
    if asked == found {
        Ok(())
    } else {
        Err(misdirected(what, &format!("workflow {found}")))
    }
}

/// `Ok(record)` if it is workflow `id`'s row, else the error of a misdirected lookup.
pub(super) fn own_row(id: &str, record: WorkflowRecord) -> rusqlite::Result<WorkflowRecord> {
    same_workflow(id, &record.id, &format!("workflow {id}"))?;
    Ok(record)
}

/// How many columns [`WORKFLOW_COLUMNS`] names: a query's extra columns start here.
pub(super) const WORKFLOW_COLUMN_COUNT: usize = 12;

/// Whether a workflow row's input and output (if it has one) match their checksums.
/// `r` is the row `w` was read from by [`workflow_row`]. Unlike `w.damaged`, which names
/// the first damaged value only, this checks both.
pub(super) fn workflow_values_intact(
    r: &Row<'_>,
    w: &WorkflowRecord,
) -> rusqlite::Result<(bool, bool)> {
    let (input_crc, output_crc) = (r.get(7)?, r.get(8)?);
    let output = w
        .output
        .as_ref()
        .is_none_or(|o| checks(&workflow_key(&w.id), o, output_crc));
    Ok((checks(&workflow_key(&w.id), &w.input, input_crc), output))
}

/// One workflow run, if the journal has it.
pub(super) fn workflow(c: &Connection, id: &str) -> rusqlite::Result<Option<WorkflowRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM durable_workflows WHERE id = ?1"
    ))?;
    stmt.query_row([id], workflow_row)
        .optional()?
        .transpose()?
        .map(|w| own_row(id, w))
        .transpose()
}

/// The workflow rows matching `filter` (a `WHERE` clause or nothing), oldest first.
pub(super) fn workflow_rows(c: &Connection, filter: &str) -> rusqlite::Result<Vec<WorkflowRecord>> {
    select_workflows(c, "", filter, [], |_, w| Ok(w))
}

/// The workflow rows matching `filter` (a `WHERE` clause or nothing, with its
/// `params`), oldest first, each read by [`workflow_row`] and then given to `map` with
/// its row, whose `extra` columns (`", a, b"`, or nothing) start at
/// [`WORKFLOW_COLUMN_COUNT`].
pub(super) fn select_workflows<T>(
    c: &Connection,
    extra: &str,
    filter: &str,
    params: impl Params,
    map: impl FnMut(&Row<'_>, WorkflowRecord) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let tail = format!("{filter} ORDER BY created_at, id");
    select_workflows_by(c, extra, &tail, params, map)
}

/// [`select_workflows`] with the statement's `tail` (its `WHERE`, `ORDER BY` and
/// `LIMIT`) given whole.
pub(super) fn select_workflows_by<T>(
    c: &Connection,
    extra: &str,
    tail: &str,
    params: impl Params,
    mut map: impl FnMut(&Row<'_>, WorkflowRecord) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {WORKFLOW_COLUMNS}{extra} FROM durable_workflows {tail}"
    ))?;
    let rows = stmt.query_map(params, |r| match workflow_row(r)? {
        Ok(w) => map(r, w).map(Ok),
        Err(e) => Ok(Err(e)),
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

/// What a read does with a step whose recorded result fails its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDamage {
    /// Fails the whole read: the runtime never replays a damaged value.
    Fail,
    /// Keeps the step, marked damaged (for looking at a journal, not replaying it).
    Mark,
}

/// A step as [`step_rows`] reads it.
#[derive(Debug)]
pub(super) struct StepRow {
    pub(super) step: RecordedStep,
    /// Whether its recorded result matches its checksum.
    pub(super) intact: bool,
}

/// The recorded steps of one workflow run in path order: those after `after` (all if
/// `None`), at most `limit` of them, in one query.
pub(super) fn steps(
    c: &Connection,
    workflow_id: &str,
    after: Option<&StepPath>,
    limit: usize,
) -> rusqlite::Result<Vec<RecordedStep>> {
    let rows = step_rows(c, workflow_id, after, limit, OnDamage::Fail)?;
    Ok(rows.into_iter().map(|s| s.step).collect())
}

/// The recorded steps of one workflow run in path order (the order of the table's
/// key, so nothing is sorted): those after `after`, at most `limit`, in one query;
/// `on_damage` says what a step whose result fails its checksum does to the read.
pub(super) fn step_rows(
    c: &Connection,
    workflow_id: &str,
    after: Option<&StepPath>,
    limit: usize,
    on_damage: OnDamage,
) -> rusqlite::Result<Vec<StepRow>> {
    let mut stmt = c.prepare_cached(concat!(
        "SELECT path, name, output, error, attempts, started_at, finished_at, crc32,
                error_kind, args_fingerprint, attempt_times
         FROM durable_steps WHERE run = ",
        run_of_first_parameter!(),
        " AND path > ?2 ORDER BY path LIMIT ?3",
    ))?;
    // Every key is longer than the empty one; a negative limit is no limit.
    let after = after.map(StepPath::to_key).unwrap_or_default();
    let limit = i64::try_from(limit).unwrap_or(-1);
    let rows = stmt.query_map(params![workflow_id, after, limit], |r| {
        let path: String = r.get(0)?;
        let output: Option<Vec<u8>> = r.get(2)?;
        let error: Option<String> = r.get(3)?;
        let Some(parsed) = StepPath::from_key(&path) else {
            return Ok(Err(invalid(format!(
                "workflow {workflow_id} has a step at `{path}`, which is not a step path"
            ))));
        };
        let value = output.as_deref().or(error.as_ref().map(String::as_bytes));
        let mut intact = true;
        let name: String = r.get(1)?;
        let key = step_key(workflow_id, &path, &name);
        if let Err(e) = verify(&key, value.unwrap_or_default(), r.get(7)?, || {
            format!("the recorded result of step {parsed} of workflow {workflow_id}")
        }) {
            match on_damage {
                OnDamage::Fail => return Ok(Err(e)),
                OnDamage::Mark => intact = false,
            }
        }
        let kind: Option<String> = r.get(8)?;
        let outcome = match (output, error) {
            (Some(o), None) => RecordedOutcome::Output(o),
            (None, Some(e)) if kind.as_deref() == Some(INTERRUPTED) => {
                RecordedOutcome::Interrupted(e)
            }
            (None, Some(e)) => RecordedOutcome::Panicked(e),
            _ => {
                return Ok(Err(invalid(format!(
                    "step {parsed} of workflow {workflow_id} records both or neither of output and error"
                ))));
            }
        };
        let args: Option<i64> = r.get(9)?;
        let step = RecordedStep {
            path: parsed,
            name,
            args: args.map(|a| Fingerprint(a as u64)),
            outcome,
            attempts: r.get(4)?,
            started_at: r.get(5)?,
            finished_at: r.get(6)?,
            attempt_times: r.get(10)?,
        };
        Ok(Ok(StepRow { step, intact }))
    })?;
    let mut steps = Vec::new();
    for row in rows {
        steps.push(row??);
    }
    Ok(steps)
}

/// A stored path key as users read paths (`3.b12` as `3.12`), or as stored if it is
/// not one.
fn shown(key: &str) -> String {
    StepPath::from_key(key).map_or_else(|| key.to_owned(), |p| p.to_string())
}

/// What one workflow run recorded beside its steps: start records and patch markers.
pub(super) fn side_records(c: &Connection, workflow_id: &str) -> rusqlite::Result<SideRecords> {
    let parse = |path: String, what: &str| {
        StepPath::from_key(&path).ok_or_else(|| {
            invalid(format!(
                "workflow {workflow_id} has a {what} at `{path}`, which is not a step path"
            ))
        })
    };
    let mut out = SideRecords::default();
    // Each row's checksum is keyed by the workflow asked for, so a row of another run
    // fails it; rows from before version 7 have none, so the id of the workflow each
    // one's run number names is also compared with the one asked for, so that a
    // damaged index cannot hand over another workflow's records.
    let own = |found: String| {
        same_workflow(
            workflow_id,
            &found,
            &format!("the side records of workflow {workflow_id}"),
        )
    };
    let mut stmt = c.prepare_cached(concat!(
        "SELECT t.path, t.wake_at, w.id, t.name, t.started_at, t.crc32
         FROM durable_started t JOIN durable_workflows w ON w.run = t.run
         WHERE t.run = ",
        run_of_first_parameter!(),
    ))?;
    let rows = stmt.query_map([workflow_id], |r| {
        let (path, wake_at, name): (String, Option<i64>, String) =
            (r.get(0)?, r.get(1)?, r.get(3)?);
        let value = started_value(r.get(4)?, wake_at);
        let checked = verify(
            &step_key(workflow_id, &path, &name),
            value.as_bytes(),
            r.get(5)?,
            || {
                let path = shown(&path);
                format!("the start record of step {path} ({name}) of workflow {workflow_id}")
            },
        );
        Ok((path, wake_at, r.get(2)?, checked))
    })?;
    for row in rows {
        let (path, wake_at, found, checked) = row?;
        checked?;
        own(found)?;
        out.started.push(StartedRecord {
            path: parse(path, "start record")?,
            wake_at,
        });
    }
    let mut stmt = c.prepare_cached(concat!(
        "SELECT p.path, p.name, w.id, p.crc32
         FROM durable_patches p JOIN durable_workflows w ON w.run = p.run
         WHERE p.run = ",
        run_of_first_parameter!(),
    ))?;
    let rows = stmt.query_map([workflow_id], |r| {
        let (path, name): (String, String) = (r.get(0)?, r.get(1)?);
        let checked = verify(&step_key(workflow_id, &path, &name), &[], r.get(3)?, || {
            let path = shown(&path);
            format!("the patch marker {name} at {path} of workflow {workflow_id}")
        });
        Ok((path, name, r.get(2)?, checked))
    })?;
    for row in rows {
        let (path, name, found, checked) = row?;
        checked?;
        own(found)?;
        out.patches.push((parse(path, "patch marker")?, name));
    }
    Ok(out)
}

/// A message waiting in its destination's queue.
#[derive(Debug)]
pub(super) struct MessageRow {
    pub(super) seq: i64,
    pub(super) destination: String,
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    /// Whether the payload matches its checksum.
    pub(super) intact: bool,
    pub(super) sent_at: i64,
}

/// Every queued message, in queue order (the order `recv` takes them, for each
/// destination and topic).
pub(super) fn messages(c: &Connection) -> rusqlite::Result<Vec<MessageRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, destination, topic, payload, crc32, sent_at FROM durable_messages
         ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        let payload: Vec<u8> = r.get(3)?;
        let (destination, topic): (String, String) = (r.get(1)?, r.get(2)?);
        Ok(MessageRow {
            seq: r.get(0)?,
            intact: checks(
                &message_key(&destination, &topic),
                &payload,
                Some(r.get(4)?),
            ),
            destination,
            topic,
            payload,
            sent_at: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// An event a workflow set.
#[derive(Debug)]
pub(super) struct EventRow {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    /// Whether the value matches its checksum.
    pub(super) intact: bool,
    pub(super) set_at: i64,
}

/// The events workflow `workflow_id` set, by key.
pub(super) fn events(c: &Connection, workflow_id: &str) -> rusqlite::Result<Vec<EventRow>> {
    let mut stmt = c.prepare_cached(concat!(
        "SELECT key, value, crc32, set_at FROM durable_events WHERE run = ",
        run_of_first_parameter!(),
        " ORDER BY key",
    ))?;
    let rows = stmt.query_map([workflow_id], |r| {
        let value: Vec<u8> = r.get(1)?;
        let key: String = r.get(0)?;
        Ok(EventRow {
            intact: checks(&event_key(workflow_id, &key), &value, Some(r.get(2)?)),
            key,
            value,
            set_at: r.get(3)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_count_matches_the_columns() {
        assert_eq!(
            WORKFLOW_COLUMNS.split(',').count(),
            WORKFLOW_COLUMN_COUNT,
            "{WORKFLOW_COLUMNS}"
        );
    }
}
