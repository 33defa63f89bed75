//! `JournalView`: a read-only look at a journal that a runtime in another process holds.
//! The view takes no lock (and creates no lock file), writes nothing, does not keep a
//! runtime out, and reads what had committed, down to the last commit of a process
//! killed with SIGKILL. A damaged value is an error, never another value.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use durable_runtime::{
    Durability, Error, FailureKind, JournalView, RecordedStatus, Runtime, StoreErrorKind, recv,
    set_event, start_child, step, workflow,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    sku: String,
    qty: u32,
}

fn order() -> Order {
    Order {
        sku: "tea".into(),
        qty: 2,
    }
}

#[step]
async fn price(order: Order) -> u64 {
    u64::from(order.qty) * 250
}

#[workflow]
async fn pack(order: Order) -> String {
    format!("a box of {} {}", order.qty, order.sku)
}

#[workflow]
async fn checkout(order: Order) -> u64 {
    let cents = price(order.clone()).await;
    let child = start_child(pack(order)).await.expect("start the child");
    child.result().await.expect("the child's result");
    set_event("total", &cents).await.expect("set the event");
    cents
}

#[workflow]
async fn approval(order: Order) -> bool {
    set_event("state", &format!("waiting for {}", order.sku))
        .await
        .expect("set the event");
    // Nobody sends this: the run stays parked here.
    let answer: Option<bool> = recv("approve", None).await.expect("recv");
    answer.unwrap_or(false)
}

#[step]
async fn tick(i: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    i
}

/// Commits a step every 20 ms, for as long as its process lives.
#[workflow]
async fn ticker() -> u32 {
    let mut i = 0;
    loop {
        let n = tick(i).await;
        if std::env::var_os(HOLDER_ENV).is_some() {
            // Printed once the step's record has committed.
            println!("HOLDER-TICK {n}");
        }
        i += 1;
    }
}

#[step]
async fn weigh(grams: u32) -> u32 {
    if grams > 1000 {
        panic!("the scale broke");
    }
    grams
}

#[workflow]
async fn broken() -> u32 {
    weigh(5000).await
}

const HOLDER_ENV: &str = "DURABLE_TEST_VIEW_HOLDER";

/// Run by the parent test in a second process: opens the journal it is given, leaves
/// it in a known state (a finished checkout with a child, a run parked in `recv`, two
/// queued messages, a run committing a step every 20 ms), prints `HOLDER-READY`, and
/// holds the journal until it is killed (or its parent goes away). Does nothing when
/// run normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_process() {
    let Some(path) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    // The parent keeps our stdin open; if it dies without killing us, we follow.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let rt = Runtime::builder(Path::new(&path))
        .durability(Durability::Normal)
        .app_version("v7")
        .open()
        .await
        .expect("the holder opens the journal");
    let pause = || tokio::time::sleep(Duration::from_millis(5));
    let done = rt
        .start_with_id("checkout-1", checkout(order()))
        .await
        .expect("start checkout");
    assert_eq!(done.result().await.expect("checkout"), 500);
    pause().await;
    rt.start_with_id("approval-1", approval(order()))
        .await
        .expect("start approval");
    // Its event is set just before its `recv` parks.
    rt.get_event::<String>("approval-1", "state", Duration::from_secs(30))
        .await
        .expect("get the event")
        .expect("the event is set");
    rt.send("approval-1", "notes", &"fragile".to_owned())
        .await
        .expect("send");
    rt.send("nobody", "mail", &42u32).await.expect("send");
    pause().await;
    rt.start_with_id("ticker-1", ticker())
        .await
        .expect("start ticker");
    println!("HOLDER-READY");
    std::future::pending::<()>().await;
}

/// The holder process and what it printed.
struct Holder {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The highest tick the holder printed (so committed).
    last_tick: Option<u32>,
}

impl Holder {
    fn spawn(path: &Path) -> Holder {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "holder_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_ENV, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the holder");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print `test <name> ... ` before the test's own output.
                if let Some(i) = line.find("HOLDER-")
                    && tx.send(line[i..].to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Holder {
            child,
            lines,
            last_tick: None,
        }
    }

