//! Deploys with a real restart between two builds of a workflow left pending: one
//! process (build 1, `deploy-v1`) runs `fulfil` until it waits for a message and exits
//! as a crash would; another (a build 2) resumes it. The builds are separate programs
//! (`src/deploy/`), each with its own version of the recorded types.
//!
//! - Build 2 changes the types in every way that keeps the recorded values meaningful
//!   (a field added with a default and one removed, `u32` to `u64`, `u32` to `i32` for a
//!   value that fits, a variant added in front and one moved): it resumes with the
//!   recorded values, and a step that took the changed type as its argument replays.
//! - Three other builds 2 each make one change the values cannot follow (a number that
//!   became a string, a recorded variant removed, a value out of the new range): each
//!   stops with an error naming the step and the type, and leaves the journal exactly as
//!   it was, so build 1 can still finish the workflow.
//! - Under bincode, which cannot follow most of these changes, the outcome is the right
//!   value or such an error; never another value.

mod common;

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str], journal: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .arg("--journal")
        .arg(journal)
        .output()
        .expect("run the fixture");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().to_owned()
}

/// Build 1 starts `o-1` and leaves it pending, waiting for `go`.
fn start(journal: &Path, codec: &str) {
    let out = run(
        env!("CARGO_BIN_EXE_deploy-v1"),
        &["start", "--codec", codec],
        journal,
    );
    assert_eq!(out, "STARTED true");
    common::wait_unlocked(journal);
}

fn finish(program: &str, journal: &Path) -> String {
    run(program, &["finish"], journal)
}

/// Every row of the journal's workflow and step tables, as text.
fn snapshot(journal: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(journal).expect("open");
    let mut rows = Vec::new();
    for table in ["durable_workflows", "durable_steps", "durable_events"] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .expect("prepare");
        let n = stmt.column_count();
        let mut query = stmt.query([]).expect("query");
        while let Some(row) = query.next().expect("row") {
            let cells: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        "{:?}",
                        row.get::<_, rusqlite::types::Value>(i).expect("cell")
                    )
                })
                .collect();
            rows.push(format!("{table}: {}", cells.join(" | ")));
        }
    }
    rows
}

const V1_RESULT: &str =
    "RESULT shipped tea-1 v1 sku=tea-1 qty=7 total=4000000000 decision=Approved";

#[test]
fn compatible_changes_resume_with_the_recorded_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("deploy.db");
    start(&journal, "cbor");
    let out = finish(env!("CARGO_BIN_EXE_deploy-v2"), &journal);
    // The recorded values, read through build 2's types: `gift` takes its default, and
    // the decision is still `Approved` though it moved. `ship`, which took the order as
    // its argument, replays: the order's new field holds its default.
    assert_eq!(
        out,
        "RESULT shipped tea-1 v2 sku=tea-1 qty=7 total=4000000000 gift=false decision=Approved"
    );
}

#[test]
fn incompatible_changes_stop_with_a_clear_error_and_leave_the_journal_unchanged() {
    let cases = [
        (
            env!("CARGO_BIN_EXE_deploy-v2-string"),
            "the recorded output of step 1 (`price`) does not decode as `Order`: invalid type: \
             integer `7`, expected a string (at `.qty`)",
        ),
        (
            env!("CARGO_BIN_EXE_deploy-v2-removed-variant"),
            "the recorded output of step 3 (`decide`) does not decode as `Decision`: unknown \
             variant `Approved`, expected `Pending` or `Rejected`",
        ),
        (
            env!("CARGO_BIN_EXE_deploy-v2-out-of-range"),
            "the recorded output of step 1 (`price`) does not decode as `Order`: invalid value: \
             integer `4000000000`, expected i32 (at `.total_cents`)",
        ),
    ];
    for (program, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("deploy.db");
        start(&journal, "cbor");
        let before = snapshot(&journal);
        let out = finish(program, &journal);
        assert!(
            out.starts_with("ERROR workflow o-1: ") && out.contains(expected),
            "{program}: {out}"
        );
        assert!(out.contains("the workflow stays pending"), "{out}");
        // Unchanged: nothing recorded, nothing finished (the message `go` is queued
        // for whoever resumes the workflow).
        assert_eq!(snapshot(&journal), before, "{program} changed the journal");
        // Build 1 again: the workflow finishes with its own values.
        assert_eq!(finish(env!("CARGO_BIN_EXE_deploy-v1"), &journal), V1_RESULT);
    }
}

#[test]
fn under_bincode_no_build_reads_another_value() {
    let builds = [
        env!("CARGO_BIN_EXE_deploy-v2"),
        env!("CARGO_BIN_EXE_deploy-v2-string"),
        env!("CARGO_BIN_EXE_deploy-v2-removed-variant"),
        env!("CARGO_BIN_EXE_deploy-v2-out-of-range"),
    ];
    for program in builds {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = dir.path().join("deploy.db");
        start(&journal, "bincode");
        let before = snapshot(&journal);
        let out = finish(program, &journal);
        // bincode cannot follow any of these changes (field names, signedness, variant
        // places): each is refused where it was recorded, and the journal kept.
        assert!(
            out.starts_with("ERROR workflow o-1: the recorded output of step "),
            "{program}: {out}"
        );
        assert!(out.contains("does not decode as `"), "{program}: {out}");
        assert_eq!(snapshot(&journal), before, "{program} changed the journal");
        assert_eq!(finish(env!("CARGO_BIN_EXE_deploy-v1"), &journal), V1_RESULT);
    }
}
