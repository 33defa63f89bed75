//! Retention on SQLite: deleting finished workflow runs older than a cutoff, with
//! everything recorded for them, in short batches, and giving the space back to the
//! file system (incremental vacuum).

use rusqlite::{Connection, params};

use crate::journal::retention::GcBatch;

/// Runs finished before this many ms since the epoch are deleted in batches of this
/// many: one batch is one short transaction, so a runtime sharing the file waits for
/// at most one.
pub(crate) const GC_BATCH: usize = 500;

/// Pages freed per incremental-vacuum transaction.
pub(crate) const VACUUM_PAGES: i64 = 2_000;

/// Deletes one batch (inside the caller's transaction): up to `limit` runs after run
/// number `after` that finished before `cutoff_ms`, with their steps, events, start
/// records, patches, dormant records and undelivered messages. Kept: a run with a
/// pending child; a child whose parent is pending, failed or cancelled (a resume of
/// the parent reads it); a run, or a child of a run, that a pending fork was made from
/// (the fork's copied records may name it). Answers how many it deleted and where the
/// next batch starts.
pub(crate) fn gc_batch(
    c: &Connection,
    cutoff_ms: i64,
    after: i64,
    limit: usize,
) -> rusqlite::Result<GcBatch> {
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS durable_gc (run INTEGER PRIMARY KEY, id TEXT NOT NULL);
         DELETE FROM temp.durable_gc;",
    )?;
    // Walks the runs in number order from `after`: each batch reads only its own
    // stretch of the table. `scanned` is the last run looked at, deleted or not.
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let scanned: Option<i64> = c
        .prepare_cached(
            "SELECT max(run) FROM (SELECT run FROM durable_workflows WHERE run > ?1
             ORDER BY run LIMIT ?2)",
        )?
        .query_row(params![after, limit], |r| r.get(0))?;
    let Some(scanned) = scanned else {
        return Ok(GcBatch {
            deleted: 0,
            next: None,
        });
    };
    let deleted = c
        .prepare_cached(
            "INSERT INTO temp.durable_gc (run, id)
             SELECT w.run, w.id FROM durable_workflows w
             WHERE w.run > ?1 AND w.run <= ?2
               AND w.status <> 'pending' AND w.updated_at <= ?3
               AND NOT EXISTS (SELECT 1 FROM durable_workflows p
                               WHERE p.id = w.parent_id AND p.status <> 'completed')
               AND NOT EXISTS (SELECT 1 FROM durable_workflows k
                               WHERE k.status = 'pending' AND k.parent_id = w.id)
               AND NOT EXISTS (SELECT 1 FROM durable_workflows f
                               WHERE f.status = 'pending'
                                 AND f.forked_from IN (w.id, w.parent_id))",
        )?
        .execute(params![after, scanned, cutoff_ms])?;
    if deleted > 0 {
        c.execute_batch(
            "DELETE FROM durable_steps WHERE run IN (SELECT run FROM temp.durable_gc);
             DELETE FROM durable_events WHERE run IN (SELECT run FROM temp.durable_gc);
             DELETE FROM durable_started WHERE run IN (SELECT run FROM temp.durable_gc);
             DELETE FROM durable_patches WHERE run IN (SELECT run FROM temp.durable_gc);
             DELETE FROM durable_dormant WHERE run IN (SELECT run FROM temp.durable_gc);
             DELETE FROM durable_messages WHERE destination IN (SELECT id FROM temp.durable_gc);
             DELETE FROM durable_workflows WHERE run IN (SELECT run FROM temp.durable_gc);
             DELETE FROM temp.durable_gc;",
        )?;
    }
    Ok(GcBatch {
        deleted: deleted as u64,
        next: Some(scanned),
    })
}

/// Deletes the commands applied before `cutoff_ms` (inside the caller's transaction).
pub(crate) fn gc_commands(c: &Connection, cutoff_ms: i64) -> rusqlite::Result<u64> {
    Ok(c.prepare_cached(
        "DELETE FROM durable_commands WHERE applied_at IS NOT NULL AND applied_at <= ?1",
    )?
    .execute([cutoff_ms])? as u64)
}

/// Frees up to [`VACUUM_PAGES`] of the file's free pages, if the journal was made with
/// incremental vacuum; answers how many free pages are left (0 without it: there is
/// nothing this can free).
pub(crate) fn vacuum_step(c: &Connection) -> rusqlite::Result<i64> {
    let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode != 2 {
        return Ok(0);
    }
    // `incremental_vacuum` answers nothing; step it through.
    let mut stmt = c.prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    c.query_row("PRAGMA freelist_count", [], |r| r.get(0))
}
