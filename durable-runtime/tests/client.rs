//! `Client` and listings: commands recorded while no runtime holds the journal are
//! applied at the next open, in order and once; a damaged command is refused; and
//! `list` pages agree with a model of the journal for generated queries.

use std::path::Path;
use std::time::Duration;

use durable_runtime::{
    Client, Delivery, Error, ListQuery, Order, RecordedStatus, Runtime, recv, workflow,
};
use proptest::prelude::*;

/// Waits for a number on `go`.
#[workflow]
async fn cl_gate() -> u32 {
    recv::<u32>("go", None).await.ok().flatten().unwrap_or(0)
}

#[workflow]
async fn cl_done(n: u32) -> u32 {
    n
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

#[test]
fn commands_recorded_while_down_are_applied_at_the_open_in_order_and_once() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("journal.db");
    runtime().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        rt.start_with_id("g", cl_gate()).await.expect("start");
        rt.start_with_id("c", cl_gate()).await.expect("start");
        rt.close().await.expect("close");

        let client = Client::open(&path).expect("client");
        assert_eq!(client.send("g", "go", &1u32).await.expect("send"), Delivery::Recorded);
        assert_eq!(client.send("g", "go", &2u32).await.expect("send"), Delivery::Recorded);
        assert_eq!(client.cancel("c").await.expect("cancel"), Delivery::Recorded);
        // A third message, whose row is then damaged: it must not be sent.
        assert_eq!(client.send("g", "go", &3u32).await.expect("send"), Delivery::Recorded);
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute(
            "UPDATE durable_commands SET crc32 = crc32 + 1 WHERE seq = (SELECT max(seq) FROM durable_commands)",
            [],
        )
        .expect("damage");
        // Nothing is applied while no runtime holds the journal.
        assert!(client.messages().expect("messages").is_empty());
        assert_eq!(
            client.workflow("c").expect("read").expect("c").status,
            RecordedStatus::Pending
        );

        let rt = Runtime::open(&path).await.expect("reopen");
        let g = rt.handle::<u32>("g").await.expect("handle");
        assert_eq!(g.result().await.expect("g"), 1);
        let c = rt.handle::<u32>("c").await.expect("handle");
        assert!(matches!(c.result().await, Err(Error::Cancelled { .. })));
        // The damaged command comes after them: wait until it has an outcome too.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while conn
            .query_row(
                "SELECT count(*) FROM durable_commands WHERE applied_at IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .expect("count")
            > 0
        {
            assert!(std::time::Instant::now() < deadline, "commands never applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rt.close().await.expect("close");

        // The second message waits, once; the damaged one was never sent.
        let waiting: Vec<u32> = client
            .messages()
            .expect("messages")
            .iter()
            .map(|m| m.value::<u32>().expect("value"))
            .collect();
        assert_eq!(waiting, [2]);
        let outcomes: Vec<String> = conn
            .prepare("SELECT outcome FROM durable_commands ORDER BY seq")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(outcomes[..3], ["ok", "ok", "ok"]);
        assert!(outcomes[3].starts_with("damaged:"), "{}", outcomes[3]);

        // Opening again applies nothing twice.
        let rt = Runtime::open(&path).await.expect("reopen");
        rt.close().await.expect("close");
        assert_eq!(client.messages().expect("messages").len(), 1);
    });
}

/// Waits until workflow `id` is completed, and answers its output.
async fn completed(client: &Client, id: &str) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(w) = client.workflow(id).expect("read")
            && w.status == RecordedStatus::Completed
        {
            return w.output::<u32>().expect("output").expect("an output");
        }
        assert!(std::time::Instant::now() < deadline, "{id} never completed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client starts a workflow by name: recorded while no runtime holds the journal
/// and started at the next open, or started at once by the runtime that holds it;
/// exactly once per id. A name the program lacks, an input that is not the
/// workflow's arguments, and an id another workflow has are refused, and start
/// nothing.
#[test]
fn a_client_starts_workflows_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("journal.db");
    runtime().block_on(async {
        Runtime::open(&path).await.expect("open").close().await.expect("close");
        let client = Client::open(&path).expect("client");
        assert_eq!(
            client.start("cl_done", "s1", &(7u32,)).await.expect("start"),
            Delivery::Recorded
        );
        assert!(client.workflow("s1").expect("read").is_none());
        let rt = Runtime::open(&path).await.expect("open");
        assert_eq!(completed(&client, "s1").await, 7);

        assert_eq!(
            client.start("cl_done", "s2", &(8u32,)).await.expect("start"),
            Delivery::Applied
        );
        assert_eq!(completed(&client, "s2").await, 8);
        // Again: nothing more happens.
        assert_eq!(
            client.start("cl_done", "s2", &(9u32,)).await.expect("again"),
            Delivery::Applied
        );
        assert_eq!(completed(&client, "s2").await, 8);

        let unknown = client.start("nope", "s3", &()).await;
        assert!(
            matches!(&unknown, Err(Error::UnknownWorkflow { name, .. }) if name == "nope"),
            "{unknown:?}"
        );
        let wrong = client.start("cl_done", "s4", &("seven".to_owned(),)).await;
        assert!(
            matches!(&wrong, Err(Error::Command { reason, .. }) if reason.contains("does not decode")),
            "{wrong:?}"
        );
        let taken = client.start("cl_gate", "s2", &()).await;
        assert!(matches!(taken, Err(Error::WorkflowMismatch { .. })), "{taken:?}");
        for id in ["s3", "s4"] {
            assert!(client.workflow(id).expect("read").is_none(), "{id} was started");
        }
        rt.close().await.expect("close");
    });
}

#[test]
fn a_client_refuses_what_it_cannot_do_and_records_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("missing.db");
    let e = Client::open(&missing).expect_err("no journal");
    assert!(e.to_string().contains("no journal"), "{e}");
    assert!(!missing.exists(), "a client must not create a journal");
    let e = Client::open("postgres://localhost/db").expect_err("postgres");
    assert!(e.to_string().contains("PostgreSQL"), "{e}");

    let path = dir.path().join("journal.db");
    runtime().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        let done = rt.start_with_id("done", cl_done(4)).await.expect("start");
        done.result().await.expect("done");
        let client = Client::open(&path).expect("client");
        assert!(matches!(
            client.cancel("nobody").await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            client.resume("done").await,
            Err(Error::NotResumable { .. })
        ));
        assert!(matches!(
            client.send("", "go", &1u32).await,
            Err(Error::InvalidId { .. })
        ));
        // Applied by the owner, which refuses it: a resume of a pending workflow.
        rt.start_with_id("g", cl_gate()).await.expect("start");
        assert!(matches!(
            client.resume("g").await,
            Err(Error::NotResumable {
                status: "pending",
                ..
            })
        ));
        // Cancelling a finished workflow does nothing, and says it was applied.
        assert_eq!(
            client.cancel("done").await.expect("cancel"),
            Delivery::Applied
        );
        assert_eq!(
            client.workflow("done").expect("read").expect("done").status,
            RecordedStatus::Completed
        );
        rt.close().await.expect("close");
    });
}

