//! The PostgreSQL journal's writer: one connection, and batches of writes committed
//! together (group commit), their statements pipelined.
//!
//! A batch is every write queued when the writer takes the first: up to [`MAX_BATCH`].
//! Most writes are one statement each whose outcome needs no answer before the next is
//! sent (a step's record and its effect are one statement, with `ON CONFLICT DO
//! NOTHING` and the counts it returns standing in for a constraint's error). Such a
//! batch goes out as `BEGIN`, the fence, the writes and `COMMIT` at once: one round
//! trip; a step record alone in its batch goes out alone, autocommitted. A wait,
//! an expiry or a give-back reads before it writes; a batch holding one sends its
//! statements in order, a round trip each.
//!
//! No expected outcome raises an error inside a batch: an error aborts PostgreSQL's
//! transaction, and every other write of the batch with it. So an error is unexpected
//! (the connection, the server), and the batch's writes are then tried one by one, each
//! in its own transaction, so that a write that fails fails alone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::{join_all, join3};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{Client, Statement};

use super::{
    PgError, Stats, connection_lost, crc_column, intact, schema, store_error, workflow_columns,
    workflow_row,
};
use crate::codec::Codec;
use crate::error::{CancelReason, StoreError, StoreErrorKind};
use crate::journal::crc::{
    event_key, keyed_crc32, message_key, started_value, step_key, workflow_key,
};
use crate::journal::queue::{QueueNews, SetLimits};
use crate::journal::schedule::ScheduleWrite;
use crate::journal::{
    Created, Effect, Finish, Finished, NewMessage, NewWorkflow, RecordStatus, Replier, StepKey,
    StepRecord, Wait, WaitFor, WaitRecord, already_recorded, decode_answer, encode_answer,
    fingerprint_column, no_such_run, same_step,
};
use crate::path::StepPath;

/// At most how many writes share a transaction.
const MAX_BATCH: usize = 1024;

/// What the store asks of its writer.
pub(super) enum Command {
    Write(Op),
    /// Commit what is queued before this, then stop; answered when stopped.
    Close(std::sync::mpsc::Sender<()>),
    /// The store was dropped: commit what is queued before this, then stop.
    Stop,
    /// Another process may have written what parked waits wait for: these (`None`:
    /// anything), heard through the journal's notifications.
    Recheck(Option<Vec<WaitFor>>),
    /// Another runtime took this one's workflows over; it goes on as this new executor.
    Executor(i64),
}

/// A write, with where its answer goes.
pub(super) enum Op {
    Create(NewWorkflow, Replier<Created>),
    Record(StepRecord, Replier<()>),
    Finish(Finish, Replier<bool>),
    Started(StepKey, i64, Replier<()>),
    Patch(Arc<str>, StepPath, &'static str, Replier<()>),
    Send(NewMessage, Replier<()>),
    Wait(Wait, Replier<Option<Vec<u8>>>),
    Expire(WaitRecord, Replier<Option<Vec<u8>>>),
    GiveBack(StepKey, String, Replier<()>),
    Cancel(String, CancelReason, i64, Replier<Vec<String>>),
    Resume(String, i64, Replier<Vec<String>>),
    /// A queue's limits, written at this time.
    SetQueue(SetLimits, i64, Replier<()>),
    /// Queues to dispatch (see [`DispatchOp`]).
    Dispatch(DispatchOp, Replier<()>),
    /// A dispatched workflow that cannot run here frees its slot.
    Hold(Arc<str>, i64, Replier<()>),
    /// A schedule's row, written at this time.
    Schedule(ScheduleWrite, i64, Replier<()>),
}

/// A dispatch asked for: by the runtime (the first one says where dispatches go), by a
/// notification that another process changed a queue, or by the safety poll.
pub(super) struct DispatchOp {
    /// Where dispatches go from now on.
    pub(super) news: Option<tokio::sync::mpsc::UnboundedSender<QueueNews>>,
    /// The queues to dispatch (`None`: every one).
    pub(super) queues: Option<Vec<Arc<str>>>,
    /// Whether to put back in their queues the workflows of stopped executors first
    /// (see [`super::queues::requeue_sql`]).
    pub(super) requeue: bool,
    /// With `requeue`, the held ones too (at the runtime's open).
    pub(super) held: bool,
}

impl Op {
    /// Whether the write is one statement, sent without waiting for an earlier answer.
    fn simple(&self) -> bool {
        !matches!(
            self,
            Op::Wait(..) | Op::Expire(..) | Op::GiveBack(..) | Op::Dispatch(..)
        )
    }

    /// Whether the write, alone in a batch, commits as one statement of its own,
    /// without a transaction and the fence around it: a step record without effects.
    /// Its statement locks its workflow's row and checks the owner, which fences it as
    /// the executor's row fences a batch (a takeover changes the owner under a lock
    /// that conflicts with this one), and it sends no notification.
    fn alone(&self) -> bool {
        matches!(self, Op::Record(s, _) if matches!(s.effect, Effect::None))
    }

    /// What a wait could be waiting for that this write sends or sets.
    fn touches(&self) -> Option<WaitFor> {
        match self {
            Op::Send(m, _) => Some(message_for(m)),
            Op::Record(s, _) => match &s.effect {
                Effect::None => None,
                Effect::Send(m) => Some(message_for(m)),
                Effect::SetEvent(e) => Some(WaitFor::Event {
                    workflow_id: s.workflow_id.to_string(),
                    key: e.0.clone(),
                }),
            },
            Op::GiveBack(key, topic, _) => Some(WaitFor::Message {
                destination: key.workflow_id.to_string(),
                topic: topic.clone(),
            }),
            _ => None,
        }
    }

    /// Answers the write with `e`.
    fn fail(self, e: StoreError) {
        match self {
            Op::Create(_, r) => drop(r.send(Err(e))),
            Op::Finish(_, r) => drop(r.send(Err(e))),
            Op::Record(_, r)
            | Op::Started(_, _, r)
            | Op::Patch(_, _, _, r)
            | Op::Send(_, r)
            | Op::GiveBack(_, _, r)
            | Op::SetQueue(_, _, r)
            | Op::Dispatch(_, r)
            | Op::Hold(_, _, r)
            | Op::Schedule(_, _, r) => drop(r.send(Err(e))),
            Op::Wait(_, r) | Op::Expire(_, r) => drop(r.send(Err(e))),
            Op::Cancel(_, _, _, r) | Op::Resume(_, _, r) => drop(r.send(Err(e))),
        }
    }
}

fn message_for(m: &NewMessage) -> WaitFor {
    WaitFor::Message {
        destination: m.destination.clone(),
        topic: m.topic.clone(),
    }
}

/// What a write did, to answer once its transaction has committed.
enum Done {
    Created(Result<Created, StoreError>),
    Unit(Result<(), StoreError>),
    Bool(bool),
    Value(Result<Option<Vec<u8>>, StoreError>),
    Ids(Vec<String>),
    /// A wait that found nothing: it parks until what it waits for is written.
    Park,
}

/// A wait kept until what it waits for is written.
struct Parked {
    record: Option<WaitRecord>,
    reply: Replier<Option<Vec<u8>>>,
}

/// A parked wait answered in a batch, to be told once the batch commits.
struct Answered {
    what: WaitFor,
    parked: Parked,
    answer: Result<Option<Vec<u8>>, StoreError>,
}

/// The writer's prepared statements that nearly every runtime uses: a batch's frame,
/// and the writes of the common kinds (creates, step records without effects,
/// outcomes), one or many. Prepared when the writer starts.
pub(super) struct Statements {
    begin: Statement,
    fence: Statement,
    notify: Statement,
    commit: Statement,
    rollback: Statement,
    create: Statement,
    workflow: Statement,
    record: Statement,
    finish: Statement,
    /// Many creates in one statement (see [`Writer::create_many`]).
    create_many: Statement,
    /// Many records without effects in one statement (see [`Writer::record_many`]).
    record_many: Statement,
    /// Many outcomes in one statement (see [`Writer::finish_many`]).
    finish_many: Statement,
}

/// The writer's other prepared statements (messages, events, waits, sleeps, patches,
/// cancellations, resumes), prepared when a batch first needs one of them (see
/// [`Writer::ready`]): a new session then loads less before its first write.
pub(super) struct More {
    record_send: Statement,
    record_event: Statement,
    record_take: Statement,
    started: Statement,
    patch: Statement,
    send: Statement,
    cancel: Statement,
    resume: Statement,
    oldest_message: Statement,
    event: Statement,
    recorded_output: Statement,
    give_back: Statement,
}

/// The step record's columns and parameters ($1 to $11), shared by the statements that
/// record a step: `r` is the run the id names, `ins` the inserted row, if any.
macro_rules! record_step {
    () => {
        concat!(
            run_of_first_parameter!(),
            ",
         ins AS (INSERT INTO {s}.steps (run, path, name, output, error, attempts, started_at,
                                        finished_at, crc32, error_kind, args_fingerprint)
                 SELECT run, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM r WHERE mine
                 ON CONFLICT (run, path) DO NOTHING RETURNING run)"
        )
    };
}

/// `r`: the run whose workflow id is the statement's first parameter, and whether this
/// executor owns it (the session's `durable.executor`, set at its registration), read
/// under a share lock of the row, which a takeover's owner update waits for (and a
/// record that waited reads the new owner). A lone step record has no other fence:
/// an executor marked dead still records for a workflow it owns until a live one
/// claims it (then nothing more), which runs nothing twice: only the owner runs it.
macro_rules! run_of_first_parameter {
    () => {
        "WITH r AS (SELECT run, owner IS NOT DISTINCT FROM
                        current_setting('durable.executor')::bigint AS mine
                    FROM {s}.workflows WHERE id = $1 FOR SHARE)"
    };
}

/// What a statement made with [`record_step!`] answers: whether the run exists, whether
/// this executor owns it, and whether the step was inserted.
const RECORD_COUNTS: &str = " SELECT (SELECT count(*) FROM r), \
     (SELECT count(*) FROM r WHERE mine), (SELECT count(*) FROM ins)";

/// Many step records without effects, one statement: their columns as arrays ($1 to
/// $11, in the order of [`record_step!`]'s parameters). Answers one row per record, in
/// their order: whether its run exists, whether this executor owns it, and whether
/// its `(run, path)` was inserted (by the first record of the batch with it, which is
/// the one `DISTINCT ON` keeps).
const RECORD_MANY: &str = "
    WITH u AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                             $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::text[],
                             $11::int8[])
            WITH ORDINALITY AS u(id, path, name, output, error, attempts, started_at,
                                 finished_at, crc32, error_kind, args_fingerprint, ord)),
    r AS (SELECT u.ord, w.run, w.owner IS NOT DISTINCT FROM
                     current_setting('durable.executor')::bigint AS mine
          FROM u JOIN {s}.workflows w ON w.id = u.id FOR SHARE OF w),
    ins AS (INSERT INTO {s}.steps (run, path, name, output, error, attempts, started_at,
                                   finished_at, crc32, error_kind, args_fingerprint)
            SELECT DISTINCT ON (r.run, u.path) r.run, u.path, u.name, u.output, u.error,
                   u.attempts, u.started_at, u.finished_at, u.crc32, u.error_kind,
                   u.args_fingerprint
            FROM u JOIN r ON r.ord = u.ord WHERE r.mine
            ORDER BY r.run, u.path, u.ord
            ON CONFLICT (run, path) DO NOTHING RETURNING run, path)
    SELECT u.ord, r.run IS NOT NULL, coalesce(r.mine, false), ins.run IS NOT NULL
    FROM u LEFT JOIN r ON r.ord = u.ord
           LEFT JOIN ins ON ins.run = r.run AND ins.path = u.path
    ORDER BY u.ord";

/// The fence every batch of writes passes first: it numbers the batch in this
/// executor's row (`last_batch`, which says after a dropped connection whether the
/// batch committed) and so locks the row, which a takeover (setting `dead_at`) waits
/// for; and it fails, dividing by zero, if the executor is dead or gone, which aborts
/// the batch. The body of the schema's `fence(me, batch)`, inline: a PL/pgSQL call
/// costs each new session milliseconds to load the language, and each batch more than
/// the plain update.
const FENCE: &str = "
    WITH f AS (UPDATE {s}.executors SET last_batch = $2 WHERE id = $1 AND dead_at IS NULL
               RETURNING 1)
    SELECT (1 / (SELECT count(*) FROM f))::text";

