//! The wait broker: waits for a message or an event (`recv`, `get_event`) that find
//! nothing are parked by the writer, and answered in the transaction that sends the
//! message or sets the event; their answers are recorded as their steps.

use std::path::Path;
use std::sync::{Arc, Weak};

use rusqlite::{ErrorCode, OptionalExtension, params};

use super::ops::{
    SQL_DELETE_MESSAGE, SQL_EVENT, SQL_OLDEST_MESSAGE, SQL_RECORDED_OUTPUT, fingerprint_column,
};
use super::rows::checks;
use super::sql_error;
use super::writer::{Reply, SQL_RECORD, Writer};
use crate::error::{StoreError, StoreErrorKind};
use crate::journal::crc::{event_key, keyed_crc32, message_key, step_key};
use crate::journal::{Dormant, Replier, Wait, WaitFor, WaitRecord};
use crate::journal::{already_recorded, decode_answer, encode_answer, same_step};

/// A wait kept by the writer until what it waits for is written.
pub(super) struct Parked {
    pub(super) record: Option<WaitRecord>,
    pub(super) reply: Replier<Option<Vec<u8>>>,
}

/// A wait of a dormant run, kept as a wake-up: a write of what it waits for takes
/// nothing for it, and wakes the run (see [`Store::dormant`](crate::journal::Store)).
pub(super) struct Token {
    pub(super) run: Arc<str>,
    /// Gone once the run is not dormant any more.
    pub(super) alive: Weak<()>,
}

/// How often (in parked waits, at least) the writer drops the parked waits nobody waits
/// for.
const SWEEP_EVERY: u64 = 1024;

/// When to sweep a map of waits of the entries nobody waits for: after as many new
/// entries as the last sweep left (at least [`SWEEP_EVERY`]), so that sweeping costs a
/// constant per entry however many wait.
#[derive(Debug)]
pub(super) struct Sweeps {
    /// Entries added so far.
    added: u64,
    /// At how many the next sweep runs.
    next: u64,
}

impl Sweeps {
    pub(super) fn new() -> Self {
        Sweeps {
            added: 0,
            next: SWEEP_EVERY,
        }
    }

    /// Counts one more entry; whether a sweep is due.
    fn due(&mut self) -> bool {
        self.added += 1;
        self.added >= self.next
    }

    /// Notes a sweep that left `left` entries.
    fn swept(&mut self, left: usize) {
        let left = u64::try_from(left).unwrap_or(u64::MAX);
        self.next = self.added.saturating_add(left.max(SWEEP_EVERY));
    }

    /// Entries added so far.
    pub(super) fn added(&self) -> u64 {
        self.added
    }
}

impl Writer {
    /// Keeps a wait that found nothing (its batch committed) until what it waits for
    /// is written.
    pub(super) fn park(&mut self, what: WaitFor, parked: Parked) {
        if self.park_sweeps.due() {
            // Outside callers that gave up (`Runtime::get_event` with a timeout) on
            // keys nobody sets would otherwise stay for ever. 100,000 workflows parking
            // at once swept 100 times over all of them.
            self.parked.retain(|_, q| {
                q.retain(|p| !p.reply.is_closed());
                !q.is_empty()
            });
            self.park_sweeps.swept(self.parked.len());
        }
        let queue = self.parked.entry(what).or_default();
        // Waiters that gave up (a timeout, a stopped workflow) are dropped here rather
        // than kept for ever, and so is an earlier execution's wait for the same step:
        // this one replaces it.
        queue.retain(|p| {
            !p.reply.is_closed() && !same_step(p.record.as_ref(), parked.record.as_ref())
        });
        queue.push_back(parked);
    }

