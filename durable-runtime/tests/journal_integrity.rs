//! What the runtime checks about a journal file before anything in it runs or changes:
//! the lock belongs to the file whatever name reached it, a file the process cannot
//! write is refused up front, another application's database is refused untouched, and
//! a damaged pending index can neither hide a pending workflow nor relaunch a finished
//! one.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use durable_runtime::{Error, JournalView, Runtime, StoreErrorKind, recv, step, workflow};

use common::{crc32, keyed};

static BODIES: AtomicUsize = AtomicUsize::new(0);
/// The tests count step bodies in `BODIES`: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[step]
async fn count(i: u32) -> u32 {
    BODIES.fetch_add(1, Ordering::SeqCst);
    i * 10
}

/// One step, then waits for "go" (nobody sends it in the first run), then one more step.
#[workflow]
async fn parked(i: u32) -> u32 {
    let a = count(i).await;
    let _: Option<u32> = recv("go", None).await.expect("recv");
    a + count(i + 1).await
}

/// One step and done.
#[workflow]
async fn quick(i: u32) -> u32 {
    count(i).await
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

/// Writes a journal at `path` with `finished` finished workflows (`q-0`, `q-1`, ..) and
/// then one pending workflow `p`, parked after its first step.
fn journal_with_pending(path: &Path, finished: u32) {
    tokio().block_on(async {
        let rt = Runtime::open(path).await.expect("open");
        for i in 0..finished {
            let h = rt
                .start_with_id(&format!("q-{i}"), quick(i))
                .await
                .expect("start");
            h.result().await.expect("finished");
        }
        rt.start_with_id("p", parked(7)).await.expect("start p");
        while rt.steps("p").await.expect("steps").is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        rt.close().await.expect("close");
    });
}

fn assert_locked(result: Result<Runtime, Error>, how: &str) {
    match result {
        Err(Error::Locked { .. }) => {}
        Err(e) => panic!("{how}: expected Error::Locked, got {e}"),
        Ok(_) => panic!("{how}: a second runtime opened a journal another one holds"),
    }
}

#[test]
fn a_symlink_or_hard_link_to_a_held_journal_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir a");
    std::fs::create_dir_all(&b).expect("mkdir b");
    let journal = a.join("j.db");
    let symlink = b.join("alias.db");
    let hard = b.join("hard.db");
    tokio().block_on(async {
        let rt = Runtime::open(&journal).await.expect("open");
        std::os::unix::fs::symlink(&journal, &symlink).expect("symlink");
        std::fs::hard_link(&journal, &hard).expect("hard link");
        assert_locked(Runtime::open(&symlink).await, "through a symlink");
        assert_locked(Runtime::open(&hard).await, "through a hard link");
        // A symlinked directory on the way is one more name for the same file.
        let linked_dir = dir.path().join("c");
        std::os::unix::fs::symlink(&a, &linked_dir).expect("symlink the directory");
        assert_locked(
            Runtime::open(linked_dir.join("j.db")).await,
            "through a symlinked directory",
        );
        rt.close().await.expect("close");
        // Once the holder is gone, every name opens it (one at a time).
        for name in [&symlink, &hard, &journal] {
            let rt = Runtime::open(name).await.expect("reopen by another name");
            rt.close().await.expect("close");
        }
    });
}

/// A refused open through another name must not open the file: closing any descriptor
/// of a file drops this process's POSIX locks on it, SQLite's among them, and then a
/// third party's connection checkpoints and deletes the `-wal` the runtime still
/// writes to, losing every step acknowledged after.
#[test]
fn a_refused_open_leaves_the_holders_locks_alone() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j.db");
    let hard = dir.path().join("hard.db");
    tokio().block_on(async {
        let rt = Runtime::open(&journal).await.expect("open");
        rt.start_with_id("q-0", quick(0))
            .await
            .expect("start")
            .result()
            .await
            .expect("q-0");
        std::fs::hard_link(&journal, &hard).expect("hard link");
        assert_locked(Runtime::open(&hard).await, "through a hard link");
        // Another program reads the journal and closes: with the runtime's locks in
        // place, it cannot checkpoint and delete the -wal.
        let status = std::process::Command::new(std::env::current_exe().expect("this test"))
            .args(["--ignored", "--exact", "another_program_reads"])
            .env("DURABLE_JOURNAL_TO_READ", &journal)
            .status()
            .expect("run another program");
        assert!(status.success());
        for i in 1..4 {
            let h = rt
                .start_with_id(format!("q-{i}"), quick(i))
                .await
                .expect("start");
            assert_eq!(h.result().await.expect("result"), i * 10);
        }
        // What a crash now would leave: lost unless the -wal they went to is still the
        // journal's.
        let after = rusqlite::Connection::open(&journal).expect("another program");
        let n: i64 = after
            .query_row("SELECT count(*) FROM durable_workflows", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 4, "every acknowledged run is in the journal's files");
        drop(after);
        rt.close().await.expect("close");
    });
}

/// Run by [`a_refused_open_leaves_the_holders_locks_alone`] as a separate process.
#[test]
#[ignore = "run by a_refused_open_leaves_the_holders_locks_alone"]
fn another_program_reads() {
    let path = std::env::var_os("DURABLE_JOURNAL_TO_READ").expect("a journal to read");
    let conn = rusqlite::Connection::open(path).expect("open");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM durable_workflows", [], |r| r.get(0))
        .expect("read");
    assert!(n > 0);
}

/// A journal file deleted (or moved) while its -wal stays: opening the path must not
/// start a new journal beside a log of commits, which would either lose them or take in
/// a log that is not its own.
#[test]
fn a_missing_journal_beside_its_wal_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let copy = dir.path().join("copy.db");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        for i in 0..3 {
            let h = rt
                .start_with_id(format!("q-{i}"), quick(i))
                .await
                .expect("start");
            h.result().await.expect("result");
        }
        // What a crash now would leave, without the file itself.
        std::fs::copy(
            format!("{}-wal", path.display()),
            format!("{}-wal", copy.display()),
        )
        .expect("copy the -wal");
        rt.close().await.expect("close");
    });
    let wal = PathBuf::from(format!("{}-wal", copy.display()));
    let before = std::fs::read(&wal).expect("the -wal");
    assert!(before.len() > 32);
    match tokio().block_on(Runtime::open(&copy)) {
        Err(Error::Store(e)) => {
            assert_eq!(e.kind(), StoreErrorKind::Damaged, "{e}");
            assert!(e.to_string().contains("there is no journal file"), "{e}");
        }
        Err(e) => panic!("expected a store error, got {e}"),
        Ok(_) => panic!("started a new journal beside a -wal of commits"),
    }
    assert!(!copy.exists(), "no journal was created");
    assert!(
        std::fs::read(&wal).expect("the -wal") == before,
        "the -wal is as it was"
    );
}

/// A checksum no runtime could have written (out of a u32's range) is damage to
/// `check`, as it is to every read.
#[test]
fn a_checksum_out_of_range_is_reported_by_check() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_pending(&path, 2);
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute_batch(
            "UPDATE durable_workflows SET input_crc32 = input_crc32 + 4294967296
              WHERE id = 'q-1';",
        )
        .expect("damage");
    let damage = JournalView::open(&path)
        .expect("view")
        .check()
        .expect("check");
    assert!(
        damage
            .iter()
            .any(|d| d.workflow_id.as_deref() == Some("q-1")
                && d.what.contains("checksum durable never writes")),
        "{damage:?}"
    );
}

/// Whether this process can write `path` even without write permission (root can).
fn writes_anyway(path: &Path) -> bool {
    std::fs::OpenOptions::new().write(true).open(path).is_ok()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn expect_read_only(path: &Path, named: &Path) {
    let before = BODIES.load(Ordering::SeqCst);
    let opened = tokio().block_on(Runtime::open(path));
    let e = match opened {
        Err(Error::Store(e)) => e,
        Err(e) => panic!("expected a store error, got {e}"),
        Ok(_) => panic!("a journal the process cannot write opened"),
    };
    assert_eq!(e.kind(), StoreErrorKind::ReadOnly, "{e}");
    let message = e.to_string();
    assert!(
        message.contains(&named.display().to_string()),
        "the error names {}: {message}",
        named.display()
    );
    assert!(message.contains("permission"), "{message}");
    assert_eq!(
        BODIES.load(Ordering::SeqCst),
        before,
        "no step body runs before the refusal"
    );
}

/// The refusals of a journal the process cannot write, checked by
/// [`read_only_refusals`] in this process, or (as root, who writes read-only files
/// anyway) in a copy of this test binary run as user `nobody`.
#[test]
fn a_journal_the_process_cannot_write_is_refused_before_anything_runs() {
    let _serial = serial();
    // In /tmp (world-traversable), so that user nobody can reach it when the checks run
    // as nobody, whatever TMPDIR says.
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_pending(&path, 1);
    chmod(&path, 0o400);
    if writes_anyway(&path) {
        as_nobody(dir.path());
    } else {
        read_only_refusals(dir.path());
    }
    // Writable again: the pending workflow resumes and finishes.
    chmod(dir.path(), 0o700);
    chmod(&path, 0o600);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open once writable");
        assert_eq!(rt.recovered(), ["p".to_string()]);
        rt.send("p", "go", &1u32).await.expect("send");
        let h = rt.handle::<u32>("p").await.expect("handle");
        assert_eq!(h.result().await.expect("result"), 70 + 80);
    });
}

