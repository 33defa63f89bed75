//! Counting the I/O calls and deciding which of them fail: the position of the fault
//! set by `fail_at`, the one of `crash_at`, the kinds of call they count, and whether
//! the machine has stopped.

use std::ffi::c_int;

use rusqlite::ffi;

/// A kind of counted I/O call (an SQLite VFS method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `xOpen`: a database, WAL, journal or temporary file is opened.
    Open,
    /// `xRead`.
    Read,
    /// `xWrite`.
    Write,
    /// `xTruncate`.
    Truncate,
    /// `xSync`: an `fsync` (or `fdatasync`).
    Sync,
    /// `xLock`: taking or raising a lock on a database file (not unlocking, which
    /// always works, nor the WAL's shared-memory locks).
    Lock,
}

impl Kind {
    /// Every kind, in the order of [`Kind`]'s variants.
    pub const ALL: [Kind; 6] = [
        Kind::Open,
        Kind::Read,
        Kind::Write,
        Kind::Truncate,
        Kind::Sync,
        Kind::Lock,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The result code of a call of this kind that `fault` fails: what SQLite's own
    /// VFS returns for the same failure of the system call.
    pub(super) fn error(self, fault: Fault) -> c_int {
        match (self, fault) {
            (Kind::Write | Kind::Truncate | Kind::Sync, Fault::NoSpace) => ffi::SQLITE_FULL,
            (Kind::Open, _) => ffi::SQLITE_CANTOPEN,
            (Kind::Read, _) => ffi::SQLITE_IOERR_READ,
            (Kind::Write, _) => ffi::SQLITE_IOERR_WRITE,
            (Kind::Truncate, _) => ffi::SQLITE_IOERR_TRUNCATE,
            (Kind::Sync, _) => ffi::SQLITE_IOERR_FSYNC,
            (Kind::Lock, _) => ffi::SQLITE_IOERR_LOCK,
        }
    }
}

/// How an injected fault fails a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// An I/O error (`EIO`): `SQLITE_IOERR_READ`, `_WRITE`, `_TRUNCATE`, `_FSYNC` or
    /// `_LOCK` for the call it strikes, `SQLITE_CANTOPEN` for an open. The call changes
    /// nothing.
    Io,
    /// A full disk (`ENOSPC`): `SQLITE_FULL` for a write, truncate or sync, and as
    /// [`Fault::Io`] for the other calls. The call changes nothing.
    NoSpace,
    /// A write that writes only its first half (rounded down to whole 512-byte sectors
    /// when it spans two or more, and always at least one byte short), then fails with
    /// `SQLITE_IOERR_WRITE`. As [`Fault::Io`] for the other calls.
    ShortWrite,
}

/// Whether an injected fault strikes once or stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Persistence {
    /// Only the chosen call fails.
    Once,
    /// The chosen call and every eligible call after it fail, until
    /// [`FaultFs::clear`](super::FaultFs::clear).
    Sticky,
}

/// What the counting says of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The call goes ahead.
    Go,
    /// An injected fault strikes it.
    Fail(Fault),
    /// The machine has stopped (at this call or before): the call fails and changes
    /// nothing.
    Dead,
}

impl Verdict {
    /// The code a call of `kind` fails with, unless it goes ahead.
    pub(super) fn refusal(self, kind: Kind) -> Option<c_int> {
        match self {
            Verdict::Go => None,
            Verdict::Fail(fault) => Some(kind.error(fault)),
            Verdict::Dead => Some(kind.error(Fault::Io)),
        }
    }
}

/// The fault set by `fail_at`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    at: u64,
    fault: Fault,
    persistence: Persistence,
}

/// The counters and the plans of one VFS (behind its mutex: a call is counted and
/// judged in one step, so concurrent connections get distinct positions).
#[derive(Debug)]
pub(super) struct Control {
    /// Calls of each kind since the last reset, indexed by `Kind as usize`.
    calls: [u64; Kind::ALL.len()],
    /// The kinds that count towards the positions of `fault` and `crash_at`, as bits.
    eligible: u8,
    fault: Option<Plan>,
    crash_at: Option<u64>,
    crashed: bool,
    faults_hit: u64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            calls: [0; Kind::ALL.len()],
            eligible: u8::MAX,
            fault: None,
            crash_at: None,
            crashed: false,
            faults_hit: 0,
        }
    }
}

