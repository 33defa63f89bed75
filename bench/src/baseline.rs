//! The baselines: raw rusqlite doing the minimum a journal must do, with the same
//! pragmas, writing rows into a table made from durable's own `durable_steps` schema
//! (read from a journal durable created, so the row shape cannot drift from it).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::{Sync, usage};

/// Wall and CPU seconds a baseline took.
pub(crate) struct Took {
    pub(crate) wall_s: f64,
    pub(crate) cpu_s: f64,
}

/// Wall and CPU time from its start; the PostgreSQL baselines use it too.
pub(crate) struct Clock(Instant, f64);

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock(Instant::now(), usage::cpu_seconds())
    }

    pub(crate) fn stop(self) -> Took {
        Took {
            wall_s: self.0.elapsed().as_secs_f64(),
            cpu_s: usage::cpu_seconds() - self.1,
        }
    }
}

fn open(path: &Path, sync: Sync, steps_table: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch(&format!("PRAGMA synchronous = {};", sync.pragma()))?;
    conn.execute_batch(steps_table)?;
    Ok(conn)
}

/// The `CREATE TABLE` statement of `durable_steps` in the journal at `journal`.
pub(crate) fn steps_table(journal: &Path) -> rusqlite::Result<String> {
    Connection::open(journal)?.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'durable_steps'",
        [],
        |r| r.get(0),
    )
}

/// Inserts `rows` step rows, each with an output of `output_bytes`, into a fresh
/// database at `dir` (its table made by `steps_table`) in commits of `per_commit`;
/// returns the time the inserts and commits took.
pub(crate) fn commits(
    dir: &Path,
    sync: Sync,
    steps_table: &str,
    rows: usize,
    per_commit: usize,
    output_bytes: usize,
) -> rusqlite::Result<Took> {
    let conn = open(&dir.join("baseline.db"), sync, steps_table)?;
    let output = vec![1u8; output_bytes];
    let clock = Clock::start();
    let mut written = 0;
    while written < rows {
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO durable_steps
                     (run, path, name, output, error, attempts, started_at, finished_at)
                 VALUES (?1, ?2, 'noop', ?3, NULL, 1, 0, 0)",
            )?;
            for _ in 0..per_commit.min(rows - written) {
                stmt.execute(params![
                    i64::try_from(written / 1000).unwrap_or(i64::MAX),
                    (written + 1).to_string(),
                    &output[..]
                ])?;
                written += 1;
            }
        }
        tx.commit()?;
    }
    Ok(clock.stop())
}

/// Opens `journal` and reads every recorded step of `workflow_id` in one query;
/// returns the time it took and the number of rows.
pub(crate) fn select(journal: &Path, workflow_id: &str) -> rusqlite::Result<(Took, usize)> {
    let clock = Clock::start();
    let conn = Connection::open(journal)?;
    let mut stmt = conn.prepare(
        "SELECT path, name, output, error, attempts, started_at, finished_at
         FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = ?1)",
    )?;
    let mut rows = 0;
    let mut q = stmt.query([workflow_id])?;
    while let Some(row) = q.next()? {
        let _: (String, String, Option<Vec<u8>>) = (row.get(0)?, row.get(1)?, row.get(2)?);
        rows += 1;
    }
    Ok((clock.stop(), rows))
}

/// Makes `count` single-row commits into a fresh database at `dir` (after one more, not
/// timed, to warm up), each `pause` after the previous one, and times each commit on
/// its own; returns those times (seconds) and the CPU seconds per commit.
pub(crate) fn commit_latencies(
    dir: &Path,
    sync: Sync,
    steps_table: &str,
    count: usize,
    pause: Duration,
) -> rusqlite::Result<(Vec<f64>, f64)> {
    let conn = open(&dir.join("baseline.db"), sync, steps_table)?;
    let output = [1u8, 2];
    let mut latencies = Vec::with_capacity(count);
    let mut cpu = 0.0;
    for i in 0..=count {
        std::thread::sleep(pause);
        let clock = Clock::start();
        let tx = conn.unchecked_transaction()?;
        tx.prepare_cached(
            "INSERT INTO durable_steps
                 (run, path, name, output, error, attempts, started_at, finished_at)
             VALUES (0, ?1, 'recv', ?2, NULL, 1, 0, 0)",
        )?
        .execute(params![(i + 1).to_string(), &output[..]])?;
        tx.commit()?;
        let took = clock.stop();
        if i > 0 {
            latencies.push(took.wall_s);
            cpu += took.cpu_s;
        }
    }
    Ok((latencies, cpu / count as f64))
}