/// What the fence raises when it refuses a batch: division by zero.
const FENCE_REFUSED: &str = "22012";

/// What a write sent at once answers: what it did, and what a wait could be waiting
/// for that it wrote.
type Written = Result<(Done, Option<WaitFor>), PgError>;

/// The rows a batched statement of `n` writes answered, one per write; or, if it
/// failed, every write's failure: the statement's error first (the batch is retried,
/// or each write alone).
fn batch_rows(
    rows: Result<Vec<tokio_postgres::Row>, PgError>,
    n: usize,
) -> Result<Vec<tokio_postgres::Row>, Vec<Written>> {
    match rows {
        Ok(rows) if rows.len() == n => Ok(rows),
        Ok(rows) => Err((0..n)
            .map(|_| {
                Err(PgError::Damaged(format!(
                    "a statement of {n} writes answered {} rows",
                    rows.len()
                )))
            })
            .collect()),
        Err(e) => {
            let mut failed = vec![Err(e)];
            failed.extend((1..n).map(|_| {
                Err(PgError::Damaged(
                    "the statement of this write failed".into(),
                ))
            }));
            Err(failed)
        }
    }
}

/// Which writes of `ops` go together into one statement of their kind ([`Batch`]),
/// sent where the first of that kind is. A write moves ahead of the writes between
/// that place and its own only if none of them is about its workflow (its creation,
/// say, which its record needs first) or about many (a cancellation or a resume of a
/// family of workflows).
fn batchable(ops: &[Op]) -> Vec<Option<Batch>> {
    let places: Vec<Place<'_>> = ops
        .iter()
        .map(|op| match op {
            Op::Record(s, _) if matches!(s.effect, Effect::None) => {
                Place::Batch(Batch::Records, &s.workflow_id)
            }
            Op::Finish(f, _) => Place::Batch(Batch::Finishes, &f.id),
            // An enqueue is a statement of its own.
            Op::Create(w, _) if w.queued.is_some() => Place::Other(&w.id),
            Op::Create(w, _) => Place::Batch(Batch::Creates, &w.id),
            // (Waits are not among the writes sent at once: never here.)
            Op::Cancel(..) | Op::Resume(..) | Op::Wait(..) | Op::Expire(..) | Op::Dispatch(..) => {
                Place::Barrier
            }
            Op::Hold(id, _, _) => Place::Other(id),
            Op::SetQueue(set, _, _) => Place::Other(&set.queue),
            Op::Schedule(w, _, _) => Place::Other(&w.name),
            Op::Record(s, _) => Place::Other(&s.workflow_id),
            Op::Started(key, _, _) | Op::GiveBack(key, _, _) => Place::Other(&key.workflow_id),
            Op::Patch(id, _, _, _) => Place::Other(id),
            Op::Send(m, _) => Place::Other(&m.destination),
        })
        .collect();
    batches(&places)
}

/// [`batchable`], on what it needs of the writes.
fn batches(places: &[Place<'_>]) -> Vec<Option<Batch>> {
    let mut batched = vec![None; places.len()];
    for kind in Batch::ALL {
        for (i, g) in group(places.iter().map(|p| p.as_seen_by(kind)))
            .into_iter()
            .enumerate()
        {
            if g {
                batched[i] = Some(kind);
            }
        }
    }
    batched
}

/// The writes that go many in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    /// New workflows ([`create_many_sql`]).
    Creates = 0,
    /// Step records without effects ([`RECORD_MANY`]).
    Records = 1,
    /// Workflows' outcomes ([`FINISH_MANY`]).
    Finishes = 2,
}

impl Batch {
    const ALL: [Batch; 3] = [Batch::Creates, Batch::Records, Batch::Finishes];
}

/// What [`batchable`] needs to know of a write.
#[derive(Debug, Clone, Copy)]
enum Place<'a> {
    /// A write of this kind, about this workflow.
    Batch(Batch, &'a str),
    /// Another write about this workflow.
    Other(&'a str),
    /// A write about many workflows.
    Barrier,
}

impl<'a> Place<'a> {
    /// The place as the batch of `kind` sees it: a write of another kind is another
    /// write about its workflow.
    fn as_seen_by(self, kind: Batch) -> Place<'a> {
        match self {
            Place::Batch(k, id) if k != kind => Place::Other(id),
            place => place,
        }
    }
}

/// Which writes of one kind go together (see [`batchable`]): `places` as that kind
/// sees them.
fn group<'a>(places: impl Iterator<Item = Place<'a>>) -> Vec<bool> {
    let mut grouped = Vec::new();
    let mut started = false;
    let mut all_held = false;
    let mut held: HashSet<&str> = HashSet::new();
    for place in places {
        grouped.push(match place {
            Place::Batch(..) if !started => {
                started = true;
                true
            }
            Place::Batch(_, id) => !all_held && !held.contains(id),
            _ if !started => false,
            Place::Barrier => {
                all_held = true;
                false
            }
            Place::Other(id) => {
                held.insert(id);
                false
            }
        });
    }
    grouped
}

/// Many workflows' outcomes, one statement: their columns as arrays (id, status,
/// output, error kind, error, time, output checksum). Answers one row per outcome, in
/// their order: whether it was recorded (the workflow pending and this executor's;
/// of two outcomes of one workflow in a batch, the first).
const FINISH_MANY: &str = "
    WITH u AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[],
                             $6::int8[], $7::int8[])
            WITH ORDINALITY AS u(id, status, output, error_kind, error, at, crc, ord)),
    d AS (SELECT DISTINCT ON (id) * FROM u ORDER BY id, ord),
    up AS (UPDATE {s}.workflows w
           SET status = d.status, output = d.output, error_kind = d.error_kind,
               error = d.error, updated_at = d.at, output_crc32 = d.crc
           FROM d
           WHERE w.id = d.id AND w.status = 'pending'
             AND w.owner = current_setting('durable.executor')::bigint
           RETURNING d.ord)
    SELECT u.ord, up.ord IS NOT NULL FROM u LEFT JOIN up ON up.ord = u.ord ORDER BY u.ord";

/// New workflows, one statement: their columns as arrays (id, name, input, input
/// checksum, app version, parent, creation time, deadline). Answers one row per
/// create, in their order: whether it made the workflow (of two creates of one id in
/// a batch, the first), then the columns of the workflow that was there before
/// ([`workflow_columns`]; none for one made after the statement began).
fn create_many_sql() -> String {
    format!(
        "WITH u AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int8[],
                                  $5::text[], $6::text[], $7::int8[], $8::int8[])
                 WITH ORDINALITY AS u(id, name, input, input_crc32, app_version, parent_id,
                                      created_at, deadline_at, ord)),
         d AS (SELECT DISTINCT ON (id) * FROM u ORDER BY id, ord),
         ins AS (INSERT INTO {{s}}.workflows (id, name, status, input, input_crc32,
                     app_version, parent_id, created_at, updated_at, deadline_at, owner)
                 SELECT id, name, 'pending', input, input_crc32, app_version, parent_id,
                        created_at, created_at, deadline_at,
                        current_setting('durable.executor')::bigint
                 FROM d ORDER BY ord
                 ON CONFLICT (id) DO NOTHING RETURNING id)
         SELECT u.ord, ins.id IS NOT NULL AND d.ord = u.ord, {}
         FROM u JOIN d ON d.id = u.id
                LEFT JOIN ins ON ins.id = u.id
                LEFT JOIN {{s}}.workflows w ON w.id = u.id
         ORDER BY u.ord",
        workflow_columns("w")
    )
}

/// The record of a transaction step, in its own transaction ($1 to $11 as in
/// [`record_step!`], $12 the transaction's id read when it began): inserted only while
/// the transaction is still that one (its closure did not end it), and answering that
/// as a fourth count.
pub(super) fn transaction_record_sql(s: &str) -> String {
    // A key-share lock, as the transaction's first statement took: the writer's
    // updates of the row (a cancel, an outcome) do not wait for the transaction, and
    // the statements that change its owner lock it FOR UPDATE first, which does.
    let sql = format!("{}{RECORD_COUNTS}, txid_current() = $12", record_step!()).replacen(
        "FOR SHARE)",
        "FOR KEY SHARE)",
        1,
    );
    let guarded = sql.replacen(
        "FROM r WHERE mine",
        "FROM r WHERE mine AND txid_current() = $12",
        1,
    );
    debug_assert_ne!(sql, guarded, "the record's condition moved");
    debug_assert!(
        guarded.contains("FOR KEY SHARE)"),
        "the record's lock moved"
    );
    guarded.replace("{s}", s)
}

impl Statements {
    /// Prepares the statements nearly every runtime uses, pipelined: one round trip. The
    /// others ([`More`]) wait until a batch needs one.
    pub(super) async fn prepare(c: &Client, schema: &str) -> Result<Statements, PgError> {
        let s = schema::quoted(schema);
        let sql = |text: &str| text.replace("{s}", &s);
        let w_columns = workflow_columns("w");
        let begin_text = "BEGIN".to_owned();
        let fence_text = sql(FENCE);
        let notify_text = "SELECT pg_notify($1, p)::text FROM unnest($2::text[]) p".to_owned();
        let commit_text = "COMMIT".to_owned();
        let rollback_text = "ROLLBACK".to_owned();
        let create_text = sql(&format!(
            "WITH ins AS (
                         INSERT INTO {{s}}.workflows (id, name, status, input, input_crc32,
                             app_version, parent_id, created_at, updated_at, deadline_at, owner)
                         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $7, $8,
                                 current_setting('durable.executor')::bigint)
                         ON CONFLICT (id) DO NOTHING RETURNING run)
                     SELECT (SELECT count(*) FROM ins), {w_columns}
                     FROM (VALUES (1)) one LEFT JOIN {{s}}.workflows w ON w.id = $1"
        ));
        let workflow_text = sql(&format!(
            "SELECT {} FROM {{s}}.workflows WHERE id = $1",
            workflow_columns("")
        ));
        let record_text = sql(&format!("{}{RECORD_COUNTS}", record_step!()));
        let finish_text = sql(
            "UPDATE {s}.workflows SET status = $2, output = $3, error_kind = $4, error = $5,
                         updated_at = $6, output_crc32 = $7
                     WHERE id = $1 AND status = 'pending'
                       AND owner = current_setting('durable.executor')::bigint",
        );
        let create_many_text = sql(&create_many_sql());
        let record_many_text = sql(RECORD_MANY);
        let finish_many_text = sql(FINISH_MANY);
        let [
            begin,
            fence,
            notify,
            commit,
            rollback,
            create,
            workflow,
            record,
            finish,
            create_many,
            record_many,
            finish_many,
        ] = prepared(
            c,
            [
                &begin_text,
                &fence_text,
                &notify_text,
                &commit_text,
                &rollback_text,
                &create_text,
                &workflow_text,
                &record_text,
                &finish_text,
                &create_many_text,
                &record_many_text,
                &finish_many_text,
            ],
        )
        .await?;
        Ok(Statements {
            begin,
            fence,
            notify,
            commit,
            rollback,
            create,
            workflow,
            record,
            finish,
            create_many,
            record_many,
            finish_many,
        })
    }
}

