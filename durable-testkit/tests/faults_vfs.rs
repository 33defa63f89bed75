//! The fault-injecting file layer (`durable_testkit::faults`) with plain SQLite
//! connections in WAL mode: it counts calls deterministically, fails the one it is told
//! to without damaging the database, keeps unsynced writes from the disk until a sync,
//! and on a power loss drops or tears only those.
//!
//! The workload: a writer and a reader connection on one file (as the runtime has),
//! rows committed one per transaction, and a checkpoint half-way, so that the crash
//! points cover WAL appends, WAL syncs, a checkpoint into the database and a WAL reset.

use std::collections::BTreeSet;
use std::path::Path;

use durable_testkit::faults::{Fault, FaultFs, Kind, Loss, Persistence};
use rusqlite::{Connection, OpenFlags};

/// Rows the workload commits, one per transaction.
const ROWS: i64 = 12;

/// Each row's value: about a third of a page, so that commits span pages and sectors.
fn value(i: i64) -> String {
    format!("row {i:04} ").repeat(150)
}

fn open(fs: &FaultFs, path: &Path, sync: &str) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let c = Connection::open_with_flags_and_vfs(path, flags, fs.name())?;
    for sql in [
        "PRAGMA journal_mode = WAL",
        &format!("PRAGMA synchronous = {sync}"),
        "CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    ] {
        run(&c, sql)?;
    }
    Ok(c)
}

/// Runs `sql` to its end. (`execute_batch` and `query_row` stop at the first row: the
/// switch to WAL returns its row before it commits, and a failed commit then goes
/// unreported.)
fn run(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    let mut stmt = c.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// What the workload was told about its commits.
#[derive(Debug, Default)]
struct Outcome {
    /// Rows whose commit returned Ok.
    ok: BTreeSet<i64>,
    /// Rows whose commit returned an error, in order.
    failed: Vec<i64>,
    /// Every error SQLite returned, to any call of the workload (opening, committing,
    /// checkpointing, reading, closing).
    errors: Vec<String>,
    /// The rows the reader counted after the last commit.
    seen: Option<i64>,
    /// Whether an injected fault struck before the connections were closed.
    struck_before_close: bool,
}

impl Outcome {
    /// Notes `r`'s error, if it is one.
    fn note<T>(&mut self, what: &str, r: rusqlite::Result<T>) -> Option<T> {
        r.map_err(|e| self.errors.push(format!("{what}: {e}"))).ok()
    }
}

/// Runs the workload through `fs` until its end, whatever fails, then closes both
/// connections (the process lets go of its files).
fn workload(fs: &FaultFs, path: &Path, sync: &str) -> Outcome {
    let mut out = Outcome::default();
    let writer = out.note("open writer", open(fs, path, sync));
    let reader = match writer {
        Some(_) => out.note("open reader", open(fs, path, sync)),
        None => None,
    };
    for i in 0..ROWS {
        let insert = writer
            .as_ref()
            .map(|w| w.execute("INSERT INTO t (i, v) VALUES (?1, ?2)", (i, value(i))));
        match insert.map(|r| out.note("insert", r)) {
            Some(Some(_)) => out.ok.insert(i),
            _ => {
                out.failed.push(i);
                false
            }
        };
        if let Some(w) = writer.as_ref().filter(|_| i == ROWS / 2) {
            out.note("checkpoint", run(w, "PRAGMA wal_checkpoint(TRUNCATE)"));
        }
        out.seen = reader.as_ref().and_then(|r| {
            let count = r.query_row("SELECT count(*) FROM t", [], |r| r.get(0));
            out.note("read", count)
        });
    }
    out.struck_before_close = fs.faults_hit() > 0;
    // SQLite closes a connection whatever fails meanwhile (a checkpoint): it reports no
    // error, and the WAL stays for the next connection to recover.
    for c in [reader, writer].into_iter().flatten() {
        out.note("close", c.close().map_err(|(_, e)| e));
    }
    assert_eq!(fs.open_files(), 0, "the connections closed every file");
    out
}

/// Opens the database at `path` without the fault layer and returns the acknowledged
/// rows (commits that returned Ok) it lost. An error if it is damaged: it fails
/// SQLite's integrity check, a row holds another value, or it holds a row never
/// acknowledged, but for perhaps one whose commit returned an error.
fn check(path: &Path, out: &Outcome) -> Result<Vec<i64>, String> {
    let c = Connection::open(path).map_err(|e| format!("reopen: {e}"))?;
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("integrity_check: {e}"))?;
    if integrity != "ok" {
        return Err(format!("integrity_check: {integrity}"));
    }
    let rows = rows(&c)?;
    let extra: Vec<_> = rows.difference(&out.ok).collect();
    if extra.len() > 1 || !extra.iter().all(|i| out.failed.contains(i)) {
        return Err(format!("unexpected rows {extra:?} ({out:?})"));
    }
    Ok(out.ok.difference(&rows).copied().collect())
}