    /// Turns the parked waits of a run going dormant into wake-ups, if every one is
    /// still parked and waited for; answers whether it did (see
    /// [`Store::dormant`](crate::journal::Store)).
    pub(super) fn go_dormant(&mut self, d: Dormant) -> bool {
        let waits_here = |p: &Parked, at: &crate::path::StepPath| {
            p.record
                .as_ref()
                .is_some_and(|r| r.key.workflow_id == d.run && r.key.path == *at)
        };
        let all_parked = d.waits.iter().all(|(what, at)| {
            self.parked
                .get(what)
                .is_some_and(|q| q.iter().any(|p| !p.reply.is_closed() && waits_here(p, at)))
        });
        if !all_parked || d.alive.strong_count() == 0 {
            return false;
        }
        if self.dormant_sweeps.due() {
            // Wake-ups of runs that were woken for another reason, or ended.
            self.dormant.retain(|_, tokens| {
                tokens.retain(|t| t.alive.strong_count() > 0);
                !tokens.is_empty()
            });
            self.dormant_sweeps.swept(self.dormant.len());
        }
        if let Some(kept) = d.kept {
            self.keep_dormant(d.run.clone(), &d.waits, kept);
        }
        for (what, at) in d.waits {
            if let Some(queue) = self.parked.get_mut(&what) {
                // Dropping the reply wakes the run's task, which does not poll the body
                // while the hand-over is under way (and drops it once it is done).
                queue.retain(|p| !waits_here(p, &at));
                if queue.is_empty() {
                    self.parked.remove(&what);
                }
            }
            self.add_token(
                what,
                Token {
                    run: d.run.clone(),
                    alive: d.alive.clone(),
                },
            );
        }
        self.wakes = Some(d.wakes);
        true
    }

    /// Keeps `token` until a write of `what` wakes its run.
    pub(super) fn add_token(&mut self, what: WaitFor, token: Token) {
        // Most waits have one dormant run behind them: room for one, not the four a
        // first push makes room for (a 100,000 dormant runs hold 7 MB less).
        self.dormant
            .entry(what)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(token);
    }

    /// Wakes the dormant runs that wait for what the batch that just committed sent or
    /// set: each is rebuilt by replay, and its new wait takes what was written.
    pub(super) fn wake_dormant(&mut self) {
        if self.dormant.is_empty() {
            return;
        }
        let Some(wakes) = &self.wakes else {
            return;
        };
        for what in &self.touched {
            for token in self.dormant.remove(what).into_iter().flatten() {
                if token.alive.strong_count() > 0 {
                    // A runtime that is gone has nothing left to wake.
                    let _ = wakes.send(token.run);
                }
            }
        }
    }

    /// Answers the parked waits for what this batch sent or set, in this same
    /// transaction: a waiting `recv` takes its message and records it in the commit that
    /// sends it, so it is answered when the send is.
    pub(super) fn answer_parked(&mut self, path: &Path, replies: &mut Vec<Reply>) {
        let mut touched = std::mem::take(&mut self.touched);
        let mut seen = std::collections::HashSet::new();
        touched.retain(|w| seen.insert(w.clone()));
        for what in &touched {
            let Some(mut queue) = self.parked.remove(what) else {
                continue;
            };
            while let Some(p) = queue.pop_front() {
                if p.reply.is_closed() {
                    // Nobody waits any more (a timeout, a cancelled or stopped workflow):
                    // the message stays for a later `recv`.
                    continue;
                }
                let wait = Wait {
                    what: what.clone(),
                    record: p.record,
                    park: true,
                };
                match self.wait(path, &wait) {
                    Ok(Some(answer)) => replies.push(Reply::Value(p.reply, Ok(Some(answer)))),
                    Ok(None) => {
                        // Nothing left for it (an earlier waiter took it): it and the
                        // ones behind it stay parked.
                        queue.push_front(Parked {
                            record: wait.record,
                            reply: p.reply,
                        });
                        break;
                    }
                    Err(e) => replies.push(Reply::Value(p.reply, Err(e))),
                }
            }
            if !queue.is_empty() {
                self.parked.insert(what.clone(), queue);
            }
        }
        // Kept until the replies are sent: a wait parked earlier in this batch is run
        // again after the commit.
        self.touched = touched;
    }

