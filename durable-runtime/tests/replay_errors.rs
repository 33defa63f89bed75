//! Replay never continues past something it cannot trust: a step the code no longer asks
//! for (divergence) or a row that does not decode (corruption). Either way the workflow
//! stops with an error naming the workflow and the step, and the journal is not touched.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use durable_runtime::{
    Durability, Error, Location, Runtime, WorkflowCall, WorkflowStatus, step, workflow,
};

/// Inputs for which `drifting` takes its other path: "the code changed".
static CHANGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
/// Step bodies run, per workflow key (tests run in parallel; each uses its own key).
static BODIES: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

fn ran(key: &str) {
    *BODIES
        .lock()
        .expect("lock")
        .get_or_insert_with(HashMap::new)
        .entry(key.to_owned())
        .or_default() += 1;
}

fn bodies(key: &str) -> usize {
    BODIES
        .lock()
        .expect("lock")
        .as_ref()
        .and_then(|m| m.get(key).copied())
        .unwrap_or(0)
}

fn changed(key: &str) -> bool {
    CHANGED
        .lock()
        .expect("lock")
        .as_ref()
        .is_some_and(|s| s.contains(key))
}

fn change(key: &str) {
    CHANGED
        .lock()
        .expect("lock")
        .get_or_insert_with(HashSet::new)
        .insert(key.to_owned());
}

#[step]
async fn reserve(key: String) -> String {
    ran(&key);
    format!("reserved {key}")
}

#[step]
async fn charge(key: String) -> String {
    ran(&key);
    format!("charged {key}")
}

#[step]
async fn ship(key: String) -> String {
    ran(&key);
    format!("shipped {key}")
}

#[workflow]
async fn drifting(key: String) -> Vec<String> {
    let mut out = vec![reserve(key.clone()).await];
    if changed(&key) {
        // The new code charges before shipping.
        out.push(charge(key.clone()).await);
    }
    out.push(ship(key.clone()).await);
    out
}

#[workflow]
async fn shrinking(key: String) -> Vec<String> {
    let mut out = vec![reserve(key.clone()).await];
    if !changed(&key) {
        // The new code no longer ships.
        out.push(ship(key).await);
    }
    out
}

/// Runs `call` as workflow `id` to completion in a fresh journal, then makes it look as
/// if the process died before recording the outcome: the next open replays it.
async fn record_unfinished<O: serde::Serialize + serde::de::DeserializeOwned>(
    id: &str,
    call: WorkflowCall<O>,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");
    let rt = Runtime::builder(&path)
        .durability(Durability::Normal)
        .open()
        .await
        .expect("open");
    rt.start_with_id(id, call)
        .await
        .expect("start")
        .result()
        .await
        .expect("first run");
    drop(rt);
    common::make_pending(&path, id);
    (dir, path)
}

struct Snapshot {
    steps: Vec<Vec<String>>,
    workflows: Vec<Vec<String>>,
}

fn snapshot(path: &Path) -> Snapshot {
    Snapshot {
        steps: common::dump(path, "durable_steps"),
        workflows: common::dump(path, "durable_workflows"),
    }
}

fn assert_unchanged(path: &Path, before: &Snapshot) {
    assert_eq!(
        common::dump(path, "durable_steps"),
        before.steps,
        "step rows changed"
    );
    assert_eq!(
        common::dump(path, "durable_workflows"),
        before.workflows,
        "workflow rows changed"
    );
}

