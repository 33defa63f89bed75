//! Replay never lies: each test pins one defect found by using durable as a new user
//! would, and fails on the code before it was fixed.
//!
//! 1. Ordinary values were refused: a step returning 128 small `u64`s failed to record
//!    (the decode limit counted decoded bytes against the row's size).
//! 2. A changed type decoded into another value: `7u32` read as an `i32` gave `-4`, and a
//!    variant added in front turned a recorded `Approved` into `Pending`.
//! 3. Replay ignored a step's arguments: the same step asked for at a recorded path with
//!    other arguments got the old output (a `HashMap` iterated in another order).
//! 4. `Runtime::handle` returned a value that failed its checksum.
//! 5. Work escaped the journal without a word: a plain helper's steps in `tokio::spawn`
//!    ran unrecorded, `Runtime::start` inside a body started a workflow on every replay,
//!    and a user workflow with a child-shaped id was adopted as a parent's child.
//! 6. Reopening a journal right after its runtime was dropped returned `Locked`, and
//!    there was no `close` to wait on.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use durable_runtime::{
    Codec, Durability, Error, Location, Runtime, StoreErrorKind, step, workflow,
};
use serde::{Deserialize, Serialize};

async fn open(path: &Path) -> Runtime {
    open_with(path, Codec::default()).await
}

async fn open_with(path: &Path, codec: Codec) -> Runtime {
    Runtime::builder(path)
        .durability(Durability::Off)
        .codec(codec)
        .open()
        .await
        .expect("open")
}

/// Runs `call` as workflow `id` to its end, then makes the journal look as if the
/// process had died after its first `keep` steps: the next open replays those.
async fn run_then_rewind<O>(
    path: &Path,
    codec: Codec,
    id: &str,
    call: durable_runtime::WorkflowCall<O>,
    keep: u32,
) -> O
where
    O: Serialize + serde::de::DeserializeOwned,
{
    let rt = open_with(path, codec).await;
    let out = rt
        .start_with_id(id, call)
        .await
        .expect("start")
        .result()
        .await
        .expect("the first run finishes");
    rt.close().await.expect("close");
    common::make_pending(path, id);
    common::sql(
        path,
        "DELETE FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = ?1) AND CAST(path AS INTEGER) > ?2",
        rusqlite::params![id, keep],
    );
    out
}

// ---------------------------------------------------------------------------------------
// 1. Ordinary values record.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    qty: u32,
    price_cents: u64,
}

#[step]
async fn small_numbers(n: u64) -> Vec<u64> {
    (0..n).map(|i| i % 100).collect()
}

#[step]
async fn lines(n: u32) -> Vec<Line> {
    (0..n)
        .map(|i| Line {
            sku: format!("sku-{i}"),
            qty: i % 7,
            price_cents: u64::from(i) * 3,
        })
        .collect()
}

#[step]
async fn counts(n: u64) -> HashMap<String, u64> {
    (0..n).map(|i| (format!("key-{i}"), i)).collect()
}

#[workflow]
async fn ordinary(input: Vec<Line>) -> (usize, usize, usize, Vec<Line>) {
    let a = small_numbers(128).await;
    let b = lines(100).await;
    let c = counts(100).await;
    (a.len(), b.len(), c.len(), input)
}

#[tokio::test]
async fn ordinary_values_are_recorded_and_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let input: Vec<Line> = (0..100)
        .map(|i| Line {
            sku: format!("in-{i}"),
            qty: i,
            price_cents: 5,
        })
        .collect();
    let rt = open(&path).await;
    let h = rt
        .start_with_id("o", ordinary(input.clone()))
        .await
        .expect("start");
    let out = h.result().await.expect("recorded");
    assert_eq!(out, (128, 100, 100, input.clone()));
    // The same values as messages, from outside.
    rt.send("somebody", "lines", &input)
        .await
        .expect("a message of 100 structs");
    rt.close().await.expect("close");

    // Replayed from the journal, every value decodes.
    common::make_pending(&path, "o");
    let rt = open(&path).await;
    let again = rt.handle::<(usize, usize, usize, Vec<Line>)>("o").await;
    assert_eq!(
        again.expect("handle").result().await.expect("replayed"),
        out
    );
}