    /// Waits for the line `HOLDER-READY`, noting the ticks printed before it.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == "HOLDER-READY" => return,
                Ok(line) => self.note(&line),
                Err(e) => panic!(
                    "the holder never got ready ({e}); it exited: {:?}",
                    self.child.try_wait()
                ),
            }
        }
    }

    fn note(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("HOLDER-TICK ") {
            let n: u32 = n.parse().expect("a tick number");
            self.last_tick = self.last_tick.max(Some(n));
        }
    }

    /// Kills the holder with SIGKILL (on Unix; `TerminateProcess` elsewhere) and returns
    /// the highest tick it printed, which had committed.
    fn kill(&mut self) -> Option<u32> {
        self.child.kill().expect("kill the holder");
        self.child.wait().expect("reap the holder");
        // Its stdout is closed now: every line it printed is in the channel.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.note(&line);
        }
        self.last_tick
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A view can be shared between threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<JournalView>();
};

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[tokio::test]
async fn a_view_reads_a_journal_another_process_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let lock = with_suffix(&path, ".lock");
    let mut holder = Holder::spawn(&path);
    holder.wait_ready();
    assert!(lock.exists(), "the holder locks the journal");

    let view = JournalView::open(&path).expect("a view opens while another process holds it");
    assert_eq!(view.path(), path);

    // Every run, oldest first.
    let runs = view.workflows().expect("workflows");
    let ids: Vec<&str> = runs.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(
        [ids[0], ids[2], ids[3]],
        ["checkout-1", "approval-1", "ticker-1"]
    );

    let checkout = &runs[0];
    assert_eq!(checkout.name, "checkout");
    assert_eq!(checkout.status, RecordedStatus::Completed);
    assert_eq!(checkout.input::<(Order,)>().expect("input").0, order());
    assert_eq!(checkout.output::<u64>().expect("output"), Some(500));
    assert_eq!(checkout.parent_id, None);
    assert_eq!(checkout.app_version.as_deref(), Some("v7"));
    let finished = checkout.finished_at_ms.expect("finished");
    assert!(finished >= checkout.created_at_ms);
    assert_eq!(checkout.failure_message, None);
    // Another type is refused, never decoded into something else.
    assert!(
        matches!(checkout.input::<u64>(), Err(Error::Incompatible { .. })),
        "{:?}",
        checkout.input::<u64>()
    );

    let child = &runs[1];
    assert_eq!(child.name, "pack");
    assert_eq!(child.parent_id.as_deref(), Some("checkout-1"));
    assert_eq!(
        child.output::<String>().expect("output").as_deref(),
        Some("a box of 2 tea")
    );

    let approval = &runs[2];
    assert_eq!(approval.status, RecordedStatus::Pending);
    assert_eq!(approval.finished_at_ms, None);
    assert_eq!(approval.output::<bool>().expect("no output"), None);
    assert_eq!(
        view.workflow("approval-1").expect("workflow").as_ref(),
        Some(approval)
    );
    assert_eq!(view.workflow("nope").expect("workflow"), None);

    // Steps, events and messages, decoded by type.
    let steps = view.steps("checkout-1").expect("steps");
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"price"), "{names:?}");
    assert_eq!(steps[0].path.to_string(), "1");
    assert_eq!(steps[0].output::<u64>().expect("output"), 500);
    assert!(!steps[0].panicked);
    assert!(steps[0].arguments_fingerprint().is_some());
    assert!(view.steps("nope").expect("steps").is_empty());

    let events = view.events("checkout-1").expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key, "total");
    assert_eq!(events[0].value::<u64>().expect("value"), 500);
    let events = view.events("approval-1").expect("events");
    assert_eq!(
        events[0].value::<String>().expect("value"),
        "waiting for tea"
    );

    let messages = view.messages().expect("messages");
    let queued: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.destination.as_str(), m.topic.as_str()))
        .collect();
    assert_eq!(queued, [("approval-1", "notes"), ("nobody", "mail")]);
    assert_eq!(messages[0].value::<String>().expect("value"), "fragile");
    assert_eq!(messages[1].value::<u32>().expect("value"), 42);
    assert!(messages[0].sent_at_ms <= messages[1].sent_at_ms);

    // The holder still holds the journal: the view took nothing from it.
    let refused = Runtime::open(&path).await.expect_err("the holder holds it");
    assert!(matches!(refused, Error::Locked { .. }), "{refused:?}");

    // And it still commits, with the view open between reads.
    let before = view.steps("ticker-1").expect("steps").len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while view.steps("ticker-1").expect("steps").len() < before + 3 {
        assert!(Instant::now() < deadline, "the holder stopped committing");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        holder.child.try_wait().expect("holder status").is_none(),
        "the holder is alive"
    );

    // Killed, the holder leaves what it committed, which the same view and a new one read.
    let last_tick = holder.kill().expect("the holder printed ticks");
    let ticks = view.steps("ticker-1").expect("steps after the kill");
    assert!(
        ticks.len() > last_tick as usize,
        "tick {last_tick} had committed; the view reads {} ticks",
        ticks.len()
    );
    for (i, step) in ticks.iter().enumerate() {
        assert_eq!(step.output::<u32>().expect("tick"), i as u32);
    }
    let fresh = JournalView::open(&path).expect("a new view after the kill");
    assert_eq!(fresh.steps("ticker-1").expect("steps"), ticks);
    assert_eq!(
        fresh.workflows().expect("workflows"),
        view.workflows().expect("workflows")
    );
    assert_eq!(fresh.messages().expect("messages"), messages);
    drop((view, fresh));

    // Nobody holds the journal now, so its lock file can go: a view does not create it
    // again, and does not change the journal (nor fold its WAL into it when it closes).
    std::fs::remove_file(&lock).expect("remove the lock file");
    let journal = std::fs::read(&path).expect("journal");
    assert!(
        with_suffix(&path, "-wal").exists(),
        "a view folded the killed holder's WAL into the journal: it wrote"
    );
    let wal = std::fs::read(with_suffix(&path, "-wal")).expect("the killed holder's WAL");
    {
        let view = JournalView::open(&path).expect("view");
        assert_eq!(view.steps("ticker-1").expect("steps"), ticks);
        view.workflows().expect("workflows");
        view.messages().expect("messages");
        view.events("checkout-1").expect("events");
        assert!(!lock.exists(), "the view created the lock file");
    }
    assert!(!lock.exists(), "the view created the lock file");
    assert!(
        std::fs::read(&path).expect("journal") == journal,
        "the view changed the journal"
    );
    assert!(
        std::fs::read(with_suffix(&path, "-wal")).expect("WAL") == wal,
        "the view changed the WAL"
    );

    // An open view does not keep a runtime out: it recovers the holder's runs.
    let view = JournalView::open(&path).expect("view");
    let rt = common::reopen(&path).await;
    assert!(rt.recovered().contains(&"ticker-1".to_owned()));
    rt.close().await.expect("close");
    assert!(view.workflows().expect("workflows after the runtime").len() >= 4);
}