#[tokio::test]
async fn a_different_step_at_a_recorded_path_is_a_divergence() {
    let (_dir, path) = record_unfinished("d1", drifting("d1".into())).await;
    let before = snapshot(&path);
    let ran_before = bodies("d1");

    change("d1");
    let rt = common::reopen(&path).await;
    let handle = rt
        .start_with_id("d1", drifting("d1".into()))
        .await
        .expect("handle");
    let err = handle.result().await.expect_err("diverged");
    match &err {
        Error::Divergence {
            workflow_id,
            path,
            recorded,
            requested,
            ..
        } => {
            assert_eq!(workflow_id, "d1");
            assert_eq!(path.to_string(), "2");
            assert_eq!(recorded, "ship");
            assert_eq!(requested.as_deref(), Some("charge"));
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "workflow d1 diverged from its journal at step 2: recorded `ship`, but the code asked for `charge`"
    );
    assert_eq!(handle.status(), WorkflowStatus::Stopped);
    assert_eq!(
        bodies("d1"),
        ran_before,
        "no step body may run past a divergence"
    );
    drop((rt, handle));
    assert_unchanged(&path, &before);
}

#[tokio::test]
async fn finishing_without_a_recorded_step_is_a_divergence() {
    let (_dir, path) = record_unfinished("s1", shrinking("s1".into())).await;
    let before = snapshot(&path);

    change("s1");
    let rt = common::reopen(&path).await;
    let err = rt
        .start_with_id("s1", shrinking("s1".into()))
        .await
        .expect("handle")
        .result()
        .await
        .expect_err("diverged");
    assert!(
        matches!(&err, Error::Divergence { path, recorded, requested: None, .. }
            if path.to_string() == "2" && recorded == "ship"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("finished without asking for it"),
        "{err}"
    );
    drop(rt);
    assert_unchanged(&path, &before);
}

/// Runs `drifting` once, marks it unfinished, overwrites step 1's output with `bytes`
/// (dropping its checksum) and resumes it: the resumed run must stop with `Error::Corrupt` naming step 1.
async fn resume_with_corrupt_step(id: &str, corrupt: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let (_dir, path) = record_unfinished(id, drifting(id.into())).await;
    let original: Vec<u8> = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row(
            "SELECT output FROM durable_steps WHERE run = (SELECT run FROM durable_workflows WHERE id = ?1) AND path = '1'",
            [id],
            |r| r.get(0),
        )
        .expect("step 1");
    common::sql(
        &path,
        // No checksum, as in rows written before schema 2: the decoder must catch it.
        "UPDATE durable_steps SET output = ?2, crc32 = NULL WHERE run = (SELECT run FROM durable_workflows WHERE id = ?1) AND path = '1'",
        rusqlite::params![id, corrupt(original)],
    );
    let before = snapshot(&path);
    let ran_before = bodies(id);

    let rt = common::reopen(&path).await;
    let err = rt
        .start_with_id(id, drifting(id.into()))
        .await
        .expect("handle")
        .result()
        .await
        .expect_err("corrupt");
    match &err {
        Error::Corrupt {
            workflow_id,
            location: Location::Step { path, name },
            ..
        } => {
            assert_eq!(workflow_id, id);
            assert_eq!(path.to_string(), "1");
            assert_eq!(name, "reserve");
        }
        other => panic!("expected Error::Corrupt for step 1, got {other:?}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "workflow {id}: the recorded output of step 1 (`reserve`) is damaged"
        )),
        "{err}"
    );
    assert_eq!(
        bodies(id),
        ran_before,
        "a corrupt record must not re-run the step"
    );
    drop(rt);
    assert_unchanged(&path, &before);
}

#[tokio::test]
async fn a_garbage_step_row_is_a_clear_error() {
    resume_with_corrupt_step("garbage", |_| vec![0xff, 0xfe, 0x00, 0x13, 0x37]).await;
}

#[tokio::test]
async fn a_truncated_step_row_is_a_clear_error() {
    resume_with_corrupt_step("truncated", |mut v| {
        v.truncate(v.len() / 2);
        v
    })
    .await;
}

#[tokio::test]
async fn a_huge_length_prefix_is_a_clear_error_not_an_allocation() {
    // The value's format byte, then a CBOR text string head claiming u64::MAX bytes.
    resume_with_corrupt_step("huge", |original| {
        let mut v = vec![original[0], 0x7b];
        v.extend_from_slice(&u64::MAX.to_be_bytes());
        v
    })
    .await;
}

#[tokio::test]
async fn trailing_bytes_after_a_step_value_are_a_clear_error() {
    resume_with_corrupt_step("trailing", |mut v| {
        v.extend_from_slice(b"junk");
        v
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_workflow_input_is_a_clear_error() {
    let (_dir, path) = record_unfinished("input", drifting("input".into())).await;
    common::sql(
        &path,
        "UPDATE durable_workflows SET input = x'fd' WHERE id = 'input'",
        [],
    );
    let before = snapshot(&path);
    let rt = common::reopen(&path).await;
    // The input fails its checksum: the workflow is not resumed (the others would be),
    // and asking for it is the same clear error.
    assert!(
        matches!(rt.unrecoverable(), [Error::Corrupt { workflow_id, .. }] if workflow_id == "input"),
        "{:?}",
        rt.unrecoverable()
    );
    let err = rt
        .start_with_id("input", drifting("x".into()))
        .await
        .expect_err("corrupt");
    assert!(
        matches!(&err, Error::Corrupt { location: Location::Input, workflow_id, .. } if workflow_id == "input"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("does not match its checksum"),
        "{err}"
    );
    drop(rt);
    assert_unchanged(&path, &before);
}