impl More {
    /// Prepares the rest of the writer's statements, pipelined: one round trip.
    pub(super) async fn prepare(c: &Client, schema: &str) -> Result<More, PgError> {
        let s = schema::quoted(schema);
        let sql = |text: &str| text.replace("{s}", &s);
        let record_send_text = sql(&format!(
            "{}, eff AS (INSERT INTO {{s}}.messages (destination, topic, payload, crc32, sent_at)
                                 SELECT $12, $13, $14, $15, $16 FROM ins){RECORD_COUNTS}",
            record_step!()
        ));
        let record_event_text = sql(&format!(
                    "{}, eff AS (INSERT INTO {{s}}.events (run, key, value, crc32, set_at)
                                 SELECT run, $12, $13, $14, $8 FROM ins
                                 ON CONFLICT (run, key) DO UPDATE SET value = excluded.value,
                                     crc32 = excluded.crc32, set_at = excluded.set_at){RECORD_COUNTS}",
                    record_step!()
                ));
        let record_take_text = sql(&format!(
            "{}, del AS (DELETE FROM {{s}}.messages
                                 WHERE seq = $12 AND EXISTS (SELECT 1 FROM ins)){RECORD_COUNTS}",
            record_step!()
        ));
        let started_text = sql(concat!(
            run_of_first_parameter!(),
            ",
                     ins AS (INSERT INTO {s}.started (run, path, name, started_at, wake_at, crc32)
                             SELECT run, $2, $3, $4, $5, $6 FROM r WHERE mine
                             ON CONFLICT (run, path) DO NOTHING)
                     SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM r WHERE mine)"
        ));
        let patch_text = sql(concat!(
            run_of_first_parameter!(),
            ",
                     ins AS (INSERT INTO {s}.patches (run, path, name, crc32)
                             SELECT run, $2, $3, $4 FROM r WHERE mine ON CONFLICT DO NOTHING)
                     SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM r WHERE mine)"
        ));
        let send_text = sql(
            "INSERT INTO {s}.messages (destination, topic, payload, crc32, sent_at)
                     VALUES ($1, $2, $3, $4, $5)",
        );
        let cancel_text = cancel_sql(&s, "SELECT id FROM up");
        let resume_text = resume_sql(&s, "SELECT id FROM up");
        let oldest_message_text = sql("SELECT seq, payload, crc32 FROM {s}.messages
                     WHERE destination = $1 AND topic = $2 ORDER BY seq LIMIT 1 FOR UPDATE");
        let event_text = sql("SELECT value, crc32 FROM {s}.events
                     WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1) AND key = $2");
        let recorded_output_text = sql("SELECT output, crc32, name FROM {s}.steps
                     WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1) AND path = $2");
        let give_back_text = sql("WITH d AS (DELETE FROM {s}.steps
                                WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1
                                  AND owner = current_setting('durable.executor')::bigint)
                                  AND path = $2 AND name = $3 RETURNING 1)
                     INSERT INTO {s}.messages (seq, destination, topic, payload, crc32, sent_at)
                     SELECT (SELECT COALESCE(MIN(seq), 1) - 1 FROM {s}.messages),
                            $1, $4, $5, $6, $7
                     FROM d");
        let [
            record_send,
            record_event,
            record_take,
            started,
            patch,
            send,
            cancel,
            resume,
            oldest_message,
            event,
            recorded_output,
            give_back,
        ] = prepared(
            c,
            [
                &record_send_text,
                &record_event_text,
                &record_take_text,
                &started_text,
                &patch_text,
                &send_text,
                &cancel_text,
                &resume_text,
                &oldest_message_text,
                &event_text,
                &recorded_output_text,
                &give_back_text,
            ],
        )
        .await?;
        Ok(More {
            record_send,
            record_event,
            record_take,
            started,
            patch,
            send,
            cancel,
            resume,
            oldest_message,
            event,
            recorded_output,
            give_back,
        })
    }
}

/// `WITH RECURSIVE tree`: workflow `$1` and its descendants (whose ids it prefixes).
fn family(s: &str) -> String {
    format!(
        "WITH RECURSIVE tree(id) AS (
             SELECT $1::text COLLATE \"C\"
             UNION SELECT w.id FROM {s}.workflows w JOIN tree t ON w.parent_id = t.id
             WHERE w.id >= $1 || '/' AND w.id < $1 || '0'
         )"
    )
}

/// Cancels workflow `$1` and its pending descendants, for reason `$2` (its kind) and
/// `$3` (its message), at `$4`; `up` holds the ids cancelled, and `select` answers.
pub(super) fn cancel_sql(s: &str, select: &str) -> String {
    format!(
        "{},
         -- The owner keeps it: a step body running there when the cancel came finishes
         -- and is recorded, and the runtime stops the run at its next step (it hears of
         -- the cancel, see `executor::cancel_payload`).
         up AS (UPDATE {s}.workflows
                SET status = 'cancelled', error_kind = $2, error = $3, updated_at = $4
                WHERE status = 'pending' AND id IN (SELECT id FROM tree)
                RETURNING id)
         {select}",
        family(s)
    )
}

