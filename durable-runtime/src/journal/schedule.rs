//! What the journal keeps of a cron schedule: how far its ticks are done, and whether it
//! is paused. The schedule itself (its expression, zone and workflow) is declared in
//! code; the workflow each tick starts is an ordinary workflow row, under an id made
//! from the schedule and the tick, so a tick can start at most one.

use std::sync::Arc;

/// A schedule's state, as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScheduleState {
    /// The latest tick (milliseconds since the epoch) that was started or passed over;
    /// the ticks after it are due.
    pub(crate) done_through: i64,
    pub(crate) paused: bool,
}

/// A write to a schedule's state.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleWrite {
    pub(crate) name: Arc<str>,
    pub(crate) change: ScheduleChange,
}

#[derive(Debug, Clone)]
pub(crate) enum ScheduleChange {
    /// Declared by the program at `at`: recorded, with its expression and zone, if it
    /// is new (its ticks are due from `at` on); otherwise only its expression and zone
    /// are updated.
    Declare {
        expression: String,
        zone: String,
        at: i64,
    },
    /// Its ticks up to this one are done (it never moves back).
    DoneThrough(i64),
    /// Paused, or resumed with the ticks missed meanwhile passed over (done through
    /// the time of the resume).
    Paused(bool, i64),
}
