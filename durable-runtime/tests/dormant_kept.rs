//! Dormant workflows across a reopen: the journal keeps what each dormant run waits for,
//! and the next open of the same program re-parks it from that, without replaying it.
//! What it keeps is trusted only while it holds: a run that was woken, whose message
//! came while the program was down, whose record is damaged, or that another program
//! left, is replayed instead, and gets the same results.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use durable_runtime::{
    Durability, Runtime, get_event, recv, set_event, sleep, start_child, step, workflow,
};

use common::{keyed, open_dormant, ran, runs_of, until_dormant};

/// How many times each workflow body began (a replay begins it again), by tag.
static ENTERED: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn enter(tag: &str) {
    let mut entered = ENTERED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *entered
        .get_or_insert_default()
        .entry(tag.to_owned())
        .or_default() += 1;
}

fn entered(tag: &str) -> u32 {
    let entered = ENTERED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    entered
        .as_ref()
        .and_then(|e| e.get(tag).copied())
        .unwrap_or(0)
}

#[step]
async fn kept_first(x: u64) -> u64 {
    ran("kept_first");
    x * 10
}

#[step]
async fn kept_then(x: u64) -> u64 {
    ran("kept_then");
    x + 1
}

#[workflow]
async fn kept_listener(tag: String, x: u64) -> u64 {
    enter(&tag);
    let base = kept_first(x).await;
    let got = recv::<u64>("go", None).await.ok().flatten().unwrap_or(0);
    kept_then(base + got).await
}

/// Waits for "a", then for "b".
#[workflow]
async fn kept_two_waits(tag: String) -> u64 {
    enter(&tag);
    let a = recv::<u64>("a", None).await.ok().flatten().unwrap_or(0);
    let b = recv::<u64>("b", None).await.ok().flatten().unwrap_or(0);
    kept_then(a * 100 + b).await
}

#[workflow]
async fn kept_watcher(tag: String) -> Option<u64> {
    enter(&tag);
    get_event::<u64>("kept-setter", "ready", None)
        .await
        .ok()
        .flatten()
}

#[workflow]
async fn kept_setter(tag: String) -> u64 {
    enter(&tag);
    let v = recv::<u64>("set", None).await.ok().flatten().unwrap_or(0);
    set_event("ready", &v).await.expect("set_event");
    v
}

#[workflow]
async fn kept_napper(tag: String, ms: u64) -> u64 {
    enter(&tag);
    let x = kept_first(1).await;
    sleep(Duration::from_millis(ms)).await;
    kept_then(x).await
}

#[workflow]
async fn kept_parent(tag: String) -> u64 {
    enter(&tag);
    let child = start_child(kept_listener("kept-child".into(), 3))
        .await
        .expect("start child");
    // A cancelled child counts as 0.
    child.result().await.unwrap_or(0) * 2
}

/// A journal at `OFF` whose parked workflows go dormant at once, with `version`.
async fn open_as(path: &Path, version: &str) -> Runtime {
    Runtime::builder(path)
        .durability(Durability::Off)
        .evict_parked_after(Duration::ZERO)
        .app_version(version)
        .open()
        .await
        .expect("open")
}

/// The id of `parent`'s one child.
fn child_of(path: &Path, parent: &str) -> String {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row(
        "SELECT id FROM durable_workflows WHERE parent_id = ?1",
        [parent],
        |r| r.get(0),
    )
    .expect("the child")
}

/// Starts `call` as `id` in a fresh runtime at `path`, waits until `dormant` runs are
/// dormant, and closes it: the journal keeps them.
async fn keep_dormant<O>(
    path: &Path,
    id: &str,
    call: durable_runtime::WorkflowCall<O>,
    dormant: usize,
) where
    O: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let rt = open_dormant(path).await;
    rt.start_with_id(id, call).await.expect("start");
    until_dormant(&rt, dormant).await;
    rt.close().await.expect("close");
}

/// A runtime whose parked workflows stay in memory (for an hour).
async fn open_in_memory(path: &Path) -> Runtime {
    Runtime::builder(path)
        .durability(Durability::Off)
        .evict_parked_after(Duration::from_secs(3600))
        .open()
        .await
        .expect("open")
}