/// Makes workflow `$1` (cancelled or failed) and its cancelled descendants pending
/// again at `$2`, owned by the session's executor, or, for a client's session, by the
/// executor that owned them (which runs them again once it hears of it, after its run
/// winding down from the cancel has recorded what it ran; if it is gone, or there was
/// none, the next claim takes them); `up` holds their ids and runs, and `select`
/// answers.
pub(super) fn resume_sql(s: &str, select: &str) -> String {
    format!(
        "{},
         up AS (UPDATE {s}.workflows
                SET status = 'pending', output = NULL, output_crc32 = NULL,
                    error_kind = NULL, error = NULL, deadline_at = NULL,
                    updated_at = $2,
                    -- A queued workflow goes back to its queue, without an
                    -- owner: the resume's dispatch gives it its next one.
                    owner = CASE WHEN queue_state IS NULL
                                 THEN coalesce(nullif(current_setting('durable.executor',
                                                                      true), '')::bigint,
                                               -- Kept only while it lives (a forgotten
                                               -- executor's would never be claimed).
                                               (SELECT e.id FROM {s}.executors e
                                                WHERE e.id = {s}.workflows.owner
                                                  AND e.dead_at IS NULL))
                            END,
                    queue_state = CASE WHEN queue_state IS NULL THEN NULL
                                       ELSE 'queued' END,
                    -- Run again by an owner: it replays what it recorded (one with
                    -- no owner is marked by the claim that gives it one).
                    replays = CASE WHEN queue_state IS NULL
                                    AND coalesce(nullif(current_setting('durable.executor',
                                                                        true), '')::bigint,
                                                 (SELECT e.id FROM {s}.executors e
                                                  WHERE e.id = {s}.workflows.owner
                                                    AND e.dead_at IS NULL)) IS NOT NULL
                                    AND EXISTS (SELECT 1 FROM {s}.steps x
                                                WHERE x.run = {s}.workflows.run
                                                  AND x.finished_at >= {s}.workflows.created_at)
                                   THEN coalesce(replays || ',', '') || $2::bigint::text
                                   ELSE replays END
                WHERE run IN (SELECT run FROM {s}.workflows
                              WHERE id IN (SELECT id FROM tree)
                                AND (status = 'cancelled'
                                     OR (id = $1 AND status = 'failed'))
                              -- Waits for a transaction step's key-share
                              -- lock, which the update alone would not.
                              FOR UPDATE)
                RETURNING id, run),
         -- A recorded panic or interruption is not an output: resuming runs
         -- those steps again, and an interrupted one loses its start record.
         st AS (DELETE FROM {s}.started t USING up
                WHERE t.run = up.run AND t.path IN
                    (SELECT path FROM {s}.steps x
                     WHERE x.run = up.run AND x.error IS NOT NULL)),
         sd AS (DELETE FROM {s}.steps x USING up
                WHERE x.run = up.run AND x.error IS NOT NULL)
         {select}",
        family(s)
    )
}

/// `texts` prepared on `c`, pipelined (one round trip), in their order.
async fn prepared<const N: usize>(c: &Client, texts: [&str; N]) -> Result<[Statement; N], PgError> {
    let prepared = futures_util::future::try_join_all(texts.map(|t| c.prepare(t))).await?;
    prepared
        .try_into()
        .map_err(|_| PgError::Damaged("a statement was not prepared".into()))
}

/// The writer: its connection, its statements, and the waits it keeps parked.
pub(super) struct Writer {
    pub(super) client: Client,
    /// Prepared once the writer runs, and again on each new connection (see
    /// [`Writer::ready`]).
    sql: Option<Statements>,
    /// Prepared when a batch first needs one of them, and on each new connection.
    more: Option<More>,
    /// The journal's schema, quoted.
    pub(super) schema: String,
    /// This runtime's executor id (see [`super::executor`]).
    pub(super) me: i64,
    /// What dispatching queued workflows keeps.
    pub(super) queues: super::queues::Queues,
    /// The writer session's backend pid, for the watcher to tell its notifications
    /// from other processes'.
    pub(super) pid: Arc<std::sync::atomic::AtomicI32>,
    /// Where batches that send or set something notify.
    channel: String,
    /// How to connect again when the connection drops.
    config: super::PgConfig,
    /// The connection's session, which is ended after the connection drops.
    session: Option<super::Session>,
    /// The number of the last transaction tried ([`Writer::next_batch`]), which the
    /// fence records: after a dropped connection, the journal says whether it
    /// committed.
    batch_no: std::cell::Cell<i64>,
    /// The testkit's simulated crash: once set, nothing more commits or is answered,
    /// and the writer ends (its connection, and with it the executor's lock, goes).
    #[cfg(feature = "testkit")]
    pub(super) halt: Option<Arc<std::sync::atomic::AtomicBool>>,
    path: Arc<Path>,
    codec: Codec,
    stats: Arc<Stats>,
    parked: HashMap<WaitFor, VecDeque<Parked>>,
}

impl Writer {
    pub(super) fn new(
        (client, session): (Client, super::Session),
        config: super::PgConfig,
        me: i64,
        path: Arc<Path>,
        codec: Codec,
        stats: Arc<Stats>,
    ) -> Writer {
        let pid = session.pid;
        Writer {
            client,
            session: Some(session),
            sql: None,
            more: None,
            schema: schema::quoted(&config.schema),
            me,
            queues: super::queues::Queues::default(),
            pid: Arc::new(std::sync::atomic::AtomicI32::new(pid)),
            channel: super::executor::channel(&config.schema),
            config,
            batch_no: std::cell::Cell::new(0),
            #[cfg(feature = "testkit")]
            halt: None,
            path,
            codec,
            stats,
            parked: HashMap::new(),
        }
    }

    /// The writer's statements, once [`Writer::ready`] prepared them.
    fn q(&self) -> Result<&Statements, PgError> {
        self.sql.as_ref().ok_or_else(unprepared)
    }

    /// The writer's other statements, once [`Writer::ready`] prepared them for a batch
    /// that needs them.
    fn more(&self) -> Result<&More, PgError> {
        self.more.as_ref().ok_or_else(unprepared)
    }

    /// Prepares the writer's statements on its connection, and tells its session the
    /// executor, if that is not done yet: at its start (not during the open, so that it
    /// overlaps the runtime's first reads), and after a failed try; and the rest of
    /// them ([`More`]) if `ops` need one. Every write goes through here first.
    async fn ready(&mut self, ops: &[Op]) -> Result<(), PgError> {
        if self.sql.is_none() {
            // With the session's executor, which the open left for now.
            let (_, sql) = futures_util::future::try_join(
                super::executor::set_executor(&self.client, self.me),
                Statements::prepare(&self.client, &self.config.schema),
            )
            .await?;
            self.sql = Some(sql);
        }
        if self.more.is_none() && needs_more(ops) {
            self.more = Some(More::prepare(&self.client, &self.config.schema).await?);
        }
        Ok(())
    }

    /// Whether the testkit's simulated crash happened.
    fn halted(&self) -> bool {
        #[cfg(feature = "testkit")]
        if let Some(h) = &self.halt {
            return h.load(Ordering::SeqCst);
        }
        false
    }

    /// Commits batches until the store closes or is dropped.
    pub(super) async fn run(mut self, mut queue: UnboundedReceiver<Command>) {
        // Prepared now, while the runtime reads what it resumes, so that the first write
        // finds them ready.
        match self.ready(&[]).await {
            Err(e) if connection_lost(&e) => self.reconnect().await,
            // Each write tries again, and fails with the error if it stays.
            Err(e) => tracing::warn!(error = ?e, "the journal's writer could not prepare its \
                statements; each write tries again"),
            Ok(()) => {}
        }
        let mut closed = None;
        while closed.is_none() {
            let Some(first) = queue.recv().await else {
                break;
            };
            if self.halted() {
                // A simulated crash: what is queued goes unanswered, like the process's
                // memory, and the writer ends without giving its workflows back.
                return;
            }
            let mut ops = Vec::new();
            let mut recheck = Recheck::Nothing;
            let mut rejoined = None;
            let mut stop = queued(first, &mut ops, &mut recheck, &mut rejoined);
            while stop.is_none() && ops.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(c) => stop = queued(c, &mut ops, &mut recheck, &mut rejoined),
                    Err(_) => break,
                }
            }
            if !ops.is_empty() {
                self.batch(ops).await;
            }
            if let Some(new) = rejoined {
                self.rejoined(new).await;
            }
            self.recheck(recheck).await;
            if let Some(done) = stop {
                closed = Some(done);
            }
        }
        // Parked waits answer Closed as their repliers drop; so do the writes queued
        // after a close.
        drop(queue);
        if closed.is_some() {
            // Its pending workflows go to the next runtime at once, not after a lease.
            if let Err(e) =
                super::executor::release(&self.client, &self.schema, self.me, &self.channel).await
            {
                tracing::warn!(error = ?e, "could not hand this runtime's pending workflows \
                    back to the PostgreSQL journal; another runtime takes them over after \
                    the lease");
            }
        }
        drop(self);
        if let Some(Some(done)) = closed {
            let _ = done.send(());
        }
    }

    /// Commits `ops` together, or, if that fails, each alone. A connection that drops
    /// is made again (for as long as it takes), and the writes go on: none is lost,
    /// none is made twice.
    async fn batch(&mut self, ops: Vec<Op>) {
        let ops = if self.queues.news.is_none() {
            // A runtime that declared no queue dispatches nothing (and does not put
            // others' workflows back in their queues): the watcher's asks cost no
            // transaction.
            let mut kept = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Dispatch(d, reply) if d.news.is_none() => drop(reply.send(Ok(()))),
                    op => kept.push(op),
                }
            }
            if kept.is_empty() {
                return;
            }
            kept
        } else {
            ops
        };
        let ops = match self.try_batch(ops).await {
            Ok(()) => return,
            Err(ops) if ops.len() == 1 => ops,
            Err(ops) => ops,
        };
        if ops.len() == 1 {
            // Failed alone: its error was an answer (see `try_batch`).
            return;
        }
        for op in ops {
            let _ = self.try_batch(vec![op]).await;
        }
    }

    /// Commits `ops` together, through any number of dropped connections; `Err` gives
    /// them back if the transaction failed for another reason (a write of it failed)
    /// and there are several (to be tried one by one). A single write that fails is
    /// answered with its error.
    async fn try_batch(&mut self, ops: Vec<Op>) -> Result<(), Vec<Op>> {
        loop {
            if self.halted() {
                return Ok(());
            }
            match self.attempt(&ops).await {
                // Crashed as it committed: nobody hears back.
                Ok(_) if self.halted() => return Ok(()),
                Ok((done, answered)) => {
                    self.committed(ops, done, answered).await;
                    return Ok(());
                }
                Err(e) if connection_lost(&e) => {
                    let tried = self.batch_no.get();
                    // What the transaction dispatched, if it committed: kept apart
                    // from the transactions made meanwhile.
                    let dispatched = self.queues.take_tried();
                    let old = self.session.take();
                    // The new connection may drop too: until the journal has said.
                    let last = loop {
                        self.reconnect().await;
                        // Until the old session is over, its COMMIT may still arrive
                        // (late on the network) and commit after the journal said it
                        // did not: the batch would then commit twice.
                        if let Some(old) = &old {
                            match old.end(&self.client).await {
                                Err(e) if connection_lost(&e) => continue,
                                Err(e) => tracing::warn!(
                                    error = ?e,
                                    "could not end the writer's dropped session; a commit \
                                     late on the network could land after this one is settled"
                                ),
                                Ok(()) => {}
                            }
                        }
                        match self.last_batch().await {
                            Err(e) if connection_lost(&e) => {}
                            said => break said,
                        }
                    };
                    self.answer_recorded_parked().await;
                    // Notifications sent while the connection was down went unheard.
                    Box::pin(self.recheck(Recheck::All)).await;
                    if let [op] = &ops[..]
                        && op.alone()
                    {
                        // Not numbered by the fence: the journal says from the write
                        // itself whether it committed, and runs it again if not.
                        self.confirm(ops).await;
                        return Ok(());
                    }
                    match last {
                        // It committed before the connection dropped: answer each
                        // write from what the journal holds.
                        Ok(last) if last == tried => {
                            self.queues.restore_tried(dispatched);
                            self.queues_committed(&ops, &[]);
                            self.confirm(ops).await;
                            return Ok(());
                        }
                        // It did not: again.
                        Ok(_) => continue,
                        Err(e) => {
                            let e = store_error(&self.path, e);
                            ops.into_iter().for_each(|op| op.fail(e.clone()));
                            return Ok(());
                        }
                    }
                }
                Err(e) if fenced(&e) => {
                    // Taken over: every write of this executor fails alike, and so do
                    // its parked waits.
                    let e = store_error(&self.path, e);
                    ops.into_iter().for_each(|op| op.fail(e.clone()));
                    self.fail_parked();
                    return Ok(());
                }
                Err(e) if ops.len() == 1 => {
                    let e = store_error(&self.path, e);
                    ops.into_iter().for_each(|op| op.fail(e.clone()));
                    return Ok(());
                }
                Err(_) => return Err(ops),
            }
        }
    }

    /// This runtime's workflows were taken over, and it goes on as executor `new`: the
    /// waits parked for them end with [`StoreErrorKind::TakenOver`] (their runs stop,
    /// and their handles follow them where they run now).
    async fn rejoined(&mut self, new: i64) {
        self.me = new;
        // Its dispatched workflows went back to their queues with the rest.
        self.queues.forget_running();
        if let Err(e) = super::executor::set_executor(&self.client, new).await {
            // The next write finds the connection gone, and connects as `new`.
            tracing::debug!(error = ?e, "telling the writer's session its new executor");
        }
        self.fail_parked();
    }

    /// Ends every parked wait with [`StoreErrorKind::TakenOver`]: the runs they belong
    /// to were taken over.
    fn fail_parked(&mut self) {
        for (_, queue) in self.parked.drain() {
            for p in queue {
                let id = p.record.as_ref().map_or("?", |r| &*r.key.workflow_id);
                let _ = p.reply.send(Err(taken_over(&self.path, id)));
            }
        }
    }

    /// Connects again, with backoff, until the database answers, and prepares the
    /// statements.
    async fn reconnect(&mut self) {
        let mut wait = Duration::from_millis(50);
        let mut warned = false;
        loop {
            match self.connect_again().await {
                Ok(()) => {
                    if warned {
                        tracing::info!("the connection to the PostgreSQL journal is back");
                    }
                    return;
                }
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = ?e, "the connection to the PostgreSQL journal \
                            dropped; writes wait, and go on when it is back");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn connect_again(&mut self) -> Result<(), PgError> {
        let client = super::connect(&self.config, "writer").await?;
        // All the statements: what settles the batch that was cut off needs any of them.
        let (_, sql, more, session) = futures_util::future::try_join4(
            super::executor::set_executor(&client, self.me),
            Statements::prepare(&client, &self.config.schema),
            More::prepare(&client, &self.config.schema),
            super::Session::of(&client),
        )
        .await?;
        self.sql = Some(sql);
        self.more = Some(more);
        self.pid.store(session.pid, Ordering::Relaxed);
        self.queues.forget_statements();
        self.session = Some(session);
        self.client = client;
        Ok(())
    }

    /// The number of this executor's last transaction that committed.
    async fn last_batch(&self) -> Result<i64, PgError> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT last_batch FROM {}.executors WHERE id = $1",
                    self.schema
                ),
                &[&self.me],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Answers each write of a transaction that committed as its connection dropped
    /// (its answers lost with it) from what the journal now holds.
    async fn confirm(&mut self, ops: Vec<Op>) {
        for op in ops {
            let confirmed = loop {
                match self.confirm_one(&op).await {
                    Err(e) if connection_lost(&e) => self.reconnect().await,
                    said => break said,
                }
            };
            match confirmed {
                Ok(Some(done)) => reply(op, done, &mut |what, parked| self.park(what, parked)),
                // Changed nothing that needs confirming: run it again.
                Ok(None) => {
                    let _ = Box::pin(self.try_batch(vec![op])).await;
                }
                Err(e) => op.fail(store_error(&self.path, e)),
            }
        }
    }

    /// What a committed write did, read back; `None` for one that is safe to run again.
    async fn confirm_one(&self, op: &Op) -> Result<Option<Done>, PgError> {
        let lost = |what: &str| {
            StoreError::new(
                &*self.path,
                StoreErrorKind::Io,
                format!(
                    "the connection to PostgreSQL dropped as {what} committed; it did, but its \
                     answer was lost"
                ),
            )
        };
        Ok(Some(match op {
            Op::Create(w, _) => match self
                .client
                .query_opt(&self.q()?.workflow, &[&&*w.id])
                .await?
            {
                Some(row) => {
                    let record = workflow_row(&row, 0)?;
                    let ours = record.input == w.input
                        && record.parent_id.as_deref() == w.parent_id.as_deref();
                    let created = self
                        .client
                        .query_one(
                            &format!(
                                "SELECT created_at FROM {}.workflows WHERE id = $1",
                                self.schema
                            ),
                            &[&&*w.id],
                        )
                        .await?
                        .try_get::<_, i64>(0)?;
                    if ours && created == w.created_at {
                        Done::Created(Ok(Created::New))
                    } else {
                        Done::Created(Ok(Created::Existing(Box::new(record))))
                    }
                }
                None => return Ok(None),
            },
            Op::Record(s, _) => {
                let path = s.path.to_key();
                let (output, error, _) = s.outcome.columns();
                let crc = crc_column(keyed_crc32(
                    &step_key(&s.workflow_id, &path, s.name),
                    output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()),
                ));
                if let Err(e) = self.owned(&s.workflow_id).await? {
                    // Refused in that batch: the same record by the new owner is not ours.
                    return Ok(Some(Done::Unit(Err(e))));
                }
                match self.recorded_row(&s.workflow_id, &path).await? {
                    Some((_, found, name)) if found == crc && name == s.name => Done::Unit(Ok(())),
                    Some(_) => Done::Unit(Err(already_recorded(
                        &self.path,
                        &StepKey {
                            workflow_id: s.workflow_id.clone(),
                            path: s.path.clone(),
                            name: s.name,
                            args: s.args,
                        },
                    ))),
                    None => return Ok(None),
                }
            }
            Op::Finish(f, _) if self.owned(&f.id).await?.is_err() => Done::Bool(false),
            Op::Finish(f, _) => {
                let row = self
                    .client
                    .query_opt(&self.q()?.workflow, &[&&*f.id])
                    .await?;
                let record = row.map(|r| workflow_row(&r, 0)).transpose()?;
                let done = record.is_some_and(|r| match &f.outcome {
                    Finished::Completed(out) => {
                        r.status == RecordStatus::Completed && r.output.as_ref() == Some(out)
                    }
                    Finished::Failed(_, m) => {
                        r.status == RecordStatus::Failed
                            && r.failure.is_some_and(|(_, rm)| &rm == m)
                    }
                });
                Done::Bool(done)
            }
            // Made only for a workflow this executor owns (still, since it is alive).
            Op::Started(key, ..) => Done::Unit(self.owned(&key.workflow_id).await?),
            Op::Patch(workflow_id, ..) => Done::Unit(self.owned(workflow_id).await?),
            Op::Send(..) | Op::GiveBack(..) => Done::Unit(Ok(())),
            // Safe to make again: each writes the same, or (a dispatch) what holds now.
            Op::SetQueue(..) | Op::Dispatch(..) | Op::Hold(..) | Op::Schedule(..) => {
                return Ok(None);
            }
            Op::Cancel(..) => Done::Unit(Err(lost("a cancellation"))),
            Op::Resume(..) => Done::Unit(Err(lost("a resume"))),
            Op::Wait(w, _) => match &w.record {
                Some(r) => match self.recorded_answer(&r.key).await? {
                    Some(answer) => Done::Value(answer),
                    None if w.park => Done::Park,
                    None => return Ok(None),
                },
                None => return Ok(None),
            },
            Op::Expire(r, _) => match self.recorded_answer(&r.key).await? {
                Some(answer) => Done::Value(answer),
                None => return Ok(None),
            },
        }))
    }

    /// `Ok` if this executor owns workflow `workflow_id` (its writes for it are made),
    /// else why not.
    async fn owned(&self, workflow_id: &str) -> Result<Result<(), StoreError>, PgError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT owner IS NOT DISTINCT FROM current_setting('durable.executor')::bigint
                     FROM {}.workflows WHERE id = $1",
                    self.schema
                ),
                &[&workflow_id],
            )
            .await?;
        Ok(match row.map(|r| r.try_get::<_, bool>(0)).transpose()? {
            None => Err(no_such_run(&self.path, workflow_id)),
            Some(false) => Err(taken_over(&self.path, workflow_id)),
            Some(true) => Ok(()),
        })
    }

    /// A step's recorded output, checksum and name, if it is recorded.
    async fn recorded_row(
        &self,
        workflow_id: &str,
        path: &str,
    ) -> Result<Option<(Option<Vec<u8>>, i64, String)>, PgError> {
        let row = self
            .client
            .query_opt(&self.more()?.recorded_output, &[&workflow_id, &path])
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()
    }

    /// A wait's recorded answer, if its step is recorded.
    async fn recorded_answer(
        &self,
        key: &StepKey,
    ) -> Result<Option<Result<Option<Vec<u8>>, StoreError>>, PgError> {
        let path = key.path.to_key();
        let Some((output, crc, name)) = self.recorded_row(&key.workflow_id, &path).await? else {
            return Ok(None);
        };
        let Some(output) = output else {
            return Ok(Some(Err(already_recorded(&self.path, key))));
        };
        if !intact(
            &step_key(&key.workflow_id, &path, &name),
            &output,
            Some(crc),
        ) {
            return Ok(Some(Err(self.damaged_answer(key))));
        }
        Ok(Some(decode_answer(&output).map_err(|e| {
            StoreError::new(&*self.path, StoreErrorKind::Invariant, e.to_string())
        })))
    }

    /// After a dropped connection: parked waits whose step was recorded meanwhile (by a
    /// transaction that committed as the connection dropped) are answered from it.
    async fn answer_recorded_parked(&mut self) {
        let keys: Vec<WaitFor> = self.parked.keys().cloned().collect();
        for what in keys {
            let Some(queue) = self.parked.remove(&what) else {
                continue;
            };
            let mut kept = VecDeque::new();
            for p in queue {
                let answer = match &p.record {
                    Some(r) => self.recorded_answer(&r.key).await.ok().flatten(),
                    None => None,
                };
                match answer {
                    Some(answer) => drop(p.reply.send(answer)),
                    None => kept.push_back(p),
                }
            }
            if !kept.is_empty() {
                self.parked.insert(what, kept);
            }
        }
    }

    /// Answers the parked waits that writes of other processes may have answered, in a
    /// transaction of their own (rolled back if it answered none).
    async fn recheck(&mut self, mut recheck: Recheck) {
        loop {
            let keys: Vec<WaitFor> = match recheck {
                Recheck::Nothing => return,
                Recheck::All => self.parked.keys().cloned().collect(),
                Recheck::These(keys) => keys
                    .into_iter()
                    .filter(|k| self.parked.contains_key(k))
                    .collect(),
            };
            if keys.is_empty() {
                return;
            }
            match self.recheck_once(keys).await {
                Ok(answered) => {
                    for a in answered {
                        let _ = a.parked.reply.send(a.answer);
                    }
                    return;
                }
                // The notification that asked is spent: connect again and look at
                // every parked wait (what else was sent meanwhile went unheard too).
                Err(e) if connection_lost(&e) => {
                    self.reconnect().await;
                    self.answer_recorded_parked().await;
                    recheck = Recheck::All;
                }
                Err(e) if fenced(&e) => {
                    self.fail_parked();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "answering waits for what another process \
                        wrote failed; they are answered at the next write of it");
                    return;
                }
            }
        }
    }

    /// One transaction of [`recheck`](Self::recheck): the parked waits for `keys`
    /// answered, committed if any was (rolled back, and parked again, otherwise).
    async fn recheck_once(&mut self, keys: Vec<WaitFor>) -> Result<Vec<Answered>, PgError> {
        self.next_batch();
        // What a parked wait takes needs the rest of the statements.
        self.ready(&[]).await?;
        if self.more.is_none() {
            self.more = Some(More::prepare(&self.client, &self.config.schema).await?);
        }
        if let Err(e) = self.begin().await {
            let _ = self.client.execute(&self.q()?.rollback, &[]).await;
            return Err(e);
        }
        match self.answer_parked(keys).await {
            Ok(answered) if answered.is_empty() => {
                self.client.execute(&self.q()?.rollback, &[]).await?;
                Ok(answered)
            }
            Ok(answered) => {
                if let Err(e) = self.client.execute(&self.q()?.commit, &[]).await {
                    self.unanswer(answered);
                    return Err(e.into());
                }
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Ok(answered)
            }
            Err(e) => {
                let _ = self.client.execute(&self.q()?.rollback, &[]).await;
                Err(e)
            }
        }
    }

    /// Numbers the transaction about to be tried, before anything of it is sent (its
    /// statements prepared, say): a try cut off before its fence ran then reads as not
    /// committed, since the journal's `last_batch` is still an earlier number.
    fn next_batch(&self) {
        self.batch_no.set(self.batch_no.get() + 1);
    }

    /// `BEGIN`, and the fence (with the number [`Writer::next_batch`] gave), pipelined.
    async fn begin(&self) -> Result<(), PgError> {
        let n = self.batch_no.get();
        let (begin, fence) = futures_util::future::join(
            self.client.execute(&self.q()?.begin, &[]),
            self.client.execute(&self.q()?.fence, &[&self.me, &n]),
        )
        .await;
        begin?;
        match fence {
            Err(e) if e.code().is_some_and(|c| c.code() == FENCE_REFUSED) => Err(PgError::Fenced),
            fence => fence.map(drop).map_err(PgError::from),
        }
    }

    /// Parks again waits that a transaction answered, and that rolled back.
    fn unanswer(&mut self, answered: Vec<Answered>) {
        for a in answered.into_iter().rev() {
            self.parked.entry(a.what).or_default().push_front(a.parked);
        }
    }

    /// The notifications for what `ops` send or set: every process's parked waits for
    /// it look again once the transaction commits.
    fn notifications(&self, ops: &[Op]) -> Vec<String> {
        let mut payloads: Vec<String> = Vec::new();
        for what in ops.iter().filter_map(Op::touches) {
            match super::executor::payload(&what) {
                Some(p) => {
                    if !payloads.contains(&p) {
                        payloads.push(p);
                    }
                }
                None => {
                    payloads = vec!["*".to_owned()];
                    break;
                }
            }
        }
        // Every process stops its runs of what was cancelled.
        for op in ops {
            if let Op::Cancel(id, ..) = op {
                let p = super::executor::cancel_payload(Some(id));
                if !payloads.contains(&p) {
                    payloads.push(p);
                }
            }
        }
        // Every process dispatches a queue that gained a workflow, a free slot or
        // other limits.
        for op in ops {
            let queue = match op {
                Op::Create(w, _) => w.queued.as_ref().map(|q| Some(&*q.queue)),
                Op::Finish(f, _) => self.queues.running_in(&f.id).map(|q| Some(&**q)),
                Op::Hold(id, ..) => self.queues.running_in(id).map(|q| Some(&**q)),
                Op::SetQueue(set, ..) => Some(Some(&*set.queue)),
                Op::Cancel(..) | Op::Resume(..) => Some(None),
                _ => None,
            };
            if let Some(queue) = queue {
                let p = super::queues::queue_payload(queue);
                if !payloads.contains(&p) {
                    payloads.push(p);
                }
            }
        }
        payloads
    }

    /// The queues a transaction of `ops` dispatches before it commits: those a write
    /// of it gave a workflow, a free slot or other limits (none before the runtime
    /// asks for dispatches).
    fn targets(&self, ops: &[Op]) -> super::queues::Targets {
        let mut t = super::queues::Targets::default();
        if self.queues.news.is_none() {
            return t;
        }
        for op in ops {
            match op {
                Op::Create(w, _) => {
                    if let Some(q) = &w.queued {
                        t.names.insert(q.queue.clone());
                    }
                }
                Op::Finish(f, _) => {
                    if let Some(q) = self.queues.running_in(&f.id) {
                        t.names.insert(q.clone());
                    }
                }
                Op::Hold(id, ..) => {
                    if let Some(q) = self.queues.running_in(id) {
                        t.names.insert(q.clone());
                    }
                }
                Op::SetQueue(set, ..) => {
                    t.names.insert(set.queue.clone());
                }
                // A cancellation or a resume may change many queues.
                Op::Cancel(..) | Op::Resume(..) => t.all = true,
                Op::Dispatch(d, _) => match &d.queues {
                    None => t.all = true,
                    Some(queues) => t.names.extend(queues.iter().cloned()),
                },
                _ => {}
            }
        }
        t
    }

    /// A transaction of `ops` committed with `done`: the slots its writes freed are no
    /// longer held here, and what it dispatched goes to the runtime (before the
    /// replies: a run the dispatch hands over must be launched before an enqueue's
    /// caller looks for it).
    /// (`done` is empty when the answers were lost with the connection.)
    fn queues_committed(&mut self, ops: &[Op], done: &[Done]) {
        for (i, op) in ops.iter().enumerate() {
            match (op, done.get(i)) {
                (Op::Finish(f, _), _) => self.queues.finished(&f.id),
                (Op::Hold(id, ..), _) => self.queues.finished(id),
                (Op::Cancel(..), Some(Done::Ids(ids))) => {
                    ids.iter().for_each(|id| self.queues.finished(id));
                }
                _ => {}
            }
        }
        self.queues.committed();
    }

    /// Runs `ops` in one transaction and commits it: what each did, and the parked
    /// waits it answered. Changes nothing kept in memory unless it commits.
    async fn attempt(&mut self, ops: &[Op]) -> Result<(Vec<Done>, Vec<Answered>), PgError> {
        self.next_batch();
        self.ready(ops).await?;
        self.queues.start_try();
        for op in ops {
            if let Op::Dispatch(
                DispatchOp {
                    news: Some(news), ..
                },
                _,
            ) = op
            {
                self.queues.news = Some(news.clone());
            }
        }
        let targets = self.targets(ops);
        let (notify_sql, commit_sql, rollback_sql) = {
            let q = self.q()?;
            (q.notify.clone(), q.commit.clone(), q.rollback.clone())
        };
        let wakes_parked = ops
            .iter()
            .filter_map(Op::touches)
            .any(|what| self.parked.contains_key(&what));
        if let [op] = ops
            && op.alone()
        {
            // The sequential step's cost: one statement, one round trip, one commit.
            let (done, _) = self.simple(op).await?;
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            return Ok((vec![done], Vec::new()));
        }
        let all_simple = !wakes_parked && targets.is_empty() && ops.iter().all(Op::simple);
        let mut notify = self.notifications(ops);
        if all_simple {
            // BEGIN, the fence, the writes, the notifications and COMMIT, sent at once.
            let notify = async {
                if notify.is_empty() {
                    return Ok(0);
                }
                self.client
                    .execute(&notify_sql, &[&self.channel, &notify])
                    .await
            };
            let (begin, done, (notified, commit)) = join3(
                self.begin(),
                self.simples(ops),
                futures_util::future::join(notify, self.client.execute(&commit_sql, &[])),
            )
            .await;
            begin?;
            // After a failed statement, COMMIT answers ROLLBACK without an error: the
            // batch committed only if every statement succeeded.
            let done = done
                .into_iter()
                .map(|d| d.map(|(done, _)| done))
                .collect::<Result<Vec<_>, _>>()?;
            notified?;
            commit?;
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
            return Ok((done, Vec::new()));
        }
        if let Err(e) = self.begin().await {
            let _ = self.client.execute(&rollback_sql, &[]).await;
            return Err(e);
        }
        let done = match self.in_transaction(ops).await {
            // Last: a slot freed or a workflow queued in this transaction is taken in
            // it.
            Ok(outcome) => match self.dispatch(targets).await {
                Ok(()) => Ok(outcome),
                Err(e) => {
                    self.unanswer(outcome.1);
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        if self.queues.requeued() {
            let all = super::queues::queue_payload(None);
            if !notify.contains(&all) {
                notify.push(all);
            }
        }
        match done {
            Ok(outcome) => {
                let ended = async {
                    if !notify.is_empty() {
                        self.client
                            .execute(&notify_sql, &[&self.channel, &notify])
                            .await?;
                    }
                    self.client.execute(&commit_sql, &[]).await
                };
                if let Err(e) = ended.await {
                    let _ = self.client.execute(&rollback_sql, &[]).await;
                    self.unanswer(outcome.1);
                    return Err(e.into());
                }
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Ok(outcome)
            }
            Err(e) => {
                let _ = self.client.execute(&rollback_sql, &[]).await;
                Err(e)
            }
        }
    }

    /// The writes of a transaction that holds a wait, or wakes one: in order, each
    /// run of simple writes pipelined; then the parked waits that what they wrote
    /// answers.
    async fn in_transaction(&mut self, ops: &[Op]) -> Result<(Vec<Done>, Vec<Answered>), PgError> {
        let mut done = Vec::with_capacity(ops.len());
        let mut touched = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            if ops[i].simple() {
                let end = ops[i..]
                    .iter()
                    .position(|op| !op.simple())
                    .map_or(ops.len(), |n| i + n);
                let this = &*self;
                for d in this.simples(&ops[i..end]).await {
                    let (d, t) = d?;
                    done.push(d);
                    touched.extend(t);
                }
                i = end;
            } else {
                let (d, t) = self.complex(&ops[i]).await?;
                done.push(d);
                touched.extend(t);
                i += 1;
            }
        }
        let answered = self.answer_parked(touched).await?;
        Ok((done, answered))
    }

    /// Answers every write of a committed batch, parks its waits that found nothing,
    /// and tells the parked waits it answered. A wait parked by this batch for what
    /// this batch also wrote (it came first) tries again at once.
    async fn committed(&mut self, ops: Vec<Op>, done: Vec<Done>, answered: Vec<Answered>) {
        self.queues_committed(&ops, &done);
        let touched: HashSet<WaitFor> = ops.iter().filter_map(Op::touches).collect();
        let mut again = Vec::new();
        for (op, done) in ops.into_iter().zip(done) {
            reply(op, done, &mut |what, parked| {
                if touched.contains(&what) {
                    again.push(what.clone());
                }
                self.park(what, parked);
            });
        }
        for a in answered {
            let _ = a.parked.reply.send(a.answer);
            let _ = a.what;
        }
        if again.is_empty() {
            return;
        }
        // Rare: a wait and the write that answers it in one batch, the wait first.
        self.recheck(Recheck::These(again)).await;
    }

    /// Keeps a wait that found nothing until what it waits for is written.
    fn park(&mut self, what: WaitFor, parked: Parked) {
        let queue = self.parked.entry(what).or_default();
        // Waiters that gave up are dropped here, and so is an earlier execution's wait
        // for the same step: this one replaces it.
        queue.retain(|p| {
            !p.reply.is_closed() && !same_step(p.record.as_ref(), parked.record.as_ref())
        });
        queue.push_back(parked);
    }

    /// The parked waits that `touched` may answer, answered in this transaction. On an
    /// error, the waits stay parked as they were.
    async fn answer_parked(&mut self, touched: Vec<WaitFor>) -> Result<Vec<Answered>, PgError> {
        let mut answered = Vec::new();
        let mut seen = HashSet::new();
        for what in touched {
            if !seen.insert(what.clone()) {
                continue;
            }
            let Some(mut queue) = self.parked.remove(&what) else {
                continue;
            };
            let mut failed = None;
            while let Some(p) = queue.pop_front() {
                if p.reply.is_closed() {
                    continue;
                }
                let wait = Wait {
                    what: what.clone(),
                    record: p.record,
                    park: true,
                };
                match self.take(&wait).await {
                    Ok(Ok(None)) => {
                        queue.push_front(Parked {
                            record: wait.record,
                            reply: p.reply,
                        });
                        break;
                    }
                    Ok(answer) => answered.push(Answered {
                        what: what.clone(),
                        parked: Parked {
                            record: wait.record,
                            reply: p.reply,
                        },
                        answer,
                    }),
                    Err(e) => {
                        queue.push_front(Parked {
                            record: wait.record,
                            reply: p.reply,
                        });
                        failed = Some(e);
                        break;
                    }
                }
            }
            if !queue.is_empty() {
                self.parked.insert(what.clone(), queue);
            }
            if let Some(e) = failed {
                // Put back, in front, what this transaction answered: it rolls back.
                self.unanswer(answered);
                return Err(e);
            }
        }
        Ok(answered)
    }

    /// The writes of one statement each, `ops`, pipelined, with their answers in their
    /// order; step records without effects go together in one statement when there are
    /// several (sent where the first of them is), which costs the server one
    /// statement instead of one per record.
    async fn simples(&self, ops: &[Op]) -> Vec<Written> {
        let mut batched = batchable(ops);
        let of = |kind: Batch| -> Vec<&Op> {
            ops.iter()
                .zip(&batched)
                .filter(|(_, b)| **b == Some(kind))
                .map(|(op, _)| op)
                .collect()
        };
        let creates: Vec<&NewWorkflow> = of(Batch::Creates)
            .into_iter()
            .filter_map(|op| match op {
                Op::Create(w, _) => Some(w),
                _ => None,
            })
            .collect();
        let records: Vec<&StepRecord> = of(Batch::Records)
            .into_iter()
            .filter_map(|op| match op {
                Op::Record(s, _) => Some(s),
                _ => None,
            })
            .collect();
        let finishes: Vec<&Finish> = of(Batch::Finishes)
            .into_iter()
            .filter_map(|op| match op {
                Op::Finish(f, _) => Some(f),
                _ => None,
            })
            .collect();
        // A batch of one is the write's own statement.
        for (kind, n) in [
            (Batch::Creates, creates.len()),
            (Batch::Records, records.len()),
            (Batch::Finishes, finishes.len()),
        ] {
            if n < 2 {
                batched
                    .iter_mut()
                    .filter(|b| **b == Some(kind))
                    .for_each(|b| *b = None);
            }
        }
        let first = |kind| batched.iter().position(|b| *b == Some(kind));
        let firsts = Batch::ALL.map(first);
        // Sent in the order of `ops`, each batch at the place of its first write; what
        // each answers is put back in the order of `ops` below.
        let mut sent: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Written>> + '_>>> =
            Vec::new();
        let mut from: Vec<Option<Batch>> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if let Some(k) = firsts.iter().position(|f| *f == Some(i)) {
                let kind = Batch::ALL[k];
                sent.push(match kind {
                    Batch::Creates => Box::pin(self.create_many(creates.clone())),
                    Batch::Records => Box::pin(self.record_many(records.clone())),
                    Batch::Finishes => Box::pin(self.finish_many(finishes.clone())),
                });
                from.push(Some(kind));
            } else if batched[i].is_none() {
                sent.push(Box::pin(async move { vec![self.simple(op).await] }));
                from.push(None);
            }
        }
        let mut answers: [std::vec::IntoIter<Written>; 3] = [
            Vec::new().into_iter(),
            Vec::new().into_iter(),
            Vec::new().into_iter(),
        ];
        let mut others = Vec::new();
        for (written, kind) in join_all(sent).await.into_iter().zip(from) {
            match kind {
                Some(kind) => answers[kind as usize] = written.into_iter(),
                None => others.extend(written),
            }
        }
        let mut others = others.into_iter();
        batched
            .iter()
            .map(|b| {
                let next = match b {
                    Some(kind) => answers[*kind as usize].next(),
                    None => others.next(),
                };
                next.unwrap_or_else(|| {
                    Err(PgError::Damaged(
                        "a write of a batch went unanswered".into(),
                    ))
                })
            })
            .collect()
    }

    /// Workflows' outcomes, in one statement ([`FINISH_MANY`]); their answers in their
    /// order. A failure of the statement is every outcome's.
    async fn finish_many(&self, finishes: Vec<&Finish>) -> Vec<Written> {
        let n = finishes.len();
        let mut ids = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut outputs = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut ats = Vec::with_capacity(n);
        let mut crcs = Vec::with_capacity(n);
        for f in &finishes {
            let (status, output, kind, error) = f.outcome.columns();
            ids.push(&*f.id);
            statuses.push(status.as_str());
            outputs.push(output);
            kinds.push(kind);
            errors.push(error);
            ats.push(f.at);
            crcs.push(output.map(|o| crc_column(keyed_crc32(&workflow_key(&f.id), o))));
        }
        let rows: Result<_, PgError> = async {
            Ok(self
                .client
                .query(
                    &self.q()?.finish_many,
                    &[&ids, &statuses, &outputs, &kinds, &errors, &ats, &crcs],
                )
                .await?)
        }
        .await;
        let rows = match batch_rows(rows, n) {
            Ok(rows) => rows,
            Err(failed) => return failed,
        };
        rows.iter()
            .map(|row| Ok((Done::Bool(row.try_get(1)?), None)))
            .collect()
    }

    /// Step records without effects, in one statement ([`RECORD_MANY`]); their answers
    /// in their order. A failure of the statement is every record's.
    async fn record_many(&self, records: Vec<&StepRecord>) -> Vec<Written> {
        let n = records.len();
        let mut ids = Vec::with_capacity(n);
        let mut paths = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut outputs = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut started = Vec::with_capacity(n);
        let mut finished = Vec::with_capacity(n);
        let mut crcs = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut fingerprints = Vec::with_capacity(n);
        for s in &records {
            let (output, error, kind) = s.outcome.columns();
            let path = s.path.to_key();
            crcs.push(crc_column(keyed_crc32(
                &step_key(&s.workflow_id, &path, s.name),
                output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()),
            )));
            ids.push(&*s.workflow_id);
            paths.push(path);
            names.push(s.name);
            outputs.push(output);
            errors.push(error);
            attempts.push(i64::from(s.attempts));
            started.push(s.started_at);
            finished.push(s.finished_at);
            kinds.push(kind);
            fingerprints.push(fingerprint_column(s.args));
        }
        let rows: Result<_, PgError> = async {
            Ok(self
                .client
                .query(
                    &self.q()?.record_many,
                    &[
                        &ids,
                        &paths,
                        &names,
                        &outputs,
                        &errors,
                        &attempts,
                        &started,
                        &finished,
                        &crcs,
                        &kinds,
                        &fingerprints,
                    ],
                )
                .await?)
        }
        .await;
        let rows = match batch_rows(rows, n) {
            Ok(rows) => rows,
            Err(failed) => return failed,
        };
        // Two records of one path in a batch: the first is inserted (`DISTINCT ON` keeps
        // the lowest `ord`), the next is refused as a path recorded twice.
        let mut inserted_paths = std::collections::HashSet::new();
        records
            .iter()
            .zip(rows)
            .map(|(s, row)| {
                let (exists, mine, inserted): (bool, bool, bool) =
                    (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                let inserted = inserted && inserted_paths.insert((&*s.workflow_id, &s.path));
                let recorded = self.record_outcome(
                    i64::from(exists),
                    i64::from(mine),
                    i64::from(inserted),
                    &s.workflow_id,
                    &s.path,
                );
                Ok((Done::Unit(recorded), None))
            })
            .collect()
    }

    /// What a create did, from its statement's row: `inserted`, or else the existing
    /// workflow's columns from `at` (read again if the row was made after the
    /// statement began: by another process, or by another create of the same batch).
    async fn created(
        &self,
        row: &tokio_postgres::Row,
        at: usize,
        inserted: bool,
        id: &str,
    ) -> Result<Done, PgError> {
        let existing: Option<String> = row.try_get(at)?;
        let created = if inserted {
            Ok(Created::New)
        } else if existing.is_some() {
            workflow_row(row, at).map(|w| Created::Existing(Box::new(w)))
        } else {
            match self.client.query_opt(&self.q()?.workflow, &[&id]).await {
                Ok(Some(row)) => workflow_row(&row, 0).map(|w| Created::Existing(Box::new(w))),
                Ok(None) => Err(PgError::Damaged(format!(
                    "workflow {id} could neither be created nor found"
                ))),
                Err(e) => Err(PgError::Sql(e)),
            }
        };
        match created {
            // The whole transaction goes again once the connection is back.
            Err(e) if connection_lost(&e) => Err(e),
            created => Ok(Done::Created(
                created.map_err(|e| store_error(&self.path, e)),
            )),
        }
    }

    /// New workflows, in one statement ([`create_many_sql`]); their answers in their order.
    /// A failure of the statement is every create's.
    async fn create_many(&self, creates: Vec<&NewWorkflow>) -> Vec<Written> {
        let n = creates.len();
        let mut ids = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut inputs = Vec::with_capacity(n);
        let mut crcs = Vec::with_capacity(n);
        let mut versions = Vec::with_capacity(n);
        let mut parents = Vec::with_capacity(n);
        let mut created_at = Vec::with_capacity(n);
        let mut deadlines = Vec::with_capacity(n);
        for w in &creates {
            ids.push(&*w.id);
            names.push(w.name);
            inputs.push(w.input.as_slice());
            crcs.push(crc_column(keyed_crc32(&workflow_key(&w.id), &w.input)));
            versions.push(w.app_version.as_deref());
            parents.push(w.parent_id.as_deref());
            created_at.push(w.created_at);
            deadlines.push(w.deadline_at);
        }
        let rows: Result<_, PgError> = async {
            Ok(self
                .client
                .query(
                    &self.q()?.create_many,
                    &[
                        &ids,
                        &names,
                        &inputs,
                        &crcs,
                        &versions,
                        &parents,
                        &created_at,
                        &deadlines,
                    ],
                )
                .await?)
        }
        .await;
        let rows = match batch_rows(rows, n) {
            Ok(rows) => rows,
            Err(failed) => return failed,
        };
        let answers = creates.iter().zip(&rows).map(|(w, row)| async move {
            let inserted: bool = row.try_get(1)?;
            Ok((self.created(row, 2, inserted, &w.id).await?, None))
        });
        join_all(answers).await
    }

    /// A write of one statement.
    async fn simple(&self, op: &Op) -> Result<(Done, Option<WaitFor>), PgError> {
        let c = &self.client;
        let q = self.q()?;
        Ok(match op {
            Op::Create(
                w @ NewWorkflow {
                    queued: Some(queued),
                    ..
                },
                _,
            ) => match self.enqueue(w, queued).await? {
                Err(e) if connection_lost(&e) => return Err(e),
                created => (
                    Done::Created(created.map_err(|e| store_error(&self.path, e))),
                    None,
                ),
            },
            Op::SetQueue(set, at, _) => {
                self.set_limits(set, *at).await?;
                (Done::Unit(Ok(())), None)
            }
            Op::Hold(id, at, _) => {
                self.hold(id, *at).await?;
                (Done::Unit(Ok(())), None)
            }
            Op::Schedule(write, at, _) => {
                self.set_schedule(write, *at).await?;
                (Done::Unit(Ok(())), None)
            }
            Op::Create(w, _) => {
                let row = c
                    .query_one(
                        &q.create,
                        &[
                            &&*w.id,
                            &w.name,
                            &w.input,
                            &crc_column(keyed_crc32(&workflow_key(&w.id), &w.input)),
                            &w.app_version.as_deref(),
                            &w.parent_id.as_deref(),
                            &w.created_at,
                            &w.deadline_at,
                        ],
                    )
                    .await?;
                let inserted: i64 = row.try_get(0)?;
                (self.created(&row, 1, inserted == 1, &w.id).await?, None)
            }
            Op::Record(s, _) => {
                let (output, error, kind) = s.outcome.columns();
                let path = s.path.to_key();
                let crc = crc_column(keyed_crc32(
                    &step_key(&s.workflow_id, &path, s.name),
                    output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()),
                ));
                let attempts = i64::from(s.attempts);
                let fingerprint = fingerprint_column(s.args);
                let id: &str = &s.workflow_id;
                let base: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
                    &id,
                    &path,
                    &s.name,
                    &output,
                    &error,
                    &attempts,
                    &s.started_at,
                    &s.finished_at,
                    &crc,
                    &kind,
                    &fingerprint,
                ];
                let (row, touched) = match &s.effect {
                    Effect::None => (c.query_one(&q.record, &base).await?, None),
                    Effect::Send(m) => {
                        let crc = crc_column(keyed_crc32(
                            &message_key(&m.destination, &m.topic),
                            &m.payload,
                        ));
                        let mut params = base.to_vec();
                        params.extend_from_slice(&[
                            &m.destination,
                            &m.topic,
                            &m.payload,
                            &crc,
                            &m.sent_at,
                        ]);
                        (
                            c.query_one(&self.more()?.record_send, &params).await?,
                            Some(message_for(m)),
                        )
                    }
                    Effect::SetEvent(e) => {
                        let (key, value) = &**e;
                        let crc = crc_column(keyed_crc32(&event_key(id, key), value));
                        let mut params = base.to_vec();
                        params.extend_from_slice(&[key, value, &crc]);
                        (
                            c.query_one(&self.more()?.record_event, &params).await?,
                            Some(WaitFor::Event {
                                workflow_id: id.to_owned(),
                                key: key.clone(),
                            }),
                        )
                    }
                };
                let recorded = self.recorded(&row, &s.workflow_id, &s.path)?;
                if let (Ok(()), Some(times)) = (&recorded, &s.attempt_times) {
                    // Rare (a step that retried): one more statement, in the batch.
                    c.execute(
                        &format!(
                            "UPDATE {s}.steps SET attempt_times = $3
                             WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1)
                               AND path = $2",
                            s = self.schema
                        ),
                        &[&id, &path, times],
                    )
                    .await?;
                }
                let touched = touched.filter(|_| recorded.is_ok());
                (Done::Unit(recorded), touched)
            }
            Op::Finish(f, _) => {
                let (status, output, kind, error) = f.outcome.columns();
                let crc = output.map(|o| crc_column(keyed_crc32(&workflow_key(&f.id), o)));
                let n = c
                    .execute(
                        &q.finish,
                        &[
                            &&*f.id,
                            &status.as_str(),
                            &output,
                            &kind,
                            &error,
                            &f.at,
                            &crc,
                        ],
                    )
                    .await?;
                (Done::Bool(n == 1), None)
            }
            Op::Started(key, at, _) => (Done::Unit(self.start_record(key, *at, None).await?), None),
            Op::Patch(workflow_id, at, name, _) => {
                let at = at.to_key();
                let crc = crc_column(keyed_crc32(&step_key(workflow_id, &at, name), &[]));
                let row = c
                    .query_one(&self.more()?.patch, &[&&**workflow_id, &at, name, &crc])
                    .await?;
                let (runs, mine): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                (Done::Unit(self.run_exists(runs, mine, workflow_id)), None)
            }
            Op::Send(m, _) => {
                let crc = crc_column(keyed_crc32(
                    &message_key(&m.destination, &m.topic),
                    &m.payload,
                ));
                c.execute(
                    &self.more()?.send,
                    &[&m.destination, &m.topic, &m.payload, &crc, &m.sent_at],
                )
                .await?;
                (Done::Unit(Ok(())), Some(message_for(m)))
            }
            Op::Cancel(id, reason, at, _) => {
                let rows = c
                    .query(
                        &self.more()?.cancel,
                        &[id, &reason.as_str(), &reason.to_string(), at],
                    )
                    .await?;
                let ids = rows
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                (Done::Ids(ids), None)
            }
            Op::Resume(id, at, _) => {
                let rows = c.query(&self.more()?.resume, &[id, at]).await?;
                let ids = rows
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                (Done::Ids(ids), None)
            }
            // Never sent here (see `Op::simple`); answered as a mismatch if it were.
            Op::Wait(..) | Op::Expire(..) | Op::GiveBack(..) | Op::Dispatch(..) => {
                (Done::Bool(false), None)
            }
        })
    }

    /// A write that reads before it writes.
    async fn complex(&mut self, op: &Op) -> Result<(Done, Option<WaitFor>), PgError> {
        Ok(match op {
            // Nobody waits for it any more: take nothing.
            Op::Wait(_, reply) if reply.is_closed() => (Done::Value(Ok(None)), None),
            Op::Wait(wait, _) => match self.take(wait).await? {
                Ok(None) if wait.park => {
                    if let Some(r) = &wait.record
                        && r.deadline_at.is_some()
                        && let Err(e) = self
                            .start_record(&r.key, r.started_at, r.deadline_at)
                            .await?
                    {
                        return Ok((Done::Value(Err(e)), None));
                    }
                    (Done::Park, None)
                }
                Ok(None) => {
                    let recorded = match &wait.record {
                        Some(r) => self.record_answer(r, None, None).await?,
                        None => Ok(()),
                    };
                    (Done::Value(recorded.map(|()| None)), None)
                }
                answer => (Done::Value(answer), None),
            },
            Op::Expire(record, _) => (Done::Value(self.expire(record).await?), None),
            Op::GiveBack(key, topic, _) => {
                let (done, touched) = self.give_back(key, topic).await?;
                (Done::Unit(done), touched)
            }
            // The dispatch itself comes last in the transaction (see `attempt`).
            Op::Dispatch(d, _) => {
                if d.requeue {
                    self.requeue(d.held).await?;
                }
                (Done::Unit(Ok(())), None)
            }
            _ => return self.simple(op).await,
        })
    }

    /// A wait's answer, if what it waits for is there, recorded as its step (taking the
    /// message) if it has a record.
    async fn take(&self, wait: &Wait) -> Result<Result<Option<Vec<u8>>, StoreError>, PgError> {
        let damaged = |what: String| {
            StoreError::new(
                &*self.path,
                StoreErrorKind::Invariant,
                format!("{what} does not match its checksum: the journal is damaged"),
            )
        };
        let (answer, seq) = match &wait.what {
            WaitFor::Message { destination, topic } => {
                let Some(row) = self
                    .client
                    .query_opt(&self.more()?.oldest_message, &[destination, topic])
                    .await?
                else {
                    return Ok(Ok(None));
                };
                let (seq, payload): (i64, Vec<u8>) = (row.try_get(0)?, row.try_get(1)?);
                if !intact(&message_key(destination, topic), &payload, row.try_get(2)?) {
                    return Ok(Err(damaged(format!(
                        "message {seq} for workflow {destination} on topic `{topic}`"
                    ))));
                }
                (payload, Some(seq))
            }
            WaitFor::Event { workflow_id, key } => {
                let Some(row) = self
                    .client
                    .query_opt(&self.more()?.event, &[workflow_id, key])
                    .await?
                else {
                    return Ok(Ok(None));
                };
                let value: Vec<u8> = row.try_get(0)?;
                if !intact(&event_key(workflow_id, key), &value, row.try_get(1)?) {
                    return Ok(Err(damaged(format!(
                        "event `{key}` of workflow {workflow_id}"
                    ))));
                }
                (value, None)
            }
        };
        if let Some(r) = &wait.record {
            // The record and the taking of the message are one statement: a record
            // refused takes nothing, and a message taken is recorded.
            if let Err(e) = self.record_answer(r, Some(&answer), seq).await? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(Some(answer)))
    }

    /// Records a wait's answer as its step, taking message `take` with it.
    async fn record_answer(
        &self,
        r: &WaitRecord,
        answer: Option<&[u8]>,
        take: Option<i64>,
    ) -> Result<Result<(), StoreError>, PgError> {
        let output = encode_answer(self.codec, answer);
        let path = r.key.path.to_key();
        let crc = crc_column(keyed_crc32(
            &step_key(&r.key.workflow_id, &path, r.key.name),
            &output,
        ));
        let row = self
            .client
            .query_one(
                &self.more()?.record_take,
                &[
                    &&*r.key.workflow_id,
                    &path,
                    &r.key.name,
                    &Some(output.as_slice()),
                    &None::<&str>,
                    &1i64,
                    &r.started_at,
                    &crate::util::now_ms(),
                    &crc,
                    &None::<&str>,
                    &fingerprint_column(r.key.args),
                    &take,
                ],
            )
            .await?;
        self.recorded(&row, &r.key.workflow_id, &r.key.path)
    }

    /// Writes a start record (kept if one is there already).
    async fn start_record(
        &self,
        key: &StepKey,
        at: i64,
        wake_at: Option<i64>,
    ) -> Result<Result<(), StoreError>, PgError> {
        let path = key.path.to_key();
        let crc = crc_column(keyed_crc32(
            &step_key(&key.workflow_id, &path, key.name),
            started_value(at, wake_at).as_bytes(),
        ));
        let row = self
            .client
            .query_one(
                &self.more()?.started,
                &[&&*key.workflow_id, &path, &key.name, &at, &wake_at, &crc],
            )
            .await?;
        let (runs, mine): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok(self.run_exists(runs, mine, &key.workflow_id))
    }

    /// A parked wait whose deadline passed: records `None` unless it was answered.
    async fn expire(
        &mut self,
        r: &WaitRecord,
    ) -> Result<Result<Option<Vec<u8>>, StoreError>, PgError> {
        let mut was_parked = false;
        for queue in self.parked.values_mut() {
            let before = queue.len();
            queue.retain(|p| !same_step(p.record.as_ref(), Some(r)));
            was_parked |= queue.len() != before;
        }
        self.parked.retain(|_, q| !q.is_empty());
        let path = r.key.path.to_key();
        let recorded = self
            .client
            .query_opt(
                &self.more()?.recorded_output,
                &[&&*r.key.workflow_id, &path],
            )
            .await?;
        Ok(match recorded {
            None => self.record_answer(r, None, None).await?.map(|()| None),
            Some(row) => {
                let output: Option<Vec<u8>> = row.try_get(0)?;
                let name: String = row.try_get(2)?;
                match output {
                    // Answered before the deadline was noticed: that answer stands.
                    Some(output) if !was_parked => {
                        if !intact(
                            &step_key(&r.key.workflow_id, &path, &name),
                            &output,
                            row.try_get(1)?,
                        ) {
                            Err(self.damaged_answer(&r.key))
                        } else {
                            decode_answer(&output).map_err(|e| {
                                StoreError::new(
                                    &*self.path,
                                    StoreErrorKind::Invariant,
                                    e.to_string(),
                                )
                            })
                        }
                    }
                    _ => Err(already_recorded(&self.path, &r.key)),
                }
            }
        })
    }

    /// Undoes a `recv` that never delivered its message: its record goes, and the
    /// message goes back before every other.
    async fn give_back(
        &self,
        key: &StepKey,
        topic: &str,
    ) -> Result<(Result<(), StoreError>, Option<WaitFor>), PgError> {
        let path = key.path.to_key();
        let Some(row) = self
            .client
            .query_opt(&self.more()?.recorded_output, &[&&*key.workflow_id, &path])
            .await?
        else {
            return Ok((Ok(()), None));
        };
        let output: Option<Vec<u8>> = row.try_get(0)?;
        let name: String = row.try_get(2)?;
        let Some(output) = output else {
            return Ok((Ok(()), None));
        };
        if !intact(
            &step_key(&key.workflow_id, &path, &name),
            &output,
            row.try_get(1)?,
        ) {
            return Ok((Err(self.damaged_answer(key)), None));
        }
        let Ok(Some(payload)) = decode_answer(&output) else {
            // A recorded timeout: nothing was taken.
            return Ok((Ok(()), None));
        };
        let crc = crc_column(keyed_crc32(&message_key(&key.workflow_id, topic), &payload));
        let n = self
            .client
            .execute(
                &self.more()?.give_back,
                &[
                    &&*key.workflow_id,
                    &path,
                    &key.name,
                    &topic,
                    &payload,
                    &crc,
                    &crate::util::now_ms(),
                ],
            )
            .await?;
        let touched = (n == 1).then(|| WaitFor::Message {
            destination: key.workflow_id.to_string(),
            topic: topic.to_owned(),
        });
        Ok((Ok(()), touched))
    }

    /// What a step record's counts (see [`RECORD_COUNTS`]) say.
    fn recorded(
        &self,
        row: &tokio_postgres::Row,
        workflow_id: &str,
        path: &StepPath,
    ) -> Result<Result<(), StoreError>, PgError> {
        let (runs, mine, inserted): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        Ok(self.record_outcome(runs, mine, inserted, workflow_id, path))
    }

    /// What a step record's counts (its run's, this executor's, the inserted rows) say.
    fn record_outcome(
        &self,
        runs: i64,
        mine: i64,
        inserted: i64,
        workflow_id: &str,
        path: &StepPath,
    ) -> Result<(), StoreError> {
        if let Err(e) = self.run_exists(runs, mine, workflow_id) {
            Err(e)
        } else if inserted == 0 {
            Err(StoreError::new(
                &*self.path,
                StoreErrorKind::Invariant,
                format!(
                    "step {path} of workflow {workflow_id} is already recorded; a recorded step \
                     is never overwritten"
                ),
            ))
        } else {
            Ok(())
        }
    }

    /// What a statement's counts of the run (see [`run_of_first_parameter!`]) say.
    fn run_exists(&self, runs: i64, mine: i64, workflow_id: &str) -> Result<(), StoreError> {
        if runs == 0 {
            Err(no_such_run(&self.path, workflow_id))
        } else if mine == 0 {
            Err(taken_over(&self.path, workflow_id))
        } else {
            Ok(())
        }
    }

    fn damaged_answer(&self, key: &StepKey) -> StoreError {
        StoreError::new(
            &*self.path,
            StoreErrorKind::Invariant,
            format!(
                "the recorded answer of step {} of workflow {} {}",
                key.path,
                key.workflow_id,
                crate::journal::DAMAGED
            ),
        )
    }
}

