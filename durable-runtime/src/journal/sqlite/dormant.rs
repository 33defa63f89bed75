//! What the writer keeps of dormant runs (table `durable_dormant`, since version 8), so
//! that an open re-parks them without replaying each.
//!
//! A row says: run `run`, put to sleep by `build` (the program's, then the workflow
//! function's code), waits for these messages, events and children, and wakes on its
//! own at `until`. It is a cache of what a replay would find, and is trusted only while
//! that holds:
//! - it is written (in the next commit, or after a second (`writer::ROWS_WAIT`) without
//!   one) once the run's hand-over to dormancy succeeded, when its body is dropped;
//! - it is deleted in the commit of the run's next write at the latest: a run writes
//!   again only once woken, and waking queues its deletion ([`Writer::forget_dormant`])
//!   before the rebuilt run can write. A cancel or a resume deletes it too;
//! - at an open ([`Writer::restore_dormant`]), a row is used only if its run is pending,
//!   its build is the build of that workflow now, its checksum holds, and nothing it
//!   waits for has come; every other row of a pending run is deleted and its run
//!   replayed.
//!
//! A row that is lost (a crash before it was written) costs a replay, nothing else.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};

use super::sql_error;
use super::waits::Token;
use super::writer::Writer;
use crate::error::StoreError;
use crate::journal::crc::keyed_crc32;
use crate::journal::{Builds, Kept, Restored, WaitFor, Wakes};
use crate::path::StepPath;

/// The rows of `durable_dormant` to write and to delete with the next commit: one
/// entry per run, in one or the other.
#[derive(Debug, Default)]
pub(super) struct PendingRows {
    put: HashMap<Arc<str>, Row>,
    delete: HashSet<Arc<str>>,
}

/// A row of `durable_dormant`, encoded.
#[derive(Debug)]
pub(super) struct Row {
    build: Arc<str>,
    until: Option<i64>,
    waits: Vec<u8>,
}

const SQL_PUT: &str = "INSERT OR REPLACE INTO durable_dormant (run, build, until, waits, crc32)
     SELECT run, ?2, ?3, ?4, ?5 FROM durable_workflows WHERE id = ?1";
/// Deletes the row of run number `?1`.
pub(super) const SQL_FORGET_RUN: &str = "DELETE FROM durable_dormant WHERE run = ?1";
const SQL_DELETE: &str = concat!(
    "DELETE FROM durable_dormant WHERE run = ",
    run_of_first_parameter!()
);

/// The tags of the entries of a row's `waits`.
const MESSAGE: u8 = b'm';
const EVENT: u8 = b'e';
const CHILD: u8 = b'c';

/// What a row's `waits` holds: each entry is a tag, then its strings, each as its
/// length (4 bytes, little-endian) and its UTF-8 bytes: a message's destination and
/// topic, an event's workflow and key, a child's id.
fn encode_waits(waits: &[(WaitFor, StepPath)], children: &[Arc<str>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |s: &str| {
        // A string longer than 4 GiB is not an id or a topic a journal holds.
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let mut entries: Vec<(u8, [&str; 2])> = Vec::new();
    for (what, _) in waits {
        entries.push(match what {
            WaitFor::Message { destination, topic } => (MESSAGE, [destination, topic]),
            WaitFor::Event { workflow_id, key } => (EVENT, [workflow_id, key]),
        });
    }
    let mut tags = Vec::with_capacity(entries.len() + children.len());
    for (tag, [a, b]) in &entries {
        tags.push(*tag);
        put(a);
        put(b);
    }
    for child in children {
        tags.push(CHILD);
        put(child);
    }
    // The tags first (their count, then one byte each), then the strings in order.
    let mut row = Vec::with_capacity(4 + tags.len() + out.len());
    row.extend_from_slice(&u32::try_from(tags.len()).unwrap_or(u32::MAX).to_le_bytes());
    row.extend_from_slice(&tags);
    row.extend_from_slice(&out);
    row
}

/// What a row waits for: its messages and events, and its children. `None` if the
/// bytes are not such a list (damage the checksum missed).
fn decode_waits(bytes: &[u8]) -> Option<(Vec<WaitFor>, Vec<String>)> {
    let (count, mut rest) = split_u32(bytes)?;
    let count = usize::try_from(count).ok()?;
    if count > rest.len() {
        return None;
    }
    let (tags, strings) = rest.split_at(count);
    rest = strings;
    let mut take = || -> Option<String> {
        let (len, tail) = split_u32(rest)?;
        let len = usize::try_from(len).ok()?;
        if len > tail.len() {
            return None;
        }
        let (s, tail) = tail.split_at(len);
        rest = tail;
        String::from_utf8(s.to_vec()).ok()
    };
    let mut waits = Vec::new();
    let mut children = Vec::new();
    for tag in tags {
        match *tag {
            MESSAGE => waits.push(WaitFor::Message {
                destination: take()?,
                topic: take()?,
            }),
            EVENT => waits.push(WaitFor::Event {
                workflow_id: take()?,
                key: take()?,
            }),
            CHILD => children.push(take()?),
            _ => return None,
        }
    }
    rest.is_empty().then_some((waits, children))
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, tail) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), tail))
}

