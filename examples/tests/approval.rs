//! The `approval` program, run as users run it: the one-command demo (two SIGKILLs and
//! restarts), and the two-command flow with a rejection.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const APPROVAL: &str = env!("CARGO_BIN_EXE_approval");

#[test]
fn the_demo_finishes_the_report_after_two_kills() -> Res<()> {
    // The demo's journal goes to the temporary directory: a fresh one, removed after.
    let tmp = tempfile::tempdir()?;
    let output = Command::new(APPROVAL).env("TMPDIR", tmp.path()).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("(SIGKILL)").count(), 2, "{stdout}");
    assert!(
        stdout.contains("exp-1 finished: approved by grace, $129.50 paid"),
        "{stdout}"
    );
    // What the first two processes recorded is replayed by the third, not run again;
    // durable's own records are marked internal.
    for line in [
        "1   submit               step     recorded by an earlier process",
        "3   durable::recv        internal recorded by an earlier process",
        "6   durable::sleep       internal recorded by an earlier process",
        "7   durable::child       internal recorded by this process",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches("] submit:").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("] transfer_funds:").count(), 1, "{stdout}");
    Ok(())
}

#[test]
fn a_rejection_from_the_second_command_ends_the_report() -> Res<()> {
    let dir = tempfile::tempdir()?;
    let journal = dir.path().join("exp.db");
    let mut run = Command::new(APPROVAL)
        .arg("run")
        .arg("--journal")
        .arg(&journal)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = run.stdout.take().ok_or("no stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |text: &str| -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.iter().any(|l: &String| l.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            seen.push(
                lines
                    .recv_timeout(left)
                    .map_err(|_| format!("no {text:?} in {seen:#?}"))?,
            );
        }
        Ok(())
    };
    wait_for("status of exp-1: awaiting approval")?;
    let approve = Command::new(APPROVAL)
        .args(["approve", "--reject", "--by", "linus", "--journal"])
        .arg(&journal)
        .output()?;
    assert!(approve.status.success(), "{approve:?}");
    wait_for("status of exp-1: rejected by linus")?;
    wait_for("exp-1 finished: Rejected { by: \"linus\" }")?;
    assert!(run.wait()?.success());

    // Run again: the report is finished, so its recorded result comes back at once.
    let again = Command::new(APPROVAL)
        .arg("run")
        .arg("--journal")
        .arg(&journal)
        .output()?;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(
        stdout.contains("exp-1 finished: Rejected { by: \"linus\" }"),
        "{stdout}"
    );
    assert!(!stdout.contains("] submit:"), "submit ran again:\n{stdout}");
    Ok(())
}

#[test]
fn a_decision_for_a_journal_that_does_not_exist_is_refused_and_writes_nothing() -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("typo.db");
    let output = Command::new(APPROVAL)
        .args(["approve", "--by", "grace", "--journal"])
        .arg(&missing)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    assert!(stderr.contains("no journal at"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(tmp.path())?.count(),
        0,
        "it left files behind"
    );
    Ok(())
}