/// The error of a statement used before [`Writer::ready`] prepared it: a bug.
fn unprepared() -> PgError {
    PgError::Damaged(
        "the journal's writer used a statement before preparing it (a bug in durable)".into(),
    )
}

/// Whether a batch of `ops` needs the writer's [`More`] statements: any write but a
/// create, a step record without effects and an outcome.
fn needs_more(ops: &[Op]) -> bool {
    !ops.iter().all(|op| match op {
        Op::Create(..) | Op::Finish(..) => true,
        // A step that retried writes its attempts' times after its row (see `simple`).
        Op::Record(s, _) => matches!(s.effect, Effect::None) && s.attempt_times.is_none(),
        _ => false,
    })
}

/// Whether `e` is the fence refusing: another runtime took this one's workflows over.
fn fenced(e: &PgError) -> bool {
    matches!(e, PgError::Fenced)
}

/// Which parked waits to try again after a batch.
enum Recheck {
    Nothing,
    These(Vec<WaitFor>),
    All,
}

/// Adds a queued command's write to `ops` (or its recheck to `recheck`); `Some` for a
/// command that stops the writer (with a close's answer, if it is one).
fn queued(
    c: Command,
    ops: &mut Vec<Op>,
    recheck: &mut Recheck,
    rejoined: &mut Option<i64>,
) -> Option<Option<std::sync::mpsc::Sender<()>>> {
    match c {
        Command::Executor(new) => {
            *rejoined = Some(new);
            None
        }
        Command::Write(op) => {
            ops.push(op);
            None
        }
        Command::Recheck(keys) => {
            *recheck = match (std::mem::replace(recheck, Recheck::Nothing), keys) {
                (Recheck::All, _) | (_, None) => Recheck::All,
                (Recheck::Nothing, Some(keys)) => Recheck::These(keys),
                (Recheck::These(mut had), Some(keys)) => {
                    had.extend(keys);
                    Recheck::These(had)
                }
            };
            None
        }
        Command::Close(done) => Some(Some(done)),
        Command::Stop => Some(None),
    }
}