/// The checksum of a row, keyed by its run's workflow id.
fn row_crc(id: &str, build: &str, until: Option<i64>, waits: &[u8]) -> u32 {
    let until = until.map(|u| u.to_string()).unwrap_or_default();
    keyed_crc32(&[id.as_bytes(), build.as_bytes(), until.as_bytes()], waits)
}

impl Writer {
    /// Notes that run `run` went dormant waiting for `waits` and what `kept` says: its
    /// row is written with the next commit (or when the writer goes idle).
    pub(super) fn keep_dormant(
        &mut self,
        run: Arc<str>,
        waits: &[(WaitFor, StepPath)],
        kept: Kept,
    ) {
        let row = Row {
            waits: encode_waits(waits, &kept.children),
            build: kept.build,
            until: kept.until,
        };
        self.dormant_rows.delete.remove(&run);
        self.dormant_rows.put.insert(run, row);
    }

    /// Run `run` is awake: its row (if any) is deleted in the next commit, which is at
    /// the latest the commit of its own next write.
    pub(super) fn forget_dormant(&mut self, run: Arc<str>) {
        self.dormant_rows.put.remove(&run);
        self.dormant_rows.delete.insert(run);
    }

    /// Whether a row waits to be written (not only deleted: a deletion can wait for the
    /// run's next write).
    pub(super) fn dormant_rows_due(&self) -> bool {
        !self.dormant_rows.put.is_empty()
    }

    /// Writes and deletes the rows noted since the last commit, in the open
    /// transaction. A row that cannot be written is dropped (it only saves a replay),
    /// unless its error rolled back the transaction; a deletion that fails, or such an
    /// error, fails the transaction, and everything noted is tried again with the next.
    pub(super) fn flush_dormant(&self) -> rusqlite::Result<()> {
        let PendingRows { put, delete } = &self.dormant_rows;
        if !delete.is_empty() {
            let mut stmt = self.conn.prepare_cached(SQL_DELETE)?;
            for run in delete {
                stmt.execute([&**run])?;
            }
        }
        for (run, row) in put {
            let crc = row_crc(run, &row.build, row.until, &row.waits);
            let written = self.conn.prepare_cached(SQL_PUT).and_then(|mut s| {
                s.execute(params![&**run, &*row.build, row.until, row.waits, crc])
            });
            if let Err(e) = written {
                if self.conn.is_autocommit() {
                    // The error rolled back the whole transaction, deletions included:
                    // the batch must fail with it.
                    return Err(e);
                }
                tracing::warn!(workflow = %run, "cannot keep the dormant workflow's waits in the journal ({e}); the next open replays it");
            }
        }
        Ok(())
    }

    /// The rows noted were committed.
    pub(super) fn dormant_rows_committed(&mut self) {
        let rows = &mut self.dormant_rows;
        if !rows.put.is_empty() || !rows.delete.is_empty() {
            *rows = PendingRows::default();
        }
    }

    /// See [`Store::restore_dormant`](crate::journal::Store::restore_dormant).
    pub(super) fn restore_dormant(
        &mut self,
        path: &Path,
        builds: Option<&Builds>,
        wakes: Wakes,
    ) -> Result<Vec<Restored>, StoreError> {
        let err = |e| sql_error(path, e);
        self.end_open_transaction();
        let any: bool = self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM durable_dormant)", [], |r| {
                r.get(0)
            })
            .map_err(err)?;
        if !any {
            return Ok(Vec::new());
        }
        let tx = Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        // Every row not kept goes: its run is replayed, and writes again.
        let kept = match builds {
            Some(builds) => match restorable(&tx, builds) {
                Ok((kept, dropped)) => {
                    let mut drop_row = tx.prepare(SQL_FORGET_RUN).map_err(err)?;
                    for run in dropped {
                        drop_row.execute([run]).map_err(err)?;
                    }
                    tx.execute(
                        "DELETE FROM durable_dormant WHERE run NOT IN
                             (SELECT run FROM durable_workflows WHERE status = 'pending')",
                        [],
                    )
                    .map_err(err)?;
                    kept
                }
                Err(e) => {
                    // Unreadable rows only cost replays; but none may outlive this
                    // open, or it would describe a run that went on.
                    tracing::warn!(
                        "cannot read the dormant workflows the journal kept ({e}); replaying them"
                    );
                    tx.execute("DELETE FROM durable_dormant", []).map_err(err)?;
                    Vec::new()
                }
            },
            None => {
                tx.execute("DELETE FROM durable_dormant", []).map_err(err)?;
                Vec::new()
            }
        };
        tx.commit().map_err(err)?;
        let mut restored = Vec::with_capacity(kept.len());
        for k in kept {
            let alive = Arc::new(());
            let id: Arc<str> = Arc::from(k.id);
            for what in k.waits {
                self.add_token(
                    what,
                    Token {
                        run: id.clone(),
                        alive: Arc::downgrade(&alive),
                    },
                );
            }
            restored.push(Restored {
                id,
                until: k.until,
                alive,
            });
        }
        if !restored.is_empty() {
            self.wakes = Some(wakes);
        }
        Ok(restored)
    }
}