/// The journal `j.db` in `dir` (mode 0400) is refused, at every open; then, writable
/// but in a directory the process cannot write (SQLite could not create its `-wal`),
/// it is refused too, and so is a new journal there.
fn read_only_refusals(dir: &Path) {
    let path = dir.join("j.db");
    expect_read_only(&path, &path);
    expect_read_only(&path, &path);
    chmod(&path, 0o600);
    chmod(dir, 0o500);
    expect_read_only(&path, dir);
    // A new journal in that directory: its lock file cannot be created.
    expect_read_only(&dir.join("new.db"), dir);
}

/// Where [`read_only_as_nobody`] finds its journal's directory.
const READ_ONLY_DIR: &str = "DURABLE_TEST_READ_ONLY_DIR";

/// Runs [`read_only_refusals`] on `dir` in this test binary as user `nobody`, through
/// `setpriv`: root may write any file, so only another user sees the refusal. The
/// binary is copied beside the journal first: nobody may not be able to reach the
/// build directory (a CI checkout under a private directory).
fn as_nobody(dir: &Path) {
    use std::os::unix::fs::chown;
    const NOBODY: u32 = 65534;
    let binary = dir.join("test-binary");
    std::fs::copy(std::env::current_exe().expect("this test binary"), &binary)
        .expect("copy the test binary");
    for entry in std::fs::read_dir(dir).expect("ls") {
        chown(entry.expect("entry").path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    chown(dir, Some(NOBODY), Some(NOBODY)).expect("chown the directory");
    let status = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary)
        .args(["--exact", "read_only_as_nobody", "--ignored", "--nocapture"])
        .env(READ_ONLY_DIR, dir)
        .status()
        .expect("run setpriv (util-linux) to drop root for the read-only checks");
    assert!(status.success(), "the read-only checks failed as nobody");
}

/// [`read_only_refusals`] as another user; run by [`as_nobody`], never on its own.
#[test]
#[ignore = "run by a_journal_the_process_cannot_write_is_refused_before_anything_runs"]
fn read_only_as_nobody() {
    let dir = PathBuf::from(std::env::var_os(READ_ONLY_DIR).expect("run by as_nobody"));
    assert!(!writes_anyway(&dir.join("j.db")), "running as root");
    read_only_refusals(&dir);
}

/// Another application's SQLite database (rollback journal mode, its own table named
/// like ours) is refused as "not a journal", and no byte of it, nor any file beside
/// it, changes.
#[test]
fn another_applications_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE durable_workflows (id INTEGER PRIMARY KEY, what TEXT);
             INSERT INTO durable_workflows (what) VALUES ('theirs'), ('not ours');
             CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER);",
        )
        .expect("their schema");
    }
    let empty = dir.path().join("empty.db");
    {
        // An SQLite database with no table at all (and a user_version) is somebody's too.
        let conn = rusqlite::Connection::open(&empty).expect("create");
        conn.execute_batch("PRAGMA user_version = 3;")
            .expect("user_version");
    }
    // A WAL-mode database whose last commits are still in its -wal (its program
    // crashed, or still runs): checkpointing it would change the file.
    let wal_mode = dir.path().join("walmode.db");
    {
        let live = dir.path().join("live.db");
        let conn = rusqlite::Connection::open(&live).expect("create");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE durable_workflows (id INTEGER PRIMARY KEY, what TEXT);
             INSERT INTO durable_workflows (what) VALUES ('theirs'), ('in the wal');",
        )
        .expect("their schema");
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", live.display()));
            let to = PathBuf::from(format!("{}{suffix}", wal_mode.display()));
            std::fs::copy(from, to).expect("copy the files as they are");
        }
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", live.display()));
        }
    }
    let wal = PathBuf::from(format!("{}-wal", wal_mode.display()));
    assert!(std::fs::metadata(&wal).expect("a -wal").len() > 32);
    // The same with no -shm: reading the -wal needs one, and it must not stay behind.
    let no_shm = dir.path().join("noshm.db");
    for suffix in ["", "-wal"] {
        std::fs::copy(
            format!("{}{suffix}", wal_mode.display()),
            format!("{}{suffix}", no_shm.display()),
        )
        .expect("copy");
    }
    // A rollback-mode database whose program died in a transaction (`DROP TABLE`): the
    // file already shows no table, and its hot -journal holds the pages to put back.
    // Any connection that may write would roll it back.
    let hot = dir.path().join("hot.db");
    {
        let live = dir.path().join("busy.db");
        let conn = rusqlite::Connection::open(&live).expect("create");
        conn.execute_batch(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER);
             INSERT INTO accounts (balance) VALUES (10), (20);
             BEGIN; DROP TABLE accounts;",
        )
        .expect("their transaction");
        let journal = format!("{}-journal", live.display());
        std::fs::copy(&journal, format!("{}-journal", hot.display())).expect("copy");
        conn.execute_batch("COMMIT;").expect("commit");
        std::fs::copy(&live, &hot).expect("copy");
        drop(conn);
        std::fs::remove_file(&live).expect("rm");
    }
    assert!(
        std::fs::metadata(format!("{}-journal", hot.display()))
            .expect("hot")
            .len()
            > 0
    );
    for file in [&path, &empty, &wal_mode, &no_shm, &hot] {
        let before = std::fs::read(file).expect("read");
        let wal = PathBuf::from(format!("{}-wal", file.display()));
        let wal_before = std::fs::read(&wal).ok();
        let journal_before =
            std::fs::read(PathBuf::from(format!("{}-journal", file.display()))).ok();
        let siblings = listing(dir.path());
        let opened = tokio().block_on(Runtime::open(file));
        let e = match opened {
            Err(Error::Store(e)) => e,
            Err(e) => panic!("expected a store error, got {e}"),
            Ok(_) => panic!("opened another application's database as a journal"),
        };
        assert_eq!(e.kind(), StoreErrorKind::NotAJournal, "{e}");
        assert!(e.to_string().contains("not a durable journal"), "{e}");
        assert!(std::fs::read(file).expect("read") == before, "changed: {e}");
        assert!(
            std::fs::read(&wal).ok() == wal_before,
            "its -wal changed: {e}"
        );
        let journal = PathBuf::from(format!("{}-journal", file.display()));
        assert!(
            std::fs::read(&journal).ok() == journal_before,
            "its -journal changed: {e}"
        );
        let lock = PathBuf::from(format!("{}.lock", file.display()));
        let after: Vec<_> = listing(dir.path())
            .into_iter()
            .filter(|p| *p != lock)
            .collect();
        assert_eq!(
            after, siblings,
            "no -wal, -shm or -journal was left beside it"
        );
    }
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    names
}

/// The rowid of workflow `id`'s row.
fn rowid_of(path: &Path, id: &str) -> i64 {
    rusqlite::Connection::open(path)
        .expect("open")
        .query_row(
            "SELECT rowid FROM durable_workflows WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("rowid")
}

/// The journal's bytes, checkpointed into the file, and where in them the root page of
/// table or index `name` starts (asserted to be a leaf of `kind`: 0x0a an index, 0x0d a
/// table).
fn root_leaf(path: &Path, name: &str, kind: u8) -> (Vec<u8>, usize) {
    let conn = rusqlite::Connection::open(path).expect("open");
    let root: usize = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .expect("root page");
    let page_size: usize = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    drop(conn);
    let bytes = std::fs::read(path).expect("read");
    let page = (root - 1) * page_size;
    assert_eq!(bytes[page], kind, "the root of {name} is a leaf page");
    (bytes, page)
}

/// Changes one byte of the pending-workflows index so that its only entry points at a
/// finished workflow's row instead of the pending one's (as a disk error could).
fn misdirect_pending_index(path: &Path, to_rowid: i64) {
    let (mut bytes, page) = root_leaf(path, "durable_workflows_pending", 0x0a);
    let cells = u16::from_be_bytes([bytes[page + 3], bytes[page + 4]]);
    assert_eq!(cells, 1, "one pending workflow, one index entry");
    let cell = page + usize::from(u16::from_be_bytes([bytes[page + 8], bytes[page + 9]]));
    // Cell: payload length (a one-byte varint here), then the record: its header length,
    // the serial types of (created_at, rowid), then the values.
    let header = cell + 1;
    let header_len = usize::from(bytes[header]);
    let (created_type, rowid_type) = (bytes[header + 1], bytes[header + 2]);
    assert_eq!(rowid_type, 1, "a one-byte rowid");
    let created_len = match created_type {
        1..=4 => usize::from(created_type),
        5 => 6,
        6 => 8,
        other => panic!("created_at has serial type {other}"),
    };
    let rowid_at = header + header_len + created_len;
    bytes[rowid_at] = u8::try_from(to_rowid).expect("a small rowid");
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_damaged_pending_index_neither_hides_nor_relaunches() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_pending(&path, 3);
    let finished_rowid = rowid_of(&path, "q-1");
    misdirect_pending_index(&path, finished_rowid);
    // A check names the damage, and the workflow it hides.
    let damage = JournalView::open(&path)
        .expect("view")
        .check()
        .expect("check");
    assert!(
        damage.iter().any(|d| d.workflow_id.as_deref() == Some("p")
            && d.what.contains("durable_workflows_pending")),
        "{damage:?}"
    );

    let before = BODIES.load(Ordering::SeqCst);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        assert_eq!(
            rt.recovered(),
            ["p".to_string()],
            "the pending workflow resumes, and only it"
        );
        rt.send("p", "go", &1u32).await.expect("send");
        let h = rt.handle::<u32>("p").await.expect("handle");
        assert_eq!(h.result().await.expect("result"), 70 + 80);
        let q = rt.handle::<u32>("q-1").await.expect("handle");
        assert_eq!(q.result().await.expect("result"), 10);
        rt.close().await.expect("close");
    });
    assert_eq!(
        BODIES.load(Ordering::SeqCst) - before,
        1,
        "only p's second step ran; no finished workflow ran again"
    );
    let check: String = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok", "the index was rebuilt");
    assert_eq!(
        JournalView::open(&path)
            .expect("view")
            .check()
            .expect("check"),
        []
    );
}

