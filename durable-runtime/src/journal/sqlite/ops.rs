//! What each write does to the journal: the statements of every operation, run by the
//! writer inside the batch's transaction (or, for a transaction step, its own).

use std::path::Path;
use std::sync::atomic::Ordering;

use rusqlite::{ErrorCode, OptionalExtension, params};

use super::rows::{self, DAMAGED, checks};
use super::waits::Parked;
use super::writer::{
    Reply, SQL_CREATE, SQL_FINISH, SQL_RECORD, SQL_ROLLBACK, Write, Writer, WriterStats,
};
use super::{TxFn, sql_error};
use crate::error::{CancelReason, StoreError, StoreErrorKind};
use crate::journal::crc::{
    event_key, keyed_crc32, message_key, started_value, step_key, workflow_key,
};
use crate::journal::decode_answer;
use crate::journal::{
    Created, Effect, Finish, NewMessage, NewWorkflow, RecordedOutcome, Replier, StepKey,
    StepRecord, TxStep, TxWork, WaitFor,
};

/// The executor name recorded for workflows this process starts.
const EXECUTOR: &str = "local";

/// The SQL that names `tree`: the workflow whose id is the statement's first parameter,
/// and its descendants through `parent_id`, within the unique index's range of ids that
/// start with `<id>/` (cancel and resume act on the same family).
macro_rules! family_of_first_parameter {
    () => {
        "WITH RECURSIVE tree(id) AS (
             SELECT ?1
             UNION SELECT w.id FROM durable_workflows w JOIN tree t ON w.parent_id = t.id
             WHERE w.id >= ?1 || '/' AND w.id < ?1 || '0'
         )"
    };
}

/// The error for a recorded wait's answer that fails its checksum.
pub(super) fn damaged_answer(path: &Path, key: &StepKey) -> StoreError {
    StoreError::new(
        path,
        StoreErrorKind::Invariant,
        format!(
            "the recorded answer of step {} of workflow {} {DAMAGED}",
            key.path, key.workflow_id
        ),
    )
}