/// Waits until every queued message was taken.
async fn until_taken(path: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !common::dump(path, "durable_messages").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a message was never taken"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The result of `id`, which must come within 10 s (`why`: what should bring it).
async fn result_within(rt: &Runtime, id: &str, why: &str) -> Result<u64, durable_runtime::Error> {
    let h = rt.handle::<u64>(id).await.expect("handle");
    tokio::time::timeout(Duration::from_secs(10), h.result())
        .await
        .unwrap_or_else(|_| panic!("{id}: {why}"))
}

fn kept_rows(path: &Path) -> usize {
    common::dump(path, "durable_dormant").len()
}

#[tokio::test]
async fn a_reopen_re_parks_kept_runs_without_replay_and_each_wakes_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open_dormant(&path).await;
    rt.start_with_id("kept-listener", kept_listener("kept-listener".into(), 4))
        .await
        .expect("start");
    rt.start_with_id("kept-watcher", kept_watcher("kept-watcher".into()))
        .await
        .expect("start");
    rt.start_with_id("kept-setter", kept_setter("kept-setter".into()))
        .await
        .expect("start");
    rt.start_with_id("kept-napper", kept_napper("kept-napper".into(), 1500))
        .await
        .expect("start");
    rt.start_with_id("kept-parent", kept_parent("kept-parent".into()))
        .await
        .expect("start");
    // The five, and the parent's child.
    until_dormant(&rt, 6).await;
    rt.close().await.expect("close");
    assert_eq!(kept_rows(&path), 6, "each dormant run is kept");
    let tags = [
        "kept-listener",
        "kept-watcher",
        "kept-setter",
        "kept-napper",
        "kept-parent",
        "kept-child",
    ];
    let before: Vec<u32> = tags.iter().map(|t| entered(t)).collect();

    let rt = open_dormant(&path).await;
    // Dormant as soon as the open returns, none of them replayed.
    assert_eq!(rt.dormant_count(), 6);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let now: Vec<u32> = tags.iter().map(|t| entered(t)).collect();
    assert_eq!(now, before, "no body began again at the open");

    rt.send("kept-listener", "go", &2u64).await.expect("send");
    let listener = rt.handle::<u64>("kept-listener").await.expect("handle");
    assert_eq!(listener.result().await.expect("listener"), 43);
    rt.send("kept-setter", "set", &77u64).await.expect("send");
    let watcher = rt
        .handle::<Option<u64>>("kept-watcher")
        .await
        .expect("handle");
    assert_eq!(watcher.result().await.expect("watcher"), Some(77));
    let child = child_of(&path, "kept-parent");
    rt.send(&child, "go", &5u64).await.expect("send");
    let parent = rt.handle::<u64>("kept-parent").await.expect("handle");
    assert_eq!(parent.result().await.expect("parent"), (30 + 5 + 1) * 2);
    let napper = rt.handle::<u64>("kept-napper").await.expect("handle");
    assert_eq!(napper.result().await.expect("napper"), 11);

    // Each began once more: when it woke, not at the open.
    let after: Vec<u32> = tags.iter().map(|t| entered(t)).collect();
    let once_more: Vec<u32> = before.iter().map(|b| b + 1).collect();
    assert_eq!(after, once_more);
    for id in ["kept-listener", "kept-napper", child.as_str()] {
        assert_eq!(runs_of(id, "kept_first"), 1, "{id}");
        assert_eq!(runs_of(id, "kept_then"), 1, "{id}");
    }
    rt.close().await.expect("close");
    assert_eq!(kept_rows(&path), 0, "nothing is kept of finished runs");
}

/// Sends `value` to `id` on `topic` while no runtime has the journal open: a send that
/// could wake nobody (as one that committed just before a crash).
async fn send_while_down(path: &Path, id: &str, topic: &str, value: u64) {
    // A real message, on a topic nobody waits for, then moved to `topic`. (The open
    // re-parks the run from what was kept, and the send does not wake it.)
    let rt = open_as(path, "1").await;
    assert_eq!(rt.dormant_count(), 1);
    rt.send(id, "elsewhere", &value).await.expect("send");
    rt.close().await.expect("close");
    let rows = common::dump(path, "durable_messages");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let conn = rusqlite::Connection::open(path).expect("open");
    let payload: Vec<u8> = conn
        .query_row("SELECT payload FROM durable_messages", [], |r| r.get(0))
        .expect("payload");
    let crc = keyed(&[id.as_bytes(), topic.as_bytes()], &payload);
    conn.execute(
        "UPDATE durable_messages SET topic = ?1, crc32 = ?2",
        rusqlite::params![topic, crc],
    )
    .expect("move the message");
}