/// Points the entry for `id` in the index of workflow ids at the row `to_rowid` (as a
/// disk error could): the row it then finds is intact, and another workflow's.
fn misdirect_id_index(path: &Path, id: &str, to_rowid: i64) {
    let (mut bytes, page) = root_leaf(path, "sqlite_autoindex_durable_workflows_1", 0x0a);
    let cells = u16::from_be_bytes([bytes[page + 3], bytes[page + 4]]);
    for i in 0..usize::from(cells) {
        let at = page + 8 + 2 * i;
        let cell = page + usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        // Cell: payload length (one byte here), then the record: its header length, the
        // serial types of (id, rowid), the id's bytes, the rowid.
        let header = cell + 1;
        let header_len = usize::from(bytes[header]);
        let id_len = (usize::from(bytes[header + 1]) - 13) / 2;
        let text = header + header_len;
        if &bytes[text..text + id_len] == id.as_bytes() {
            assert_eq!(bytes[header + 2], 1, "a one-byte rowid (not rowid 0 or 1)");
            bytes[text + id_len] = u8::try_from(to_rowid).expect("a small rowid");
            std::fs::write(path, bytes).expect("write");
            return;
        }
    }
    panic!("no index entry for {id}");
}

#[test]
fn a_damaged_id_index_never_hands_over_another_workflows_row() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_pending(&path, 3);
    let rowid_of_q2 = rowid_of(&path, "q-2");
    misdirect_id_index(&path, "q-1", rowid_of_q2);

    // q-1 returned 10 and q-2 returned 20: asked for q-1, nothing may answer 20. Whether
    // SQLite reads the id from the index or from the row, the lookup is refused.
    let view = JournalView::open(&path).expect("view");
    match view.workflow("q-1") {
        Err(e) => assert!(
            e.to_string().contains("found the row of workflow q-2"),
            "{e}"
        ),
        Ok(Some(w)) => {
            assert!(
                matches!(w.output::<u32>(), Err(Error::Corrupt { .. })),
                "{w:?}"
            );
        }
        Ok(None) => panic!("q-1 is gone"),
    }
    assert!(
        !view.check().expect("check").is_empty(),
        "check() sees the index disagree with its table"
    );
    drop(view);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        let result = match rt.handle::<u32>("q-1").await {
            Ok(h) => h.result().await,
            Err(e) => Err(e),
        };
        match result {
            Err(Error::Store(e)) => assert_eq!(e.kind(), StoreErrorKind::Damaged, "{e}"),
            Err(Error::Corrupt { workflow_id, .. }) => assert_eq!(workflow_id, "q-1"),
            other => panic!("q-1 gave {other:?}"),
        }
        let q2 = rt.handle::<u32>("q-2").await.expect("handle");
        assert_eq!(q2.result().await.expect("result"), 20);
        // Starting q-1 again does not take q-2's result either.
        if let Ok(h) = rt.start_with_id("q-1", quick(1)).await {
            assert!(!matches!(h.result().await, Ok(20)));
        }
        rt.close().await.expect("close");
    });
}

/// A damaged status in a pending workflow's row: the index is right, the row is not.
/// Rebuilding the index from the rows would drop the entry and hide the workflow.
#[test]
fn a_damaged_status_is_refused_not_hidden() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_pending(&path, 3);
    let (mut bytes, start) = root_leaf(&path, "durable_workflows", 0x0d);
    let page = &mut bytes[start..start + 4096];
    let at = page
        .windows(7)
        .position(|w| w == b"pending")
        .expect("p's status");
    page[at] = b'P';
    std::fs::write(&path, bytes).expect("write");

    let opened = tokio().block_on(Runtime::open(&path));
    match opened {
        Err(Error::Store(e)) => {
            assert_eq!(e.kind(), StoreErrorKind::Damaged, "{e}");
            assert!(e.to_string().contains("`p`"), "names the workflow: {e}");
        }
        Err(e) => panic!("expected a store error, got {e}"),
        Ok(rt) => panic!("opened, and resumed only {:?}", rt.recovered()),
    }
}

/// `check` reads what no open reads: the finished workflows' values and the rows of
/// steps, and names the workflow each damaged thing belongs to.
#[test]
fn a_check_reports_damage_per_workflow() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_pending(&path, 3);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        assert_eq!(rt.check().await.expect("check"), [], "a healthy journal");
        rt.close().await.expect("close");
    });
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "UPDATE durable_steps SET output = CAST(output || x'00' AS BLOB) WHERE run = (SELECT run FROM durable_workflows WHERE id = 'q-2');
         UPDATE durable_workflows SET output = CAST(output || x'00' AS BLOB) WHERE id = 'q-0';
         INSERT INTO durable_steps (run, path, name, output, attempts, started_at, finished_at)
              VALUES (999999, '1', 'count', x'00', 1, 0, 0);",
    )
    .expect("damage");
    drop(conn);
    let damage = JournalView::open(&path)
        .expect("view")
        .check()
        .expect("check");
    let mut by_workflow: Vec<_> = damage
        .iter()
        .map(|d| (d.workflow_id.clone().unwrap_or_default(), d.what.clone()))
        .collect();
    by_workflow.sort();
    assert_eq!(by_workflow.len(), 3, "{damage:?}");
    assert_eq!(by_workflow[0].0, "", "a row of no workflow names none");
    assert!(
        by_workflow[0]
            .1
            .contains("step 1 (count) of run 999999 belongs to no workflow"),
        "{damage:?}"
    );
    assert_eq!(by_workflow[1].0, "q-0");
    assert!(
        by_workflow[1]
            .1
            .contains("its output does not match its checksum")
    );
    assert_eq!(by_workflow[2].0, "q-2");
    assert!(
        by_workflow[2].1.contains("step 1 (count) does not match"),
        "{damage:?}"
    );
    // The runtime's check agrees with the view's.
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        assert_eq!(rt.check().await.expect("check"), damage);
    });
}

/// A counter the `tick` step reads: each run of its body returns the next number.
static TICKS: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn tick() -> usize {
    TICKS.fetch_add(1, Ordering::SeqCst) + 1
}

/// Three calls of one step with the same (no) arguments, then a wait.
#[workflow]
async fn ticks() -> Vec<usize> {
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(tick().await);
    }
    let _: Option<u32> = recv("go", None).await.expect("recv");
    seen
}

/// A step's path is part of what its checksum covers: damage that moves step 2's
/// intact result to step 3's place (the rows of a `WITHOUT ROWID` table hold their key
/// in the cell, where a flipped byte lands like anywhere else) is reported, not
/// replayed as step 3's result.
#[test]
fn a_damaged_step_path_is_reported_not_replayed() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        rt.start_with_id("t", ticks()).await.expect("start");
        while rt.steps("t").await.expect("steps").len() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        rt.close().await.expect("close");
    });
    let conn = rusqlite::Connection::open(&path).expect("open");
    let paths: Vec<String> = conn
        .prepare("SELECT path FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 't') AND name LIKE '%tick' ORDER BY path")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("paths");
    assert_eq!(paths.len(), 3, "{paths:?}");
    conn.execute(
        "DELETE FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 't') AND path = ?1",
        [&paths[2]],
    )
    .expect("drop step 3");
    conn.execute(
        "UPDATE durable_steps SET path = ?2 WHERE run = (SELECT run FROM durable_workflows WHERE id = 't') AND path = ?1",
        [&paths[1], &paths[2]],
    )
    .expect("move step 2 to step 3's place");
    drop(conn);

    let damage = JournalView::open(&path)
        .expect("view")
        .check()
        .expect("check");
    assert!(
        damage.iter().any(|d| d.workflow_id.as_deref() == Some("t")
            && d.what.contains("does not match its checksum")),
        "{damage:?}"
    );
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        rt.send("t", "go", &1u32).await.expect("send");
        let h = rt.handle::<Vec<usize>>("t").await.expect("handle");
        match h.result().await {
            Err(Error::Store(e)) => assert!(e.to_string().contains("checksum"), "{e}"),
            other => panic!("step 2's result replayed in step 3's place: {other:?}"),
        }
    });
}

