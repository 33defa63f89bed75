//! Queues and schedules on PostgreSQL: enqueueing, the dispatch that runs in the
//! transaction of a batch that freed a slot or queued a workflow, limits, the reads of
//! a queue's state, and schedules' rows. See [`crate::journal::queue`] for the model.
//!
//! Many processes share the journal, so a dispatch differs from SQLite's in three ways:
//! - It takes its queue's row lock (`FOR UPDATE SKIP LOCKED`) before it counts the
//!   running workflows: two dispatches of one queue never count the same free slot.
//!   One that finds the lock taken passes the queue over; the batch's notification,
//!   delivered at its commit, makes every process dispatch the queue again.
//! - The workflows it takes become its executor's (`owner`), and the per-process limit
//!   counts the running workflows this executor owns.
//! - A takeover does not move a dispatched workflow to the claimer: it goes back to
//!   its queue (`requeue`), keeping its first dispatch time, and is dispatched again
//!   under the queue's limits.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::writer::Writer;
use super::{PgError, connection_lost, crc_column, workflow_columns, workflow_row};
use crate::journal::crc::{keyed_crc32, workflow_key};
use crate::journal::queue::{
    Candidate, Dispatched, Enqueued, Limits, LimitsFrom, Partition, QueueNews, QueueStats,
    QueuedRow, READ_AT_MOST, Rate, SetLimits, free_slots, heads, pick,
};
use crate::journal::schedule::{ScheduleChange, ScheduleState, ScheduleWrite};
use crate::journal::{Created, NewWorkflow, WorkflowRecord};

/// What the writer keeps for dispatching.
#[derive(Debug, Default)]
pub(super) struct Queues {
    /// Where dispatches go; `None` until the runtime asks (nothing is dispatched
    /// before).
    pub(super) news: Option<tokio::sync::mpsc::UnboundedSender<QueueNews>>,
    /// The workflows this program has (`None`: any): a dispatch takes no other.
    names: Option<Vec<String>>,
    /// The workflows dispatched to this executor that hold slots, with their queues:
    /// a finish of one dispatches its queue in the same transaction.
    running: HashMap<Arc<str>, Arc<str>>,
    /// What the transaction being tried dispatched, sent once it commits.
    dispatched: Vec<Dispatched>,
    /// The earliest time a dispatch of it found something becomes dispatchable.
    due: Option<i64>,
    /// Whether it put dispatched workflows of stopped executors back in their queues.
    requeued: std::cell::Cell<bool>,
    /// The statements a dispatch or an enqueue runs, prepared on the writer's
    /// connection the first time each is used, by their text.
    prepared: std::cell::RefCell<HashMap<&'static str, tokio_postgres::Statement>>,
}

impl Queues {
    /// Dispatching for a program that has `names` (`None`: any).
    pub(super) fn new(names: Option<&[&'static str]>) -> Queues {
        Queues {
            names: names.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
            ..Queues::default()
        }
    }

    /// The queue of workflow `id`, if it holds a slot dispatched to this executor.
    pub(super) fn running_in(&self, id: &str) -> Option<&Arc<str>> {
        self.running.get(id)
    }

    /// Forgets the prepared statements: the connection is new.
    pub(super) fn forget_statements(&self) {
        self.prepared.borrow_mut().clear();
    }

    /// Forgets every dispatched workflow: they were taken over.
    pub(super) fn forget_running(&mut self) {
        self.running.clear();
    }

    /// Forgets `id`'s slot: it finished, was cancelled or was held.
    pub(super) fn finished(&mut self, id: &str) {
        self.running.remove(id);
    }

    /// A new try of a transaction: nothing dispatched yet.
    pub(super) fn start_try(&mut self) {
        self.dispatched.clear();
        self.due = None;
        self.requeued.set(false);
    }

    /// What the transaction tried last dispatched, taken away (see
    /// [`Queues::restore_tried`]).
    pub(super) fn take_tried(&mut self) -> (Vec<Dispatched>, Option<i64>) {
        (std::mem::take(&mut self.dispatched), self.due.take())
    }

    /// Gives back what [`Queues::take_tried`] took: that transaction committed.
    pub(super) fn restore_tried(&mut self, (dispatched, due): (Vec<Dispatched>, Option<i64>)) {
        self.dispatched = dispatched;
        self.due = due;
    }

    /// Whether the transaction being tried put workflows back in their queues.
    pub(super) fn requeued(&self) -> bool {
        self.requeued.get()
    }

    /// The transaction committed: what it dispatched goes to the runtime.
    pub(super) fn committed(&mut self) {
        let dispatched = std::mem::take(&mut self.dispatched);
        let due = self.due.take();
        let Some(news) = &self.news else {
            return;
        };
        if !dispatched.is_empty() {
            for d in &dispatched {
                self.running
                    .insert(Arc::from(d.record.id.as_str()), d.queue.clone());
            }
            let _ = news.send(QueueNews::Dispatched(dispatched));
        }
        if let Some(at) = due {
            let _ = news.send(QueueNews::DueAt(at));
        }
    }

    fn due_at(&mut self, at: Option<i64>) {
        if let Some(at) = at {
            self.due = Some(self.due.map_or(at, |d| d.min(at)));
        }
    }
}

/// Which queues a transaction dispatches before it commits.
#[derive(Debug, Default)]
pub(super) struct Targets {
    pub(super) all: bool,
    pub(super) names: BTreeSet<Arc<str>>,
}

impl Targets {
    pub(super) fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty()
    }
}