/// A workflow the property test starts: how it ends.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Done,
    Waiting,
    Cancelled,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Done),
        Just(Shape::Waiting),
        Just(Shape::Cancelled)
    ]
}

/// A query: status, name, order, page size, and a start-time window by position.
#[derive(Debug, Clone)]
struct Q {
    status: Option<RecordedStatus>,
    name: Option<&'static str>,
    oldest_first: bool,
    limit: usize,
    window: Option<(usize, usize)>,
}

fn query() -> impl Strategy<Value = Q> {
    let status = prop_oneof![
        Just(None),
        Just(Some(RecordedStatus::Pending)),
        Just(Some(RecordedStatus::Completed)),
        Just(Some(RecordedStatus::Cancelled)),
        Just(Some(RecordedStatus::Failed)),
    ];
    let name = prop_oneof![Just(None), Just(Some("cl_done")), Just(Some("cl_gate"))];
    (
        status,
        name,
        any::<bool>(),
        1usize..8,
        proptest::option::of((0usize..24, 0usize..24)),
    )
        .prop_map(|(status, name, oldest_first, limit, window)| Q {
            status,
            name,
            oldest_first,
            limit,
            window,
        })
}

/// Makes the runs `shapes` describe in the journal `path`, then checks that each of
/// `queries`, paged through a client, lists exactly what a model of them says.
fn lists_agree_with_a_model(
    path: &Path,
    shapes: &[Shape],
    queries: Vec<Q>,
) -> Result<(), TestCaseError> {
    let started: Vec<(String, &'static str, RecordedStatus)> = runtime().block_on(async {
        let rt = Runtime::open(path).await.expect("open");
        let mut started = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            let id = format!("w{i}");
            let entry = match s {
                Shape::Done => {
                    rt.start_with_id(&id, cl_done(i as u32))
                        .await
                        .expect("start")
                        .result()
                        .await
                        .expect("done");
                    (id, "cl_done", RecordedStatus::Completed)
                }
                Shape::Waiting => {
                    rt.start_with_id(&id, cl_gate()).await.expect("start");
                    (id, "cl_gate", RecordedStatus::Pending)
                }
                Shape::Cancelled => {
                    rt.start_with_id(&id, cl_gate()).await.expect("start");
                    rt.cancel(&id).await.expect("cancel");
                    (id, "cl_gate", RecordedStatus::Cancelled)
                }
            };
            started.push(entry);
            // Distinct start times, for the windows.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rt.close().await.expect("close");
        started
    });
    let client = Client::open(path).expect("client");
    let created: Vec<i64> = started
        .iter()
        .map(|(id, ..)| {
            client
                .workflow(id)
                .expect("read")
                .expect("there")
                .created_at_ms
        })
        .collect();
    for q in queries {
        let mut query = ListQuery::new().limit(q.limit);
        if let Some(s) = q.status {
            query = query.status(s);
        }
        if let Some(n) = q.name {
            query = query.name(n);
        }
        if q.oldest_first {
            query = query.order(Order::OldestFirst);
        }
        let mut window = None;
        if let Some((a, b)) = q.window
            && !created.is_empty()
        {
            let from = created[a % created.len()];
            let to = created[b % created.len()];
            query = query
                .started_after(std::time::UNIX_EPOCH + Duration::from_millis(from as u64))
                .started_before(std::time::UNIX_EPOCH + Duration::from_millis(to as u64));
            window = Some((from, to));
        }
        let mut expected: Vec<&str> = started
            .iter()
            .zip(&created)
            .filter(|((_, name, status), at)| {
                q.status.is_none_or(|s| s == *status)
                    && q.name.is_none_or(|n| n == *name)
                    && window.is_none_or(|(from, to)| **at >= from && **at < to)
            })
            .map(|((id, ..), _)| id.as_str())
            .collect();
        if !q.oldest_first {
            expected.reverse();
        }
        let mut listed = Vec::new();
        let mut page = client.list(&query).expect("list");
        loop {
            prop_assert!(page.workflows.len() <= q.limit);
            listed.extend(page.workflows.iter().map(|w| w.id.clone()));
            match page.next {
                Some(c) => {
                    prop_assert_eq!(
                        c.to_string()
                            .parse::<durable_runtime::Cursor>()
                            .expect("cursor"),
                        c
                    );
                    page = client.list(&query.clone().after(c)).expect("list");
                }
                None => break,
            }
        }
        prop_assert_eq!(listed, expected, "{:?}", q);
    }
    // The counts by status agree too.
    let counts = client.counts().expect("counts");
    for (status, n) in counts {
        let model = started.iter().filter(|(_, _, s)| *s == status).count() as u64;
        prop_assert_eq!(n, model, "{}", status);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn list_pages_agree_with_a_model(shapes in proptest::collection::vec(shape(), 0..24), queries in proptest::collection::vec(query(), 1..6)) {
        let dir = tempfile::tempdir().expect("dir");
        lists_agree_with_a_model(&dir.path().join("journal.db"), &shapes, queries)?;
    }

    #[cfg(all(feature = "postgres", feature = "testkit"))]
    #[test]
    fn list_pages_agree_with_a_model_on_postgres(shapes in proptest::collection::vec(shape(), 0..24), queries in proptest::collection::vec(query(), 1..6)) {
        lists_agree_with_a_model(&postgres_journal(), &shapes, queries)?;
    }
}