/// Migration 5 moves every checksum to the keyed form where it matched its value,
/// and leaves a damaged value damaged: a version 4 journal (made here by writing the
/// checksums as version 4 did) upgrades with its intact values intact.
#[test]
fn migration_5_keys_every_checksum_and_keeps_damage() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_pending(&path, 3);
    let conn = rusqlite::Connection::open(&path).expect("open");
    as_version_4(&conn);
    // Damaged while at version 4: q-1's output no longer matches its checksum, and the
    // path of q-0's step is not text (its checksum did not cover it then).
    conn.execute_batch(
        "UPDATE durable_workflows SET output = CAST(output || x'00' AS BLOB) WHERE id = 'q-1';
         UPDATE durable_steps SET path = CAST(x'ff31' AS TEXT) WHERE workflow_id = 'q-0';",
    )
    .expect("damage");
    drop(conn);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open upgrades");
        let damage = rt.check().await.expect("check");
        let names: Vec<_> = damage
            .iter()
            .map(|d| (d.workflow_id.clone(), d.what.clone()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    Some("q-1".to_owned()),
                    "its output does not match its checksum".to_owned()
                ),
                (
                    Some("q-0".to_owned()),
                    "the result of step \u{fffd}1 (count) is recorded under a key that is not \
                     UTF-8"
                        .to_owned()
                )
            ],
        );
        for (id, want) in [("q-0", 0), ("q-2", 20)] {
            let h = rt.handle::<u32>(id).await.expect("handle");
            assert_eq!(h.result().await.expect("intact after the upgrade"), want);
        }
        rt.send("p", "go", &1u32).await.expect("send");
        let h = rt.handle::<u32>("p").await.expect("handle");
        assert_eq!(h.result().await.expect("p replays its step"), 150);
    });
}

/// `n` steps, then waits for "go" (with a deadline far away), then `n` more.
#[workflow]
async fn long_parked(n: u32) -> u32 {
    let mut total = 0;
    for i in 0..n {
        total += count(i).await;
    }
    let go: Option<u32> = recv("go", std::time::Duration::from_secs(3600))
        .await
        .expect("recv");
    for i in 0..n {
        total += count(i).await;
    }
    total + go.unwrap_or(1_000_000)
}

/// `n` steps and done.
#[workflow]
async fn long_quick(n: u32) -> u32 {
    let mut total = 0;
    for i in 0..n {
        total += count(i).await;
    }
    total
}

/// A path as schema 5 wrote it (`3.12`), from its schema 6 key (`3.b12`), computed
/// here independently of the runtime.
fn schema_5_path(key: &str) -> String {
    key.split('.')
        .map(|p| p.trim_start_matches(|c: char| c.is_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(".")
}

/// Turns a journal back into schema version 6: the rows recorded for a run keyed by its
/// workflow's id rather than its run number, as versions 1 to 6 wrote them (checksums
/// were keyed by the id all along), and no table of dormant runs (version 8).
fn as_version_6(conn: &rusqlite::Connection) {
    as_version_9(conn);
    conn.execute_batch(
        "CREATE TABLE w6 (
            id TEXT PRIMARY KEY, name TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
            input BLOB NOT NULL, output BLOB, error_kind TEXT, error TEXT,
            executor TEXT NOT NULL, app_version TEXT, parent_id TEXT, queue TEXT,
            created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
            input_crc32 INTEGER, output_crc32 INTEGER, deadline_at INTEGER
         ) STRICT;
         INSERT INTO w6 SELECT id, name, status, input, output, error_kind, error, executor,
             app_version, parent_id, queue, created_at, updated_at, input_crc32,
             output_crc32, deadline_at FROM durable_workflows ORDER BY run;
         CREATE TABLE s6 (
            workflow_id TEXT NOT NULL, path TEXT NOT NULL, name TEXT NOT NULL, output BLOB,
            error TEXT, attempts INTEGER NOT NULL, started_at INTEGER NOT NULL,
            finished_at INTEGER NOT NULL, crc32 INTEGER, error_kind TEXT,
            args_fingerprint INTEGER,
            PRIMARY KEY (workflow_id, path), CHECK ((output IS NULL) <> (error IS NULL))
         ) STRICT, WITHOUT ROWID;
         INSERT INTO s6 SELECT w.id, s.path, s.name, s.output, s.error, s.attempts,
             s.started_at, s.finished_at, s.crc32, s.error_kind, s.args_fingerprint
             FROM durable_steps s JOIN durable_workflows w USING (run);
         CREATE TABLE e6 (
            workflow_id TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
            crc32 INTEGER NOT NULL, set_at INTEGER NOT NULL, PRIMARY KEY (workflow_id, key)
         ) STRICT, WITHOUT ROWID;
         INSERT INTO e6 SELECT w.id, e.key, e.value, e.crc32, e.set_at
             FROM durable_events e JOIN durable_workflows w USING (run);
         CREATE TABLE t6 (
            workflow_id TEXT NOT NULL, path TEXT NOT NULL, name TEXT NOT NULL,
            started_at INTEGER NOT NULL, wake_at INTEGER, PRIMARY KEY (workflow_id, path)
         ) STRICT, WITHOUT ROWID;
         INSERT INTO t6 SELECT w.id, t.path, t.name, t.started_at, t.wake_at
             FROM durable_started t JOIN durable_workflows w USING (run);
         CREATE TABLE p6 (
            workflow_id TEXT NOT NULL, path TEXT NOT NULL, name TEXT NOT NULL,
            PRIMARY KEY (workflow_id, path, name)
         ) STRICT, WITHOUT ROWID;
         INSERT INTO p6 SELECT w.id, p.path, p.name
             FROM durable_patches p JOIN durable_workflows w USING (run);
         DROP TABLE durable_workflows; DROP TABLE durable_steps; DROP TABLE durable_events;
         DROP TABLE durable_started; DROP TABLE durable_patches; DROP TABLE durable_dormant;
         ALTER TABLE w6 RENAME TO durable_workflows;
         ALTER TABLE s6 RENAME TO durable_steps;
         ALTER TABLE e6 RENAME TO durable_events;
         ALTER TABLE t6 RENAME TO durable_started;
         ALTER TABLE p6 RENAME TO durable_patches;
         CREATE INDEX durable_workflows_pending ON durable_workflows (created_at)
             WHERE status = 'pending';
         UPDATE durable_meta SET value = '6' WHERE key = 'schema_version';
         PRAGMA application_id = 0;",
    )
    .expect("back to version 6");
}

/// A step row as `as_version_5` reads it: workflow, path, name, value, checksum.
type StepRowV5 = (String, String, String, Vec<u8>, Option<i64>);

/// Turns a journal back into schema version 5: step paths in plain decimal, and each
/// step checksum that matched its key moved to the plain path's key.
fn as_version_5(conn: &rusqlite::Connection) {
    as_version_9(conn);
    as_version_6(conn);
    let rows: Vec<StepRowV5> = conn
        .prepare(
            "SELECT workflow_id, path, name, COALESCE(output, CAST(error AS BLOB)), crc32
               FROM durable_steps",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })
        .expect("steps");
    for (id, path, name, value, crc) in rows {
        let old = schema_5_path(&path);
        let matched = crc
            == Some(i64::from(keyed(
                &[id.as_bytes(), path.as_bytes(), name.as_bytes()],
                &value,
            )));
        let crc = if matched {
            Some(i64::from(keyed(
                &[id.as_bytes(), old.as_bytes(), name.as_bytes()],
                &value,
            )))
        } else {
            crc
        };
        conn.execute(
            "UPDATE durable_steps SET path = ?3, crc32 = ?4 WHERE workflow_id = ?1 AND path = ?2",
            rusqlite::params![id, path, old, crc],
        )
        .expect("step back to version 5");
    }
    for table in ["durable_started", "durable_patches"] {
        let rows: Vec<(String, String)> = conn
            .prepare(&format!("SELECT workflow_id, path FROM {table}"))
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("side rows");
        for (id, path) in rows {
            conn.execute(
                &format!("UPDATE {table} SET path = ?3 WHERE workflow_id = ?1 AND path = ?2"),
                rusqlite::params![id, path, schema_5_path(&path)],
            )
            .expect("side row back to version 5");
        }
    }
    conn.execute_batch("UPDATE durable_meta SET value = '5' WHERE key = 'schema_version'")
        .expect("version 5");
}

fn column(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    conn.prepare(sql)
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect(sql)
}

/// Makes a journal at `path` holding `q`, finished after 12 steps, and `p`, parked in
/// its `recv` after 25 steps (their records and the start record of its wait).
fn finished_q_and_parked_p(path: &Path) {
    tokio().block_on(async {
        let rt = Runtime::open(path).await.expect("open");
        let h = rt.start_with_id("q", long_quick(12)).await.expect("start");
        assert_eq!(h.result().await.expect("q"), 660);
        park_p(&rt, path, 25).await;
    });
}

/// Starts `p`, a `long_parked(n)`, and closes `rt` once `p` has parked in its `recv`
/// after its `n` steps (their records and the start record of its wait).
async fn park_p(rt: &Runtime, path: &Path, n: u32) {
    rt.start_with_id("p", long_parked(n))
        .await
        .expect("start p");
    while JournalView::open(path)
        .and_then(|v| v.steps("p"))
        .map_or(0, |s| s.len())
        < n as usize
    {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    rt.close().await.expect("close");
}

/// Makes a journal at `path` holding `q`, finished after 3 steps.
fn journal_with_finished_q(path: &Path) {
    tokio().block_on(async {
        let rt = Runtime::open(path).await.expect("open");
        let h = rt.start_with_id("q", long_quick(3)).await.expect("start");
        assert_eq!(h.result().await.expect("q"), 30);
        rt.close().await.expect("close");
    });
}

/// Answers `p`'s wait, and checks the result it then finishes with.
async fn finish_p(rt: &Runtime) {
    rt.send("p", "go", &5u32).await.expect("send");
    let h = rt.handle::<u32>("p").await.expect("handle");
    assert_eq!(h.result().await.expect("p finishes"), 2 * 3000 + 5);
}

fn schema_version(conn: &rusqlite::Connection) -> Vec<String> {
    column(
        conn,
        "SELECT value FROM durable_meta WHERE key = 'schema_version'",
    )
}

/// Migration 6 writes step paths in their sortable form, in the steps, start records
/// and patch markers, moves each intact checksum to the new key and leaves a damaged
/// one damaged; a workflow parked across the upgrade replays its recorded steps (none
/// runs again) and finishes.
#[test]
fn migration_6_sorts_paths_keeps_checksums_and_finishes_pending_work() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    finished_q_and_parked_p(&path);
    let conn = rusqlite::Connection::open(&path).expect("open");
    assert_eq!(
        column(
            &conn,
            "SELECT path FROM durable_started WHERE run = (SELECT run FROM durable_workflows WHERE id = 'p')"
        ),
        ["b26"]
    );
    as_version_5(&conn);
    // Damaged while at version 5: step 11 of q no longer matches its checksum.
    conn.execute_batch(
        "UPDATE durable_steps SET crc32 = crc32 + 1 WHERE workflow_id = 'q' AND path = '11'",
    )
    .expect("damage");
    assert_eq!(
        column(
            &conn,
            "SELECT path FROM durable_steps WHERE workflow_id = 'q' ORDER BY path"
        )[..4],
        ["1", "10", "11", "12"]
    );
    drop(conn);
    let before = BODIES.load(Ordering::SeqCst);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open upgrades");
        let damage = rt.check().await.expect("check");
        let what: Vec<_> = damage.iter().map(|d| d.what.clone()).collect();
        assert_eq!(
            what,
            ["the result of step b11 (count) does not match its checksum"],
            "{damage:?}"
        );
        let steps = rt.steps("p").await.expect("steps");
        let paths: Vec<String> = steps.iter().map(|s| s.path.to_string()).collect();
        let want: Vec<String> = (1..=25).map(|p| p.to_string()).collect();
        assert_eq!(paths, want);
        finish_p(&rt).await;
        rt.close().await.expect("close");
    });
    // The 25 recorded steps replayed; only the 25 after the wait ran.
    assert_eq!(BODIES.load(Ordering::SeqCst) - before, 25);
    let conn = rusqlite::Connection::open(&path).expect("open");
    assert_eq!(schema_version(&conn), ["16"]);
    let application_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .expect("application_id");
    assert_eq!(application_id, 0x6475_7261, "the header names the journal");
    let q = column(
        &conn,
        "SELECT path FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 'q') ORDER BY path",
    );
    let want: Vec<String> = [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "b10", "b11", "b12",
    ]
    .map(String::from)
    .into();
    assert_eq!(q, want);
}