// ---------------------------------------------------------------------------------------
// 2. A changed type is an error, never another value. Two "deploys" of one workflow in
// one test binary: v1 records, the journal row is renamed to v2's workflow, v2 resumes.

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum StatusV1 {
    Pending,
    Approved,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum StatusV2 {
    Draft,
    Pending,
    Approved,
}

#[step(name = "grade")]
async fn grade_v1() -> u32 {
    7
}

#[step(name = "grade")]
async fn grade_v2() -> i32 {
    -1
}

#[step(name = "review")]
async fn review_v1() -> StatusV1 {
    StatusV1::Approved
}

#[step(name = "review")]
async fn review_v2() -> StatusV2 {
    StatusV2::Draft
}

#[step]
async fn gate() -> u8 {
    0
}

#[workflow]
async fn graded_v1() -> String {
    let g = grade_v1().await;
    let r = review_v1().await;
    gate().await;
    format!("{g} {r:?}")
}

#[workflow]
async fn graded_v2() -> String {
    let g = grade_v2().await;
    let r = review_v2().await;
    gate().await;
    format!("{g} {r:?}")
}

/// Records `graded_v1` up to its last step, then hands the run to `graded_v2`.
async fn deploy_v2(path: &Path, codec: Codec) -> Result<String, Error> {
    run_then_rewind(path, codec, "g", graded_v1(), 2).await;
    common::sql(
        path,
        "UPDATE durable_workflows SET name = 'graded_v2' WHERE id = 'g'",
        [],
    );
    let rt = open(path).await;
    rt.handle::<String>("g").await?.result().await
}

#[tokio::test]
async fn a_type_changed_under_a_pending_workflow_resumes_with_the_recorded_values() {
    // u32 -> i32 for a value that fits, and a variant added in front: the default codec
    // reads the recorded 7 and `Approved`.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = deploy_v2(&dir.path().join("j.db"), Codec::Cbor).await;
    assert_eq!(out.expect("compatible"), "7 Approved");
}

#[tokio::test]
async fn under_bincode_a_changed_type_is_an_error_naming_the_step_and_the_type() {
    // bincode cannot follow these changes; before, it read `-4` and `Pending`.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let err = deploy_v2(&path, Codec::Bincode)
        .await
        .expect_err("not a wrong value");
    match &err {
        Error::Incompatible {
            workflow_id,
            location: Location::Step { path, name },
            type_name,
            ..
        } => {
            assert_eq!(workflow_id, "g");
            assert_eq!((path.to_string(), name.as_str()), ("1".into(), "grade"));
            assert_eq!(type_name, "i32");
        }
        other => panic!("expected Error::Incompatible, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("the recorded output of step 1 (`grade`) does not decode as `i32`"),
        "{text}"
    );
    assert!(text.contains("stays pending"), "{text}");
}

// ---------------------------------------------------------------------------------------
// 3. Replay compares arguments.

static ARGUMENT: AtomicU32 = AtomicU32::new(1);
static PRICE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn price(sku: String, qty: u32) -> u64 {
    PRICE_RUNS.fetch_add(1, Ordering::SeqCst);
    u64::from(qty) * 100 + sku.len() as u64
}

#[step]
async fn pause() -> u8 {
    0
}

#[workflow]
async fn prices() -> u64 {
    // Wrong on purpose: an argument from outside the workflow's input.
    let qty = ARGUMENT.load(Ordering::SeqCst);
    let p = price("tea".into(), qty).await;
    pause().await;
    p
}

#[tokio::test]
async fn a_step_asked_for_with_other_arguments_diverges_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    run_then_rewind(&path, Codec::Cbor, "p", prices(), 1).await;
    let before = common::dump(&path, "durable_steps");
    let runs = PRICE_RUNS.load(Ordering::SeqCst);

    ARGUMENT.store(2, Ordering::SeqCst);
    let rt = open(&path).await;
    let err = rt
        .handle::<u64>("p")
        .await
        .expect("handle")
        .result()
        .await
        .expect_err("other arguments");
    match &err {
        Error::Divergence {
            workflow_id,
            path,
            recorded,
            requested,
            arguments: Some(a),
            ..
        } => {
            assert_eq!(workflow_id, "p");
            assert_eq!(path.to_string(), "1");
            assert_eq!(
                (recorded.as_str(), requested.as_deref()),
                ("price", Some("price"))
            );
            assert_ne!(a.recorded, a.requested);
            assert_eq!(a.requested_preview, r#"("tea", 2)"#);
        }
        other => panic!("expected a divergence on arguments, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("at step 1: `price` was recorded with other arguments"),
        "{text}"
    );
    assert!(
        text.contains(r#"the code passes now, ("tea", 2)"#),
        "{text}"
    );
    rt.close().await.expect("close");
    assert_eq!(common::dump(&path, "durable_steps"), before);
    assert_eq!(PRICE_RUNS.load(Ordering::SeqCst), runs, "nothing ran again");
    ARGUMENT.store(1, Ordering::SeqCst);
}

#[step]
async fn charge_item(sku: String, cents: u64) -> u64 {
    sku.len() as u64 * 1_000 + cents
}

#[workflow]
async fn charges_each_entry() -> Vec<u64> {
    // Wrong on purpose: one step per entry, in the map's iteration order, which is
    // another one in every process (and every map).
    let cart: HashMap<String, u64> = (1..=24).map(|i| (format!("sku-{i}"), i)).collect();
    let mut out = Vec::new();
    for (sku, cents) in &cart {
        out.push(charge_item(sku.clone(), *cents).await);
    }
    out
}

#[tokio::test]
async fn a_hash_map_iterated_in_another_order_on_replay_diverges_instead_of_mixing_results() {
    // Before: after a crash the recovered run got `[1, 1, 2, 2, 3, 5]` where the
    // uninterrupted one got `[1, 2, 3, 4, 5, 6]`.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    // A crash after 12 of the 24 steps.
    let straight = run_then_rewind(&path, Codec::Cbor, "h", charges_each_entry(), 12).await;
    let rt = open(&path).await;
    match rt
        .handle::<Vec<u64>>("h")
        .await
        .expect("handle")
        .result()
        .await
    {
        // The new map happened to iterate the same way: then the result is right.
        Ok(replayed) => assert_eq!(replayed, straight),
        Err(Error::Divergence {
            arguments: Some(_), ..
        }) => {}
        Err(other) => panic!("expected a divergence, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// 4. Every read checks the checksum.

#[workflow]
async fn answer() -> u64 {
    42
}

#[tokio::test]
async fn a_handle_refuses_an_output_that_fails_its_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    rt.start_with_id("a", answer())
        .await
        .expect("start")
        .result()
        .await
        .expect("runs");
    rt.close().await.expect("close");
    // Flip one bit of the value (42 = 0x18 0x2a in CBOR): still a valid number.
    let output: Vec<u8> = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row(
            "SELECT output FROM durable_workflows WHERE id = 'a'",
            [],
            |r| r.get(0),
        )
        .expect("output");
    let mut damaged = output.clone();
    *damaged.last_mut().expect("a byte") ^= 1;
    common::sql(
        &path,
        "UPDATE durable_workflows SET output = ?1 WHERE id = 'a'",
        [damaged],
    );
    let rt = open(&path).await;
    for err in [
        rt.handle::<u64>("a")
            .await
            .expect("handle")
            .result()
            .await
            .expect_err("damaged"),
        rt.start_with_id("a", answer()).await.expect_err("damaged"),
    ] {
        assert!(
            matches!(&err, Error::Corrupt { workflow_id, location: Location::Output, .. } if workflow_id == "a"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("does not match its checksum"),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. Work that would escape the journal is refused.

static UNRECORDED: AtomicUsize = AtomicUsize::new(0);

/// Only the plain helper below calls this one (tests run in parallel: a shared counter
/// would count the other tests' calls).
#[step]
async fn notify_unrecorded(n: u64) -> u64 {
    UNRECORDED.fetch_add(1, Ordering::SeqCst);
    n
}

#[step]
async fn notify(n: u64) -> u64 {
    n
}

/// A plain async helper (no `#[branch]`): its steps are called when it is first polled.
async fn plain_helper(n: u64) -> u64 {
    notify_unrecorded(n).await + notify_unrecorded(n + 1).await
}

#[workflow]
async fn spawns_a_plain_helper() -> u64 {
    tokio::spawn(plain_helper(1)).await.unwrap_or_default()
}

#[tokio::test]
async fn a_step_in_a_spawned_plain_helper_is_refused_not_run_unrecorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let err = rt
        .start_with_id("s", spawns_a_plain_helper())
        .await
        .expect("start")
        .result()
        .await
        .expect_err("refused");
    match &err {
        Error::Unrecorded {
            workflow_id,
            operation,
            ..
        } => {
            assert_eq!(workflow_id, "s");
            assert_eq!(operation, "step `notify_unrecorded`");
        }
        other => panic!("expected Error::Unrecorded, got {other:?}"),
    }
    assert!(err.to_string().contains("#[branch]"), "{err}");
    assert_eq!(UNRECORDED.load(Ordering::SeqCst), 0, "no step body ran");
}

static UNRECORDED_ELSEWHERE: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn notify_elsewhere(n: u64) -> u64 {
    UNRECORDED_ELSEWHERE.fetch_add(1, Ordering::SeqCst);
    n
}

async fn other_plain_helper(n: u64) -> u64 {
    notify_elsewhere(n).await
}

type BoxedJob = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

/// An object-safe spawner, the shape of `opentelemetry`'s: it takes a boxed future.
trait Spawner {
    fn spawn(&self, job: BoxedJob) -> tokio::task::JoinHandle<u64>;
}

struct Tokio;

impl Spawner for Tokio {
    fn spawn(&self, job: BoxedJob) -> tokio::task::JoinHandle<u64> {
        tokio::spawn(job)
    }
}

#[workflow]
async fn spawns_through_the_type() -> u64 {
    let mut set = tokio::task::JoinSet::new();
    let s = &mut set;
    tokio::task::JoinSet::spawn(s, other_plain_helper(1));
    tokio::task::JoinSet::spawn(s, other_plain_helper(2));
    let mut total = 0;
    while let Some(v) = set.join_next().await {
        total += v.unwrap_or_default();
    }
    total
}

/// A spawner called as an associated function, with the future its one argument.
struct Background;

impl Background {
    fn spawn<F>(job: F) -> tokio::task::JoinHandle<u64>
    where
        F: std::future::Future<Output = u64> + Send + 'static,
    {
        tokio::spawn(job)
    }
}

#[workflow]
async fn spawns_through_an_associated_function() -> u64 {
    Background::spawn(other_plain_helper(5))
        .await
        .unwrap_or_default()
}

#[workflow]
async fn spawns_boxed() -> u64 {
    let job: BoxedJob = Box::pin(other_plain_helper(3));
    let a = Tokio.spawn(job);
    let b = Tokio.spawn(Box::pin(other_plain_helper(4)));
    a.await.unwrap_or_default() + b.await.unwrap_or_default()
}

#[tokio::test]
async fn a_step_spawned_through_a_type_or_in_a_box_is_refused_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    for (id, call) in [
        ("ufcs", spawns_through_the_type()),
        ("associated", spawns_through_an_associated_function()),
        ("boxed", spawns_boxed()),
    ] {
        let err = rt
            .start_with_id(id, call)
            .await
            .expect("start")
            .result()
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, Error::Unrecorded { operation, .. } if operation == "step `notify_elsewhere`"),
            "{id}: {err:?}"
        );
    }
    assert_eq!(
        UNRECORDED_ELSEWHERE.load(Ordering::SeqCst),
        0,
        "no step body ran"
    );
}

#[durable_runtime::branch]
async fn branch_helper(n: u64) -> u64 {
    notify(n).await + notify(n + 1).await
}

#[workflow]
async fn spawns_branches() -> u64 {
    let a = tokio::spawn(branch_helper(10));
    let b = tokio::spawn(async { notify(20).await });
    let mut set = tokio::task::JoinSet::new();
    set.spawn(branch_helper(30));
    let c = set
        .join_next()
        .await
        .and_then(Result::ok)
        .unwrap_or_default();
    a.await.unwrap_or_default() + b.await.unwrap_or_default() + c
}

#[tokio::test]
async fn spawned_branches_are_recorded_like_any_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let h = rt
        .start_with_id("b", spawns_branches())
        .await
        .expect("start");
    assert_eq!(h.result().await.expect("runs"), 21 + 20 + 61);
    let paths: Vec<String> = rt
        .steps("b")
        .await
        .expect("steps")
        .iter()
        .map(|s| s.path.to_string())
        .collect();
    assert_eq!(paths, ["1.1", "1.2", "2.1", "3.1", "3.2"]);
}

/// The runtime the workflow below reaches through a global, as service code does.
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

#[workflow]
async fn starts_another() -> String {
    let Some(rt) = RUNTIME.get() else {
        return "no runtime".into();
    };
    match rt.start(answer()).await {
        Ok(_) => "started".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn runtime_start_inside_a_workflow_body_is_refused_with_what_to_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = RUNTIME.get_or_init(|| {
        // A runtime that outlives this test's tokio runtime would keep the journal
        // locked; this one is only used here.
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Runtime::new()
                    .expect("tokio")
                    .block_on(Runtime::open(&path))
                    .expect("open")
            })
            .join()
            .expect("thread")
        })
    });
    let message = rt
        .start_with_id("outer", starts_another())
        .await
        .expect("start")
        .result()
        .await
        .expect("runs");
    assert!(
        message.contains("`Runtime::start` was called in a workflow body"),
        "{message}"
    );
    assert!(message.contains("start_child"), "{message}");
    rt.close().await.expect("close");
    let workflows = common::dump(&path, "durable_workflows");
    assert_eq!(workflows.len(), 1, "only the outer workflow: {workflows:?}");
}

#[workflow]
async fn greet(who: String) -> String {
    format!("hello {who}")
}

#[workflow]
async fn parent() -> Result<String, String> {
    greet("from the parent".into())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_parent_never_adopts_a_workflow_that_has_its_childs_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    // A workflow of the user's, of the very workflow `pd` calls as its first child,
    // under the id that child would take. Before, `pd` returned this one's result.
    rt.start_with_id("pd/1", greet("a stranger".into()))
        .await
        .expect("any id may be started")
        .result()
        .await
        .expect("runs");
    let err = rt
        .start_with_id("pd", parent())
        .await
        .expect("start")
        .result()
        .await
        .expect_err("not adopted");
    assert!(
        matches!(&err, Error::ChildIdTaken { workflow_id, parent_id } if workflow_id == "pd/1" && parent_id == "pd"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("a workflow that is not its child already has that id"),
        "{err}"
    );
    // The same with the stranger found in the journal at the next open.
    rt.close().await.expect("close");
    common::make_pending(&path, "pd");
    common::sql(
        &path,
        "DELETE FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = 'pd')",
        [],
    );
    let rt = open(&path).await;
    let err = rt
        .handle::<Result<String, String>>("pd")
        .await
        .expect("handle")
        .result()
        .await;
    assert!(matches!(err, Err(Error::ChildIdTaken { .. })), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// 6. Orderly shutdown.

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn slow_step(n: u64) -> u64 {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    n
}

#[workflow]
async fn slow_then_wait() -> Option<u64> {
    let n = slow_step(5).await;
    durable_runtime::recv::<u64>("more", None)
        .await
        .ok()
        .flatten()
        .map(|m| m + n)
}

#[tokio::test]
async fn reopening_right_after_close_always_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    for i in 0..40 {
        let rt = open(&path).await;
        rt.start_with_id(format!("n{i}"), answer())
            .await
            .expect("start");
        rt.close().await.expect("close");
    }
    let rt = open(&path).await;
    assert_eq!(
        rt.handle::<u64>("n39")
            .await
            .expect("handle")
            .result()
            .await
            .expect("finished"),
        42
    );
}

#[tokio::test]
async fn close_lets_a_running_step_finish_and_checkpoint_then_releases_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    let h = rt
        .start_with_id("c", slow_then_wait())
        .await
        .expect("start");
    // Let the step body start, then close while it runs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    rt.close().await.expect("close");
    assert!(matches!(h.result().await, Err(Error::Stopped { .. })));
    assert!(matches!(
        rt.start(answer()).await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        rt.send("c", "more", &1u64).await,
        Err(Error::Closed { .. })
    ));
    let runs = SLOW_RUNS.load(Ordering::SeqCst);

    // The step's checkpoint committed before the close returned: the reopened run
    // replays it and waits for the message.
    let rt = open(&path).await;
    assert_eq!(rt.recovered(), ["c"]);
    rt.send("c", "more", &1u64).await.expect("send");
    let out = rt
        .handle::<Option<u64>>("c")
        .await
        .expect("handle")
        .result()
        .await;
    assert_eq!(out.expect("finished"), Some(6));
    assert_eq!(
        SLOW_RUNS.load(Ordering::SeqCst),
        runs,
        "the step did not run again"
    );
    rt.close().await.expect("close");
    rt.close().await.expect("closing twice does nothing");
    assert!(matches!(
        rt.steps("c").await,
        Err(Error::Store(e)) if e.kind() == StoreErrorKind::Closed
    ));
}

#[tokio::test]
async fn a_step_that_outlasts_the_grace_period_is_dropped_and_runs_again_at_the_next_open() {
    #[step]
    async fn endless() -> u8 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        1
    }
    #[workflow]
    async fn stuck() -> u8 {
        endless().await
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    let h = rt.start_with_id("e", stuck()).await.expect("start");
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.close_with_grace(Duration::from_millis(50))
        .await
        .expect("close");
    assert!(matches!(h.result().await, Err(Error::Stopped { .. })));
    let rt = open(&path).await;
    assert_eq!(rt.recovered(), ["e"]);
    rt.close_with_grace(Duration::ZERO).await.expect("close");
}

#[tokio::test]
async fn a_close_its_caller_stops_waiting_for_still_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    rt.start_with_id("c", slow_then_wait())
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The caller gives up at once; the close goes on in its own task, and releases the
    // journal although nobody waits for it (the runtime handle is still alive).
    let gave_up = tokio::time::timeout(Duration::from_millis(1), rt.close()).await;
    assert!(gave_up.is_err(), "the step takes longer than that");
    drop(common::try_reopen(&path).await.expect("released"));
    rt.close().await.expect("the same close, done");
}

#[workflow]
async fn waits_on_a_runtime_that_goes() -> Option<u64> {
    durable_runtime::recv::<u64>("never", None)
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_close_after_a_run_lost_its_tokio_runtime_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    // Started from another tokio runtime, which then ends: the run's task is dropped
    // with it, without an outcome.
    let other = rt.clone();
    std::thread::spawn(move || {
        let gone = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        gone.block_on(async {
            other
                .start_with_id("orphan", waits_on_a_runtime_that_goes())
                .await
                .expect("start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
    })
    .join()
    .expect("the other runtime's thread");
    // A hang guard, not a measure: the close used to spin on the run forever.
    tokio::time::timeout(Duration::from_secs(20), rt.close())
        .await
        .expect("the close did not finish")
        .expect("close");
    // The run is still pending in the journal: the next open resumes it.
    let rt = open(&path).await;
    assert_eq!(rt.recovered(), ["orphan"]);
    rt.close_with_grace(Duration::ZERO).await.expect("close");
}

static CLOSER: OnceLock<Runtime> = OnceLock::new();

#[step]
async fn closes_its_own_runtime() -> String {
    match CLOSER.get() {
        Some(rt) => match rt.close().await {
            Ok(()) => "closed".into(),
            Err(e) => e.to_string(),
        },
        None => "no runtime".into(),
    }
}

#[workflow]
async fn closes_from_a_step() -> String {
    closes_its_own_runtime().await
}

#[tokio::test]
async fn close_from_one_of_its_own_step_bodies_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = CLOSER.get_or_init(|| {
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Runtime::new()
                    .expect("tokio")
                    .block_on(Runtime::open(&path))
                    .expect("open")
            })
            .join()
            .expect("thread")
        })
    });
    let message = rt
        .start_with_id("self", closes_from_a_step())
        .await
        .expect("start")
        .result()
        .await
        .expect("runs");
    assert!(
        message.contains("was called in a step body of a workflow this runtime runs"),
        "{message}"
    );
    rt.close().await.expect("close from outside");
}