/// Answers `op` with what it did; a wait that parks goes to `park`.
fn reply(op: Op, done: Done, park: &mut impl FnMut(WaitFor, Parked)) {
    let mismatch = || {
        StoreError::new(
            "",
            StoreErrorKind::Invariant,
            "the journal's writer answered a write with another's answer",
        )
    };
    match (op, done) {
        (Op::Create(_, r), Done::Created(c)) => drop(r.send(c)),
        (Op::Finish(_, r), Done::Bool(b)) => drop(r.send(Ok(b))),
        (Op::Cancel(_, _, _, r) | Op::Resume(_, _, r), Done::Ids(ids)) => drop(r.send(Ok(ids))),
        (
            Op::Record(_, r)
            | Op::Started(_, _, r)
            | Op::Patch(_, _, _, r)
            | Op::Send(_, r)
            | Op::GiveBack(_, _, r)
            | Op::SetQueue(_, _, r)
            | Op::Dispatch(_, r)
            | Op::Hold(_, _, r)
            | Op::Schedule(_, _, r),
            Done::Unit(u),
        ) => drop(r.send(u)),
        (Op::Wait(_, r) | Op::Expire(_, r), Done::Value(v)) => drop(r.send(v)),
        (Op::Wait(wait, reply), Done::Park) => park(
            wait.what,
            Parked {
                record: wait.record,
                reply,
            },
        ),
        (op, _) => op.fail(mismatch()),
    }
}