#[tokio::test]
async fn a_message_that_came_while_it_was_down_wakes_it_at_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open_as(&path, "1").await;
    rt.start_with_id("kept-early", kept_listener("kept-early".into(), 1))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    rt.close().await.expect("close");
    send_while_down(&path, "kept-early", "go", 6).await;
    let kept: Vec<_> = common::dump(&path, "durable_dormant");
    assert_eq!(kept.len(), 1, "{kept:?}");

    let rt = open_as(&path, "1").await;
    let result = result_within(
        &rt,
        "kept-early",
        "the message that came meanwhile wakes it",
    )
    .await;
    assert_eq!(result.expect("result"), 17);
}

#[tokio::test]
async fn a_run_kept_by_another_program_is_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = open_as(&path, "1").await;
    rt.start_with_id("kept-v1", kept_listener("kept-v1".into(), 2))
        .await
        .expect("start");
    until_dormant(&rt, 1).await;
    rt.close().await.expect("close");
    assert_eq!(entered("kept-v1"), 1);

    let rt = open_as(&path, "2").await;
    // Replayed (it began again), then dormant again, kept for this version.
    until_dormant(&rt, 1).await;
    assert_eq!(entered("kept-v1"), 2);
    rt.send("kept-v1", "go", &1u64).await.expect("send");
    let h = rt.handle::<u64>("kept-v1").await.expect("handle");
    assert_eq!(h.result().await.expect("result"), 22);
    assert_eq!(runs_of("kept-v1", "kept_first"), 1);
}

#[tokio::test]
async fn a_damaged_kept_record_is_replayed_not_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(
        &path,
        "kept-damaged",
        kept_listener("kept-damaged".into(), 3),
        1,
    )
    .await;
    // Its topic `go` becomes `gx`: trusted, the run would wait for a topic nobody sends.
    common::sql(
        &path,
        "UPDATE durable_dormant SET waits = CAST(replace(CAST(waits AS TEXT), 'go', 'gx') AS BLOB)",
        [],
    );
    let rt = open_dormant(&path).await;
    until_dormant(&rt, 1).await;
    assert_eq!(entered("kept-damaged"), 2, "replayed at the open");
    rt.send("kept-damaged", "go", &4u64).await.expect("send");
    let result = result_within(&rt, "kept-damaged", "woken by its message").await;
    assert_eq!(result.expect("result"), 35);
}

#[tokio::test]
async fn a_woken_run_leaves_nothing_kept_that_could_outlive_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(&path, "kept-two", kept_two_waits("kept-two".into()), 1).await;

    // Re-parked from what was kept, woken by `a`, and left waiting for `b` in memory:
    // what was kept (waiting for `a`) must not survive.
    let rt = open_in_memory(&path).await;
    assert_eq!(rt.dormant_count(), 1);
    rt.send("kept-two", "a", &3u64).await.expect("send");
    until_taken(&path).await;
    rt.close().await.expect("close");
    assert_eq!(
        kept_rows(&path),
        0,
        "the woken run's record went with its next write"
    );

    let rt = open_dormant(&path).await;
    until_dormant(&rt, 1).await;
    rt.send("kept-two", "b", &4u64).await.expect("send");
    let result = result_within(&rt, "kept-two", "woken by `b`").await;
    assert_eq!(result.expect("result"), 305);
}

#[tokio::test]
async fn a_kept_run_cancelled_and_resumed_is_not_re_parked_from_its_old_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(
        &path,
        "kept-cancel",
        kept_two_waits("kept-cancel".into()),
        1,
    )
    .await;

    // Cancelled while dormant, resumed (replayed, in memory), and moved on past `a`.
    let rt = open_in_memory(&path).await;
    assert_eq!(rt.dormant_count(), 1);
    rt.cancel("kept-cancel").await.expect("cancel");
    assert_eq!(rt.dormant_count(), 0);
    rt.resume("kept-cancel").await.expect("resume");
    rt.send("kept-cancel", "a", &1u64).await.expect("send");
    until_taken(&path).await;
    rt.close().await.expect("close");
    assert_eq!(kept_rows(&path), 0);

    let rt = open_dormant(&path).await;
    until_dormant(&rt, 1).await;
    rt.send("kept-cancel", "b", &2u64).await.expect("send");
    let result = result_within(&rt, "kept-cancel", "woken by `b`").await;
    assert_eq!(result.expect("result"), 103);
}