#[tokio::test]
async fn a_view_refuses_what_is_not_a_journal_of_this_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = |path: &Path| match JournalView::open(path) {
        Ok(_) => panic!("{} opened as a journal", path.display()),
        Err(Error::Store(e)) => {
            assert_eq!(e.path(), path);
            (e.kind(), Error::Store(e).to_string())
        }
        Err(other) => panic!("expected a store error, got {other:?}"),
    };
    let no_lock = |path: &Path| assert!(!with_suffix(path, ".lock").exists());

    // No file: the view does not create one.
    let missing = dir.path().join("missing.db");
    let (kind, message) = refused(&missing);
    assert_eq!(kind, StoreErrorKind::Io);
    assert!(message.contains("no journal at this path"), "{message}");
    assert!(message.contains("Runtime::open creates one"), "{message}");
    assert!(!missing.exists());
    no_lock(&missing);

    let (kind, message) = refused(dir.path());
    assert_eq!(kind, StoreErrorKind::NotAJournal);
    assert!(message.contains("this is a directory"), "{message}");

    // A file that is not a database is left as it was.
    let notes = dir.path().join("notes.txt");
    let content = b"these are my notes, not a database. ".repeat(200);
    std::fs::write(&notes, &content).expect("write");
    let (kind, message) = refused(&notes);
    assert_eq!(kind, StoreErrorKind::NotAJournal);
    assert!(message.contains("not a durable journal"), "{message}");
    assert_eq!(std::fs::read(&notes).expect("read"), content);
    no_lock(&notes);

    // A database of someone else's.
    let other = dir.path().join("other.db");
    common::sql(&other, "CREATE TABLE t (x INTEGER)", []);
    let (kind, message) = refused(&other);
    assert_eq!(kind, StoreErrorKind::NotAJournal);
    assert!(message.contains("not a durable journal"), "{message}");

    // A journal of another schema version: a view upgrades nothing.
    let journal = dir.path().join("shop.db");
    Runtime::open(&journal)
        .await
        .expect("create")
        .close()
        .await
        .expect("close");
    JournalView::open(&journal).expect("the current version opens");
    let set_version = |v: &str| {
        common::sql(
            &journal,
            "UPDATE durable_meta SET value = ?1 WHERE key = 'schema_version'",
            [v],
        );
    };
    set_version("3");
    let (kind, message) = refused(&journal);
    assert_eq!(kind, StoreErrorKind::Io);
    assert!(
        message.contains("open it once with Runtime::open (which upgrades it)"),
        "{message}"
    );
    set_version("99");
    let (kind, message) = refused(&journal);
    assert_eq!(kind, StoreErrorKind::NewerSchema);
    assert!(message.contains("upgrade durable-runtime"), "{message}");

    // A view opened earlier notices an upgrade at its next read.
    set_version("16");
    let view = JournalView::open(&journal).expect("view");
    set_version("17");
    let err = view.workflows().expect_err("upgraded under the view");
    assert!(
        matches!(&err, Error::Store(e) if e.kind() == StoreErrorKind::NewerSchema),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_damaged_value_is_an_error_never_another_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let rt = Runtime::builder(&path)
        .durability(Durability::Normal)
        .open()
        .await
        .expect("open");
    let h = rt
        .start_with_id("checkout-1", checkout(order()))
        .await
        .expect("start");
    h.result().await.expect("checkout");
    let h = rt.start_with_id("broken-1", broken()).await.expect("start");
    h.result().await.expect_err("a step panicked");
    rt.send("nobody", "mail", &42u32).await.expect("send");
    rt.close().await.expect("close");

    // A panicked step and its failed run read as what they recorded.
    let view = JournalView::open(&path).expect("view");
    let failed = view.workflow("broken-1").expect("read").expect("recorded");
    assert_eq!(failed.status, RecordedStatus::Failed);
    assert_eq!(failed.failure_kind, Some(FailureKind::StepPanicked));
    assert!(
        failed
            .failure_message
            .as_deref()
            .is_some_and(|m| m.contains("the scale broke")),
        "{failed:?}"
    );
    let steps = view.steps("broken-1").expect("steps");
    assert!(steps[0].panicked);
    assert!(matches!(
        steps[0].output::<u32>(),
        Err(Error::Failed {
            kind: FailureKind::StepPanicked,
            ..
        })
    ));

    // Each checksum off by one: the bytes still decode, and must not be returned.
    for sql in [
        "UPDATE durable_workflows SET input_crc32 = input_crc32 + 1, \
         output_crc32 = output_crc32 + 1 WHERE id = 'checkout-1'",
        "UPDATE durable_steps SET crc32 = crc32 + 1 WHERE run = (SELECT run FROM durable_workflows WHERE id = 'checkout-1') AND path = '1'",
        "UPDATE durable_events SET crc32 = crc32 + 1",
        "UPDATE durable_messages SET crc32 = crc32 + 1",
    ] {
        common::sql(&path, sql, []);
    }
    let view = JournalView::open(&path).expect("a damaged journal still opens");
    let run = view
        .workflow("checkout-1")
        .expect("read")
        .expect("recorded");
    for (what, result) in [
        ("input", run.input::<(Order,)>().map(drop)),
        ("output", run.output::<u64>().map(drop)),
    ] {
        assert!(
            matches!(result, Err(Error::Corrupt { .. })),
            "{what}: {result:?}"
        );
    }
    let steps = view
        .steps("checkout-1")
        .expect("the other steps still read");
    assert!(
        matches!(steps[0].output::<u64>(), Err(Error::Corrupt { .. })),
        "{:?}",
        steps[0].output::<u64>()
    );
    assert_eq!(steps[0].output_fingerprint(), None);
    let events = view.events("checkout-1").expect("events");
    assert!(
        matches!(events[0].value::<u64>(), Err(Error::Corrupt { .. })),
        "{:?}",
        events[0].value::<u64>()
    );
    let messages = view.messages().expect("messages");
    let err = messages[0].value::<u32>().expect_err("damaged");
    assert!(
        matches!(&err, Error::Store(e) if e.kind() == StoreErrorKind::Invariant),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("does not match its checksum"),
        "{err}"
    );
    // The runs and values the damage did not touch still read.
    let child = view
        .workflows()
        .expect("workflows")
        .into_iter()
        .find(|w| w.parent_id.as_deref() == Some("checkout-1"))
        .expect("the child");
    assert_eq!(
        child.output::<String>().expect("output").as_deref(),
        Some("a box of 2 tea")
    );
}