/// The notification payload that makes every process dispatch `queue` (`None`: every
/// queue).
pub(super) fn queue_payload(queue: Option<&str>) -> String {
    format!("q\u{1f}{}", queue.unwrap_or("*"))
}

/// The conditions of a workflow waiting in queue `$1`, for `concat!`.
macro_rules! waiting_in_first_parameter {
    () => {
        "queue = $1 AND queue_state = 'queued' AND status = 'pending'"
    };
}

/// Puts back in their queues the dispatched workflows of executors that stopped (and
/// those a closing runtime gave up), and, if `held`, the held ones: each is dispatched
/// again, under its queue's limits, keeping its first dispatch time. Held ones go back
/// only at a runtime's open, as on SQLite (one that cannot run is not tried again and
/// again).
pub(super) fn requeue_sql(s: &str, held: bool) -> String {
    format!(
        "UPDATE {s}.workflows SET owner = NULL, queue_state = 'queued'
         WHERE run IN (
             SELECT run FROM {s}.workflows
             WHERE status = 'pending'
               AND (queue_state = 'held' AND {held} OR queue_state = 'running'
                    AND (owner IS NULL
                         OR owner IN (SELECT id FROM {s}.executors WHERE dead_at IS NOT NULL)))
             -- Rows another transaction holds (another process putting them back) are
             -- left to it: two of these never wait for each other.
             FOR UPDATE SKIP LOCKED)"
    )
}

/// How many times an enqueue is tried whose deduplication id's holder finished
/// meanwhile (see `Queues::enqueue`).
const ENQUEUE_TRIES: usize = 3;

/// How soon a runtime dispatches again a queue whose lock another process held.
const SKIPPED_AGAIN_MS: i64 = 50;

const SQL_ENQUEUE: &str = "WITH ins AS (
         INSERT INTO {s}.workflows (id, name, status, input, input_crc32, app_version,
             parent_id, created_at, updated_at, deadline_at, owner, queue, queue_state,
             priority, partition_key, dedup_id, not_before, timeout_ms)
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $7, $8, NULL, $9, 'queued', $10, $11,
                 $12, $13, $14)
         ON CONFLICT DO NOTHING RETURNING run)
     SELECT (SELECT count(*) FROM ins), {w}
     FROM (VALUES (1)) one LEFT JOIN {s}.workflows w ON w.id = $1";

/// The limits of queue `$1`, as [`limits_row`] reads them, for `concat!`.
macro_rules! limits_of_first_parameter {
    () => {
        "SELECT concurrency, per_process, partition_concurrency, rate_count, rate_period_ms,
             paused, set_at_run_time
         FROM {s}.queues WHERE name = $1"
    };
}

const SQL_LOCK: &str = concat!(limits_of_first_parameter!(), " FOR UPDATE SKIP LOCKED");
const SQL_RUNNING: &str = "SELECT count(*), count(*) FILTER (WHERE owner = $2)
     FROM {s}.workflows WHERE queue = $1 AND queue_state = 'running' AND status = 'pending'";
const SQL_IN_WINDOW: &str = "SELECT count(*), min(dispatched_at) FROM {s}.workflows
     WHERE queue = $1
       AND dispatched_at > $2 - (SELECT rate_period_ms FROM {s}.queues WHERE name = $1)";