/// A new PostgreSQL journal's URL: a schema no other test uses.
#[cfg(all(feature = "postgres", feature = "testkit"))]
fn postgres_journal() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let server = durable_runtime::testkit::postgres_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let sep = if server.contains('?') { '&' } else { '?' };
    std::path::PathBuf::from(format!(
        "{server}{sep}schema=client_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

#[test]
fn a_client_refuses_a_replaced_file_and_other_names() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("journal.db");
    runtime().block_on(async {
        let rt = Runtime::open(&path).await.expect("open");
        rt.start_with_id("g", cl_gate()).await.expect("start");
        rt.close().await.expect("close");
        let client = Client::open(&path).expect("client");
        assert_eq!(
            client.send("g", "go", &1u32).await.expect("send"),
            Delivery::Recorded
        );

        // Another journal put in its place (a restore): the client's commands would go
        // to the old file; it refuses them, and the new journal gets nothing.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let rt = Runtime::open(&path).await.expect("new journal");
        rt.start_with_id("g", cl_gate()).await.expect("start");
        let e = client.send("g", "go", &2u32).await.expect_err("replaced");
        assert!(e.to_string().contains("replaced"), "{e}");
        assert!(client.cancel("g").await.is_err());
        rt.close().await.expect("close");
        assert!(
            Client::open(&path)
                .expect("client")
                .messages()
                .expect("read")
                .is_empty()
        );

        // A second name of the file (a hard link) is refused: writing through it would
        // use another WAL than the runtime's.
        let link = dir.path().join("link.db");
        std::fs::hard_link(&path, &link).expect("link");
        let e = Client::open(&link).expect_err("hard link");
        assert!(e.to_string().contains("hard links"), "{e}");
        let e = Client::open(&path).expect_err("hard link");
        assert!(e.to_string().contains("hard links"), "{e}");
    });
}

/// Waits for `f`, failing the test (rather than hanging it) if it takes a minute.
#[cfg(all(feature = "postgres", feature = "testkit"))]
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done in 20 s"))
}