/// Rewrites every checksum of the journal as schema version 4 wrote them (a plain
/// CRC-32 of the value) and sets its version to 4.
fn as_version_4(conn: &rusqlite::Connection) {
    as_version_9(conn);
    as_version_6(conn);
    conn.create_scalar_function(
        "plain_crc",
        1,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |ctx| Ok(i64::from(crc32(&ctx.get::<Vec<u8>>(0)?))),
    )
    .expect("function");
    conn.execute_batch(
        "UPDATE durable_workflows SET input_crc32 = plain_crc(input);
         UPDATE durable_workflows SET output_crc32 = plain_crc(output) WHERE output IS NOT NULL;
         UPDATE durable_steps SET crc32 = plain_crc(COALESCE(output, CAST(error AS BLOB)));
         UPDATE durable_messages SET crc32 = plain_crc(payload);
         UPDATE durable_events SET crc32 = plain_crc(value);
         UPDATE durable_meta SET value = '4' WHERE key = 'schema_version';",
    )
    .expect("back to version 4");
}

/// A damaged index of the messages neither hides a message nor loses it: the open
/// rebuilds the index from the messages. Before, the index said it had no entry, and
/// the `recv` of a message sent before its workflow started waited for ever.
#[test]
fn a_damaged_message_index_hides_no_message() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        rt.send("later", "go", &5u32).await.expect("send");
        rt.close().await.expect("close");
    });
    // The index's root page (its only page, for one entry) says it holds no cell.
    let (page_size, root): (u64, u64) = {
        let conn = rusqlite::Connection::open(&path).expect("open the file");
        (
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .expect("page_size"),
            conn.query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'durable_messages_queue'",
                [],
                |r| r.get(0),
            )
            .expect("the index's root page"),
        )
    };
    let mut bytes = std::fs::read(&path).expect("read the journal");
    let header = usize::try_from((root - 1) * page_size).expect("offset");
    bytes[header + 3] = 0;
    bytes[header + 4] = 0;
    std::fs::write(&path, bytes).expect("damage the index");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("reopen");
        let h = rt.start_with_id("later", parked(3)).await.expect("start");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), h.result())
            .await
            .expect("the message sent before the start was received")
            .expect("result");
        assert_eq!(got, 30 + 40);
        assert!(
            rt.check().await.expect("check").is_empty(),
            "the rebuilt index agrees with the messages"
        );
        rt.close().await.expect("close");
    });
}

/// A reopen right after a close is not refused as `Locked` because another thread is
/// starting a child process: the child shares the journal's locked descriptors until
/// its `exec`. It was, in about one reopen in ten.
#[test]
fn a_reopen_is_not_refused_while_child_processes_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut children = 0u32;
            while !stop.load(Ordering::Relaxed) {
                std::process::Command::new("true")
                    .status()
                    .expect("run true");
                children += 1;
            }
            children
        })
    };
    let locked = tokio().block_on(async {
        let mut locked = 0;
        for _ in 0..200 {
            match Runtime::open(&path).await {
                Ok(rt) => rt.close().await.expect("close"),
                Err(Error::Locked { .. }) => locked += 1,
                Err(e) => panic!("open: {e}"),
            }
        }
        locked
    });
    stop.store(true, Ordering::Relaxed);
    let children = spawner.join().expect("the spawning thread");
    assert!(children > 0, "no child process was started");
    assert_eq!(locked, 0, "{locked} of 200 reopens were refused as Locked");
}

/// A closed runtime leaves its journal whole: the `-wal` checkpointed into the file and
/// deleted. The writing connection must close last for that; when the reader still held
/// its lock, about one close in thirty left the `-wal` (with its commits) behind, and a
/// copy of the file alone, or a later open through another name, missed them.
#[test]
fn a_closed_journal_leaves_no_wal_behind() {
    let _serial = serial();
    for round in 0..200 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        journal_with_pending(&path, 1);
        assert!(
            !dir.path().join("j.db-wal").exists(),
            "close {round} left the -wal behind"
        );
    }
}

/// Finished workflows added to a schema 6 journal by `bulk_finished_at_version_6`.
const BULK: u32 = 100_000;

/// Adds `BULK` finished workflows `bulk-<i>` to a journal at schema 6, each a copy of
/// finished workflow `model` and its first three steps under its own id, with every
/// checksum keyed by that id as durable writes them.
fn bulk_finished_at_version_6(conn: &rusqlite::Connection, model: &str) {
    bulk_finished(conn, model);
    conn.execute(
        "INSERT INTO durable_steps
             (workflow_id, path, name, output, attempts, started_at, finished_at, crc32,
              args_fingerprint)
         SELECT w.id, s.path, s.name, s.output, s.attempts, s.started_at, s.finished_at,
                keyed_crc(s.output, w.id, s.path, s.name), s.args_fingerprint
         FROM durable_workflows w, durable_steps s
         WHERE w.id GLOB 'bulk-*' AND s.workflow_id = ?1 AND s.path IN ('1', '2', '3')",
        [model],
    )
    .expect("bulk steps");
}

/// Adds `BULK` finished workflows `bulk-<i>`, each a copy of finished workflow `model`
/// under its own id, with its checksums keyed by that id as durable writes them (at
/// schema 6 or later: the columns are the same).
fn bulk_finished(conn: &rusqlite::Connection, model: &str) {
    keyed_crc_function(conn);
    let added = conn
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
             INSERT INTO durable_workflows
                 (id, name, status, input, output, executor, created_at, updated_at,
                  input_crc32, output_crc32)
             SELECT 'bulk-' || i, m.name, m.status, m.input, m.output, m.executor,
                    m.created_at + i, m.updated_at + i,
                    keyed_crc(m.input, 'bulk-' || i), keyed_crc(m.output, 'bulk-' || i)
             FROM n, durable_workflows m WHERE m.id = ?1",
            rusqlite::params![model, BULK],
        )
        .expect("bulk workflows");
    assert_eq!(added, BULK as usize);
}

/// Gives `conn` the SQL function `keyed_crc(value, key...)`: a checksum as durable
/// writes it.
fn keyed_crc_function(conn: &rusqlite::Connection) {
    conn.create_scalar_function(
        "keyed_crc",
        -1,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |ctx| {
            let value: Vec<u8> = ctx.get(0)?;
            let parts: Vec<String> = (1..ctx.len())
                .map(|i| ctx.get(i))
                .collect::<rusqlite::Result<_>>()?;
            let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
            Ok(i64::from(keyed(&parts, &value)))
        },
    )
    .expect("keyed_crc");
}