/// `check`, where a loss is wrong too.
fn check_all_kept(path: &Path, out: &Outcome) -> Result<(), String> {
    match check(path, out)? {
        lost if lost.is_empty() => Ok(()),
        lost => Err(format!("lost {lost:?} ({out:?})")),
    }
}

/// The rows of `t`, each checked whole (none if the table was never committed).
fn rows(c: &Connection) -> Result<BTreeSet<i64>, String> {
    let Ok(mut stmt) = c.prepare("SELECT i, v FROM t") else {
        return Ok(BTreeSet::new());
    };
    let pairs = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| format!("reading t: {e}"))?;
    match pairs.iter().find(|(i, v)| *v != value(*i)) {
        Some((i, _)) => Err(format!("row {i} holds another value")),
        None => Ok(pairs.into_iter().map(|(i, _)| i).collect()),
    }
}

/// The calls of one uninterrupted run of the workload, per kind.
fn counts(sync: &str) -> Vec<u64> {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = workload(&fs, &dir.path().join("db"), sync);
    assert!(out.errors.is_empty(), "{out:?}");
    assert_eq!(out.ok.len() as i64, ROWS, "{out:?}");
    assert_eq!(out.seen, Some(ROWS), "the reader sees the writer's commits");
    Kind::ALL.iter().map(|&k| fs.calls(k)).collect()
}

#[test]
fn counting_is_deterministic() {
    let first = counts("FULL");
    assert_eq!(first, counts("FULL"));
    assert!(first.iter().all(|&n| n > 0), "{first:?}");
    println!("calls per kind {:?}: {first:?}", Kind::ALL);
}

#[test]
fn a_closed_database_flushed_keeps_everything_and_a_power_loss_keeps_what_was_synced() {
    for (sync, kept_by_power_loss) in [("FULL", ROWS), ("OFF", 0)] {
        for flush in [true, false] {
            let fs = FaultFs::new();
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("db");
            let c = open(&fs, &path, sync).expect("open");
            for i in 0..ROWS {
                c.execute("INSERT INTO t (i, v) VALUES (?1, ?2)", (i, value(i)))
                    .expect("insert");
            }
            fs.crash_now();
            drop(c);
            if flush {
                fs.flush_all();
            } else {
                fs.power_loss(Loss::Drop);
            }
            let c = Connection::open(&path).expect("reopen");
            let want = if flush { ROWS } else { kept_by_power_loss };
            assert_eq!(
                rows(&c).map(|r| r.len() as i64),
                Ok(want),
                "{sync}, flush {flush}"
            );
        }
    }
}

/// The 512-byte sectors of the WAL on disk that are not all zero, after commits at
/// `synchronous = OFF` (nothing synced) and the machine's end (`flush` or a tear).
fn wal_sectors_on_disk(flush: bool) -> usize {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let c = open(&fs, &path, "OFF").expect("open");
    for i in 0..ROWS {
        c.execute("INSERT INTO t (i, v) VALUES (?1, ?2)", (i, value(i)))
            .expect("insert");
    }
    fs.crash_now();
    drop(c);
    if flush {
        fs.flush_all();
    } else {
        fs.power_loss(Loss::Tear { seed: 1 });
    }
    let wal = std::fs::read(dir.path().join("db-wal")).expect("the WAL");
    wal.chunks(512)
        .filter(|s| s.iter().any(|&b| b != 0))
        .count()
}

#[test]
fn a_tear_writes_some_unsynced_sectors_and_not_others() {
    let (all, torn) = (wal_sectors_on_disk(true), wal_sectors_on_disk(false));
    assert!(all > 50, "{all}");
    assert!(
        all / 4 < torn && torn < all * 3 / 4,
        "{torn} of {all} sectors"
    );
}

