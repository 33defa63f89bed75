//! The fault-injecting file layer itself, with plain SQLite connections: it counts
//! calls deterministically, fails the one it is told to, keeps unsynced writes from
//! the disk until a sync, and on a power loss drops or tears only those.

use std::path::Path;

use durable_testkit::faults::{FaultFs, Loss};
use rusqlite::{Connection, OpenFlags};

fn open(fs: &FaultFs, path: &Path, sync: &str) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let c = Connection::open_with_flags_and_vfs(path, flags, fs.name())?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};
         CREATE TABLE IF NOT EXISTS t (i INTEGER PRIMARY KEY, v TEXT);"
    ))?;
    Ok(c)
}

fn rows(path: &Path) -> i64 {
    Connection::open(path)
        .expect("reopen")
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap_or(-1)
}

#[test]
fn a_closed_database_flushed_keeps_everything() {
    for sync in ["FULL", "NORMAL", "OFF"] {
        let fs = FaultFs::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let c = open(&fs, &path, sync).expect("open");
        for i in 0..20 {
            c.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                .expect("insert");
        }
        drop(c);
        assert_eq!(fs.open_files(), 0);
        fs.flush_all();
        assert_eq!(rows(&path), 20, "{sync}");
    }
}

#[test]
fn a_power_loss_keeps_every_commit_at_full_and_may_lose_some_at_normal() {
    for (sync, must_keep) in [("FULL", true), ("NORMAL", false)] {
        let mut lost = 0;
        for crash in 1..60 {
            for loss in [Loss::Drop, Loss::Tear { seed: crash }] {
                let fs = FaultFs::new();
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("db");
                fs.crash_at(crash);
                let mut committed = 0;
                if let Ok(c) = open(&fs, &path, sync) {
                    for i in 0..20 {
                        if c.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                            .is_ok()
                        {
                            committed += 1;
                        } else {
                            break;
                        }
                    }
                }
                assert_eq!(fs.open_files(), 0);
                fs.power_loss(loss);
                let kept = rows(&path).max(0);
                if must_keep {
                    assert!(
                        kept >= committed,
                        "{sync} crash at {crash} {loss:?}: {kept} < {committed}"
                    );
                }
                if kept < committed {
                    lost += 1;
                }
            }
        }
        println!("{sync}: {lost} crash images lost acknowledged commits");
        if !must_keep {
            assert!(
                lost > 0,
                "NORMAL never lost a commit: the layer cannot see a loss"
            );
        }
    }
}
