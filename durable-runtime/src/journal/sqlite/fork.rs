//! Forks on SQLite (see [`Store::fork`](crate::journal::Store::fork)).

use rusqlite::{OptionalExtension, params};

use super::rows::{self, OnDamage};
use super::writer::{SQL_CREATE, SQL_RECORD, Writer};
use crate::journal::crc::{event_key, keyed_crc32, step_key, workflow_key};
use crate::journal::{ForkSpec, Forked, RecordedOutcome, fingerprint_column};

impl Writer {
    /// Makes the fork `spec` (inside the batch's transaction, in a savepoint).
    pub(super) fn fork(&mut self, spec: &ForkSpec) -> rusqlite::Result<Result<Forked, String>> {
        let c = &self.conn;
        let existing: Option<Option<String>> = c
            .prepare_cached("SELECT forked_from FROM durable_workflows WHERE id = ?1")?
            .query_row([&spec.new_id], |r| r.get(0))
            .optional()?;
        if let Some(forked_from) = existing {
            return Ok(Ok(Forked::Exists { forked_from }));
        }
        let origin = rows::select_workflows(c, "", "WHERE id = ?1", [&spec.origin], |_, w| Ok(w))?;
        let Some(origin) = origin.into_iter().next() else {
            return Ok(Ok(Forked::NoOrigin));
        };
        if let Some((_, why)) = &origin.damaged {
            return Ok(Err(why.clone()));
        }
        let steps = rows::step_rows(c, &spec.origin, None, usize::MAX, OnDamage::Mark)?;
        let before = spec.before.to_key();
        // When the fork point began in the origin: the start of its first step not
        // copied (none: after everything).
        let cut = steps
            .iter()
            .filter(|s| s.step.path.to_key() >= before)
            .map(|s| s.step.started_at)
            .min()
            .unwrap_or(i64::MAX);
        // Results only: a recorded panic or interruption runs again in the fork, as in
        // a resume (the fork is how a fix goes on).
        let copied: Vec<_> = steps
            .into_iter()
            .filter(|s| s.step.path.to_key() < before)
            .filter(|s| matches!(s.step.outcome, RecordedOutcome::Output(_)))
            .collect();
        if let Some(bad) = copied.iter().find(|s| !s.intact) {
            return Ok(Err(format!(
                "the recorded result of step {} of workflow {} does not match its checksum: \
                 the journal is damaged, and a fork would copy the damage",
                bad.step.path, spec.origin
            )));
        }
        let crc = keyed_crc32(&workflow_key(&spec.new_id), &origin.input);
        c.prepare_cached(SQL_CREATE)?.execute(params![
            spec.new_id,
            origin.name,
            origin.input,
            "local",
            spec.app_version.as_deref(),
            spec.at,
            crc,
            None::<&str>,
            None::<i64>
        ])?;
        c.prepare_cached("UPDATE durable_workflows SET forked_from = ?2 WHERE id = ?1")?
            .execute(params![spec.new_id, spec.origin])?;
        let n = copied.len();
        for s in copied {
            let (output, error, kind) = s.step.outcome.columns();
            let path = s.step.path.to_key();
            let crc = keyed_crc32(
                &step_key(&spec.new_id, &path, &s.step.name),
                output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()),
            );
            c.prepare_cached(SQL_RECORD)?.execute(params![
                spec.new_id,
                path,
                s.step.name,
                output,
                error,
                s.step.attempts,
                s.step.started_at,
                s.step.finished_at,
                crc,
                kind,
                fingerprint_column(s.step.args),
                s.step.attempt_times
            ])?;
        }
        // The events set before the fork point (a replayed `set_event` does not set
        // its event again), keyed anew. One set again later in the origin is not
        // copied: the value it had at the fork point is gone.
        for e in rows::events(c, &spec.origin)? {
            if e.set_at >= cut {
                continue;
            }
            if !e.intact {
                return Ok(Err(format!(
                    "event `{}` of workflow {} does not match its checksum: the journal is \
                     damaged, and a fork would copy the damage",
                    e.key, spec.origin
                )));
            }
            let crc = keyed_crc32(&event_key(&spec.new_id, &e.key), &e.value);
            c.prepare_cached(concat!(
                "INSERT INTO durable_events (run, key, value, crc32, set_at) VALUES (",
                run_of_first_parameter!(),
                ", ?2, ?3, ?4, ?5)"
            ))?
            .execute(params![spec.new_id, e.key, e.value, crc, e.set_at])?;
        }
        // The patch markers before the fork's step, keyed anew.
        let patches: Vec<(String, String)> = self
            .conn
            .prepare_cached(concat!(
                "SELECT path, name FROM durable_patches WHERE run = ",
                run_of_first_parameter!(),
                " AND path < ?2"
            ))?
            .query_map(params![spec.origin, before], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (path, name) in patches {
            let crc = keyed_crc32(&step_key(&spec.new_id, &path, &name), &[]);
            self.conn
                .prepare_cached(concat!(
                    "INSERT INTO durable_patches (run, path, name, crc32) VALUES (",
                    run_of_first_parameter!(),
                    ", ?2, ?3, ?4) ON CONFLICT DO NOTHING"
                ))?
                .execute(params![spec.new_id, path, name, crc])?;
        }
        Ok(Ok(Forked::New { steps: n }))
    }
}
