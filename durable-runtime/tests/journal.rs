//! The journal file: owner-only, held by one runtime at a time (in this process or any
//! other), and refused with a clear error when it is not a journal we can read. A refused
//! file is left exactly as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use durable_runtime::{Error, Runtime, StoreErrorKind, step, workflow};

#[workflow]
async fn noop() -> u8 {
    7
}

#[step]
async fn price(item: String) -> u64 {
    item.len() as u64
}

#[workflow]
async fn checkout(item: String) -> u64 {
    price(item).await
}

/// Creates a journal at `path` holding one finished `checkout` (`o-1`), and closes it.
async fn journal_with_a_checkout(path: &Path) {
    let rt = Runtime::open(path).await.expect("create");
    rt.start_with_id("o-1", checkout("ada".into()))
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    rt.close().await.expect("close");
}

/// Opens (creating) the journal and runs one workflow in it, so every file exists.
async fn open_with_a_run(path: &Path) -> Runtime {
    let rt = Runtime::open(path).await.expect("open");
    let handle = rt.start_with_id("a", noop()).await.expect("start");
    handle.result().await.expect("run");
    rt
}

const CHILD_ENV: &str = "DURABLE_TEST_OPEN_JOURNAL";

/// Run by the parent test in a second process: tries to open the journal it is given
/// and prints the outcome. Does nothing when run normally.
#[tokio::test]
async fn child_process_opens_journal() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    match Runtime::open(Path::new(&path)).await {
        Ok(_) => println!("CHILD-OPENED"),
        Err(e) => println!("CHILD-ERROR {e}"),
    }
}

fn open_in_child(path: &Path) -> String {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_process_opens_journal",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .output()
        .expect("run child");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // libtest prints `test <name> ... ` before the test's own output.
        .find_map(|l| l.find("CHILD-").map(|i| &l[i..]))
        .unwrap_or_else(|| {
            panic!(
                "child printed no outcome: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned()
}

#[tokio::test]
async fn a_second_runtime_is_refused_while_the_first_holds_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let rt = open_with_a_run(&path).await;

    let line = open_in_child(&path);
    assert!(
        line.starts_with(&format!(
            "CHILD-ERROR journal {} is in use by another runtime",
            path.display()
        )),
        "{line}"
    );

    let err = Runtime::open(&path)
        .await
        .expect_err("same process, second runtime");
    assert!(
        matches!(&err, Error::Locked { path: p, .. } if p == &path),
        "{err:?}"
    );

    drop(rt);
    // Closed, not dropped: a dropped runtime's writer thread releases the lock a moment
    // later, which a child started at once could see as still held.
    common::reopen(&path).await.close().await.expect("close");
    assert_eq!(
        open_in_child(&path),
        "CHILD-OPENED",
        "the lock is released with the runtime"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn journal_files_are_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let _rt = open_with_a_run(&path).await;
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file)
            .expect("journal file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }
}

/// Creates a journal, damages it with `sql`, and reopens it, expecting a refusal.
async fn reopen_after(sql: &str) -> (tempfile::TempDir, PathBuf, Error) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    drop(Runtime::open(&path).await.expect("create"));
    common::sql(&path, sql, []);
    let err = common::try_reopen(&path).await.expect_err(sql);
    (dir, path, err)
}

fn assert_refused(path: &Path, err: &Error, kind: StoreErrorKind, contains: &str) {
    match err {
        Error::Store(e) => {
            assert_eq!(e.kind(), kind, "{err}");
            assert_eq!(e.path(), path);
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("journal {}: ", path.display())),
        "{message}"
    );
    assert!(message.contains(contains), "{message}");
}

#[tokio::test]
async fn a_file_that_is_not_a_journal_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    let content = b"these are my notes, not a database. ".repeat(200);
    std::fs::write(&path, &content).expect("write");
    let err = Runtime::open(&path).await.expect_err("not a journal");
    assert_refused(
        &path,
        &err,
        StoreErrorKind::NotAJournal,
        "not a durable journal",
    );
    assert_eq!(std::fs::read(&path).expect("read"), content);
}

#[tokio::test]
async fn a_journal_from_a_newer_durable_is_refused() {
    let (_dir, path, err) =
        reopen_after("UPDATE durable_meta SET value = '99' WHERE key = 'schema_version'").await;
    assert_refused(
        &path,
        &err,
        StoreErrorKind::NewerSchema,
        "schema version 99 is newer",
    );
}

#[tokio::test]
async fn an_old_journal_that_names_a_codec_no_durable_wrote_is_refused_untouched() {
    // Before schema 4 a journal named one codec for all its values; migration 4 gives
    // each value the format byte of the only one that existed, and must not guess.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    drop(open_with_a_run(&path).await);
    common::sql(
        &path,
        "UPDATE durable_meta SET value = '3' WHERE key = 'schema_version'",
        [],
    );
    common::sql(
        &path,
        "INSERT INTO durable_meta (key, value) VALUES ('codec', 'json')",
        [],
    );
    let before = common::dump(&path, "durable_workflows");
    let err = common::try_reopen(&path).await.expect_err("unknown codec");
    assert_refused(
        &path,
        &err,
        StoreErrorKind::NotAJournal,
        "encoded with `json`, which no version of durable wrote",
    );
    assert_eq!(common::dump(&path, "durable_workflows"), before);
}

#[tokio::test]
async fn migrations_are_numbered_and_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    drop(Runtime::open(&path).await.expect("create"));
    let meta = common::dump(&path, "durable_meta");
    assert!(
        meta.contains(&vec![
            "Text(\"schema_version\")".to_owned(),
            "Text(\"16\")".to_owned()
        ]),
        "{meta:?}"
    );
    // Since schema 4 each value names its own format; the journal names none. Since
    // schema 7 it keeps a record of its schema objects.
    assert_eq!(meta.len(), 2, "{meta:?}");
    assert_eq!(meta[0][0], "Text(\"schema\")", "{meta:?}");
    // Reopening an up-to-date journal changes nothing.
    drop(common::reopen(&path).await);
    assert_eq!(common::dump(&path, "durable_meta"), meta);
}

