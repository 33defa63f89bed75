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

fn open(path: &Path, sync: Sync, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch(&format!("PRAGMA synchronous = {};", sync.pragma()))?;
    conn.execute_batch(schema)?;
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

/// Every `CREATE` statement of the journal at `journal` (tables first), to make a
/// database with its tables and indexes.
pub(crate) fn journal_schema(journal: &Path) -> rusqlite::Result<String> {
    let conn = Connection::open(journal)?;
    let mut stmt = conn.prepare(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name LIKE 'durable%'
         ORDER BY type = 'index', rowid",
    )?;
    let all = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = String::new();
    for sql in all {
        out.push_str(&sql?);
        out.push_str(";\n");
    }
    Ok(out)
}

/// What a queue run writes, as raw statements in the fewest commits it can take:
/// `items` queued workflows inserted into a fresh database made by `journal_schema`
/// (the journal's tables and indexes) in commits of `per_commit`; then, a generation
/// of `per_commit` at a time, one commit that marks them dispatched and records their
/// steps, and one that records their outcomes (a step's record commits before its
/// workflow's outcome). No reads, no dispatch decisions: what the rows alone cost.
pub(crate) fn queue_writes(
    dir: &Path,
    sync: Sync,
    journal_schema: &str,
    items: usize,
    per_commit: usize,
) -> rusqlite::Result<Took> {
    let conn = open(&dir.join("queue_writes.db"), sync, journal_schema)?;
    conn.execute(
        "INSERT INTO durable_queues (name, concurrency, set_at_run_time, updated_at)
         VALUES ('bench', ?1, 0, 0)",
        [i64::try_from(per_commit).unwrap_or(i64::MAX)],
    )?;
    let value = [1u8, 0, 0, 0];
    let id = |i: usize| format!("wf-{i}");
    let clock = Clock::start();
    let mut queued = 0;
    while queued < items {
        let tx = conn.unchecked_transaction()?;
        {
            let mut enqueue = tx.prepare_cached(
                "INSERT INTO durable_workflows
                     (id, name, status, input, executor, created_at, updated_at, input_crc32,
                      queue, queue_state, priority, partition_key)
                 VALUES (?1, 'one_step', 'pending', ?2, 'local', 0, 0, 0, 'bench', 'queued', 0,
                         '')
                 ON CONFLICT DO NOTHING",
            )?;
            for i in queued..(queued + per_commit).min(items) {
                enqueue.execute(params![id(i), &value[..]])?;
            }
        }
        tx.commit()?;
        queued = (queued + per_commit).min(items);
    }
    let mut done = 0;
    while done < items {
        let generation = done..(done + per_commit).min(items);
        let tx = conn.unchecked_transaction()?;
        {
            let mut dispatch = tx.prepare_cached(
                "UPDATE durable_workflows
                 SET queue_state = 'running', dispatched_at = 0, updated_at = 0
                 WHERE run = ?1 AND queue_state = 'queued' AND status = 'pending'",
            )?;
            let mut step = tx.prepare_cached(
                "INSERT INTO durable_steps
                     (run, path, name, output, error, attempts, started_at, finished_at, crc32)
                 VALUES ((SELECT run FROM durable_workflows WHERE id = ?1), '1', 'noop', ?2,
                         NULL, 1, 0, 0, 0)",
            )?;
            for i in generation.clone() {
                dispatch.execute([i64::try_from(i + 1).unwrap_or(i64::MAX)])?;
                step.execute(params![id(i), &value[..]])?;
            }
        }
        tx.commit()?;
        let tx = conn.unchecked_transaction()?;
        {
            let mut finish = tx.prepare_cached(
                "UPDATE durable_workflows
                 SET status = 'completed', output = ?2, updated_at = 0, output_crc32 = 0
                 WHERE id = ?1 AND status = 'pending'",
            )?;
            for i in generation {
                finish.execute(params![id(i), &value[..]])?;
            }
        }
        tx.commit()?;
        done = (done + per_commit).min(items);
    }
    Ok(clock.stop())
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