static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

#[step(retries = 50, backoff = 20ms, backoff_factor = 1.0)]
async fn flaky() -> Result<u8, String> {
    ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    Err("not yet".into())
}

#[workflow]
async fn retries_a_lot() -> Result<u8, String> {
    flaky().await
}

#[tokio::test]
async fn close_starts_no_further_retry_of_a_failing_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    let h = rt.start_with_id("r", retries_a_lot()).await.expect("start");
    tokio::time::sleep(Duration::from_millis(70)).await;
    rt.close().await.expect("close");
    // The close did not wait for the step to use up its 50 retries.
    let attempts = ATTEMPTS.load(Ordering::SeqCst);
    assert!(
        attempts < 51,
        "{attempts} attempts: every retry ran before the close"
    );
    assert!(matches!(h.result().await, Err(Error::Stopped { .. })));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        ATTEMPTS.load(Ordering::SeqCst),
        attempts,
        "no attempt after the close"
    );
}

static FLAKY_TRIES: AtomicUsize = AtomicUsize::new(0);

#[step(retries = 5, backoff = 60m)]
async fn down_for_an_hour() -> Result<u8, String> {
    FLAKY_TRIES.fetch_add(1, Ordering::SeqCst);
    Err("the service is down".into())
}

#[workflow]
async fn waits_to_retry() -> Result<u8, String> {
    down_for_an_hour().await
}