/// A journal's header names it as durable's (`application_id`, `dura`), so that an
/// open, or a tool like `file`, tells it from its first 100 bytes.
#[tokio::test]
async fn a_journal_names_itself_in_its_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let rt = Runtime::open(&path).await.expect("create");
    rt.close().await.expect("close");
    let header = std::fs::read(&path).expect("read");
    assert_eq!(&header[68..72], b"dura");
    let id: i64 = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("application_id");
    assert_eq!(id, 0x6475_7261);
}

/// `err` refuses a file as not a journal, or as a damaged one.
fn assert_not_this_journal(err: &Error) {
    match err {
        Error::Store(e) => assert!(
            matches!(
                e.kind(),
                StoreErrorKind::NotAJournal | StoreErrorKind::Damaged
            ),
            "{err}"
        ),
        other => panic!("{other:?}"),
    }
}

/// The header's name is a shortcut, never a pass: another program's database that
/// carries durable's `application_id` is still refused and left as it was, in rollback
/// or WAL mode.
#[tokio::test]
async fn another_programs_database_with_durables_id_is_refused_untouched() {
    for wal in ["", "PRAGMA journal_mode = WAL;"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.db");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(&format!(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO customers VALUES (1, 'ada');
             PRAGMA application_id = {}; {wal}",
            0x6475_7261
        ))
        .expect("another program's database");
        drop(conn);
        let before = std::fs::read(&path).expect("read");
        let err = common::try_reopen(&path).await.expect_err("not a journal");
        assert_not_this_journal(&err);
        assert_eq!(std::fs::read(&path).expect("read"), before, "{wal}: {err}");
        let tables: Vec<String> = rusqlite::Connection::open(&path)
            .expect("open")
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(tables, ["customers"], "{wal}");
    }
}

/// A journal whose table of tables lost its entries (page 1 damaged) is refused, not
/// opened as a new, empty journal that drops every workflow.
#[tokio::test]
async fn a_journal_whose_schema_page_is_emptied_is_refused_not_made_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    journal_with_a_checkout(&path).await;
    let mut bytes = std::fs::read(&path).expect("read");
    // Page 1 read as an empty table leaf: no durable_meta, no tables at all.
    bytes[100] = 0x0d;
    bytes[103] = 0;
    bytes[104] = 0;
    std::fs::write(&path, &bytes).expect("damage");
    let err = common::try_reopen(&path).await.expect_err("damaged");
    assert_refused(
        &path,
        &err,
        StoreErrorKind::Damaged,
        "restore it from a backup",
    );
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
}

/// A `-wal` of another database beside a journal makes the file another program's
/// database as SQLite reads it: refused, whatever the main file's header says.
#[tokio::test]
async fn a_journal_beside_another_databases_wal_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    open_with_a_run(&path).await.close().await.expect("close");
    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO customers VALUES (1, 'ada');",
    )
    .expect("another database");
    std::fs::copy(
        dir.path().join("other.db-wal"),
        dir.path().join("shop.db-wal"),
    )
    .expect("copy its -wal");
    drop(conn);
    let before = std::fs::read(&path).expect("read");
    let err = common::try_reopen(&path)
        .await
        .expect_err("not this journal");
    assert_not_this_journal(&err);
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

#[tokio::test]
async fn a_journal_with_damaged_tables_is_refused_at_open() {
    for damage in [
        "DROP TABLE durable_steps",
        "ALTER TABLE durable_workflows RENAME COLUMN error_kind TO kind",
    ] {
        let (_dir, path, err) = reopen_after(damage).await;
        assert_refused(&path, &err, StoreErrorKind::Damaged, "schema is damaged");
    }
}