impl Writer {
    /// Runs one write of the workflow primitives; its reply waits for the commit.
    pub(super) fn write(&mut self, path: &Path, w: Write) -> Reply {
        let sql = |e| sql_error(path, e);
        match w {
            // Nobody waits for it any more (a wait woken to run again whose workflow
            // stopped meanwhile): take nothing.
            Write::Wait(_, reply) if reply.is_closed() => Reply::Value(reply, Ok(None)),
            Write::Wait(wait, reply) => match self.wait(path, &wait) {
                Ok(Some(answer)) => Reply::Value(reply, Ok(Some(answer))),
                Ok(None) if wait.park => {
                    if let Some(r) = &wait.record
                        && r.deadline_at.is_some()
                        && let Err(e) = self.start_record(&r.key, r.started_at, r.deadline_at)
                    {
                        return Reply::Value(reply, Err(sql(e)));
                    }
                    Reply::Park(
                        wait.what,
                        Parked {
                            record: wait.record,
                            reply,
                        },
                    )
                }
                Ok(None) => {
                    let recorded = match &wait.record {
                        Some(r) => self.record_answer(r, None).map_err(sql),
                        None => Ok(()),
                    };
                    Reply::Value(reply, recorded.map(|()| None))
                }
                Err(e) => Reply::Value(reply, Err(e)),
            },
            Write::Expire(record, reply) => Reply::Value(reply, self.expire(path, &record)),
            Write::Started(key, at, reply) => {
                Reply::Unit(reply, self.start_record(&key, at, None).map_err(sql))
            }
            Write::Send(m, reply) => Reply::Unit(reply, self.insert_message(&m).map_err(sql)),
            Write::Gc {
                cutoff,
                after,
                reply,
            } => Reply::Gc(
                reply,
                super::retention::gc_batch(&self.conn, cutoff, after, super::retention::GC_BATCH)
                    .map_err(sql),
            ),
            Write::GcCommands(cutoff, reply) => Reply::Count(
                reply,
                super::retention::gc_commands(&self.conn, cutoff)
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
                    .map_err(sql),
            ),
            Write::Fork(spec, reply) => Reply::Fork(
                reply,
                match self.all_or_nothing(|w| w.fork(&spec)) {
                    Ok(Ok(forked)) => Ok(forked),
                    Ok(Err(why)) => Err(StoreError::new(path, StoreErrorKind::Damaged, why)),
                    Err(e) => Err(sql(e)),
                },
            ),
            Write::Vacuum(reply) => Reply::Count(
                reply,
                super::retention::vacuum_step(&self.conn).map_err(sql),
            ),
            Write::Command {
                seq,
                outcome,
                send,
                at,
                reply,
            } => Reply::Finish(
                reply,
                self.apply_command(seq, &outcome, send.as_ref(), at)
                    .map_err(sql),
            ),
            Write::Patch(workflow_id, at, name, reply) => Reply::Unit(
                reply,
                self.conn
                    .prepare_cached(concat!(
                        "INSERT INTO durable_patches (run, path, name, crc32) VALUES (",
                        run_of_first_parameter!(),
                        ", ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                    ))
                    .and_then(|mut stmt| {
                        let at = at.to_key();
                        let crc = keyed_crc32(&step_key(&workflow_id, &at, name), &[]);
                        stmt.execute(params![&*workflow_id, at, name, crc])
                    })
                    .map(|_| ())
                    .map_err(sql),
            ),
            Write::GiveBack(key, topic, reply) => {
                Reply::Unit(reply, self.give_back(path, &key, topic))
            }
            Write::Cancel(id, reason, at, reply) => {
                self.touch_all_queues();
                let cancelled = self.cancel(&id, reason, at).map_err(sql);
                if let Ok(ids) = &cancelled {
                    for id in ids {
                        self.finished_in_queue(id);
                    }
                }
                Reply::Ids(reply, cancelled)
            }
            Write::Resume(id, at, reply) => {
                self.touch_all_queues();
                Reply::Ids(reply, self.resume(&id, at).map_err(sql))
            }
            Write::QueueNews(news, reply) => Reply::Unit(reply, self.queue_news(news).map_err(sql)),
            Write::SetQueue(set, at, reply) => {
                Reply::Unit(reply, self.set_limits(&set, at).map_err(sql))
            }
            Write::Dispatch(reply) => {
                self.touch_all_queues();
                Reply::Unit(reply, Ok(()))
            }
            Write::Hold(id, at, reply) => Reply::Unit(reply, self.hold(&id, at).map_err(sql)),
            Write::Schedule(write, at, reply) => {
                Reply::Unit(reply, self.set_schedule(&write, at).map_err(sql))
            }
            Write::Transaction(_, reply) => Reply::Unit(
                reply,
                Err(StoreError::new(
                    path,
                    StoreErrorKind::Invariant,
                    "a transaction step reached a shared batch",
                )),
            ),
            // Never batched either; answered "not dormant", which changes nothing.
            Write::Dormant(_, reply) => Reply::Finish(reply, Ok(false)),
        }
    }

    fn start_record(
        &mut self,
        key: &StepKey,
        at: i64,
        wake_at: Option<i64>,
    ) -> rusqlite::Result<()> {
        let path = key.path.to_key();
        let crc = keyed_crc32(
            &step_key(&key.workflow_id, &path, key.name),
            started_value(at, wake_at).as_bytes(),
        );
        self.conn.prepare_cached(SQL_STARTED)?.execute(params![
            &*key.workflow_id,
            path,
            key.name,
            at,
            wake_at,
            crc
        ])?;
        Ok(())
    }

    pub(super) fn insert_message(&mut self, m: &NewMessage) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(SQL_INSERT_MESSAGE)?
            .execute(params![
                m.destination,
                m.topic,
                m.payload,
                keyed_crc32(&message_key(&m.destination, &m.topic), &m.payload),
                m.sent_at
            ])?;
        self.touched.push(WaitFor::Message {
            destination: m.destination.clone(),
            topic: m.topic.clone(),
        });
        Ok(())
    }

    /// Undoes a `recv` that never delivered its message: its record goes, and the
    /// message goes back before every other (so the queue's order is as it was).
    fn give_back(&mut self, path: &Path, key: &StepKey, topic: String) -> Result<(), StoreError> {
        let sql = |e| sql_error(path, e);
        let path_text = key.path.to_key();
        let recorded: Option<(Option<Vec<u8>>, Option<u32>, String)> = self
            .conn
            .prepare_cached(SQL_RECORDED_OUTPUT)
            .map_err(sql)?
            .query_row(params![&*key.workflow_id, path_text], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(sql)?;
        let Some((Some(output), crc, name)) = recorded else {
            // Never answered (the wait was dropped first), or given back already.
            return Ok(());
        };
        if !checks(&step_key(&key.workflow_id, &path_text, &name), &output, crc) {
            return Err(damaged_answer(path, key));
        }
        let Ok(Some(payload)) = decode_answer(&output) else {
            // A recorded timeout: nothing was taken.
            return Ok(());
        };
        let done = self.all_or_nothing(|w| {
            let deleted = w
                .conn
                .prepare_cached(concat!(
                    "DELETE FROM durable_steps WHERE run = ",
                    run_of_first_parameter!(),
                    " AND path = ?2 AND name = ?3",
                ))?
                .execute(params![&*key.workflow_id, key.path.to_key(), key.name])?;
            if deleted != 1 {
                // Not a recv's record: nothing of ours to give back.
                return Ok(false);
            }
            w.conn
                .prepare_cached(
                    "INSERT INTO durable_messages (seq, destination, topic, payload, crc32, sent_at)
                     VALUES ((SELECT COALESCE(MIN(seq), 1) - 1 FROM durable_messages),
                             ?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    &*key.workflow_id,
                    topic,
                    payload,
                    keyed_crc32(&message_key(&key.workflow_id, &topic), &payload),
                    crate::util::now_ms()
                ])?;
            Ok(true)
        });
        if done.map_err(sql)? {
            self.touched.push(WaitFor::Message {
                destination: key.workflow_id.to_string(),
                topic,
            });
        }
        Ok(())
    }

    /// Cancels `id` and its pending descendants. Descendants are found through
    /// `parent_id`, within the unique index's range of ids that start with `<id>/` (every
    /// descendant's id does): no index on `parent_id` is kept, which would cost every
    /// start and finish a cursor for a rare operation.
    fn cancel(&mut self, id: &str, reason: CancelReason, at: i64) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(concat!(
            family_of_first_parameter!(),
            "
             UPDATE durable_workflows
             SET status = 'cancelled', error_kind = ?2, error = ?3, updated_at = ?4
             WHERE status = 'pending' AND id IN tree
             RETURNING id, run"
        ))?;
        let runs: Vec<(String, i64)> = stmt
            .query_map(params![id, reason.as_str(), reason.to_string(), at], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        self.forget_dormant_runs(&runs)?;
        Ok(runs.into_iter().map(|(id, _)| id).collect())
    }

    /// Deletes what the journal kept of `runs` as dormant: a cancelled or resumed run
    /// is not re-parked from it.
    fn forget_dormant_runs(&self, runs: &[(String, i64)]) -> rusqlite::Result<()> {
        let mut forget = self.conn.prepare_cached(super::dormant::SQL_FORGET_RUN)?;
        for (_, run) in runs {
            forget.execute([run])?;
        }
        Ok(())
    }

    fn resume(&mut self, id: &str, at: i64) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(concat!(
            family_of_first_parameter!(),
            "
             UPDATE durable_workflows
             SET status = 'pending', output = NULL, output_crc32 = NULL, error_kind = NULL,
                 error = NULL, deadline_at = NULL, updated_at = ?2,
                 replays = CASE WHEN ",
            replays_recorded!(),
            " THEN ",
            replays_appended!(),
            " ELSE replays END,
                 queue_state = CASE WHEN queue_state IS NULL THEN NULL ELSE 'queued' END
             WHERE id IN tree AND (status = 'cancelled' OR (id = ?1 AND status = 'failed'))
             RETURNING id, run"
        ))?;
        let runs: Vec<(String, i64)> = stmt
            .query_map(params![id, at], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        // A recorded panic or interruption is not an output: resuming runs those steps
        // again (an interrupted step also loses its start record, or it would be
        // found interrupted once more).
        let mut forget_started = self.conn.prepare_cached(
            "DELETE FROM durable_started WHERE run = ?1 AND path IN
                 (SELECT path FROM durable_steps WHERE run = ?1 AND error IS NOT NULL)",
        )?;
        let mut forget_errors = self
            .conn
            .prepare_cached("DELETE FROM durable_steps WHERE run = ?1 AND error IS NOT NULL")?;
        for (_, run) in &runs {
            forget_started.execute([run])?;
            forget_errors.execute([run])?;
        }
        drop((forget_started, forget_errors));
        self.forget_dormant_runs(&runs)?;
        Ok(runs.into_iter().map(|(id, _)| id).collect())
    }

    /// Runs a transaction step in a transaction of its own: the application's writes,
    /// then the step's record, committed together.
    pub(super) fn transaction(
        &mut self,
        path: &Path,
        TxStep {
            key,
            started_at,
            work,
        }: TxStep,
        reply: Replier<()>,
        stats: &WriterStats,
    ) {
        #[cfg_attr(
            not(feature = "postgres"),
            expect(
                clippy::infallible_destructuring_match,
                reason = "one flavour without postgres"
            )
        )]
        let work = match work {
            TxWork::Sqlite(work) => work,
            // Refused before it was queued (`SqliteStore::transaction`).
            #[cfg(feature = "postgres")]
            TxWork::Postgres(_) => {
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let step = TxStep {
                    key,
                    started_at,
                    work,
                };
                let _ = reply.send(Err(crate::journal::other_database(path, &step, "SQLite")));
                return;
            }
        };
        let started = std::time::Instant::now();
        if !self.conn.is_autocommit() {
            let _ = self.run(SQL_ROLLBACK);
        }
        let result = self.run_transaction(path, &key, started_at, work, stats);
        if stats.halted() {
            // A simulated crash: nothing committed, nobody hears back.
            return;
        }
        if result.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            self.note_commit();
            self.dormant_rows_committed();
        }
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.last_commit_ns.store(took, Ordering::Relaxed);
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let _ = reply.send(result);
    }

    fn run_transaction(
        &mut self,
        path: &Path,
        key: &StepKey,
        started_at: i64,
        work: TxFn,
        stats: &WriterStats,
    ) -> Result<(), StoreError> {
        let sql = |e| sql_error(path, e);
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(sql)?;
        // What the journal keeps of dormant runs goes first, as in every commit.
        self.flush_dormant().map_err(sql)?;
        tx.execute_batch("SAVEPOINT durable_transaction_step")
            .map_err(sql)?;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&tx)));
        let (outcome, keep) = match ran {
            Ok(Ok((outcome, keep))) => (outcome, keep),
            Ok(Err(message)) => {
                return Err(StoreError::new(path, StoreErrorKind::Invariant, message));
            }
            Err(payload) => (
                RecordedOutcome::Panicked(format!(
                    "step {} (`{}`) panicked: {}",
                    key.path,
                    key.name,
                    crate::util::panic_message(&*payload)
                )),
                false,
            ),
        };
        if self.conn.is_autocommit() {
            return Err(StoreError::new(
                path,
                StoreErrorKind::Invariant,
                format!(
                    "transaction step {} (`{}`) ended the transaction it was given (COMMIT or \
                     ROLLBACK); its writes may have committed without its record",
                    key.path, key.name
                ),
            ));
        }
        let end = if keep {
            "RELEASE durable_transaction_step"
        } else {
            "ROLLBACK TO durable_transaction_step; RELEASE durable_transaction_step"
        };
        tx.execute_batch(end).map_err(sql)?;
        let record = StepRecord {
            workflow_id: key.workflow_id.clone(),
            path: key.path.clone(),
            name: key.name,
            args: key.args,
            outcome,
            attempts: 1,
            started_at,
            finished_at: crate::util::now_ms(),
            attempt_times: None,
            effect: Effect::None,
        };
        self.insert_step(&record)
            .map_err(|e| step_error(path, &record, e))?;
        if stats.halted() {
            return Ok(()); // dropped: rolled back
        }
        tx.commit().map_err(sql)
    }

    pub(super) fn create(&mut self, w: &NewWorkflow) -> rusqlite::Result<Created> {
        if let Some(q) = &w.queued {
            return self.enqueue(w, q);
        }
        let inserted = self.conn.prepare_cached(SQL_CREATE)?.execute(params![
            &*w.id,
            w.name,
            w.input,
            EXECUTOR,
            w.app_version.as_deref(),
            w.created_at,
            keyed_crc32(&workflow_key(&w.id), &w.input),
            w.parent_id.as_deref(),
            w.deadline_at
        ])?;
        if inserted == 1 {
            return Ok(Created::New);
        }
        // Not inserted: a row of that id exists (in this transaction).
        let existing =
            rows::workflow(&self.conn, &w.id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        Ok(Created::Existing(Box::new(existing)))
    }

    pub(super) fn record(&mut self, s: &StepRecord) -> rusqlite::Result<()> {
        if let Effect::None = s.effect {
            return self.insert_step(s);
        }
        // The record and its effect stand or fall together.
        self.all_or_nothing(|w| {
            w.insert_step(s)?;
            w.apply(s)
        })
    }

    /// Inserts a step's row (without its effect).
    fn insert_step(&self, s: &StepRecord) -> rusqlite::Result<()> {
        let (output, error, kind) = s.outcome.columns();
        let path = s.path.to_key();
        let crc = keyed_crc32(
            &step_key(&s.workflow_id, &path, s.name),
            output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()),
        );
        self.conn.prepare_cached(SQL_RECORD)?.execute(params![
            &*s.workflow_id,
            &path,
            s.name,
            output,
            error,
            s.attempts,
            s.started_at,
            s.finished_at,
            crc,
            kind,
            fingerprint_column(s.args),
            s.attempt_times
        ])?;
        Ok(())
    }

    /// Runs `f` inside a savepoint, so that its writes stand or fall together (a failing
    /// statement otherwise rolls back only itself, and the batch goes on).
    pub(super) fn all_or_nothing<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn
            .execute_batch("SAVEPOINT durable_all_or_nothing")?;
        let done = f(self);
        self.conn.execute_batch(if done.is_ok() {
            "RELEASE durable_all_or_nothing"
        } else {
            "ROLLBACK TO durable_all_or_nothing; RELEASE durable_all_or_nothing"
        })?;
        done
    }

    /// Writes what a step's record also does.
    fn apply(&mut self, s: &StepRecord) -> rusqlite::Result<()> {
        match &s.effect {
            Effect::None => {}
            Effect::Send(m) => self.insert_message(m)?,
            Effect::SetEvent(event) => {
                let (key, value) = &**event;
                self.conn.prepare_cached(SQL_SET_EVENT)?.execute(params![
                    &*s.workflow_id,
                    key,
                    value,
                    keyed_crc32(&event_key(&s.workflow_id, key), value),
                    s.finished_at
                ])?;
                self.touched.push(WaitFor::Event {
                    workflow_id: s.workflow_id.to_string(),
                    key: key.clone(),
                });
            }
        }
        Ok(())
    }

    pub(super) fn finish(&mut self, f: &Finish) -> rusqlite::Result<bool> {
        let (status, output, kind, error) = f.outcome.columns();
        let crc = output.map(|o| keyed_crc32(&workflow_key(&f.id), o));
        let updated = self.conn.prepare_cached(SQL_FINISH)?.execute(params![
            &*f.id,
            status.as_str(),
            output,
            kind,
            error,
            f.at,
            crc
        ])?;
        if updated == 1 {
            self.finished_in_queue(&f.id);
        }
        Ok(updated == 1)
    }
}