#[tokio::test]
async fn a_view_of_a_closed_journal_writes_nothing_and_takes_no_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let lock = with_suffix(&path, ".lock");
    let rt = Runtime::open(&path).await.expect("create");
    rt.start_with_id("checkout-1", checkout(order()))
        .await
        .expect("start")
        .result()
        .await
        .expect("checkout");
    rt.close().await.expect("close");
    // Closed: nobody holds the lock file, which can go.
    std::fs::remove_file(&lock).expect("remove the lock file");
    let journal = std::fs::read(&path).expect("journal");
    let wal = with_suffix(&path, "-wal");
    let wal_before = std::fs::read(&wal).ok();

    let view = JournalView::open(&path).expect("view");
    let run = view.workflow("checkout-1").expect("read");
    let run = run.expect("recorded");
    assert_eq!(run.output::<u64>().expect("output"), Some(500));
    assert_eq!(view.workflows().expect("workflows").len(), 2);
    view.steps("checkout-1").expect("steps");
    view.events("checkout-1").expect("events");
    view.messages().expect("messages");
    assert!(!lock.exists(), "the view created the lock file");
    drop(view);

    assert!(!lock.exists(), "the view created the lock file");
    assert!(
        std::fs::read(&path).expect("journal") == journal,
        "the view changed the journal"
    );
    // Like any reader of a WAL database, the view may have created the shared-memory
    // index and an empty WAL, owner-only like the journal; they hold nothing.
    match (&wal_before, std::fs::read(&wal).ok()) {
        (Some(before), after) => {
            assert_eq!(after.as_ref(), Some(before), "the view changed the WAL");
        }
        (None, after) => assert!(after.is_none_or(|w| w.is_empty()), "the view wrote a WAL"),
    }
    #[cfg(unix)]
    for suffix in ["-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let file = with_suffix(&path, suffix);
        if let Ok(meta) = std::fs::metadata(&file) {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
        }
    }

    // A runtime opens beside an open view (which holds no lock), and the view reads
    // what it commits.
    let view = JournalView::open(&path).expect("view");
    let rt = Runtime::open(&path)
        .await
        .expect("a view does not keep a runtime out");
    rt.send("nobody", "mail", &42u32).await.expect("send");
    let messages = view.messages().expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].value::<u32>().expect("value"), 42);
    rt.close().await.expect("close");
}