/// Rewrites the SQL text SQLite keeps for the schema object `name`, as damage to the
/// file's first pages, or a hand edit, would.
fn rewrite_schema(path: &Path, name: &str, from: &str, to: &str) {
    let conn = rusqlite::Connection::open(path).expect("open journal");
    conn.execute_batch("PRAGMA writable_schema = ON")
        .expect("writable schema");
    let changed = conn
        .execute(
            "UPDATE sqlite_master SET sql = replace(sql, ?2, ?3) WHERE name = ?1",
            [name, from, to],
        )
        .expect("rewrite");
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .expect("read back");
    assert!(changed == 1 && sql.contains(to), "{sql}");
    // As any change of the schema by SQL does, so that connections open on it see it.
    let cookie: i64 = conn
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .expect("cookie");
    conn.execute_batch(&format!("PRAGMA schema_version = {}", cookie + 1))
        .expect("bump cookie");
}

#[tokio::test]
async fn a_journal_whose_schema_text_changed_is_refused_at_open_and_left_alone() {
    let cases: [(&str, &str, &str, &str); 4] = [
        // A constraint that would fail only at the first insert of a step.
        (
            "durable_steps",
            "CHECK ((output IS NULL)",
            "CHECK (z() OR (output IS NULL)",
            "the definition of durable_steps was changed",
        ),
        // A partial index that would silently miss the pending workflows.
        (
            "durable_workflows_pending",
            "'pending'",
            "'pendinf'",
            "the definition of durable_workflows_pending was changed",
        ),
        // Same columns, another type: no statement would notice.
        (
            "durable_events",
            "value  BLOB NOT NULL",
            "value  ANY NOT NULL",
            "the definition of durable_events was changed",
        ),
        (
            "durable_meta",
            "value TEXT",
            "value ANY",
            "the definition of durable_meta was changed",
        ),
    ];
    for (name, from, to, says) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shop.db");
        journal_with_a_checkout(&path).await;
        rewrite_schema(&path, name, from, to);
        let before = std::fs::read(&path).expect("read");
        let err = common::try_reopen(&path).await.expect_err(name);
        assert_refused(&path, &err, StoreErrorKind::Damaged, says);
        assert!(
            err.to_string().contains("restore the file from a backup"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), before, "{name}");
    }
}

#[tokio::test]
async fn a_journal_with_schema_objects_added_or_unrecorded_is_refused() {
    let (_dir, path, err) =
        reopen_after("CREATE INDEX durable_steps_by_name ON durable_steps (name)").await;
    assert_refused(
        &path,
        &err,
        StoreErrorKind::Damaged,
        "durable_steps_by_name was added",
    );
    let (_dir, path, err) = reopen_after("DELETE FROM durable_meta WHERE key = 'schema'").await;
    assert_refused(
        &path,
        &err,
        StoreErrorKind::Damaged,
        "durable_meta holds no record of the schema",
    );
    // An application's own objects in the same file are its business.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    drop(Runtime::open(&path).await.expect("create"));
    common::sql(&path, "CREATE TABLE orders (id INTEGER PRIMARY KEY)", []);
    common::sql(
        &path,
        "CREATE INDEX orders_by_step ON durable_steps (name)",
        [],
    );
    drop(common::reopen(&path).await);
}

#[tokio::test]
async fn a_schema_changed_under_a_running_journal_is_reported_as_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let rt = Runtime::open(&path).await.expect("create");
    rewrite_schema(
        &path,
        "durable_steps",
        "CHECK ((output IS NULL)",
        "CHECK (z() OR (output IS NULL)",
    );
    let err = match rt.start_with_id("o-1", checkout("ada".into())).await {
        Ok(handle) => handle
            .result()
            .await
            .expect_err("a step cannot be recorded"),
        Err(e) => e,
    };
    let message = err.to_string();
    assert!(
        message.contains("no longer fits the journal's schema")
            && message.contains("unknown function: z()"),
        "{message}"
    );
}

#[tokio::test]
async fn a_directory_is_refused_without_creating_anything() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("journals");
    std::fs::create_dir(&dir).expect("mkdir");
    let err = Runtime::open(&dir).await.expect_err("a directory");
    assert_refused(&dir, &err, StoreErrorKind::NotAJournal, "is a directory");
    let entries: Vec<_> = std::fs::read_dir(parent.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        entries,
        ["journals"],
        "nothing created beside the directory"
    );
}

#[tokio::test]
async fn a_new_journal_is_built_aside_and_a_leftover_from_a_crash_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    // What a crash in the middle of creating the journal leaves behind.
    std::fs::write(dir.path().join("shop.db.creating"), b"half-built").expect("write");
    std::fs::write(dir.path().join("shop.db.creating-journal"), b"hot").expect("write");
    let _rt = open_with_a_run(&path).await;
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // No temporary file and, above all, no rollback journal: only WAL files.
    assert_eq!(
        names,
        ["shop.db", "shop.db-shm", "shop.db-wal", "shop.db.lock"]
    );
}