#[tokio::test]
async fn a_close_does_not_wait_out_a_retry_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open(&path).await;
    let h = rt
        .start_with_id("r", waits_to_retry())
        .await
        .expect("start");
    while FLAKY_TRIES.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // No body runs while the step waits an hour to retry: the close has nothing to
    // wait for, although its grace period is longer than the backoff. (The bound here
    // only keeps a broken close from hanging the test run.)
    tokio::time::timeout(
        Duration::from_secs(60),
        rt.close_with_grace(Duration::from_secs(7200)),
    )
    .await
    .expect("the close waited out the backoff")
    .expect("close");
    assert!(matches!(h.result().await, Err(Error::Stopped { .. })));
    assert_eq!(
        FLAKY_TRIES.load(Ordering::SeqCst),
        1,
        "no retry after the close"
    );
    // Nothing was recorded for the step: it runs again at the next open.
    let rt = open(&path).await;
    assert_eq!(rt.recovered(), ["r"]);
    rt.close_with_grace(Duration::ZERO).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_racing_a_close_reports_what_the_journal_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..40 {
        let path = dir.path().join(format!("j{i}.db"));
        let rt = open(&path).await;
        rt.start_with_id("w", takes_counts()).await.expect("start");
        rt.cancel("w").await.expect("cancel");
        let (a, b) = (rt.clone(), rt.clone());
        let resume = tokio::spawn(async move { a.resume("w").await });
        let close = tokio::spawn(async move {
            // Lands anywhere in the resume, from before it to after it.
            for _ in 0..i % 6 {
                tokio::task::yield_now().await;
            }
            b.close().await
        });
        close.await.expect("task").expect("close");
        let resumed = resume.await.expect("task");
        // Whatever the resume said is what the journal holds: `Ok` only if the workflow
        // is pending again (and so resumes at the next open), an error only if not.
        let rt = open(&path).await;
        let pending = rt.recovered().iter().any(|w| w == "w");
        assert_eq!(
            resumed.is_ok(),
            pending,
            "iteration {i}: resume returned {resumed:?}, pending: {pending}"
        );
        if let Err(e) = resumed {
            assert!(matches!(e, Error::Closed { .. }), "{e:?}");
        }
        rt.close_with_grace(Duration::ZERO).await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_close_reports_what_the_journal_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..60 {
        let path = dir.path().join(format!("c{i}.db"));
        let rt = open(&path).await;
        rt.start_with_id("w", takes_counts()).await.expect("start");
        let (a, b, c) = (rt.clone(), rt.clone(), rt.clone());
        let known = tokio::spawn(async move { a.cancel("w").await });
        let unknown = tokio::spawn(async move { b.cancel("nobody").await });
        let close = tokio::spawn(async move {
            for _ in 0..i % 8 {
                tokio::task::yield_now().await;
            }
            c.close().await
        });
        close.await.expect("task").expect("close");
        let (known, unknown) = (known.await.expect("task"), unknown.await.expect("task"));
        // A workflow that does not exist is never reported cancelled.
        assert!(
            matches!(unknown, Err(Error::NotFound { .. } | Error::Closed { .. })),
            "iteration {i}: cancel of an unknown id returned {unknown:?}"
        );
        // `Ok` only if the cancellation is in the journal; `Closed` only if not.
        let rt = open(&path).await;
        let cancelled = !rt.recovered().iter().any(|w| w == "w");
        match known {
            Ok(()) => assert!(cancelled, "iteration {i}: Ok, but still pending"),
            Err(Error::Closed { .. }) => {
                assert!(!cancelled, "iteration {i}: Closed, but cancelled");
            }
            Err(e) => panic!("iteration {i}: {e:?}"),
        }
        rt.close_with_grace(Duration::ZERO).await.expect("close");
    }
}