const SQL_NEXT_DUE: &str = concat!(
    "SELECT min(not_before) FROM {s}.workflows WHERE ",
    waiting_in_first_parameter!(),
    " AND not_before > $2"
);
/// Each partition with waiting workflows (a skip scan of the waiting index), with how
/// many of it run.
const SQL_PARTITIONS: &str = concat!(
    "WITH RECURSIVE parts(p) AS (
         SELECT (SELECT min(partition_key) FROM {s}.workflows WHERE ",
    waiting_in_first_parameter!(),
    ")
         UNION ALL
         SELECT (SELECT min(partition_key) FROM {s}.workflows WHERE ",
    waiting_in_first_parameter!(),
    " AND partition_key > parts.p)
         FROM parts WHERE parts.p IS NOT NULL)
     SELECT p, (SELECT count(*) FROM {s}.workflows
                WHERE queue = $1 AND partition_key = p AND queue_state = 'running'
                  AND status = 'pending')
     FROM parts WHERE p IS NOT NULL"
);
/// The next candidates of each partition `$2` (at most `$3` of it, after the priority
/// and run `$5`, `$6`) that a dispatch may take at `$4`, in the order it takes them:
/// what picking needs, not their records. Locked, skipping rows another transaction
/// holds (a cancellation): a dispatch never waits for a workflow's row while it holds
/// its queue's.
const SQL_CANDIDATES: &str = concat!(
    "SELECT p.i, c.run, c.priority, c.fresh
     FROM unnest($2::text[], $3::int8[], $5::int4[], $6::int8[])
          WITH ORDINALITY AS p(p, lim, after_priority, after_run, i)
     CROSS JOIN LATERAL (
         SELECT run, priority, dispatched_at IS NULL AS fresh FROM {s}.workflows
         WHERE ",
    waiting_in_first_parameter!(),
    " AND partition_key = p.p
           AND (not_before IS NULL OR not_before <= $4)
           AND ($7::text[] IS NULL OR name = ANY($7::text[]))
           AND (priority, run) > (p.after_priority, p.after_run)
         ORDER BY priority, run LIMIT p.lim
         FOR UPDATE SKIP LOCKED) c
     ORDER BY p.i, c.priority, c.run"
);
const SQL_DISPATCH: &str = "UPDATE {s}.workflows
     SET queue_state = 'running', owner = $3, dispatched_at = coalesce(dispatched_at, $2),
         updated_at = $2,
         deadline_at = CASE WHEN timeout_ms IS NULL THEN deadline_at
                            WHEN deadline_at IS NULL THEN $2 + timeout_ms
                            ELSE least(deadline_at, $2 + timeout_ms) END
     WHERE run = ANY($1) AND queue_state = 'queued' AND status = 'pending'
     RETURNING run, {w}";

impl Writer {
    /// Runs `text` (with `{s}` and `{w}` filled in, see [`Writer::sql`]), prepared once
    /// per connection: these run at every dispatch and enqueue.
    async fn hot(
        &self,
        text: &'static str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, PgError> {
        let cached = self.queues.prepared.borrow().get(text).cloned();
        let statement = match cached {
            Some(statement) => statement,
            None => {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let statement = self.client.prepare_typed(&self.sql(text), &types).await?;
                self.queues
                    .prepared
                    .borrow_mut()
                    .insert(text, statement.clone());
                statement
            }
        };
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        Ok(self.client.query(&statement, &values).await?)
    }

    fn sql(&self, text: &str) -> String {
        text.replace("{s}", &self.schema)
            .replace("{w}", &workflow_columns(""))
    }

    /// Inserts a queued workflow, unless a workflow with its id exists (answered as
    /// [`Created::Existing`]) or one of its queue with its deduplication id is queued
    /// or running ([`Created::Duplicate`]).
    pub(super) async fn enqueue(
        &self,
        w: &NewWorkflow,
        q: &Enqueued,
    ) -> Result<Result<Created, PgError>, PgError> {
        // The holder of the deduplication id may finish between the insert that it
        // refused and the read that looks for it: then the id is free, and the insert,
        // made again (on a new snapshot), goes in.
        for _ in 0..ENQUEUE_TRIES {
            if let Some(done) = self.enqueue_once(w, q).await? {
                return Ok(done);
            }
        }
        Ok(Err(PgError::Damaged(format!(
            "workflow {} could neither be enqueued nor found",
            w.id
        ))))
    }

    /// One try at [`enqueue`](Self::enqueue); `None` if the workflow was neither
    /// inserted nor found, nor its deduplication id's holder.
    async fn enqueue_once(
        &self,
        w: &NewWorkflow,
        q: &Enqueued,
    ) -> Result<Option<Result<Created, PgError>>, PgError> {
        let crc = crc_column(keyed_crc32(&workflow_key(&w.id), &w.input));
        let version = w.app_version.as_deref();
        let parent = w.parent_id.as_deref();
        let params: [(&(dyn ToSql + Sync), Type); 14] = [
            (&&*w.id, Type::TEXT),
            (&w.name, Type::TEXT),
            (&w.input, Type::BYTEA),
            (&crc, Type::INT8),
            (&version, Type::TEXT),
            (&parent, Type::TEXT),
            (&w.created_at, Type::INT8),
            (&w.deadline_at, Type::INT8),
            (&&*q.queue, Type::TEXT),
            (&q.priority, Type::INT4),
            (&q.partition, Type::TEXT),
            (&q.dedup, Type::TEXT),
            (&q.not_before, Type::INT8),
            (&q.timeout_ms, Type::INT8),
        ];
        let rows = self.hot(SQL_ENQUEUE, &params).await?;
        let row = rows
            .first()
            .ok_or_else(|| PgError::Damaged("an enqueue answered no row".into()))?;
        if row.try_get::<_, i64>(0)? == 1 {
            return Ok(Some(Ok(Created::New)));
        }
        if row.try_get::<_, Option<String>>(1)?.is_some() {
            return Ok(Some(
                workflow_row(row, 1).map(|w| Created::Existing(Box::new(w))),
            ));
        }
        // Not there when the statement began: made since (by another process), or it
        // is the deduplication id that one pending workflow holds. Read again.
        if let Some(existing) = self
            .workflow_by("id = $1", &[(&&*w.id, Type::TEXT)])
            .await?
        {
            return Ok(Some(Ok(Created::Existing(Box::new(existing)))));
        }
        let holder = self
            .workflow_by(
                "queue = $1 AND dedup_id = $2 AND status = 'pending'",
                &[(&&*q.queue, Type::TEXT), (&q.dedup, Type::TEXT)],
            )
            .await?;
        Ok(holder.map(|h| Ok(Created::Duplicate(Box::new(h)))))
    }

    /// The first workflow that `condition` finds.
    async fn workflow_by(
        &self,
        condition: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<WorkflowRecord>, PgError> {
        let rows = self
            .client
            .query_typed(
                &self.sql(&format!(
                    "SELECT {{w}} FROM {{s}}.workflows WHERE {condition} LIMIT 1"
                )),
                params,
            )
            .await?;
        rows.first().map(|r| workflow_row(r, 0)).transpose()
    }

    /// Writes a queue's limits (`at`: now).
    pub(super) async fn set_limits(&self, set: &SetLimits, at: i64) -> Result<(), PgError> {
        let l = &set.limits;
        if set.from == LimitsFrom::Pause {
            self.client
                .query_typed(
                    &self.sql("UPDATE {s}.queues SET paused = $2, updated_at = $3 WHERE name = $1"),
                    &[
                        (&&*set.queue, Type::TEXT),
                        (&l.paused, Type::BOOL),
                        (&at, Type::INT8),
                    ],
                )
                .await?;
            return Ok(());
        }
        let wide = |n: Option<u32>| n.map(i64::from);
        // Declared limits do not replace limits set at run time; the other two do.
        // None of them changes `paused`.
        self.client
            .query_typed(
                &self.sql(
                    "INSERT INTO {s}.queues (name, concurrency, per_process,
                         partition_concurrency, rate_count, rate_period_ms, set_at_run_time,
                         updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency,
                         per_process = excluded.per_process,
                         partition_concurrency = excluded.partition_concurrency,
                         rate_count = excluded.rate_count,
                         rate_period_ms = excluded.rate_period_ms,
                         set_at_run_time = excluded.set_at_run_time,
                         updated_at = excluded.updated_at
                     WHERE $9 OR NOT {s}.queues.set_at_run_time",
                ),
                &[
                    (&&*set.queue, Type::TEXT),
                    (&wide(l.concurrency), Type::INT8),
                    (&wide(l.per_process), Type::INT8),
                    (&wide(l.partition_concurrency), Type::INT8),
                    (&wide(l.rate.map(|r| r.count)), Type::INT8),
                    (&l.rate.map(|r| r.period_ms), Type::INT8),
                    (&(set.from == LimitsFrom::RunTime), Type::BOOL),
                    (&at, Type::INT8),
                    (&(set.from != LimitsFrom::Declared), Type::BOOL),
                ],
            )
            .await?;
        Ok(())
    }

    /// A workflow dispatched here that stopped without an outcome frees its slot; it
    /// is queued again at the next open of a runtime.
    pub(super) async fn hold(&self, id: &str, at: i64) -> Result<(), PgError> {
        self.client
            .query_typed(
                &self.sql(
                    "UPDATE {s}.workflows SET queue_state = 'held', owner = NULL, updated_at = $2
                     WHERE id = $1 AND queue_state = 'running' AND status = 'pending'
                       AND owner = current_setting('durable.executor')::bigint",
                ),
                &[(&id, Type::TEXT), (&at, Type::INT8)],
            )
            .await?;
        Ok(())
    }

    /// Puts back in their queues the workflows [`requeue_sql`] names.
    pub(super) async fn requeue(&self, held: bool) -> Result<(), PgError> {
        let n = self
            .client
            .execute_typed(&requeue_sql(&self.schema, held), &[])
            .await?;
        if n > 0 {
            self.queues.requeued.set(true);
        }
        Ok(())
    }

    /// Applies `write` to its schedule's row (`at`: now).
    pub(super) async fn set_schedule(&self, write: &ScheduleWrite, at: i64) -> Result<(), PgError> {
        let name: &str = &write.name;
        match &write.change {
            ScheduleChange::Declare {
                expression,
                zone,
                at: declared,
            } => {
                self.client
                    .query_typed(
                        &self.sql(
                            "INSERT INTO {s}.schedules
                                 (name, expression, time_zone, done_through, paused, updated_at)
                             VALUES ($1, $2, $3, $4, false, $5)
                             ON CONFLICT (name) DO UPDATE SET expression = excluded.expression,
                                 time_zone = excluded.time_zone, updated_at = excluded.updated_at
                             WHERE {s}.schedules.expression IS DISTINCT FROM excluded.expression
                                OR {s}.schedules.time_zone IS DISTINCT FROM excluded.time_zone",
                        ),
                        &[
                            (&name, Type::TEXT),
                            (expression, Type::TEXT),
                            (zone, Type::TEXT),
                            (declared, Type::INT8),
                            (&at, Type::INT8),
                        ],
                    )
                    .await?;
            }
            ScheduleChange::DoneThrough(tick) => {
                self.client
                    .query_typed(
                        &self.sql(
                            "UPDATE {s}.schedules SET done_through = $2, updated_at = $3
                             WHERE name = $1 AND done_through < $2",
                        ),
                        &[(&name, Type::TEXT), (tick, Type::INT8), (&at, Type::INT8)],
                    )
                    .await?;
            }
            ScheduleChange::Paused(paused, when) => {
                // A resume passes over what was missed while paused.
                self.client
                    .query_typed(
                        &self.sql(
                            "UPDATE {s}.schedules SET paused = $2, updated_at = $4,
                                 done_through = CASE WHEN $2 THEN done_through
                                                     ELSE greatest(done_through, $3) END
                             WHERE name = $1",
                        ),
                        &[
                            (&name, Type::TEXT),
                            (paused, Type::BOOL),
                            (when, Type::INT8),
                            (&at, Type::INT8),
                        ],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Dispatches `targets` inside the transaction being tried: what it dispatches
    /// commits with it, and is sent once it has ([`Queues::committed`]). A queue whose
    /// dispatch fails is undone alone and logged: the batch's own writes still commit,
    /// and the next dispatch of the queue (a notification, the safety poll) tries
    /// again. Fails only if the connection does.
    pub(super) async fn dispatch(&mut self, targets: Targets) -> Result<(), PgError> {
        if self.queues.news.is_none() || targets.is_empty() {
            return Ok(());
        }
        let names: Vec<Arc<str>> = if targets.all {
            let rows = self
                .client
                .query_typed(&self.sql("SELECT name FROM {s}.queues ORDER BY name"), &[])
                .await?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0).map(Arc::from))
                .collect::<Result<_, _>>()?
        } else {
            targets.names.into_iter().collect()
        };
        let now = crate::util::now_ms();
        for name in names {
            self.client.batch_execute("SAVEPOINT dispatch").await?;
            let before = self.queues.dispatched.len();
            let done = self.dispatch_queue(&name, now).await;
            let ended = match &done {
                Ok(()) => self.client.batch_execute("RELEASE dispatch").await,
                Err(e) if connection_lost(e) => return done,
                Err(_) => {
                    self.client
                        .batch_execute("ROLLBACK TO dispatch; RELEASE dispatch")
                        .await
                }
            };
            ended?;
            if let Err(e) = done {
                self.queues.dispatched.truncate(before);
                tracing::warn!(queue = %name, error = ?e, "cannot dispatch the queue; it is \
                    dispatched again at its next change, or by the safety poll");
            }
        }
        Ok(())
    }

    /// Dispatches what queue `name`'s limits allow now.
    async fn dispatch_queue(&mut self, name: &str, now: i64) -> Result<(), PgError> {
        let me = self.me;
        // One round trip: the queue's lock, then (each statement sees what committed
        // before it began, so after the lock) what runs, and what started in the rate
        // window.
        let (lock, running, window) = futures_util::future::join3(
            self.hot(SQL_LOCK, &[(&name, Type::TEXT)]),
            self.hot(SQL_RUNNING, &[(&name, Type::TEXT), (&me, Type::INT8)]),
            self.hot(SQL_IN_WINDOW, &[(&name, Type::TEXT), (&now, Type::INT8)]),
        )
        .await;
        let Some(limits) = lock?.first().map(limits_row).transpose()? else {
            // Another process is dispatching it now (or no program declared it). That
            // dispatch may not see what this transaction frees or queues: this runtime
            // dispatches it again shortly after this commit.
            self.queues.due_at(Some(now + SKIPPED_AGAIN_MS));
            return Ok(());
        };
        let limits = limits.0;
        let one = |rows: Result<Vec<Row>, PgError>| -> Result<Row, PgError> {
            rows?
                .into_iter()
                .next()
                .ok_or_else(|| PgError::Damaged("a count answered no row".into()))
        };
        let running = one(running)?;
        let (all, mine): (i64, i64) = (running.try_get(0)?, running.try_get(1)?);
        let window = one(window)?;
        let in_window = u64::try_from(window.try_get::<_, i64>(0)?).unwrap_or(0);
        let window_opens = limits.rate.and_then(|r| {
            Some(
                window
                    .try_get::<_, Option<i64>>(1)
                    .ok()??
                    .saturating_add(r.period_ms),
            )
        });
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let free = free_slots(&limits, count(all), count(mine), in_window);
        if free == 0 {
            if limits.rate.is_some_and(|r| in_window >= u64::from(r.count)) {
                self.queues.due_at(window_opens);
            }
            return Ok(());
        }
        let mut partitions: Vec<Partition> = self
            .hot(SQL_PARTITIONS, &[(&name, Type::TEXT)])
            .await?
            .iter()
            .map(|r| Ok(Partition::new(r.try_get(0)?, count(r.try_get(1)?))))
            .collect::<Result<_, PgError>>()?;
        // Each partition's first few candidates in one read: enough for its share of
        // the free slots (and one more); a partition that runs out reads more.
        let share = (free / partitions.len().max(1) as u64).saturating_add(1);
        let all_of_them: Vec<usize> = (0..partitions.len()).collect();
        self.candidates(
            name,
            &mut partitions,
            &all_of_them,
            share.min(free),
            limits.partition_concurrency,
            now,
        )
        .await?;
        partitions.retain(|p| !p.next.is_empty());
        let mut picked: Vec<(i64, bool)> = Vec::new();
        while (picked.len() as u64) < free {
            let Some(i) = pick(&heads(&partitions), limits.partition_concurrency) else {
                break;
            };
            let Some(c) = partitions[i].next.pop_front() else {
                break;
            };
            picked.push((c.run, c.fresh));
            partitions[i].running += 1;
            if partitions[i].next.is_empty() {
                if partitions[i].more {
                    let want = free - picked.len() as u64;
                    self.candidates(
                        name,
                        &mut partitions,
                        &[i],
                        want,
                        limits.partition_concurrency,
                        now,
                    )
                    .await?;
                }
                if partitions[i].next.is_empty() {
                    partitions.swap_remove(i);
                }
            }
        }
        let dispatched = self.take_picked(name, &picked, now).await?;
        let rated = dispatched.iter().filter(|d| d.fresh).count() as u64;
        let taken = dispatched.len() as u64;
        self.queues.dispatched.extend(dispatched);
        if taken < free {
            // Free slots left: what waits is delayed (or of workflows this program
            // does not have). Come back when the first delay ends.
            let next_due = self
                .hot(SQL_NEXT_DUE, &[(&name, Type::TEXT), (&now, Type::INT8)])
                .await?;
            let next_due: Option<i64> = match next_due.first() {
                Some(row) => row.try_get(0)?,
                None => None,
            };
            self.queues.due_at(next_due);
        } else if let Some(rate) = limits.rate
            && in_window + rated >= u64::from(rate.count)
        {
            self.queues
                .due_at(window_opens.or(Some(now.saturating_add(rate.period_ms))));
        }
        Ok(())
    }

    /// Reads up to `want` more candidates of each of partitions `which` of `queue` at
    /// `now` (fewer if its partition limit leaves less room), after those read before.
    async fn candidates(
        &self,
        queue: &str,
        partitions: &mut [Partition],
        which: &[usize],
        want: u64,
        partition_limit: Option<u32>,
        now: i64,
    ) -> Result<(), PgError> {
        let mut names = Vec::new();
        let mut limits = Vec::new();
        let mut after_priority = Vec::new();
        let mut after_run = Vec::new();
        let mut asked = Vec::new();
        for &i in which {
            let p = &mut partitions[i];
            let room = partition_limit.map_or(u64::MAX, |l| u64::from(l).saturating_sub(p.running));
            let want = want.min(room).min(READ_AT_MOST);
            if want == 0 {
                p.more = false;
                continue;
            }
            names.push(p.name.clone());
            limits.push(want as i64);
            after_priority.push(p.after.0);
            after_run.push(p.after.1);
            asked.push((i, want));
        }
        if asked.is_empty() {
            return Ok(());
        }
        let rows = self
            .hot(
                SQL_CANDIDATES,
                &[
                    (&queue, Type::TEXT),
                    (&names, Type::TEXT_ARRAY),
                    (&limits, Type::INT8_ARRAY),
                    (&now, Type::INT8),
                    (&after_priority, Type::INT4_ARRAY),
                    (&after_run, Type::INT8_ARRAY),
                    (&self.queues.names, Type::TEXT_ARRAY),
                ],
            )
            .await?;
        let mut found = vec![0u64; asked.len()];
        for r in &rows {
            let k = usize::try_from(r.try_get::<_, i64>(0)? - 1)
                .ok()
                .filter(|k| *k < asked.len())
                .ok_or_else(|| PgError::Damaged("a candidate of no partition".into()))?;
            let c = Candidate {
                run: r.try_get(1)?,
                priority: r.try_get(2)?,
                fresh: r.try_get(3)?,
            };
            partitions[asked[k].0].push(c);
            found[k] += 1;
        }
        for (k, (i, want)) in asked.into_iter().enumerate() {
            partitions[i].more = found[k] == want;
        }
        Ok(())
    }

    /// Marks `picked` (runs, and whether each is fresh) dispatched to this executor at
    /// `now` (each timeout counts from now), and reads them back for the runtime, in
    /// the order they were picked.
    async fn take_picked(
        &self,
        queue: &str,
        picked: &[(i64, bool)],
        now: i64,
    ) -> Result<Vec<Dispatched>, PgError> {
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<i64> = picked.iter().map(|(r, _)| *r).collect();
        let rows = self
            .hot(
                SQL_DISPATCH,
                &[
                    (&runs, Type::INT8_ARRAY),
                    (&now, Type::INT8),
                    (&self.me, Type::INT8),
                ],
            )
            .await?;
        let mut records: HashMap<i64, WorkflowRecord> = HashMap::with_capacity(rows.len());
        for r in &rows {
            records.insert(r.try_get(0)?, workflow_row(r, 1)?);
        }
        let queue: Arc<str> = Arc::from(queue);
        Ok(picked
            .iter()
            .filter_map(|(run, fresh)| {
                records.remove(run).map(|record| Dispatched {
                    record,
                    queue: queue.clone(),
                    fresh: *fresh,
                })
            })
            .collect())
    }
}

/// A `queues` row's limits (its first seven columns), and whether they were set at run
/// time.
fn limits_row(r: &Row) -> Result<(Limits, bool), PgError> {
    let narrow = |n: Option<i64>| -> Result<Option<u32>, PgError> {
        n.map(|n| u32::try_from(n).map_err(|_| PgError::Damaged(format!("a queue limit of {n}"))))
            .transpose()
    };
    let count = narrow(r.try_get(3)?)?;
    let period: Option<i64> = r.try_get(4)?;
    Ok((
        Limits {
            concurrency: narrow(r.try_get(0)?)?,
            per_process: narrow(r.try_get(1)?)?,
            partition_concurrency: narrow(r.try_get(2)?)?,
            rate: count
                .zip(period)
                .map(|(count, period_ms)| Rate { count, period_ms }),
            paused: r.try_get(5)?,
        },
        r.try_get(6)?,
    ))
}

/// Queue `name`'s counts and limits, read on `c` (`s`: the schema, quoted).
pub(super) async fn stats(
    c: &tokio_postgres::Client,
    s: &str,
    name: &str,
) -> Result<QueueStats, PgError> {
    let counts_sql = format!(
        "SELECT count(*) FILTER (WHERE queue_state = 'queued'),
                count(*) FILTER (WHERE queue_state = 'running'),
                count(*) FILTER (WHERE queue_state = 'held')
         FROM {s}.workflows WHERE queue = $1 AND status = 'pending'"
    );
    let limits_sql = limits_of_first_parameter!().replace("{s}", s);
    // Pipelined: one round trip.
    let (counts, limits) = futures_util::future::join(
        c.query_typed(&counts_sql, &[(&name, Type::TEXT)]),
        c.query_typed(&limits_sql, &[(&name, Type::TEXT)]),
    )
    .await;
    let (counts, limits) = (counts?, limits?);
    let limits = limits.first().map(limits_row).transpose()?;
    let counts = counts
        .first()
        .ok_or_else(|| PgError::Damaged("a count answered no row".into()))?;
    let count = |i: usize| -> Result<u64, PgError> {
        Ok(u64::try_from(counts.try_get::<_, i64>(i)?).unwrap_or(0))
    };
    Ok(QueueStats {
        queued: count(0)?,
        running: count(1)?,
        held: count(2)?,
        set_at_run_time: limits.is_some_and(|(_, r)| r),
        limits: limits.map(|(l, _)| l),
    })
}

/// The workflows waiting in queue `name`, by priority then arrival, at most `limit`.
pub(super) async fn queued(
    c: &tokio_postgres::Client,
    s: &str,
    name: &str,
    limit: usize,
) -> Result<Vec<QueuedRow>, PgError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query_typed(
            &concat!(
                "SELECT id, name, priority, partition_key, created_at, not_before
                 FROM {s}.workflows WHERE ",
                waiting_in_first_parameter!(),
                " ORDER BY priority, run LIMIT $2"
            )
            .replace("{s}", s),
            &[(&name, Type::TEXT), (&limit, Type::INT8)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(QueuedRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                priority: r.try_get(2)?,
                partition: r.try_get(3)?,
                enqueued_at: r.try_get(4)?,
                not_before: r.try_get(5)?,
            })
        })
        .collect()
}

/// The queue workflow `id` was enqueued on (`Some(None)`: none), if it exists.
pub(super) async fn queue_of(
    c: &tokio_postgres::Client,
    s: &str,
    id: &str,
) -> Result<Option<Option<String>>, PgError> {
    let rows = c
        .query_typed(
            &format!("SELECT queue FROM {s}.workflows WHERE id = $1"),
            &[(&id, Type::TEXT)],
        )
        .await?;
    Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
}

/// Schedule `name`'s state, if it was ever declared.
pub(super) async fn schedule_state(
    c: &tokio_postgres::Client,
    s: &str,
    name: &str,
) -> Result<Option<ScheduleState>, PgError> {
    let rows = c
        .query_typed(
            &format!("SELECT done_through, paused FROM {s}.schedules WHERE name = $1"),
            &[(&name, Type::TEXT)],
        )
        .await?;
    rows.first()
        .map(|r| {
            Ok(ScheduleState {
                done_through: r.try_get(0)?,
                paused: r.try_get(1)?,
            })
        })
        .transpose()
}
