//! Queues on SQLite: enqueueing, the dispatch that runs at the end of a batch that
//! freed a slot or queued a workflow, limits, and the reads of a queue's state. See
//! [`crate::journal::queue`] for the model.

use std::collections::BTreeSet;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::rows;
use super::writer::Writer;
use crate::journal::crc::{keyed_crc32, workflow_key};
use crate::journal::queue::{
    Candidate, Dispatched, Enqueued, Limits, LimitsFrom, Partition, QueueNews, QueueState,
    QueueStats, QueuedRow, READ_AT_MOST, Rate, SetLimits, free_slots, heads, pick,
};
use crate::journal::{Created, NewWorkflow};

/// The executor name recorded for workflows this process starts.
const EXECUTOR: &str = "local";

/// What the writer keeps for dispatching.
#[derive(Debug, Default)]
pub(super) struct Queues {
    /// Where dispatches go; `None` until the runtime asks (nothing is dispatched
    /// before).
    news: Option<tokio::sync::mpsc::UnboundedSender<QueueNews>>,
    /// The queues the batch being written touched (an enqueue, a finish of one of
    /// their workflows), to dispatch before it commits.
    touched: BTreeSet<Arc<str>>,
    /// Whether every queue is to be dispatched before the batch commits.
    all: bool,
    /// What the batch dispatched, sent once it commits.
    dispatched: Vec<Dispatched>,
    /// The earliest time a dispatch found something becomes dispatchable.
    due: Option<i64>,
    /// The records of the candidates the dispatch in progress read, by run, with
    /// their timeouts: taken by the candidates it dispatches, cleared after.
    records: std::collections::HashMap<i64, (crate::journal::WorkflowRecord, Option<i64>)>,
    /// The workflows this program has, as a JSON array (`None`: any).
    workflows: Option<String>,
    /// The dispatched workflows that hold slots, with their queues: one process holds
    /// the journal, so every one was dispatched by this writer or was running at the
    /// open. A finish looks here rather than read the row back (a `RETURNING` would
    /// cost every finish a temporary table).
    running: std::collections::HashMap<Arc<str>, Arc<str>>,
}

