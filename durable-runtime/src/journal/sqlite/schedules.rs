//! Schedules on SQLite: the `durable_schedules` row of each (see
//! [`crate::journal::schedule`]).

use rusqlite::{Connection, OptionalExtension, params};

use super::writer::Writer;
use crate::journal::schedule::{ScheduleChange, ScheduleState, ScheduleWrite};

impl Writer {
    /// Applies `write` to its schedule's row (`at`: now).
    pub(super) fn set_schedule(&mut self, write: &ScheduleWrite, at: i64) -> rusqlite::Result<()> {
        let name = &*write.name;
        match &write.change {
            ScheduleChange::Declare {
                expression,
                zone,
                at: declared,
            } => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO durable_schedules
                             (name, expression, time_zone, done_through, paused, updated_at)
                         VALUES (?1, ?2, ?3, ?4, 0, ?5)
                         ON CONFLICT (name) DO UPDATE SET expression = excluded.expression,
                             time_zone = excluded.time_zone, updated_at = excluded.updated_at
                         WHERE expression IS NOT excluded.expression
                            OR time_zone IS NOT excluded.time_zone",
                    )?
                    .execute(params![name, expression, zone, declared, at])?;
            }
            ScheduleChange::DoneThrough(tick) => {
                self.conn
                    .prepare_cached(
                        "UPDATE durable_schedules SET done_through = ?2, updated_at = ?3
                         WHERE name = ?1 AND done_through < ?2",
                    )?
                    .execute(params![name, tick, at])?;
            }
            ScheduleChange::Paused(paused, when) => {
                // A resume passes over what was missed while paused.
                self.conn
                    .prepare_cached(
                        "UPDATE durable_schedules SET paused = ?2, updated_at = ?4,
                             done_through = CASE WHEN ?2 THEN done_through
                                                 ELSE max(done_through, ?3) END
                         WHERE name = ?1",
                    )?
                    .execute(params![name, paused, when, at])?;
            }
        }
        Ok(())
    }
}

/// Schedule `name`'s state, if it was ever declared.
pub(super) fn state(c: &Connection, name: &str) -> rusqlite::Result<Option<ScheduleState>> {
    c.prepare_cached("SELECT done_through, paused FROM durable_schedules WHERE name = ?1")?
        .query_row([name], |r| {
            Ok(ScheduleState {
                done_through: r.get(0)?,
                paused: r.get(1)?,
            })
        })
        .optional()
}
