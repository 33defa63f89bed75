//! Micro-benchmarks of the runtime's hot paths, the ones the profiles of
//! `durable-bench` point at (see the writer's documentation in `docs/journal.md`):
//!
//! - `claim`: taking a step id when a step is called (at the workflow body, and three
//!   branches deep), and fingerprinting the step's arguments (a `u32`; a string and a
//!   `Receipt`), which a step called in a workflow does too;
//! - `codec`: a step output's encode plus decode-back check, and a replay's decode, for
//!   each codec, next to plain bincode without the journal's bounds and guard;
//! - `checkpoint`: handing a record to the journal writer (`enqueue`), and a lone
//!   checkpoint's full round trip to a committed `synchronous=OFF` transaction on a
//!   tmpfs (`round_trip`), next to a raw rusqlite single-row commit with the same
//!   settings (`raw_commit`);
//! - `replay`: claiming, looking up and decoding 1,000 recorded steps.
//!
//! ```text
//! cargo bench -p durable-runtime --bench hot_paths
//! ```

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use durable_runtime::Codec;
use durable_runtime::bench::{Journal, args_fingerprint, encode_checked};
use serde::{Deserialize, Serialize};

/// A typical step output: a few fields, a short string, a small payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    order: u64,
    sku: String,
    quantity: u32,
    charged_cents: i64,
    note: Option<String>,
    payload: Vec<u8>,
}

fn receipt() -> Receipt {
    Receipt {
        order: 4_211_337,
        sku: "sku-123-blue".to_owned(),
        quantity: 3,
        charged_cents: 12_999,
        note: Some("gift wrap".to_owned()),
        payload: vec![7; 64],
    }
}

/// A directory on a tmpfs if there is one, so commits measure the runtime, not a disk.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    made.expect("a temporary directory")
}

fn journal(dir: &tempfile::TempDir) -> Journal {
    Journal::open(&dir.path().join("journal.db")).expect("open a journal")
}

fn claim(c: &mut Criterion) {
    let dir = scratch();
    let j = journal(&dir);
    let mut g = c.benchmark_group("claim");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("body_x1000", |b| {
        b.iter_batched(
            || j.replay(0),
            |r| black_box(r.claim(0, 1000)),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("depth3_x1000", |b| {
        b.iter_batched(
            || j.replay(0),
            |r| black_box(r.claim(3, 1000)),
            BatchSize::SmallInput,
        );
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("args_fingerprint_u32", |b| {
        b.iter(|| args_fingerprint(|a| a.arg(black_box(&42u32))));
    });
    let value = receipt();
    g.bench_function("args_fingerprint_receipt", |b| {
        b.iter(|| {
            args_fingerprint(|a| {
                a.arg(black_box("order-42"));
                a.arg(black_box(&value));
            })
        });
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let value = receipt();
    for codec in [Codec::Cbor, Codec::Bincode] {
        let name = codec.name();
        g.bench_function(format!("encode_checked_u32_{name}"), |b| {
            b.iter(|| encode_checked(codec, black_box(&42u32)).expect("round trip"));
        });
        g.bench_function(format!("encode_checked_receipt_{name}"), |b| {
            b.iter(|| encode_checked(codec, black_box(&value)).expect("round trip"));
        });
        let bytes = codec.encode(&value).expect("encode");
        g.bench_function(format!("decode_receipt_{name}"), |b| {
            b.iter(|| Codec::decode::<Receipt>(black_box(&bytes)).expect("decode"));
        });
    }
    let bytes = bincode::serde::encode_to_vec(&value, bincode::config::standard()).expect("encode");
    // The same decode by plain bincode, without the journal's bounds (the baseline).
    g.bench_function("decode_receipt_raw_bincode", |b| {
        b.iter(|| {
            bincode::serde::decode_from_slice::<Receipt, _>(
                black_box(&bytes),
                bincode::config::standard(),
            )
            .expect("decode")
        });
    });
    g.finish();
}

fn raw_connection(path: &PathBuf) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
        .expect("wal");
    conn.execute_batch(
        "PRAGMA synchronous = OFF;
         CREATE TABLE steps (workflow_id TEXT NOT NULL, path TEXT NOT NULL, output BLOB,
                             PRIMARY KEY (workflow_id, path)) STRICT, WITHOUT ROWID;",
    )
    .expect("schema");
    conn
}

fn checkpoint(c: &mut Criterion) {
    let dir = scratch();
    let mut g = c.benchmark_group("checkpoint");
    {
        let mut j = journal(&dir);
        // Enqueue only (the writer commits in the background, in batches); the acks
        // are awaited outside the timed part so the queue stays bounded.
        g.bench_function("enqueue", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let pending: Vec<_> = (0..iters).map(|_| j.checkpoint()).collect();
                let took = start.elapsed();
                for p in pending {
                    p.wait().expect("committed");
                }
                took
            });
        });
    }
    let dir = scratch();
    let mut j = journal(&dir);
    g.bench_function("round_trip", |b| {
        b.iter(|| j.checkpoint().wait().expect("committed"));
    });
    let raw = raw_connection(&dir.path().join("raw.db"));
    let mut i = 0u64;
    g.bench_function("raw_commit", |b| {
        b.iter(|| {
            i += 1;
            raw.prepare_cached(
                "INSERT INTO steps (workflow_id, path, output) VALUES ('bench', ?1, x'01020304')",
            )
            .and_then(|mut s| s.execute([i.to_string()]))
            .expect("insert");
        });
    });
    g.finish();
}

fn replay(c: &mut Criterion) {
    let dir = scratch();
    let j = journal(&dir);
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("lookup_x1000", |b| {
        b.iter_batched(
            || j.replay(1000),
            |r| black_box(r.run()),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

// The macro's generated group function has no doc comment of its own.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(hot_paths, claim, codec, checkpoint, replay);
}
use group::hot_paths;
criterion_main!(hot_paths);