/// Migration 7 numbers every run and keys what was recorded for it by that number: on
/// a journal of 100,000 finished workflows and a parked one, every checksum still
/// matches (each row found its own workflow), runs are numbered in creation order, and
/// the parked workflow replays and finishes.
#[test]
fn migration_7_numbers_runs_keeps_checksums_and_finishes_pending_work() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    finished_q_and_parked_p(&path);
    let conn = rusqlite::Connection::open(&path).expect("open");
    as_version_6(&conn);
    bulk_finished_at_version_6(&conn, "q");
    let steps_before = column(&conn, "SELECT CAST(COUNT(*) AS TEXT) FROM durable_steps");
    drop(conn);

    let before = BODIES.load(Ordering::SeqCst);
    tokio().block_on(async {
        let opened = std::time::Instant::now();
        let rt = Runtime::open(&path).await.expect("open upgrades");
        eprintln!("opened and upgraded in {:?}", opened.elapsed());
        assert_eq!(
            rt.check().await.expect("check"),
            [],
            "no row lost its workflow"
        );
        let bulk = rt.steps("bulk-77777").await.expect("steps");
        let values: Vec<_> = bulk.iter().map(|s| s.path.to_string()).collect();
        assert_eq!(values, ["1", "2", "3"]);
        let h = rt.handle::<u32>("bulk-99999").await.expect("handle");
        assert_eq!(h.result().await.expect("a finished bulk run"), 660);
        finish_p(&rt).await;
        rt.close().await.expect("close");
    });
    // The 25 recorded steps replayed; only the 25 after the wait ran.
    assert_eq!(BODIES.load(Ordering::SeqCst) - before, 25);
    let conn = rusqlite::Connection::open(&path).expect("open");
    assert_eq!(schema_version(&conn), ["16"]);
    let first: Vec<String> = column(
        &conn,
        "SELECT id FROM durable_workflows ORDER BY run LIMIT 3",
    );
    assert_eq!(
        first,
        ["q", "p", "bulk-0"],
        "runs numbered in creation order"
    );
    let after: u64 = column(&conn, "SELECT CAST(COUNT(*) AS TEXT) FROM durable_steps")[0]
        .parse()
        .expect("a count");
    let before: u64 = steps_before[0].parse().expect("a count");
    assert_eq!(
        after,
        before + 26,
        "every step row kept; p's answer and its last 25 steps added"
    );
}

/// A row recorded for a workflow the journal lacks cannot be keyed by a run number:
/// the upgrade refuses the journal with an error that names the row, and changes
/// nothing.
#[test]
fn migration_7_refuses_rows_of_no_workflow_and_changes_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_finished_q(&path);
    let conn = rusqlite::Connection::open(&path).expect("open");
    as_version_6(&conn);
    conn.execute_batch(
        "INSERT INTO durable_started (workflow_id, path, name, started_at)
         VALUES ('ghost', '2', 'count', 0)",
    )
    .expect("an orphan");
    drop(conn);
    let before = std::fs::read(&path).expect("read");
    let err = tokio()
        .block_on(Runtime::open(&path))
        .expect_err("an orphan row refuses the upgrade");
    let Error::Store(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.kind(), StoreErrorKind::Damaged, "{err}");
    assert!(
        err.to_string()
            .contains("start record 2 of workflow `ghost`, which is not in it"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "nothing changed"
    );
}

/// A recovered wait keeps the deadline its start record holds: a damaged one (here an
/// hour earlier, so the wait would time out at once and its workflow go on with
/// `None`) is reported, and the workflow stops instead of taking the wrong branch.
#[test]
fn a_damaged_deadline_is_reported_not_waited_for() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        park_p(&rt, &path, 2).await;
    });
    let conn = rusqlite::Connection::open(&path).expect("open");
    let changed = conn
        .execute(
            "UPDATE durable_started SET wake_at = wake_at - 3600000 WHERE wake_at IS NOT NULL",
            [],
        )
        .expect("damage the deadline");
    assert_eq!(changed, 1, "p's recv parked with its deadline");
    drop(conn);

    let damage = JournalView::open(&path)
        .expect("view")
        .check()
        .expect("check");
    assert!(
        damage.iter().any(|d| d.workflow_id.as_deref() == Some("p")
            && d.what.contains("start record of step 3 (durable::recv)")
            && d.what.contains("does not match its checksum")),
        "{damage:?}"
    );
    let before = BODIES.load(Ordering::SeqCst);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        let h = rt.handle::<u32>("p").await.expect("handle");
        match h.result().await {
            Err(Error::Store(e)) => assert!(e.to_string().contains("checksum"), "{e}"),
            other => panic!("a damaged deadline was waited for: {other:?}"),
        }
        assert_eq!(
            rt.steps("p").await.expect("steps").len(),
            2,
            "nothing recorded"
        );
        rt.close().await.expect("close");
    });
    assert_eq!(BODIES.load(Ordering::SeqCst), before, "no step ran");
}

/// A run's number is never given twice: the rows a workflow deleted by hand leaves
/// behind stay orphans (reported by the check), and never become a new workflow's.
#[test]
fn a_run_number_is_never_given_twice() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_finished_q(&path);
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute("DELETE FROM durable_workflows WHERE id = 'q'", [])
        .expect("delete q's row by hand");
    drop(conn);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        let h = rt.start_with_id("n", long_quick(2)).await.expect("start");
        assert_eq!(h.result().await.expect("n runs its own steps"), 10);
        assert_eq!(rt.steps("n").await.expect("steps").len(), 2);
        let damage = rt.check().await.expect("check");
        assert_eq!(damage.len(), 3, "q's three steps are orphans: {damage:?}");
        assert!(
            damage
                .iter()
                .all(|d| d.workflow_id.is_none() && d.what.contains("belongs to no workflow"))
        );
        rt.close().await.expect("close");
    });
}

/// The objects of an application in the journal's file that name durable's tables.
fn app_objects(conn: &rusqlite::Connection) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare(
            "SELECT type, name FROM sqlite_master
             WHERE name GLOB 'app_*' OR name = 'durable_step_names' ORDER BY type, name",
        )
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

/// An application's indexes and triggers on durable's tables survive the upgrade that
/// rebuilds those tables, and its views (even one named `durable_*`) still read; the
/// trigger goes on firing for new workflows.
#[test]
fn migration_7_keeps_the_applications_indexes_triggers_and_views() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    journal_with_finished_q(&path);
    let conn = rusqlite::Connection::open(&path).expect("open");
    as_version_6(&conn);
    conn.execute_batch(
        "CREATE TABLE app_audit (id TEXT, status TEXT);
         CREATE INDEX app_steps_by_name ON durable_steps (name);
         CREATE TRIGGER app_on_finish AFTER UPDATE OF status ON durable_workflows
         BEGIN INSERT INTO app_audit VALUES (new.id, new.status); END;
         CREATE VIEW app_step_names AS SELECT name FROM durable_steps;
         CREATE VIEW durable_step_names AS SELECT path, name FROM durable_steps;
         CREATE INDEX app_messages_by_time ON durable_messages (sent_at);
         CREATE TRIGGER app_on_message AFTER INSERT ON durable_messages
         BEGIN SELECT 1; END;",
    )
    .expect("the application's objects");
    let before = app_objects(&conn);
    assert_eq!(before.len(), 7, "{before:?}");
    drop(conn);

    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("upgrade");
        let h = rt.start_with_id("q2", long_quick(2)).await.expect("start");
        assert_eq!(h.result().await.expect("q2"), 10);
        rt.close().await.expect("close");
    });
    let conn = rusqlite::Connection::open(&path).expect("open");
    assert_eq!(schema_version(&conn), ["16"]);
    assert_eq!(app_objects(&conn), before);
    let audit: Vec<(String, String)> = conn
        .prepare("SELECT id, status FROM app_audit")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(audit, [("q2".to_owned(), "completed".to_owned())]);
    let names: i64 = conn
        .query_row("SELECT count(*) FROM app_step_names", [], |r| r.get(0))
        .expect("the view reads");
    assert_eq!(names, 3 + 2);
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT * FROM durable_steps WHERE name = 'count'",
            [],
            |r| r.get(3),
        )
        .expect("plan");
    assert!(plan.contains("app_steps_by_name"), "{plan}");
    drop(conn);
    // A view named like durable's objects is the application's too: the journal opens.
    tokio().block_on(async {
        drop(Runtime::open(&path).await.expect("reopen"));
    });
}