#[test]
fn a_file_that_writes_through_survives_a_power_loss_unsynced() {
    let fs = FaultFs::new();
    fs.set_volatile(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let c = open(&fs, &path, "OFF").expect("open");
    c.execute("INSERT INTO t (i, v) VALUES (1, ?1)", [value(1)])
        .expect("insert");
    fs.crash_now();
    drop(c);
    fs.power_loss(Loss::Drop);
    let c = Connection::open(&path).expect("reopen");
    assert_eq!(rows(&c), Ok(BTreeSet::from([1])));
}

#[test]
fn only_fails_the_chosen_kind() {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    fs.only(&[Kind::Sync]);
    fs.fail_at(3, Fault::Io, Persistence::Once);
    let out = workload(&fs, &path, "FULL");
    assert_eq!(fs.faults_hit(), 1);
    assert_eq!(out.errors.len(), 1, "{out:?}");
    fs.clear();
    fs.flush_all();
    check_all_kept(&path, &out).expect("the database after a failed sync");
}

/// One run with the `n`-th call failing; whether the fault struck and what was wrong.
fn fault_at(n: u64, fault: Fault, persistence: Persistence) -> (bool, Result<(), String>) {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    fs.fail_at(n, fault, persistence);
    let out = workload(&fs, &path, "FULL");
    let struck = fs.faults_hit() > 0;
    if out.struck_before_close && out.errors.is_empty() {
        return (
            true,
            Err(format!("no error reached SQLite's caller: {out:?}")),
        );
    }
    fs.clear();
    // The same machine, its page cache intact: the database must be sound through it.
    let again = open(&fs, &path, "FULL")
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)));
    if again.as_deref() != Ok("ok") {
        return (
            struck,
            Err(format!("through the fault layer after clear: {again:?}")),
        );
    }
    fs.flush_all();
    (struck, check_all_kept(&path, &out))
}

#[test]
fn a_fault_at_any_call_loses_no_acknowledged_commit() {
    let calls: u64 = counts("FULL").iter().sum();
    let kinds = [
        (Fault::Io, Persistence::Once),
        (Fault::Io, Persistence::Sticky),
        (Fault::NoSpace, Persistence::Sticky),
        (Fault::ShortWrite, Persistence::Once),
    ];
    let (mut points, mut struck, mut failures) = (0, 0, Vec::new());
    for n in 1..=calls {
        for (fault, persistence) in kinds {
            let (hit, result) = fault_at(n, fault, persistence);
            points += 1;
            struck += u64::from(hit);
            if let Err(e) = result {
                failures.push(format!("call {n}, {fault:?} {persistence:?}: {e}"));
            }
        }
    }
    println!("{calls} calls, {points} fault points, {struck} struck");
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        struck, points,
        "every fault point is a call of the workload"
    );
}

/// One run with the machine stopping at the `n`-th call and losing power (`loss`).
/// Returns whether acknowledged rows were lost, or what else was wrong.
fn power_loss_at(n: u64, loss: Loss, sync: &str) -> Result<bool, String> {
    let fs = FaultFs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    fs.crash_at(n);
    let out = workload(&fs, &path, sync);
    if !fs.is_crashed() {
        return Err("the machine did not stop".into());
    }
    fs.power_loss(loss);
    check(&path, &out).map(|lost| !lost.is_empty())
}

/// Every crash point of the workload, each with every `Loss` of `seeds` seeds.
fn power_loss_loop(sync: &str, seeds: u64) -> (u64, u64, Vec<String>) {
    let calls: u64 = counts(sync).iter().sum();
    let losses = std::iter::once(Loss::Drop).chain((0..seeds).map(|seed| Loss::Tear { seed }));
    let losses: Vec<_> = losses.collect();
    let (mut images, mut lossy, mut failures) = (0, 0, Vec::new());
    for n in 1..=calls {
        for &loss in &losses {
            images += 1;
            match power_loss_at(n, loss, sync) {
                Ok(lost) => lossy += u64::from(lost),
                Err(e) => failures.push(format!("{sync}, crash at {n}, {loss:?}: {e}")),
            }
        }
    }
    println!(
        "{sync}: {calls} calls, {images} crash images, {lossy} of them lost acknowledged rows"
    );
    (images, lossy, failures)
}

#[test]
fn a_power_loss_at_full_keeps_every_acknowledged_commit() {
    let (images, lossy, failures) = power_loss_loop("FULL", 4);
    assert!(images > 100, "{images}");
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert_eq!(lossy, 0);
}

#[test]
fn a_power_loss_at_normal_loses_acknowledged_commits_and_only_them() {
    let (_, lossy, failures) = power_loss_loop("NORMAL", 2);
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert!(
        lossy > 0,
        "NORMAL never lost a commit: the layer cannot see a loss"
    );
}
