//! The PostgreSQL baselines: raw tokio-postgres doing the minimum a journal must do, on
//! the same server as the journal (so with the same `synchronous_commit`, `fsync` and
//! WAL settings), writing rows into a scratch schema's `steps`, a copy of a journal's
//! (`LIKE ... INCLUDING ALL`: the columns, the `COLLATE "C"` path and the primary key of
//! a journal durable created, so the row shape cannot drift from it).
//!
//! Statements are prepared before the clock starts, as the journal's writer prepares
//! its own when it connects.

use std::time::Duration;

use futures::future::{join_all, join3};
use tokio_postgres::Client;

use super::Server;
use crate::Res;
use crate::baseline::{Clock, Took};

/// The insert of one step row, into the scratch schema `s`.
fn insert_sql(s: &str, name: &str) -> String {
    format!(
        "INSERT INTO {s}.steps (run, path, name, output, error, attempts, started_at,
                                finished_at, crc32)
         VALUES ($1, $2, '{name}', $3, NULL, 1, 0, 0, 0)"
    )
}

/// Makes the scratch schema `scratch` anew, with an empty `steps` shaped like the one of
/// the journal in `template`.
pub(super) async fn scratch(client: &Client, template: &str, scratch: &str) -> Res<()> {
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {scratch} CASCADE;
             CREATE SCHEMA {scratch};
             CREATE TABLE {scratch}.steps (LIKE {template}.steps INCLUDING ALL);"
        ))
        .await?;
    Ok(())
}

/// Inserts `rows` step rows (2-byte outputs) into the empty `steps` of `scratch`, in
/// transactions of `per_commit`: one at a time as autocommitted `INSERT`s (a round trip
/// and a commit each) if `per_commit` is 1, otherwise each transaction's `BEGIN`,
/// inserts and `COMMIT` pipelined (one round trip and one commit each, as the
/// journal's writer sends a batch). Returns the time the inserts and commits took.
pub(super) async fn commits(
    server: &Server,
    scratch: &str,
    rows: usize,
    per_commit: usize,
) -> Res<Took> {
    let client = server.client().await?;
    let insert = client.prepare(&insert_sql(scratch, "noop")).await?;
    let begin = client.prepare("BEGIN").await?;
    let commit = client.prepare("COMMIT").await?;
    let output: &[u8] = &[1, 2];
    // The same keys as the SQLite baseline's rows: a new run every 1,000 rows.
    let key = |i: usize| {
        (
            i64::try_from(i / 1000).unwrap_or(i64::MAX),
            (i + 1).to_string(),
        )
    };
    let clock = Clock::start();
    let mut written = 0;
    while written < rows {
        let count = per_commit.min(rows - written);
        if per_commit == 1 {
            let (run, path) = key(written);
            client.execute(&insert, &[&run, &path, &output]).await?;
        } else {
            let keys: Vec<(i64, String)> = (written..written + count).map(key).collect();
            let (began, inserted, committed) = join3(
                client.execute(&begin, &[]),
                join_all(keys.iter().map(|(run, path)| {
                    let (client, insert) = (&client, &insert);
                    async move { client.execute(insert, &[run, path, &output]).await }
                })),
                client.execute(&commit, &[]),
            )
            .await;
            began?;
            for i in inserted {
                i?;
            }
            // After a failed statement COMMIT answers ROLLBACK without an error; the
            // inserts' errors were checked above.
            committed?;
        }
        written += count;
    }
    Ok(clock.stop())
}

/// Makes `count` single-row autocommitted inserts into the empty `steps` of `scratch`
/// (after one more, not timed, to warm up), each `pause` after the previous one, and
/// times each on its own; returns those times (seconds) and the CPU seconds per insert.
pub(super) async fn commit_latencies(
    server: &Server,
    scratch: &str,
    count: usize,
    pause: Duration,
) -> Res<(Vec<f64>, f64)> {
    let client = server.client().await?;
    let insert = client.prepare(&insert_sql(scratch, "recv")).await?;
    let output = [1u8, 2];
    let mut latencies = Vec::with_capacity(count);
    let mut cpu = 0.0;
    for i in 0..=count {
        // The same timer as our side's pause.
        tokio::time::sleep(pause).await;
        let clock = Clock::start();
        client
            .execute(&insert, &[&0i64, &(i + 1).to_string(), &&output[..]])
            .await?;
        let took = clock.stop();
        if i > 0 {
            latencies.push(took.wall_s);
            cpu += took.cpu_s;
        }
    }
    Ok((latencies, cpu / count as f64))
}

/// Connects, and reads every recorded step of `workflow_id` in the journal in `schema`
/// in one query (the columns, and the order, of the journal's own replay read); returns
/// the time both took and the number of rows.
pub(super) async fn select(server: &Server, schema: &str, workflow_id: &str) -> Res<(Took, usize)> {
    let clock = Clock::start();
    let client = server.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT path, name, output, error, attempts, started_at, finished_at, crc32,
                        error_kind, args_fingerprint
                 FROM {schema}.steps
                 WHERE run = (SELECT run FROM {schema}.workflows WHERE id = $1)
                 ORDER BY path"
            ),
            &[&workflow_id],
        )
        .await?;
    let mut read = 0;
    for row in &rows {
        // Decoded, as the journal decodes them (it also checks their checksums).
        let _: (String, String, Option<Vec<u8>>, Option<String>) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        let _: (i64, i64, i64, i64) = (
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
        );
        let _: (Option<String>, Option<i64>) = (row.try_get(8)?, row.try_get(9)?);
        read += 1;
    }
    let took = clock.stop();
    drop(client);
    Ok((took, read))
}
