//! The baselines: raw rusqlite doing the minimum a journal must do, with the same
//! pragmas and the same row shape as durable's `durable_steps` table.

use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, params};

use crate::Sync;

/// The journal's step table, as in durable's migration 1.
const STEPS: &str = "CREATE TABLE IF NOT EXISTS durable_steps (
    workflow_id TEXT NOT NULL,
    path        TEXT NOT NULL,
    name        TEXT NOT NULL,
    output      BLOB,
    error       TEXT,
    attempts    INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, path)
) STRICT, WITHOUT ROWID";

fn open(path: &Path, sync: Sync) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch(&format!("PRAGMA synchronous = {};", sync.pragma()))?;
    conn.execute_batch(STEPS)?;
    Ok(conn)
}

/// Inserts `rows` step-shaped rows into a fresh database in commits of `per_commit`;
/// returns the seconds the inserts and commits took.
pub(crate) fn commits(
    dir: &Path,
    sync: Sync,
    rows: usize,
    per_commit: usize,
) -> rusqlite::Result<f64> {
    let conn = open(&dir.join("baseline.db"), sync)?;
    let output = [1u8, 2];
    let start = Instant::now();
    let mut written = 0;
    while written < rows {
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO durable_steps
                     (workflow_id, path, name, output, error, attempts, started_at, finished_at)
                 VALUES (?1, ?2, 'noop', ?3, NULL, 1, 0, 0)",
            )?;
            for _ in 0..per_commit.min(rows - written) {
                stmt.execute(params![
                    format!("wf-{}", written / 1000),
                    (written + 1).to_string(),
                    &output[..]
                ])?;
                written += 1;
            }
        }
        tx.commit()?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Opens `journal` and reads every recorded step of `workflow_id` in one query;
/// returns the seconds it took and the number of rows.
pub(crate) fn select(journal: &Path, workflow_id: &str) -> rusqlite::Result<(f64, usize)> {
    let start = Instant::now();
    let conn = Connection::open(journal)?;
    let mut stmt = conn.prepare(
        "SELECT path, name, output, error, attempts, started_at, finished_at
         FROM durable_steps WHERE workflow_id = ?1",
    )?;
    let mut rows = 0;
    let mut q = stmt.query([workflow_id])?;
    while let Some(row) = q.next()? {
        let _: (String, String, Option<Vec<u8>>) = (row.get(0)?, row.get(1)?, row.get(2)?);
        rows += 1;
    }
    Ok((start.elapsed().as_secs_f64(), rows))
}