/// An application's index, trigger or view that uses a column the upgrade removes
/// refuses the upgrade, naming it and saying what to do; nothing changes.
#[test]
fn migration_7_refuses_an_application_object_that_no_longer_fits() {
    let _serial = serial();
    for (object, named) in [
        (
            "CREATE INDEX app_by_workflow ON durable_steps (workflow_id)",
            "the application's index `app_by_workflow` on durable_steps",
        ),
        (
            "CREATE TRIGGER app_on_step AFTER INSERT ON durable_steps
             BEGIN SELECT new.workflow_id; END",
            "the application's trigger `app_on_step` on durable_steps",
        ),
        (
            "CREATE VIEW app_steps AS SELECT workflow_id, path FROM durable_steps",
            "the application's view `app_steps`",
        ),
        (
            "CREATE VIEW durable_report AS SELECT workflow_id, path FROM durable_steps",
            "the application's view `durable_report`",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        journal_with_finished_q(&path);
        let conn = rusqlite::Connection::open(&path).expect("open");
        as_version_6(&conn);
        conn.execute_batch(object)
            .expect("the application's object");
        drop(conn);
        let before = std::fs::read(&path).expect("read");
        let err = tokio()
            .block_on(Runtime::open(&path))
            .expect_err("the object does not fit");
        let message = err.to_string();
        assert!(
            message.contains(named)
                && message.contains("workflow_id")
                && message.contains("nothing was changed"),
            "{message}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), before, "{object}");
    }
}

/// A workflow deleted by hand with its rows left behind, and the run-number counter
/// reset by hand: the open moves the counter past those rows, so a new workflow never
/// gets the deleted one's number and takes its steps as its own.
#[test]
fn a_reset_run_counter_never_hands_out_a_number_rows_still_carry() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        for (id, n) in [("a", 2), ("b", 3)] {
            let h = rt.start_with_id(id, long_quick(n)).await.expect("start");
            h.result().await.expect("result");
        }
        rt.close().await.expect("close");
    });
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "DELETE FROM durable_workflows WHERE id = 'b';
         DELETE FROM sqlite_sequence;",
    )
    .expect("the hand edits");
    drop(conn);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("reopen");
        let h = rt.start_with_id("c", long_quick(3)).await.expect("start");
        assert_eq!(h.result().await.expect("c runs its own steps"), 30);
        let damage = rt.check().await.expect("check");
        assert!(
            damage
                .iter()
                .any(|d| d.what.contains("of run 2 belongs to no workflow")),
            "{damage:?}"
        );
        rt.close().await.expect("close");
    });
    let conn = rusqlite::Connection::open(&path).expect("open");
    let run: i64 = conn
        .query_row(
            "SELECT run FROM durable_workflows WHERE id = 'c'",
            [],
            |r| r.get(0),
        )
        .expect("c");
    assert_eq!(run, 3);
}

#[workflow]
async fn waits_after_one() -> u32 {
    let a = count(1).await;
    let _: Option<u32> = recv("go", None).await.expect("recv");
    a
}

/// Damage to a page that holds only finished workflows' steps (the last leaf of
/// `durable_steps`) does not refuse the open: the pending workflow recovers and
/// finishes, and `check` reports the damage.
#[test]
fn a_damaged_page_of_finished_steps_does_not_refuse_the_open() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        rt.start_with_id("p", waits_after_one())
            .await
            .expect("start");
        for i in 0..200 {
            let h = rt
                .start_with_id(&format!("q-{i}"), long_quick(5))
                .await
                .expect("start");
            h.result().await.expect("q");
        }
        rt.close().await.expect("close");
    });
    let mut bytes = std::fs::read(&path).expect("read");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let root: usize = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'durable_steps'",
            [],
            |r| r.get(0),
        )
        .expect("root");
    let size: usize = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    drop(conn);
    // From the root down the rightmost child pointers (interior index pages, 0x02) to
    // the last leaf, which holds the steps of the last runs: finished ones.
    let mut page = root;
    while bytes[(page - 1) * size] == 0x02 {
        let at = (page - 1) * size + 8;
        page = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    }
    assert_ne!(page, root, "the table spans more than one page");
    bytes[(page - 1) * size] = 0x07;
    std::fs::write(&path, &bytes).expect("damage");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("the open goes on");
        rt.send("p", "go", &1u32).await.expect("send");
        let h = rt.handle::<u32>("p").await.expect("handle");
        assert_eq!(h.result().await.expect("p finishes"), 10);
        rt.close().await.expect("close");
    });
}

/// The status check of `durable_workflows` as schema 8 wrote it.
const STATUS_CHECK_8: &str = "CHECK (status IN ('pending', 'completed', 'failed', 'cancelled'))";

/// The SQL text SQLite keeps for table `name`.
fn table_sql(conn: &rusqlite::Connection, name: &str) -> String {
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )
    .expect("the table's SQL")
}

/// Replaces the status check of `durable_workflows` (from `CHECK (status` to the
/// parenthesis that closes it) with `check`, in place, as SQLite documents for a
/// changed constraint.
fn set_status_check(conn: &rusqlite::Connection, check: &str) {
    let sql = table_sql(conn, "durable_workflows");
    let start = sql.find("CHECK (status").expect("a status check");
    let mut depth = 0;
    let close = sql[start..]
        .char_indices()
        .find(|&(_, c)| {
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            c == ')' && depth == 0
        })
        .expect("its end")
        .0;
    let end = start + close + 1;
    let sql = format!("{}{check}{}", &sql[..start], &sql[end..]);
    let cookie: i64 = conn
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .expect("cookie");
    conn.execute_batch("PRAGMA writable_schema = ON")
        .expect("writable");
    conn.execute(
        "UPDATE sqlite_master SET sql = ?1 WHERE type = 'table' AND name = 'durable_workflows'",
        [&sql],
    )
    .expect("rewrite");
    conn.execute_batch(&format!(
        "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF;",
        cookie + 1
    ))
    .expect("new cookie");
}

/// Records the schema `conn` holds now as the one its last migration left, as durable
/// does (one line per `durable_*` table or index: its name and the CRC-32 of its SQL).
fn record_schema(conn: &rusqlite::Connection) {
    let record: String = column(
        conn,
        "SELECT name || ' ' || COALESCE(sql, '') FROM sqlite_master
         WHERE type IN ('table', 'index') AND name GLOB 'durable_*' ORDER BY name",
    )
    .iter()
    .map(|line| {
        let (name, sql) = line.split_once(' ').expect("name and SQL");
        format!("{name} {:08x}\n", crc32(sql.as_bytes()))
    })
    .collect();
    conn.execute(
        "UPDATE durable_meta SET value = ?1 WHERE key = 'schema'",
        [record],
    )
    .expect("record the schema");
}

/// Turns a journal back into schema version 8: the status check as the `IN` list it
/// was, and the record of the schema as version 8 left it.
fn as_version_8(conn: &rusqlite::Connection) {
    as_version_9(conn);
    set_status_check(conn, STATUS_CHECK_8);
    record_schema(conn);
    conn.execute_batch("UPDATE durable_meta SET value = '8' WHERE key = 'schema_version'")
        .expect("version 8");
}

/// How many workflows wait in `parked` in `migration_9_...`.
const PARKED_9: u32 = 100;

/// Migration 9 rewrites the status check in place. On a journal of 100,000 finished
/// workflows and 100 parked ones: every row keeps its run number and checksums, the
/// AUTOINCREMENT counter stays, an application's trigger on the table still fires,
/// the table's definition becomes the one a new journal gets, the check still refuses
/// a status durable never writes, and the parked workflows finish.
#[test]
fn migration_9_rewrites_the_status_check_in_place_and_finishes_pending_work() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        let h = rt.start_with_id("q", long_quick(3)).await.expect("start");
        assert_eq!(h.result().await.expect("q"), 30);
        for i in 0..PARKED_9 {
            rt.start_with_id(&format!("w-{i}"), parked(i))
                .await
                .expect("start");
        }
        for i in 0..PARKED_9 {
            while rt.steps(&format!("w-{i}")).await.expect("steps").is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        rt.close().await.expect("close");
    });
    let conn = rusqlite::Connection::open(&path).expect("open");
    bulk_finished(&conn, "q");
    conn.execute_batch(
        "CREATE TABLE app_log (id TEXT, status TEXT);
         CREATE TRIGGER app_status AFTER UPDATE OF status ON durable_workflows
         BEGIN INSERT INTO app_log VALUES (new.id, new.status); END;",
    )
    .expect("the application's trigger");
    as_version_8(&conn);
    assert!(table_sql(&conn, "durable_workflows").contains(STATUS_CHECK_8));
    let runs = |conn: &rusqlite::Connection| {
        column(
            conn,
            "SELECT CAST(COUNT(*) AS TEXT) || ' ' || CAST(SUM(run) AS TEXT) || ' '
                    || (SELECT CAST(seq AS TEXT) FROM sqlite_sequence
                         WHERE name = 'durable_workflows')
             FROM durable_workflows",
        )
    };
    let before = runs(&conn);
    drop(conn);

    let before_bodies = BODIES.load(Ordering::SeqCst);
    tokio().block_on(async {
        let rt = Runtime::open(&path).await.expect("open upgrades");
        assert_eq!(rt.check().await.expect("check"), [], "every checksum holds");
        let h = rt.handle::<u32>("bulk-99999").await.expect("handle");
        assert_eq!(h.result().await.expect("a finished bulk run"), 30);
        for i in 0..PARKED_9 {
            rt.send(&format!("w-{i}"), "go", &1u32).await.expect("send");
        }
        for i in 0..PARKED_9 {
            let h = rt.handle::<u32>(&format!("w-{i}")).await.expect("handle");
            assert_eq!(h.result().await.expect("finishes"), i * 10 + (i + 1) * 10);
        }
        rt.close().await.expect("close");
    });
    // Each parked workflow replayed its first step and ran only its second.
    assert_eq!(
        BODIES.load(Ordering::SeqCst) - before_bodies,
        PARKED_9 as usize
    );

    let conn = rusqlite::Connection::open(&path).expect("open");
    assert_eq!(schema_version(&conn), ["16"]);
    assert_eq!(runs(&conn), before, "rows, run numbers and counter kept");
    let fresh = dir.path().join("fresh.db");
    tokio().block_on(async {
        Runtime::open(&fresh)
            .await
            .expect("new")
            .close()
            .await
            .expect("close");
    });
    let fresh = rusqlite::Connection::open(&fresh).expect("open");
    assert_eq!(
        table_sql(&conn, "durable_workflows"),
        table_sql(&fresh, "durable_workflows"),
        "an upgraded journal's table is a new journal's"
    );
    assert!(!table_sql(&conn, "durable_workflows").contains(" IN ("));
    assert_eq!(
        column(
            &conn,
            "SELECT CAST(COUNT(*) AS TEXT) FROM app_log WHERE status = 'completed'"
        ),
        [PARKED_9.to_string()],
        "the application's trigger fired for each finish"
    );
    let refused = conn
        .execute(
            "UPDATE durable_workflows SET status = 'paused' WHERE id = 'q'",
            [],
        )
        .expect_err("a status durable never writes");
    assert!(
        refused.to_string().contains("CHECK constraint failed"),
        "{refused}"
    );
}