// The statements of the workflow primitives, prepared on first use (through the
// connection's statement cache), not with the writer: a workload that never uses them
// should not pay for them, and statements held prepared take the connection's lookaside
// memory that the hot statements' executions would otherwise use.
pub(super) const SQL_OLDEST_MESSAGE: &str = "\
    SELECT seq, payload, crc32 FROM durable_messages WHERE destination = ?1 AND \
     topic = ?2 ORDER BY seq LIMIT 1";
pub(super) const SQL_DELETE_MESSAGE: &str = "DELETE FROM durable_messages WHERE seq = ?1";
pub(super) const SQL_INSERT_MESSAGE: &str = "\
    INSERT INTO durable_messages (destination, topic, payload, crc32, sent_at) \
     VALUES (?1, ?2, ?3, ?4, ?5)";
pub(super) const SQL_EVENT: &str = concat!(
    "SELECT value, crc32 FROM durable_events WHERE run = ",
    run_of_first_parameter!(),
    " AND key = ?2"
);
pub(super) const SQL_SET_EVENT: &str = concat!(
    "INSERT INTO durable_events (run, key, value, crc32, set_at) VALUES (",
    run_of_first_parameter!(),
    ", ?2, ?3, ?4, ?5) ON CONFLICT (run, key) DO UPDATE SET value = excluded.value, \
     crc32 = excluded.crc32, set_at = excluded.set_at"
);
pub(super) const SQL_STARTED: &str = concat!(
    "INSERT INTO durable_started (run, path, name, started_at, wake_at, crc32) VALUES (",
    run_of_first_parameter!(),
    ", ?2, ?3, ?4, ?5, ?6) ON CONFLICT (run, path) DO NOTHING"
);
pub(super) const SQL_RECORDED_OUTPUT: &str = concat!(
    "SELECT output, crc32, name FROM durable_steps WHERE run = ",
    run_of_first_parameter!(),
    " AND path = ?2"
);

pub(super) use crate::journal::{fingerprint_column, no_such_run};

pub(super) use crate::journal::INTERRUPTED;

/// The error for a step record that could not be written (a second record for its
/// path is refused).
pub(super) fn step_error(path: &Path, s: &StepRecord, e: rusqlite::Error) -> StoreError {
    if is_not_null_violation(&e) {
        // The run's number, found through its id, is NULL: no such workflow.
        no_such_run(path, &s.workflow_id)
    } else if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
        StoreError::new(
            path,
            StoreErrorKind::Invariant,
            format!(
                "step {} of workflow {} is already recorded; a recorded step is never overwritten",
                s.path, s.workflow_id
            ),
        )
    } else {
        sql_error(path, e)
    }
}

/// Whether `e` is a `NOT NULL` constraint's failure: a row recorded for a run whose
/// number, found through its workflow's id, is NULL (no such workflow).
pub(super) fn is_not_null_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL)
}