impl Queues {
    /// Dispatching for a program that has `workflows` (`None`: any).
    pub(super) fn new(workflows: Option<&[&'static str]>) -> Self {
        Queues {
            workflows: workflows.map(json_array),
            ..Queues::default()
        }
    }
}

/// `names` as a JSON array of strings (for `json_each`).
fn json_array(names: &[&str]) -> String {
    let mut out = String::from("[");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in name.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

const SQL_ENQUEUE: &str = "INSERT INTO durable_workflows
         (id, name, status, input, executor, app_version, created_at, updated_at,
          input_crc32, parent_id, deadline_at, queue, queue_state, priority, partition_key,
          dedup_id, not_before, timeout_ms)
     VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, 'queued', ?11, ?12, ?13,
             ?14, ?15)
     ON CONFLICT DO NOTHING";

/// The conditions of a workflow waiting in queue `?1`, for `concat!`.
macro_rules! waiting_in_first_parameter {
    () => {
        "queue = ?1 AND queue_state = 'queued' AND status = 'pending'"
    };
}

const SQL_LIMITS: &str = "SELECT concurrency, per_process, partition_concurrency, rate_count,
         rate_period_ms, paused, set_at_run_time
     FROM durable_queues WHERE name = ?1";
const SQL_RUNNING: &str = "SELECT count(*) FROM durable_workflows
     WHERE queue = ?1 AND queue_state = 'running' AND status = 'pending'";
const SQL_RUNNING_IN: &str = "SELECT count(*) FROM durable_workflows
     WHERE queue = ?1 AND partition_key = ?2 AND queue_state = 'running' AND status = 'pending'";
const SQL_IN_WINDOW: &str = "SELECT count(*), min(dispatched_at) FROM durable_workflows
     WHERE queue = ?1 AND dispatched_at > ?2";
const SQL_PARTITIONS: &str = concat!(
    "WITH RECURSIVE parts(p) AS (
         SELECT (SELECT min(partition_key) FROM durable_workflows WHERE ",
    waiting_in_first_parameter!(),
    ")
         UNION ALL
         SELECT (SELECT min(partition_key) FROM durable_workflows WHERE ",
    waiting_in_first_parameter!(),
    " AND partition_key > parts.p)
         FROM parts WHERE parts.p IS NOT NULL
     ) SELECT p FROM parts WHERE p IS NOT NULL"
);
/// The workflows of partition `?2` a dispatch may take at `?3`, in the order a
/// dispatch takes them, with their records: read lazily, as far as the partition's
/// share of the free slots, so that a dispatch writes each one it takes and reads
/// nothing back.
const SQL_CANDIDATES: &str = concat!(
    "SELECT ",
    rows::workflow_columns!(),
    ", run, priority, dispatched_at IS NULL, timeout_ms FROM durable_workflows WHERE ",
    waiting_in_first_parameter!(),
    " AND partition_key = ?2 AND (not_before IS NULL OR not_before <= ?3)
       AND (?4 IS NULL OR name IN (SELECT value FROM json_each(?4)))
     ORDER BY priority, run"
);
const SQL_NEXT_DUE: &str = concat!(
    "SELECT min(not_before) FROM durable_workflows WHERE ",
    waiting_in_first_parameter!(),
    " AND not_before > ?2"
);
const SQL_DISPATCH: &str = "UPDATE durable_workflows
     SET queue_state = 'running', dispatched_at = coalesce(dispatched_at, ?2), updated_at = ?2,
         deadline_at = CASE WHEN timeout_ms IS NULL THEN deadline_at
                            WHEN deadline_at IS NULL THEN ?2 + timeout_ms
                            ELSE min(deadline_at, ?2 + timeout_ms) END
     WHERE run = ?1 AND queue_state = 'queued' AND status = 'pending'";

impl Writer {
    /// Inserts a queued workflow, unless a workflow with its id exists (answered as
    /// [`Created::Existing`]) or one of its queue with its deduplication id is queued
    /// or running ([`Created::Duplicate`]).
    pub(super) fn enqueue(&mut self, w: &NewWorkflow, q: &Enqueued) -> rusqlite::Result<Created> {
        let inserted = self.conn.prepare_cached(SQL_ENQUEUE)?.execute(params![
            &*w.id,
            w.name,
            w.input,
            EXECUTOR,
            w.app_version.as_deref(),
            w.created_at,
            keyed_crc32(&workflow_key(&w.id), &w.input),
            w.parent_id.as_deref(),
            w.deadline_at,
            &*q.queue,
            q.priority,
            q.partition,
            q.dedup,
            q.not_before,
            q.timeout_ms,
        ])?;
        if inserted == 1 {
            self.queues.touched.insert(q.queue.clone());
            return Ok(Created::New);
        }
        if let Some(existing) = rows::workflow(&self.conn, &w.id)? {
            return Ok(Created::Existing(Box::new(existing)));
        }
        // Not its id: its deduplication id, which one pending workflow holds.
        let holder = rows::select_workflows(
            &self.conn,
            "",
            "WHERE queue = ?1 AND dedup_id = ?2 AND status = 'pending'",
            params![&*q.queue, q.dedup],
            |_, w| Ok(w),
        )?;
        let existing = holder
            .into_iter()
            .next()
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        Ok(Created::Duplicate(Box::new(existing)))
    }

    /// Workflow `id` finished: if it held a slot, the slot is free in this batch.
    pub(super) fn finished_in_queue(&mut self, id: &str) {
        if let Some(queue) = self.queues.running.remove(id) {
            self.queues.touched.insert(queue);
        }
    }

    /// Every queue is dispatched before the batch commits (after a write that may have
    /// changed many: a cancel, a resume).
    pub(super) fn touch_all_queues(&mut self) {
        self.queues.all = true;
    }

    /// Starts dispatching to `news` (every queue, in this batch), knowing which
    /// workflows hold slots now.
    pub(super) fn queue_news(
        &mut self,
        news: tokio::sync::mpsc::UnboundedSender<QueueNews>,
    ) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, queue FROM durable_workflows
             WHERE queue_state = 'running' AND status = 'pending'",
        )?;
        let running = stmt
            .query_map([], |r| {
                Ok((
                    Arc::from(r.get::<_, String>(0)?),
                    Arc::from(r.get::<_, String>(1)?),
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        drop(stmt);
        self.queues.running = running;
        self.queues.news = Some(news);
        self.queues.all = true;
        Ok(())
    }

    /// Writes a queue's limits; it is dispatched in this batch.
    pub(super) fn set_limits(&mut self, set: &SetLimits, at: i64) -> rusqlite::Result<()> {
        let l = &set.limits;
        if set.from == LimitsFrom::Pause {
            self.conn
                .prepare_cached(
                    "UPDATE durable_queues SET paused = ?2, updated_at = ?3 WHERE name = ?1",
                )?
                .execute(params![&*set.queue, l.paused, at])?;
        } else {
            // Declared limits do not replace limits set at run time; the other two do.
            // None of them changes `paused`.
            self.conn
                .prepare_cached(
                    "INSERT INTO durable_queues (name, concurrency, per_process,
                         partition_concurrency, rate_count, rate_period_ms, set_at_run_time,
                         updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency,
                         per_process = excluded.per_process,
                         partition_concurrency = excluded.partition_concurrency,
                         rate_count = excluded.rate_count,
                         rate_period_ms = excluded.rate_period_ms,
                         set_at_run_time = excluded.set_at_run_time,
                         updated_at = excluded.updated_at
                     WHERE ?9 OR durable_queues.set_at_run_time = 0",
                )?
                .execute(params![
                    &*set.queue,
                    l.concurrency,
                    l.per_process,
                    l.partition_concurrency,
                    l.rate.map(|r| r.count),
                    l.rate.map(|r| r.period_ms),
                    set.from == LimitsFrom::RunTime,
                    at,
                    set.from != LimitsFrom::Declared,
                ])?;
        }
        self.queues.touched.insert(set.queue.clone());
        Ok(())
    }

    /// A dispatched workflow that stopped here without an outcome frees its slot.
    pub(super) fn hold(&mut self, id: &str, at: i64) -> rusqlite::Result<()> {
        let held = self
            .conn
            .prepare_cached(
                "UPDATE durable_workflows SET queue_state = 'held', updated_at = ?2
                 WHERE id = ?1 AND queue_state = 'running' AND status = 'pending'",
            )?
            .execute(params![id, at])?;
        if held == 1 {
            self.finished_in_queue(id);
        }
        Ok(())
    }

    /// Dispatches the queues the batch touched (all of them, after a write that may
    /// have changed many), inside the batch's transaction: what it dispatches commits
    /// with the batch, and is sent once it has (see [`Writer::dispatches_committed`]).
    /// A dispatch that fails is undone alone and logged: the batch's own writes still
    /// commit, and the next write to the queue (or the safety poll) dispatches again.
    pub(super) fn dispatch_touched(&mut self) {
        if self.queues.news.is_none() || (self.queues.touched.is_empty() && !self.queues.all) {
            return;
        }
        let names: Vec<Arc<str>> = if std::mem::take(&mut self.queues.all) {
            self.queues.touched.clear();
            match self.all_queues() {
                Ok(names) => names,
                Err(e) => {
                    tracing::warn!("cannot list the journal's queues to dispatch them: {e}");
                    return;
                }
            }
        } else {
            std::mem::take(&mut self.queues.touched)
                .into_iter()
                .collect()
        };
        let now = crate::util::now_ms();
        for name in names {
            // Prepared once: a batch that freed a slot runs these every time.
            let run = |sql: &str| self.conn.prepare_cached(sql)?.execute([]).map(drop);
            let savepoint = run("SAVEPOINT dispatch");
            let before = self.queues.dispatched.len();
            let done = savepoint.and_then(|()| self.dispatch_queue(&name, now));
            self.queues.records.clear();
            let run = |sql: &str| self.conn.prepare_cached(sql)?.execute([]).map(drop);
            let ended = match &done {
                Ok(()) => run("RELEASE dispatch"),
                Err(_) => run("ROLLBACK TO dispatch").and_then(|()| run("RELEASE dispatch")),
            };
            if let Err(e) = done.and(ended) {
                self.queues.dispatched.truncate(before);
                tracing::warn!(queue = %name, "cannot dispatch the queue: {e}; it is dispatched again at its next write");
            }
        }
    }

    /// Every queue the journal has limits for.
    fn all_queues(&self) -> rusqlite::Result<Vec<Arc<str>>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name FROM durable_queues ORDER BY name")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        names.map(|n| n.map(Arc::from)).collect()
    }

    /// Dispatches what queue `name`'s limits allow now.
    fn dispatch_queue(&mut self, name: &str, now: i64) -> rusqlite::Result<()> {
        let Some((limits, _)) = limits(&self.conn, name)? else {
            // No limits yet: nothing is dispatched from a queue no program declared.
            return Ok(());
        };
        let running: u64 = self
            .conn
            .prepare_cached(SQL_RUNNING)?
            .query_row([name], |r| r.get(0))?;
        let mut in_window = 0;
        let mut window_opens = None;
        if let Some(rate) = limits.rate {
            let (count, oldest): (u64, Option<i64>) = self
                .conn
                .prepare_cached(SQL_IN_WINDOW)?
                .query_row(params![name, now.saturating_sub(rate.period_ms)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            in_window = count;
            window_opens = oldest.map(|t| t.saturating_add(rate.period_ms));
        }
        // One process holds a SQLite journal: its running workflows are all this one's.
        let free = free_slots(&limits, running, running, in_window);
        if free == 0 {
            if limits.rate.is_some_and(|r| in_window >= u64::from(r.count)) {
                self.due_at(window_opens);
            }
            return Ok(());
        }
        let names: Vec<String> = self
            .conn
            .prepare_cached(SQL_PARTITIONS)?
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // Each partition's first few candidates in one read: enough for its share of
        // the free slots (and one more), all of them if it is the only one; a partition
        // that runs out reads more.
        let share = (free / names.len().max(1) as u64).saturating_add(1);
        let mut partitions = Vec::with_capacity(names.len());
        for partition in names {
            let running: u64 = self
                .conn
                .prepare_cached(SQL_RUNNING_IN)?
                .query_row(params![name, partition], |r| r.get(0))?;
            let mut p = Partition::new(partition, running);
            self.candidates(
                name,
                &mut p,
                share.min(free),
                limits.partition_concurrency,
                now,
            )?;
            if !p.next.is_empty() {
                partitions.push(p);
            }
        }
        let queue: Arc<str> = Arc::from(name);
        let mut picked = 0;
        let mut rated = 0;
        while picked < free {
            let Some(i) = pick(&heads(&partitions), limits.partition_concurrency) else {
                break;
            };
            let p = &mut partitions[i];
            let Some(c) = p.next.pop_front() else {
                break;
            };
            if let Some(record) = self.dispatch_run(c, now)? {
                rated += u64::from(record.1);
                self.queues.dispatched.push(Dispatched {
                    record: record.0,
                    queue: queue.clone(),
                    fresh: record.1,
                });
                picked += 1;
                p.running += 1;
            }
            if p.next.is_empty() {
                if p.more {
                    self.candidates(name, p, free - picked, limits.partition_concurrency, now)?;
                }
                if p.next.is_empty() {
                    partitions.swap_remove(i);
                }
            }
        }
        if picked < free {
            // Free slots left: what waits is delayed (or of workflows this program
            // does not have). Come back when the first delay ends.
            let next: Option<i64> = self
                .conn
                .prepare_cached(SQL_NEXT_DUE)?
                .query_row(params![name, now], |r| r.get(0))?;
            self.due_at(next);
        } else if let Some(rate) = limits.rate
            && in_window + rated >= u64::from(rate.count)
        {
            self.due_at(window_opens.or(Some(now.saturating_add(rate.period_ms))));
        }
        Ok(())
    }

    /// Reads up to `want` more candidates of partition `p` of `queue` at `now` (fewer
    /// if its partition limit leaves less room).
    fn candidates(
        &mut self,
        queue: &str,
        p: &mut Partition,
        want: u64,
        partition_limit: Option<u32>,
        now: i64,
    ) -> rusqlite::Result<()> {
        let room = partition_limit.map_or(u64::MAX, |l| u64::from(l).saturating_sub(p.running));
        let want = want.min(room).min(READ_AT_MOST);
        if want == 0 {
            p.more = false;
            return Ok(());
        }
        let before = p.next.len();
        let mut stmt = self.conn.prepare_cached(SQL_CANDIDATES)?;
        // Read lazily, as far as wanted: no LIMIT parameter, whose every new value
        // would make SQLite plan the statement again.
        let at = rows::WORKFLOW_COLUMN_COUNT;
        let found = stmt.query_map(params![queue, p.name, now, self.queues.workflows], |r| {
            let candidate = Candidate {
                run: r.get(at)?,
                priority: r.get(at + 1)?,
                fresh: r.get(at + 2)?,
            };
            Ok((candidate, rows::workflow_row(r)?, r.get(at + 3)?))
        })?;
        for found in found.take(usize::try_from(want).unwrap_or(usize::MAX)) {
            let (c, record, timeout_ms) = found?;
            self.queues.records.insert(c.run, (record?, timeout_ms));
            p.push(c);
        }
        p.more = (p.next.len() - before) as u64 == want;
        Ok(())
    }

    /// Marks candidate `c` dispatched at `now` (its timeout counts from now), and
    /// returns its record as the row now holds it, with whether it is fresh.
    fn dispatch_run(
        &mut self,
        c: Candidate,
        now: i64,
    ) -> rusqlite::Result<Option<(crate::journal::WorkflowRecord, bool)>> {
        let Some((mut record, timeout_ms)) = self.queues.records.remove(&c.run) else {
            return Ok(None);
        };
        if self
            .conn
            .prepare_cached(SQL_DISPATCH)?
            .execute(params![c.run, now])?
            == 0
        {
            return Ok(None);
        }
        // What `SQL_DISPATCH` wrote, of what the record holds.
        record.queue_state = Some(QueueState::Running);
        record.deadline_at = deadline(record.deadline_at, timeout_ms, now);
        Ok(Some((record, c.fresh)))
    }

    fn due_at(&mut self, at: Option<i64>) {
        if let Some(at) = at {
            self.queues.due = Some(self.queues.due.map_or(at, |d| d.min(at)));
        }
    }

    /// The batch committed: sends what it dispatched.
    pub(super) fn dispatches_committed(&mut self) {
        let dispatched = std::mem::take(&mut self.queues.dispatched);
        let due = self.queues.due.take();
        let Some(news) = &self.queues.news else {
            return;
        };
        if !dispatched.is_empty() {
            for d in &dispatched {
                self.queues
                    .running
                    .insert(Arc::from(d.record.id.as_str()), d.queue.clone());
            }
            let _ = news.send(QueueNews::Dispatched(dispatched));
        }
        if let Some(at) = due {
            let _ = news.send(QueueNews::DueAt(at));
        }
    }

    /// The batch failed: what it dispatched did not happen.
    pub(super) fn dispatches_failed(&mut self) {
        self.queues.dispatched.clear();
        self.queues.due = None;
        self.queues.touched.clear();
        // The queues it touched are dispatched again by the next batch.
        self.queues.all = true;
    }
}

/// The deadline of a workflow dispatched at `now` that had `deadline` and a timeout
/// of `timeout_ms` from its dispatch: the earlier of the two, as `SQL_DISPATCH` writes.
fn deadline(deadline: Option<i64>, timeout_ms: Option<i64>, now: i64) -> Option<i64> {
    match (deadline, timeout_ms) {
        (d, None) => d,
        (None, Some(t)) => Some(now.saturating_add(t)),
        (Some(d), Some(t)) => Some(d.min(now.saturating_add(t))),
    }
}

/// Queue `name`'s limits, and whether they were set at run time.
fn limits(c: &Connection, name: &str) -> rusqlite::Result<Option<(Limits, bool)>> {
    c.prepare_cached(SQL_LIMITS)?
        .query_row([name], |r| {
            let count: Option<u32> = r.get(3)?;
            let period: Option<i64> = r.get(4)?;
            Ok((
                Limits {
                    concurrency: r.get(0)?,
                    per_process: r.get(1)?,
                    partition_concurrency: r.get(2)?,
                    rate: count
                        .zip(period)
                        .map(|(count, period_ms)| Rate { count, period_ms }),
                    paused: r.get(5)?,
                },
                r.get(6)?,
            ))
        })
        .optional()
}

/// Queue `name`'s counts and limits.
pub(super) fn stats(c: &Connection, name: &str) -> rusqlite::Result<QueueStats> {
    let count = |state: QueueState| -> rusqlite::Result<u64> {
        c.prepare_cached(
            "SELECT count(*) FROM durable_workflows
             WHERE queue = ?1 AND queue_state = ?2 AND status = 'pending'",
        )?
        .query_row(params![name, state.as_str()], |r| r.get(0))
    };
    let limits = limits(c, name)?;
    Ok(QueueStats {
        queued: count(QueueState::Queued)?,
        running: count(QueueState::Running)?,
        held: count(QueueState::Held)?,
        set_at_run_time: limits.is_some_and(|(_, r)| r),
        limits: limits.map(|(l, _)| l),
    })
}

/// The workflows waiting in queue `name`, by priority then arrival, at most `limit`.
pub(super) fn queued(c: &Connection, name: &str, limit: usize) -> rusqlite::Result<Vec<QueuedRow>> {
    let mut stmt = c.prepare_cached(concat!(
        "SELECT id, name, priority, partition_key, created_at, not_before
         FROM durable_workflows WHERE ",
        waiting_in_first_parameter!(),
        " ORDER BY priority, run LIMIT ?2"
    ))?;
    let rows = stmt.query_map(
        params![name, i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(QueuedRow {
                id: r.get(0)?,
                name: r.get(1)?,
                priority: r.get(2)?,
                partition: r.get(3)?,
                enqueued_at: r.get(4)?,
                not_before: r.get(5)?,
            })
        },
    )?;
    rows.collect()
}

/// The queue workflow `id` was enqueued on (`Some(None)`: none), if it exists.
pub(super) fn queue_of(c: &Connection, id: &str) -> rusqlite::Result<Option<Option<String>>> {
    c.prepare_cached("SELECT queue FROM durable_workflows WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_become_a_json_array() {
        assert_eq!(
            super::json_array(&["a", "b\"c", "d\\e"]),
            r#"["a","b\"c","d\\e"]"#
        );
        assert_eq!(super::json_array(&[]), "[]");
    }
}