/// A journal at schema 8 changed by hand is refused by the upgrade, with an error that
/// says what changed, and left as it was: the upgrade must not record the change as
/// the schema of version 9. A status check changed by hand is refused even where the
/// record of the schema was changed to match it.
#[test]
fn migration_9_refuses_a_schema_changed_by_hand_and_changes_nothing() {
    let _serial = serial();
    let cases: [(&str, &str, bool, &str); 3] = [
        (
            "an index dropped, another added",
            "DROP INDEX durable_messages_queue;
             CREATE INDEX durable_steps_junk ON durable_steps (name);",
            false,
            "durable_messages_queue is missing, durable_steps_junk was added",
        ),
        (
            "the status check widened",
            "",
            false,
            "the definition of durable_workflows was changed",
        ),
        (
            "the status check widened, and the record to match",
            "",
            true,
            "durable_workflows does not have the status check schema 8 made",
        ),
    ];
    for (case, sql, rerecord, says) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.db");
        tokio().block_on(async {
            let rt = Runtime::open(&path).await.expect("open");
            let h = rt.start_with_id("q", long_quick(2)).await.expect("start");
            assert_eq!(h.result().await.expect("q"), 10);
            rt.close().await.expect("close");
        });
        let conn = rusqlite::Connection::open(&path).expect("open");
        as_version_8(&conn);
        if sql.is_empty() {
            set_status_check(
                &conn,
                "CHECK (status IN ('pending', 'completed', 'failed', 'cancelled', 'paused'))",
            );
        } else {
            conn.execute_batch(sql).expect(case);
        }
        if rerecord {
            record_schema(&conn);
        }
        let schema = column(
            &conn,
            "SELECT name || ' ' || COALESCE(sql, '') FROM sqlite_master ORDER BY name",
        );
        let meta = column(
            &conn,
            "SELECT key || ' ' || value FROM durable_meta ORDER BY key",
        );
        drop(conn);
        let err = tokio()
            .block_on(Runtime::open(&path))
            .err()
            .unwrap_or_else(|| panic!("{case}: refused"));
        let Error::Store(e) = &err else {
            panic!("{case}: {err:?}")
        };
        assert_eq!(e.kind(), StoreErrorKind::Damaged, "{case}: {err}");
        assert!(err.to_string().contains(says), "{case}: {err}");
        let conn = rusqlite::Connection::open(&path).expect("open");
        assert_eq!(schema_version(&conn), ["8"], "{case}");
        assert_eq!(
            column(
                &conn,
                "SELECT name || ' ' || COALESCE(sql, '') FROM sqlite_master ORDER BY name"
            ),
            schema,
            "{case}: the schema is as it was"
        );
        assert_eq!(
            column(
                &conn,
                "SELECT key || ' ' || value FROM durable_meta ORDER BY key"
            ),
            meta,
            "{case}: the record is as it was"
        );
    }
}

/// Turns a journal back into schema version 9: no queues (version 10). Does nothing
/// to one that is older already.
fn as_version_9(conn: &rusqlite::Connection) {
    as_version_10(conn);
    let has_queues: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('durable_workflows')
             WHERE name = 'queue_state'",
            [],
            |r| r.get(0),
        )
        .expect("columns");
    if !has_queues {
        return;
    }
    conn.execute_batch(
        "DROP TABLE IF EXISTS durable_queues;
         DROP INDEX IF EXISTS durable_queue_waiting;
         DROP INDEX IF EXISTS durable_queue_running;
         DROP INDEX IF EXISTS durable_queue_held;
         DROP INDEX IF EXISTS durable_queue_starts;
         DROP INDEX IF EXISTS durable_queue_dedup;
         ALTER TABLE durable_workflows DROP COLUMN dispatched_at;
         ALTER TABLE durable_workflows DROP COLUMN timeout_ms;
         ALTER TABLE durable_workflows DROP COLUMN not_before;
         ALTER TABLE durable_workflows DROP COLUMN dedup_id;
         ALTER TABLE durable_workflows DROP COLUMN partition_key;
         ALTER TABLE durable_workflows DROP COLUMN priority;
         ALTER TABLE durable_workflows DROP COLUMN queue_state;
         UPDATE durable_meta SET value = '9' WHERE key = 'schema_version';",
    )
    .expect("version 9");
    record_schema(conn);
}

/// Turns a journal back into schema version 15: no replay marks (version 16). Does
/// nothing to one that is older already.
fn as_version_15(conn: &rusqlite::Connection) {
    let has_replays: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('durable_workflows')
             WHERE name = 'replays'",
            [],
            |r| r.get(0),
        )
        .expect("columns");
    if !has_replays {
        return;
    }
    conn.execute_batch(
        "ALTER TABLE durable_workflows DROP COLUMN replays;
         UPDATE durable_meta SET value = '15' WHERE key = 'schema_version';",
    )
    .expect("version 15");
    record_schema(conn);
}

/// Turns a journal back into schema version 14: no `start` commands (version 15).
/// Does nothing to one that is older already.
fn as_version_14(conn: &rusqlite::Connection) {
    as_version_15(conn);
    let version: String = conn
        .query_row(
            "SELECT value FROM durable_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    if version.parse::<u32>().expect("a number") < 15 {
        return;
    }
    conn.execute_batch(
        "DROP TABLE durable_commands;
         CREATE TABLE durable_commands (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL CHECK (kind IN ('send', 'cancel', 'resume', 'fork')),
        workflow_id TEXT NOT NULL,
        topic       TEXT,
        payload     BLOB,
        from_step   TEXT,
        new_id      TEXT,
        crc32       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        applied_at  INTEGER,
        outcome     TEXT
    ) STRICT;
    CREATE INDEX durable_commands_waiting ON durable_commands (seq) WHERE applied_at IS NULL;
         UPDATE durable_meta SET value = '14' WHERE key = 'schema_version';",
    )
    .expect("version 14");
    record_schema(conn);
}

/// Turns a journal back into schema version 13: no forks (version 14). Does nothing to
/// one that is older already.
fn as_version_13(conn: &rusqlite::Connection) {
    as_version_14(conn);
    let has_forks: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('durable_workflows')
             WHERE name = 'forked_from'",
            [],
            |r| r.get(0),
        )
        .expect("columns");
    if !has_forks {
        return;
    }
    conn.execute_batch(
        "ALTER TABLE durable_workflows DROP COLUMN forked_from;
         DROP TABLE durable_commands;
         CREATE TABLE durable_commands (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT NOT NULL CHECK (kind IN ('send', 'cancel', 'resume')),
        workflow_id TEXT NOT NULL,
        topic       TEXT,
        payload     BLOB,
        crc32       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        applied_at  INTEGER,
        outcome     TEXT
    ) STRICT;
    CREATE INDEX durable_commands_waiting ON durable_commands (seq) WHERE applied_at IS NULL;
         UPDATE durable_meta SET value = '13' WHERE key = 'schema_version';",
    )
    .expect("version 13");
    record_schema(conn);
}

/// Turns a journal back into schema version 12: no attempt times (version 13). Does
/// nothing to one that is older already.
fn as_version_12(conn: &rusqlite::Connection) {
    as_version_13(conn);
    let has_times: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('durable_steps')
             WHERE name = 'attempt_times'",
            [],
            |r| r.get(0),
        )
        .expect("columns");
    if !has_times {
        return;
    }
    conn.execute_batch(
        "ALTER TABLE durable_steps DROP COLUMN attempt_times;
         UPDATE durable_meta SET value = '12' WHERE key = 'schema_version';",
    )
    .expect("version 12");
    record_schema(conn);
}

/// Turns a journal back into schema version 11: no command table (version 12). Does
/// nothing to one that is older already.
fn as_version_11(conn: &rusqlite::Connection) {
    as_version_12(conn);
    let has_commands: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'durable_commands'",
            [],
            |r| r.get(0),
        )
        .expect("tables");
    if !has_commands {
        return;
    }
    conn.execute_batch(
        "DROP TABLE durable_commands;
         UPDATE durable_meta SET value = '11' WHERE key = 'schema_version';",
    )
    .expect("version 11");
    record_schema(conn);
}

/// Turns a journal back into schema version 10: no schedules (version 11). Does
/// nothing to one that is older already.
fn as_version_10(conn: &rusqlite::Connection) {
    as_version_11(conn);
    let has_schedules: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'durable_schedules'",
            [],
            |r| r.get(0),
        )
        .expect("tables");
    if !has_schedules {
        return;
    }
    conn.execute_batch(
        "DROP TABLE durable_schedules;
         UPDATE durable_meta SET value = '10' WHERE key = 'schema_version';",
    )
    .expect("version 10");
    record_schema(conn);
}