/// The error for a record made for a workflow another executor owns now.
pub(super) fn taken_over(path: &Path, workflow_id: &str) -> StoreError {
    StoreError::new(
        path,
        StoreErrorKind::TakenOver,
        format!(
            "workflow {workflow_id} belongs to another runtime sharing this journal now (it \
             took the workflow over while this one was out of touch with the database for \
             longer than its lease, or resumed it): it goes on there, and this runtime \
             records nothing more for it"
        ),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Batch, Place, batches};

    /// Writes of three workflows: 0 a step record, 1 an outcome, 2 a create (all
    /// batched), 3 another write, 4 a write about many.
    fn places() -> impl Strategy<Value = Vec<(u8, u8)>> {
        prop::collection::vec((0u8..5, 0u8..3), 0..40)
    }

    proptest! {
        /// Each batch goes at the place of its first write. Two writes about one
        /// workflow, or with a write about many between or among them, go in their
        /// order; and a write is batched whenever that allows it.
        #[test]
        fn batching_keeps_the_order_of_writes_about_one_workflow(ops in places()) {
            let ids = ["a", "b", "c"];
            let places: Vec<Place<'_>> = ops
                .iter()
                .map(|&(kind, w)| {
                    let id = ids[usize::from(w)];
                    match kind {
                        0 => Place::Batch(Batch::Records, id),
                        1 => Place::Batch(Batch::Finishes, id),
                        2 => Place::Batch(Batch::Creates, id),
                        3 => Place::Other(id),
                        _ => Place::Barrier,
                    }
                })
                .collect();
            let batched = batches(&places);
            prop_assert_eq!(batched.len(), places.len());
            let first = |kind| batched.iter().position(|b| *b == Some(kind));
            // Where each write is sent: (place, then its own index).
            let sent: Vec<(usize, usize)> = batched
                .iter()
                .enumerate()
                .map(|(i, b)| (b.and_then(first).unwrap_or(i), i))
                .collect();
            let conflict = |x: &Place<'_>, y: &Place<'_>| match (x, y) {
                (Place::Barrier, _) | (_, Place::Barrier) => true,
                (Place::Batch(_, a) | Place::Other(a), Place::Batch(_, b) | Place::Other(b)) => {
                    a == b
                }
            };
            for j in 0..places.len() {
                for i in 0..j {
                    if conflict(&places[i], &places[j]) {
                        prop_assert!(
                            sent[i] < sent[j],
                            "writes {} and {} of {:?} swapped ({:?})", i, j, places, batched
                        );
                    }
                }
                // Only batched kinds are batched, each in its own kind.
                match places[j] {
                    Place::Batch(kind, _) => {
                        prop_assert!(batched[j].is_none() || batched[j] == Some(kind));
                    }
                    _ => prop_assert!(batched[j].is_none()),
                }
            }
            // The first write of each kind is batched: batching is not simply off.
            for kind in Batch::ALL {
                if let Some(i) = places.iter().position(|p| matches!(p, Place::Batch(k, _) if *k == kind)) {
                    prop_assert_eq!(batched[i], Some(kind));
                }
            }
        }
    }
}