/// A row that may be used.
struct Restorable {
    id: String,
    waits: Vec<WaitFor>,
    until: Option<i64>,
}

/// The rows of `durable_dormant` that a program whose workflows have `builds` may use
/// (see the module's documentation), and the runs of the pending ones it may not (of
/// another build, damaged, or answered since).
fn restorable(
    tx: &Transaction<'_>,
    builds: &Builds,
) -> rusqlite::Result<(Vec<Restorable>, Vec<i64>)> {
    let now = crate::util::now_ms();
    let mut rows = tx.prepare(
        "SELECT d.run, w.id, d.until, w.deadline_at, d.waits, d.crc32, w.name, d.build
         FROM durable_dormant d JOIN durable_workflows w ON w.run = d.run
         WHERE w.status = 'pending'",
    )?;
    let mut message =
        tx.prepare("SELECT 1 FROM durable_messages WHERE destination = ?1 AND topic = ?2 LIMIT 1")?;
    let mut event = tx.prepare(concat!(
        "SELECT 1 FROM durable_events WHERE run = ",
        run_of_first_parameter!(),
        " AND key = ?2"
    ))?;
    let mut child = tx.prepare("SELECT status FROM durable_workflows WHERE id = ?1")?;
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    let mut found = rows.query([])?;
    while let Some(r) = found.next()? {
        let run: i64 = r.get(0)?;
        let id: String = r.get(1)?;
        let until: Option<i64> = r.get(2)?;
        let deadline: Option<i64> = r.get(3)?;
        let waits: Vec<u8> = r.get(4)?;
        let crc: i64 = r.get(5)?;
        let name: String = r.get(6)?;
        let build: String = r.get(7)?;
        if builds.get(name.as_str()).map(|b| &**b) != Some(build.as_str()) {
            // Another program, or other code of this workflow: its waits are whatever
            // a replay of this code finds.
            dropped.push(run);
            continue;
        }
        if i64::from(row_crc(&id, &build, until, &waits)) != crc {
            tracing::warn!(workflow = %id, "the journal's record of the dormant workflow is damaged; replaying it");
            dropped.push(run);
            continue;
        }
        let Some((waits, children)) = decode_waits(&waits) else {
            dropped.push(run);
            continue;
        };
        let until = until.into_iter().chain(deadline).min();
        if until.is_some_and(|at| at <= now) {
            dropped.push(run);
            continue;
        }
        let mut answered = false;
        for what in &waits {
            answered |= match what {
                WaitFor::Message { destination, topic } => message
                    .query_row([destination, topic], |_| Ok(()))
                    .optional()?
                    .is_some(),
                WaitFor::Event { workflow_id, key } => event
                    .query_row([workflow_id, key], |_| Ok(()))
                    .optional()?
                    .is_some(),
            };
        }
        for c in &children {
            let status: Option<String> = child.query_row([c], |r| r.get(0)).optional()?;
            answered |= status.as_deref() != Some("pending");
        }
        if answered {
            dropped.push(run);
        } else {
            out.push(Restorable { id, waits, until });
        }
    }
    Ok((out, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wait_for() -> impl Strategy<Value = WaitFor> {
        prop_oneof![
            (".{0,20}", ".{0,20}")
                .prop_map(|(destination, topic)| WaitFor::Message { destination, topic }),
            (".{0,20}", ".{0,20}")
                .prop_map(|(workflow_id, key)| WaitFor::Event { workflow_id, key }),
        ]
    }

    proptest! {
        #[test]
        fn waits_decode_to_what_was_encoded(
            waits in proptest::collection::vec(wait_for(), 0..6),
            children in proptest::collection::vec(".{0,30}", 0..4),
        ) {
            let at: Vec<_> = waits.iter().cloned().map(|w| (w, StepPath::child(&[], 1))).collect();
            let kids: Vec<Arc<str>> = children.iter().map(|c| Arc::from(c.as_str())).collect();
            let bytes = encode_waits(&at, &kids);
            prop_assert_eq!(decode_waits(&bytes), Some((waits, children)));
        }

        #[test]
        fn damaged_waits_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_waits(&bytes);
        }

        #[test]
        fn a_truncated_row_does_not_decode(
            waits in proptest::collection::vec(wait_for(), 1..4),
            cut in 1usize..8,
        ) {
            let at: Vec<_> = waits.into_iter().map(|w| (w, StepPath::child(&[], 1))).collect();
            let bytes = encode_waits(&at, &[]);
            let cut = cut.min(bytes.len());
            prop_assert_eq!(decode_waits(&bytes[..bytes.len() - cut]), None);
        }
    }
}