/// A client of a PostgreSQL journal applies its commands itself, and the runtimes
/// sharing the journal act on them at once: a message wakes the run parked for it, a
/// cancel ends a parked run, and a resumed or forked workflow is claimed (the runtime
/// here has a long lease, so only the claim the client asks for is soon enough).
#[cfg(all(feature = "postgres", feature = "testkit"))]
#[test]
fn a_client_steers_the_runtimes_of_a_postgres_journal() {
    let url = postgres_journal();
    runtime().block_on(async {
        let missing = Client::open(&url).expect_err("no journal yet");
        assert!(
            matches!(&missing, Error::Store(e) if e.kind() == durable_runtime::StoreErrorKind::NotAJournal),
            "{missing:?}"
        );
        let rt = Runtime::builder(&url)
            .lease(Duration::from_secs(60))
            .open()
            .await
            .expect("open");
        let client = Client::open(&url).expect("client");

        // send wakes the parked recv.
        let first = rt.start_with_id("p1", cl_gate()).await.expect("start");
        assert_eq!(client.send("p1", "go", &5u32).await.expect("send"), Delivery::Applied);
        assert_eq!(within("p1", first.result()).await.expect("p1"), 5);
        let steps = client.steps("p1").expect("steps");
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(client.workflow("p1").expect("read").expect("p1").output::<u32>().expect("output"), Some(5));

        // cancel ends the parked run; resume hands it back to the runtime.
        let second = rt.start_with_id("p2", cl_gate()).await.expect("start");
        assert_eq!(client.cancel("p2").await.expect("cancel"), Delivery::Applied);
        assert!(matches!(within("p2", second.result()).await, Err(Error::Cancelled { .. })));
        assert_eq!(client.resume("p2").await.expect("resume"), Delivery::Applied);
        assert!(matches!(
            client.resume("p2").await,
            Err(Error::NotResumable { status: "pending", .. })
        ));
        assert_eq!(client.send("p2", "go", &9u32).await.expect("send"), Delivery::Applied);
        let again = rt.handle::<u32>("p2").await.expect("handle");
        assert_eq!(within("p2 resumed", again.result()).await.expect("p2"), 9);

        // fork: made by the client, claimed and run by the runtime; the recv (step 1)
        // is copied.
        assert_eq!(client.fork("p1", "2", "p1-fork").await.expect("fork"), Delivery::Applied);
        assert_eq!(client.fork("p1", "2", "p1-fork").await.expect("again"), Delivery::Applied);
        let fork = rt.handle::<u32>("p1-fork").await.expect("handle");
        assert_eq!(within("fork", fork.result()).await.expect("fork"), 5);
        assert_eq!(
            client.workflow("p1-fork").expect("read").expect("fork").forked_from.as_deref(),
            Some("p1")
        );

        // Refusals change nothing.
        assert!(matches!(client.cancel("nobody").await, Err(Error::NotFound { .. })));
        assert!(matches!(client.resume("p1").await, Err(Error::NotResumable { status: "completed", .. })));
        assert!(matches!(client.fork("p2", "1", "p1-fork").await, Err(Error::IdTaken { .. })));
        assert!(matches!(client.fork("p1", "x", "p1-x").await, Err(Error::InvalidId { .. })));
        assert!(client.workflow("p1-x").expect("read").is_none());

        // start by name: recorded by the client, claimed and run by the runtime.
        assert_eq!(client.start("cl_done", "p3", &(4u32,)).await.expect("start"), Delivery::Applied);
        let started = rt.handle::<u32>("p3").await.expect("handle");
        assert_eq!(within("p3", started.result()).await.expect("p3"), 4);
        assert_eq!(client.start("cl_done", "p3", &(5u32,)).await.expect("again"), Delivery::Applied);
        assert!(matches!(client.start("cl_gate", "p3", &()).await, Err(Error::WorkflowMismatch { .. })));

        // A message for a workflow not started waits, and reads back.
        client.send("later", "go", &3u32).await.expect("send");
        let waiting = client.messages().expect("messages");
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].destination, "later");
        assert_eq!(waiting[0].value::<u32>().expect("value"), 3);

        // gc takes the finished runs, and leaves the rest.
        let report = client.gc(Duration::ZERO).await.expect("gc");
        assert_eq!(report.workflows, 4, "{report:?}");
        assert!(client.list(&ListQuery::new()).expect("list").workflows.is_empty());
        rt.close().await.expect("close");
    });
}