#[tokio::test]
async fn a_child_that_ended_while_it_was_down_wakes_its_parent_at_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(&path, "kept-orphan", kept_parent("kept-orphan".into()), 2).await;
    // The child ends (cancelled) with no runtime there to wake its parent, as in a
    // crash between the child's end and the parent's wake-up.
    let child = child_of(&path, "kept-orphan");
    common::sql(
        &path,
        "UPDATE durable_workflows SET status = 'cancelled', error_kind = 'cancelled',
             error = 'cancellation was requested' WHERE id = ?1",
        [&child],
    );
    let rt = open_dormant(&path).await;
    let result = result_within(&rt, "kept-orphan", "the child's end wakes the parent").await;
    assert_eq!(result.expect("result"), 0);
}

#[tokio::test]
async fn a_run_kept_by_other_code_of_its_workflow_is_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(&path, "kept-code", kept_listener("kept-code".into(), 8), 1).await;
    // The same program, but the workflow function's code was another (the second
    // half of the build), with a checksum that holds: only the build tells.
    let conn = rusqlite::Connection::open(&path).expect("open");
    let (build, until, waits): (String, Option<i64>, Vec<u8>) = conn
        .query_row("SELECT build, until, waits FROM durable_dormant", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("the kept row");
    assert_eq!(build.len(), 32, "{build}");
    let other = format!("{}{}", &build[..16], "0123456789abcdef");
    let until_text = until.map(|u| u.to_string()).unwrap_or_default();
    let crc = keyed(
        &[b"kept-code", other.as_bytes(), until_text.as_bytes()],
        &waits,
    );
    conn.execute(
        "UPDATE durable_dormant SET build = ?1, crc32 = ?2",
        rusqlite::params![other, crc],
    )
    .expect("other code");
    drop(conn);

    let rt = open_dormant(&path).await;
    until_dormant(&rt, 1).await;
    assert_eq!(entered("kept-code"), 2, "replayed at the open");
    rt.send("kept-code", "go", &1u64).await.expect("send");
    let h = rt.handle::<u64>("kept-code").await.expect("handle");
    assert_eq!(h.result().await.expect("result"), 82);
}

#[tokio::test]
async fn a_kept_parent_whose_child_cannot_run_here_ends_as_a_replayed_one_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(
        &path,
        "kept-stranded",
        kept_parent("kept-stranded".into()),
        2,
    )
    .await;
    // The child's input is damaged: it cannot be resumed, so it never ends here.
    let child = child_of(&path, "kept-stranded");
    common::sql(
        &path,
        "UPDATE durable_workflows SET input = X'00' WHERE id = ?1",
        [&child],
    );
    let rt = open_dormant(&path).await;
    assert_eq!(rt.unrecoverable().len(), 1);
    let result = result_within(
        &rt,
        "kept-stranded",
        "the parent ends instead of waiting for ever",
    )
    .await;
    assert!(
        matches!(result, Err(durable_runtime::Error::Corrupt { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn with_dormancy_off_an_open_replays_kept_runs_and_keeps_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(&path, "kept-off", kept_listener("kept-off".into(), 6), 1).await;
    assert_eq!(kept_rows(&path), 1);

    let rt = Runtime::builder(&path)
        .durability(Durability::Off)
        .evict_parked_after(None)
        .open()
        .await
        .expect("open");
    assert_eq!(rt.dormant_count(), 0);
    assert_eq!(kept_rows(&path), 0);
    rt.send("kept-off", "go", &1u64).await.expect("send");
    let h = rt.handle::<u64>("kept-off").await.expect("handle");
    assert_eq!(h.result().await.expect("result"), 62);
    assert_eq!(entered("kept-off"), 2);
}

#[tokio::test]
async fn by_default_a_runtime_re_parks_kept_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    keep_dormant(
        &path,
        "kept-default",
        kept_listener("kept-default".into(), 9),
        1,
    )
    .await;
    // Dormancy is on by default (after a minute): what was kept is used.
    let rt = Runtime::open(&path).await.expect("open");
    assert_eq!(rt.dormant_count(), 1);
    rt.send("kept-default", "go", &1u64).await.expect("send");
    let h = rt.handle::<u64>("kept-default").await.expect("handle");
    assert_eq!(h.result().await.expect("result"), 92);
    assert_eq!(entered("kept-default"), 2);
}