impl Control {
    /// Counts a call of `kind` and judges it.
    pub(super) fn tick(&mut self, kind: Kind) -> Verdict {
        self.calls[kind as usize] += 1;
        if self.crashed {
            return Verdict::Dead;
        }
        if self.eligible & kind.bit() == 0 {
            return Verdict::Go;
        }
        let position = self.position();
        if self.crash_at == Some(position) {
            self.crashed = true;
            return Verdict::Dead;
        }
        match self.fault {
            Some(plan)
                if position == plan.at
                    || (plan.persistence == Persistence::Sticky && position > plan.at) =>
            {
                self.faults_hit += 1;
                Verdict::Fail(plan.fault)
            }
            _ => Verdict::Go,
        }
    }

    /// The calls of eligible kinds since the last reset: the position of the latest.
    fn position(&self) -> u64 {
        Kind::ALL
            .iter()
            .filter(|k| self.eligible & k.bit() != 0)
            .map(|&k| self.calls[k as usize])
            .sum()
    }

    pub(super) fn total(&self) -> u64 {
        self.calls.iter().sum()
    }

    pub(super) fn calls(&self, kind: Kind) -> u64 {
        self.calls[kind as usize]
    }

    pub(super) fn faults_hit(&self) -> u64 {
        self.faults_hit
    }

    pub(super) fn is_crashed(&self) -> bool {
        self.crashed
    }

    pub(super) fn reset_count(&mut self) {
        self.calls = [0; Kind::ALL.len()];
        self.faults_hit = 0;
    }

    pub(super) fn fail_at(&mut self, at: u64, fault: Fault, persistence: Persistence) {
        self.fault = Some(Plan {
            at,
            fault,
            persistence,
        });
    }

    pub(super) fn only(&mut self, kinds: &[Kind]) {
        self.eligible = kinds.iter().fold(0, |bits, k| bits | k.bit());
    }

    pub(super) fn crash_at(&mut self, at: u64) {
        self.crash_at = Some(at);
    }

    pub(super) fn crash_now(&mut self) {
        self.crashed = true;
    }

    /// Removes the fault, the crash point and the filter of kinds (a stopped machine
    /// stays stopped).
    pub(super) fn clear(&mut self) {
        *self = Control {
            calls: self.calls,
            faults_hit: self.faults_hit,
            crashed: self.crashed,
            ..Control::default()
        };
    }

    pub(super) fn revive(&mut self) {
        self.crashed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_once_fault_strikes_only_its_position() {
        let mut c = Control::default();
        c.fail_at(2, Fault::Io, Persistence::Once);
        let verdicts: Vec<_> = (0..4).map(|_| c.tick(Kind::Read)).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Go,
                Verdict::Fail(Fault::Io),
                Verdict::Go,
                Verdict::Go
            ]
        );
        assert_eq!((c.total(), c.faults_hit()), (4, 1));
    }

    #[test]
    fn a_filtered_sticky_fault_counts_and_fails_only_its_kinds() {
        let mut c = Control::default();
        c.only(&[Kind::Sync]);
        c.fail_at(2, Fault::NoSpace, Persistence::Sticky);
        let calls = [Kind::Sync, Kind::Write, Kind::Sync, Kind::Write, Kind::Sync];
        let verdicts: Vec<_> = calls.iter().map(|&k| c.tick(k)).collect();
        let full = Verdict::Fail(Fault::NoSpace);
        assert_eq!(
            verdicts,
            [Verdict::Go, Verdict::Go, full, Verdict::Go, full]
        );
        assert_eq!((c.calls(Kind::Sync), c.calls(Kind::Write)), (3, 2));
    }

    #[test]
    fn a_crash_stops_every_later_call_until_revived() {
        let mut c = Control::default();
        c.crash_at(2);
        assert_eq!(c.tick(Kind::Open), Verdict::Go);
        assert_eq!(c.tick(Kind::Lock), Verdict::Dead);
        c.clear();
        assert_eq!(c.tick(Kind::Read), Verdict::Dead);
        c.revive();
        assert_eq!(c.tick(Kind::Read), Verdict::Go);
        assert_eq!(c.total(), 4);
    }
}