    pub(super) fn wait(&mut self, path: &Path, wait: &Wait) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = |e| sql_error(path, e);
        let damaged = |what: String| {
            StoreError::new(
                path,
                StoreErrorKind::Invariant,
                format!("{what} does not match its checksum: the journal is damaged"),
            )
        };
        // The message to take once the answer is recorded.
        let mut take = None;
        let answer = match &wait.what {
            WaitFor::Message { destination, topic } => {
                let row = self
                    .conn
                    .prepare_cached(SQL_OLDEST_MESSAGE)
                    .map_err(sql)?
                    .query_row(params![destination, topic], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get(2)?))
                    })
                    .optional()
                    .map_err(sql)?;
                let Some((seq, payload, crc)) = row else {
                    return Ok(None);
                };
                if !checks(&message_key(destination, topic), &payload, Some(crc)) {
                    return Err(damaged(format!(
                        "message {seq} for workflow {destination} on topic `{topic}`"
                    )));
                }
                take = Some(seq);
                payload
            }
            WaitFor::Event { workflow_id, key } => {
                let row = self
                    .conn
                    .prepare_cached(SQL_EVENT)
                    .map_err(sql)?
                    .query_row(params![workflow_id, key], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?))
                    })
                    .optional()
                    .map_err(sql)?;
                let Some((value, crc)) = row else {
                    return Ok(None);
                };
                if !checks(&event_key(workflow_id, key), &value, Some(crc)) {
                    return Err(damaged(format!("event `{key}` of workflow {workflow_id}")));
                }
                value
            }
        };
        if let Some(r) = &wait.record {
            // The record and the taking of the message stand or fall together: a record
            // that fails (the path is taken) must not consume a message, and a message
            // taken must be recorded.
            let answered = self.all_or_nothing(|w| {
                w.record_answer(r, Some(&answer))?;
                if let Some(seq) = take {
                    w.conn.prepare_cached(SQL_DELETE_MESSAGE)?.execute([seq])?;
                }
                Ok(())
            });
            answered.map_err(|e| {
                if super::ops::is_not_null_violation(&e) {
                    super::ops::no_such_run(path, &r.key.workflow_id)
                } else if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
                    already_recorded(path, &r.key)
                } else {
                    sql(e)
                }
            })?;
        }
        Ok(Some(answer))
    }

    /// Gives up a parked wait: records `None` unless it was answered already, and
    /// returns what it recorded.
    pub(super) fn expire(
        &mut self,
        path: &Path,
        r: &WaitRecord,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = |e| sql_error(path, e);
        let mut was_parked = false;
        for queue in self.parked.values_mut() {
            let before = queue.len();
            queue.retain(|p| {
                p.record.as_ref().is_none_or(|q| {
                    q.key.workflow_id != r.key.workflow_id || q.key.path != r.key.path
                })
            });
            was_parked |= queue.len() != before;
        }
        self.parked.retain(|_, q| !q.is_empty());
        let path_text = r.key.path.to_key();
        let recorded: Option<(Option<Vec<u8>>, Option<u32>, String)> = self
            .conn
            .prepare_cached(SQL_RECORDED_OUTPUT)
            .map_err(sql)?
            .query_row(params![&*r.key.workflow_id, &path_text], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?))
            })
            .optional()
            .map_err(sql)?;
        match recorded {
            // Answered before the deadline was noticed: that answer stands.
            Some((Some(output), crc, name)) if !was_parked => {
                if !checks(
                    &step_key(&r.key.workflow_id, &path_text, &name),
                    &output,
                    crc,
                ) {
                    return Err(super::ops::damaged_answer(path, &r.key));
                }
                let answer = decode_answer(&output)
                    .map_err(|e| StoreError::new(path, StoreErrorKind::Invariant, e.to_string()))?;
                Ok(answer)
            }
            Some(_) => Err(already_recorded(path, &r.key)),
            None => {
                self.record_answer(r, None).map_err(sql)?;
                Ok(None)
            }
        }
    }

    pub(super) fn record_answer(
        &self,
        r: &WaitRecord,
        answer: Option<&[u8]>,
    ) -> rusqlite::Result<()> {
        let output = encode_answer(self.codec, answer);
        let path = r.key.path.to_key();
        let crc = keyed_crc32(&step_key(&r.key.workflow_id, &path, r.key.name), &output);
        self.conn.prepare_cached(SQL_RECORD)?.execute(params![
            &*r.key.workflow_id,
            path,
            r.key.name,
            output,
            None::<&str>,
            1,
            r.started_at,
            crate::util::now_ms(),
            crc,
            None::<&str>,
            fingerprint_column(r.key.args),
            None::<&str>
        ])?;
        Ok(())
    }
}
