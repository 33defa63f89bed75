//! Helpers shared by the integration tests: raw journal access and reopening.

#![allow(dead_code, unreachable_pub, unused_imports, unused_macros)]

mod journal;
#[cfg(all(feature = "postgres", feature = "testkit"))]
pub mod proxy;

pub use journal::Journal;
pub(crate) use journal::on_both_journals;
#[cfg(all(feature = "postgres", feature = "testkit"))]
pub use journal::{on_postgres, pg_sql};

use std::path::Path;
use std::time::Duration;

use durable_runtime::{Durability, Error, Runtime};

/// Every column of every row of `table`, as text, in a stable order: two dumps are
/// equal exactly when the table did not change.
pub fn dump(path: &Path, table: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(path).expect("open journal");
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
        .expect("prepare dump");
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                let v: rusqlite::types::Value = r.get(i)?;
                Ok(format!("{v:?}"))
            })
            .collect::<rusqlite::Result<Vec<String>>>()
    })
    .expect("query dump")
    .collect::<rusqlite::Result<Vec<_>>>()
    .expect("rows")
}

/// Runs SQL against the journal directly (to simulate a crash or corrupt a row).
pub fn sql(path: &Path, statement: &str, params: impl rusqlite::Params) {
    let conn = rusqlite::Connection::open(path).expect("open journal");
    conn.execute(statement, params).expect("raw sql");
}

/// Makes a finished workflow look as if the process died after its last step but
/// before recording the workflow's outcome: the next open resumes (replays) it.
pub fn make_pending(path: &Path, id: &str) {
    sql(
        path,
        "UPDATE durable_workflows SET status = 'pending', output = NULL WHERE id = ?1",
        [id],
    );
}

/// Opens the journal, waiting for a runtime that was just dropped to release its lock
/// (its writer thread finishes the queued commits first).
pub async fn try_reopen(path: &Path) -> Result<Runtime, Error> {
    for _ in 0..500 {
        match Runtime::builder(path)
            .durability(Durability::Normal)
            .open()
            .await
        {
            Err(Error::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            other => return other,
        }
    }
    panic!("journal {} stayed locked", path.display());
}

/// [`try_reopen`], expecting success.
pub async fn reopen(path: &Path) -> Runtime {
    try_reopen(path).await.expect("reopen journal")
}

/// A runtime (at `OFF`) whose parked workflows go dormant at once.
pub async fn open_dormant(path: &Path) -> Runtime {
    Runtime::builder(path)
        .durability(Durability::Off)
        .evict_parked_after(Duration::ZERO)
        .open()
        .await
        .expect("open")
}

/// How many times each step body ran, by workflow id and step name (see [`ran`]).
static RAN: std::sync::Mutex<Option<std::collections::HashMap<(String, &'static str), u32>>> =
    std::sync::Mutex::new(None);

/// Counts a run of step body `name`, called from the body.
pub fn ran(name: &'static str) {
    let id = durable_runtime::step_context()
        .map(|s| s.workflow_id().to_owned())
        .unwrap_or_default();
    let mut ran = RAN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *ran.get_or_insert_default().entry((id, name)).or_default() += 1;
}

/// How many times step body `name` of workflow `id` ran (see [`ran`]).
pub fn runs_of(id: &str, name: &'static str) -> u32 {
    let ran = RAN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ran.as_ref()
        .and_then(|r| r.get(&(id.to_owned(), name)).copied())
        .unwrap_or(0)
}

/// Waits (up to 20 s) until exactly `n` workflows of `rt` are dormant.
pub async fn until_dormant(rt: &Runtime, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rt.dormant_count() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} workflows dormant, not {n}",
            rt.dormant_count()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// CRC-32 (IEEE), bit by bit: the checksum of schema version 4, computed
/// independently of the runtime's table-driven one.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// CRC-32 of a value under a key, as schema 5 checksums: the key's parts each followed
/// by 0xFF, then the value.
pub fn keyed(parts: &[&[u8]], value: &[u8]) -> u32 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
        bytes.push(0xFF);
    }
    bytes.extend_from_slice(value);
    crc32(&bytes)
}

/// Sends `0..messages` (as `u32`) to workflow `id` on `topic`, in order, with a
/// spread of gaps before each, drawn from `seed`: none, a yield, `short`, or 3 ms. The
/// sends race whatever the workflow is doing (running, going dormant, rebuilt).
pub fn send_with_random_gaps(
    rt: &Runtime,
    id: String,
    topic: &'static str,
    messages: u32,
    seed: u64,
    short: Duration,
) -> tokio::task::JoinHandle<()> {
    let rt = rt.clone();
    tokio::spawn(async move {
        let mut seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for i in 0..messages {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 4 {
                0 => {}
                1 => tokio::task::yield_now().await,
                2 => tokio::time::sleep(short).await,
                _ => tokio::time::sleep(Duration::from_millis(3)).await,
            }
            rt.send(&id, topic, &i).await.expect("send");
        }
    })
}