// ---------------------------------------------------------------------------------------
// 7. Output fingerprints (what the testkit compares runs by) read what the runtime nested
//    by its content, and a user's bytes as bytes.

/// Bytes recorded as a byte string, as `serde_bytes` would.
#[derive(Debug, Clone, PartialEq)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[step]
async fn upload(blob: Blob) -> Blob {
    blob
}

#[workflow]
async fn uploads(blob: Blob) -> usize {
    upload(blob).await.0.len()
}

#[workflow]
async fn takes_counts() -> u64 {
    durable_runtime::recv::<HashMap<String, u64>>("counts", None)
        .await
        .ok()
        .flatten()
        .map(|m| m.values().sum())
        .unwrap_or_default()
}

#[tokio::test]
async fn output_fingerprints_read_nested_values_by_content_and_user_bytes_as_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = open(&dir.path().join("j.db")).await;
    let output = |id: &'static str| {
        let rt = rt.clone();
        async move {
            let steps = rt.steps(id).await.expect("steps");
            let step = steps.last().expect("a step").clone();
            // On a small stack: a fingerprint must not recurse with what it reads.
            std::thread::Builder::new()
                .stack_size(1024 * 1024)
                .spawn(move || step.output_fingerprint().expect("an output"))
                .expect("thread")
                .join()
                .expect("no stack overflow")
        }
    };

    // Two different blobs that both happen to look like a journal value holding 5 (the
    // second in a longer form): different outputs.
    for (id, bytes) in [("a", vec![0x02, 0x05]), ("b", vec![0x02, 0x18, 0x05])] {
        let h = rt
            .start_with_id(id, uploads(Blob(bytes)))
            .await
            .expect("start");
        h.result().await.expect("runs");
    }
    assert_ne!(output("a").await, output("b").await);

    // A blob of 100,000 byte strings, each holding the next as a journal value would.
    let mut blob = vec![0x02u8, 0xf6];
    for _ in 0..100_000 {
        let mut outer = vec![0x02u8];
        let n = blob.len() as u32;
        outer.push(0x5a);
        outer.extend_from_slice(&n.to_be_bytes());
        outer.extend_from_slice(&blob);
        blob = outer;
    }
    let h = rt
        .start_with_id("deep", uploads(Blob(blob)))
        .await
        .expect("start");
    h.result().await.expect("runs");
    output("deep").await;

    // A message is nested in the `recv` that took it: equal maps, sent in different
    // orders, are equal outputs.
    let small: HashMap<String, u64> = (0..50).map(|i| (format!("k{i}"), i)).collect();
    let mut large: HashMap<String, u64> = HashMap::with_capacity(1_000);
    for i in (0..50).rev() {
        large.insert(format!("k{i}"), i);
    }
    for (id, counts) in [("m1", &small), ("m2", &large)] {
        let h = rt.start_with_id(id, takes_counts()).await.expect("start");
        rt.send(id, "counts", counts).await.expect("send");
        assert_eq!(h.result().await.expect("runs"), (0..50).sum::<u64>());
    }
    assert_eq!(output("m1").await, output("m2").await);
}
