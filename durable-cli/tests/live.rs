//! The `durable` binary against a live runtime in another process, on a SQLite and on
//! a PostgreSQL journal: `list`, `show`, `send` (which wakes a waiting `recv`),
//! `cancel`, `resume` and `fork` act on the running workflows, and a SIGKILL of the
//! owner between a command and its application loses nothing and applies it once.
//!
//! The owner is this test binary run again (`owner_process`, with `DURABLE_CLI_OWNER`
//! naming the journal): a process that holds the journal and runs the workflows below
//! until it is killed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use durable_runtime::{Runtime, recv, step, workflow};
use serde_json::Value;

const DURABLE: &str = env!("CARGO_BIN_EXE_durable");
const OWNER_ENV: &str = "DURABLE_CLI_OWNER";

#[step]
async fn double(n: u32) -> u32 {
    n * 2
}

/// Waits for a number on `go`, then doubles it.
#[workflow]
async fn gate() -> u32 {
    let n = recv::<u32>("go", None).await.ok().flatten().unwrap_or(0);
    double(n).await
}

/// Not a test: the owner process, when `DURABLE_CLI_OWNER` is set (see the module).
#[test]
fn owner_process() {
    let Ok(journal) = std::env::var(OWNER_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let rt = Runtime::open(&journal).await.expect("open");
        for id in ["g1", "g2", "g3"] {
            rt.start_with_id(id, gate()).await.expect("start");
        }
        println!("ready");
        std::future::pending::<()>().await;
    });
}

/// The owner, running, with its output watched.
struct Owner {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Owner {
    fn start(journal: &Path) -> Owner {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "owner_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(OWNER_ENV, journal)
            .stdout(Stdio::piped())
            .spawn()
            .expect("owner");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let owner = Owner { child, lines };
        owner.wait_for("ready");
        owner
    }

    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(_) => panic!("the owner never printed {text:?}"),
            }
        }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    fn kill(mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().expect("wait");
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `durable --journal J ARGS`.
fn durable(journal: &Path, args: &[&str]) -> Output {
    Command::new(DURABLE)
        .arg("--journal")
        .arg(journal)
        .args(args)
        .output()
        .expect("durable")
}

/// `durable --json ARGS`, parsed; panics unless it exits 0.
fn json(journal: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = durable(journal, &all);
    assert!(
        out.status.success(),
        "durable {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn status_of(journal: &Path, id: &str) -> String {
    json(journal, &["show", id])["workflow"]["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

/// Waits until workflow `id` is in `status`.
fn await_status(journal: &Path, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = json(journal, &["show", id]);
        if shown["workflow"]["status"] == status {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}: {shown}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

#[test]
fn the_cli_steers_a_live_runtime_in_another_process() {
    let dir = tempfile::tempdir().expect("dir");
    steer(&dir.path().join("journal.db"), false);
}

#[test]
fn the_cli_steers_a_live_runtime_in_another_process_on_postgres() {
    let server = durable_runtime::testkit::postgres_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let sep = if server.contains('?') { '&' } else { '?' };
    let url = format!(
        "{server}{sep}schema=cli_live_{}_{nanos}",
        std::process::id()
    );
    steer(Path::new(&url), true);
}

/// The scenario, on the journal `journal` (a PostgreSQL URL if `postgres`). On SQLite,
/// a command waits in the journal for the owner to apply it; on PostgreSQL, the client
/// applies it itself, and the owner hears of it.
fn steer(journal: &Path, postgres: bool) {
    let journal = journal.to_path_buf();
    let journal = &journal;
    let owner = Owner::start(journal);

    // list: the three gates, pending.
    let listed = json(journal, &["list", "--status", "pending"]);
    let mut ids: Vec<&str> = listed["workflows"]
        .as_array()
        .expect("array")
        .iter()
        .map(|w| w["id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["g1", "g2", "g3"]);

    // send: applied by the owner, and the waiting recv wakes.
    let sent = durable(journal, &["send", "g1", "go", "21"]);
    assert_eq!(code(&sent), 0, "{}", String::from_utf8_lossy(&sent.stderr));
    let shown = await_status(journal, "g1", "completed");
    assert_eq!(shown["workflow"]["output"], 42);
    let names: Vec<&str> = shown["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["durable::recv", "double"]);

    // cancel, then resume: the owner applies each before the command returns.
    assert_eq!(code(&durable(journal, &["cancel", "g2"])), 0);
    assert_eq!(status_of(journal, "g2"), "cancelled");
    assert_eq!(code(&durable(journal, &["resume", "g2"])), 0);
    assert_eq!(status_of(journal, "g2"), "pending");
    assert_eq!(code(&durable(journal, &["send", "g2", "go", "5"])), 0);
    assert_eq!(
        await_status(journal, "g2", "completed")["workflow"]["output"],
        10
    );

    // fork: the owner makes it and runs it; the recv (step 1) is copied, so the fork
    // finishes with g1's value without a new message.
    assert_eq!(code(&durable(journal, &["fork", "g1", "2", "g1-again"])), 0);
    let forked = await_status(journal, "g1-again", "completed");
    assert_eq!(forked["workflow"]["output"], 42);
    assert_eq!(forked["workflow"]["forked_from"], "g1");

    // start by name: the owner (SQLite), or the client and then the owner's claim
    // (PostgreSQL), starts it; the gate then waits for its message as any does.
    assert_eq!(code(&durable(journal, &["start", "gate", "g4"])), 0);
    assert_eq!(code(&durable(journal, &["start", "gate", "g4"])), 0);
    assert_eq!(code(&durable(journal, &["send", "g4", "go", "3"])), 0);
    assert_eq!(
        await_status(journal, "g4", "completed")["workflow"]["output"],
        6
    );
    let unknown = durable(journal, &["start", "no_such_workflow", "g5"]);
    let expected = if postgres { 0 } else { 1 };
    assert_eq!(code(&unknown), expected, "{unknown:?}");
    if postgres {
        // No runtime has it: it waits, unclaimed, for one that does.
        assert_eq!(status_of(journal, "g5"), "pending");
        assert_eq!(code(&durable(journal, &["cancel", "g5"])), 0);
    }
    // Arguments gate does not take: the owner refuses them (SQLite); on PostgreSQL the
    // run is made, and stops where it is claimed, pending until cancelled.
    assert_eq!(
        code(&durable(journal, &["start", "gate", "g6", "[1]"])),
        expected
    );
    if postgres {
        assert_eq!(code(&durable(journal, &["cancel", "g6"])), 0);
    }

    // Refusals say so in their exit code, and record nothing.
    assert_eq!(code(&durable(journal, &["cancel", "nobody"])), 3);
    let resumed = durable(journal, &["resume", "g1"]);
    assert_eq!(code(&resumed), 1);
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("completed"));

    // The owner stops (SIGSTOP: it holds the journal but applies nothing) and a
    // command is recorded; then the owner is killed before it applies it. (On
    // PostgreSQL the message is in the journal at once: the command is applied, and
    // the stopped owner never takes it.)
    let recorded = if postgres { 0 } else { 4 };
    owner.signal(libc::SIGSTOP);
    let stalled = durable(journal, &["send", "g3", "go", "7", "--wait", "300ms"]);
    assert_eq!(
        code(&stalled),
        recorded,
        "{}",
        String::from_utf8_lossy(&stalled.stdout)
    );
    owner.kill();
    // While no runtime holds the journal, a command is recorded at once.
    let down = durable(journal, &["send", "g3", "go", "8", "--wait", "5s"]);
    assert_eq!(code(&down), recorded);

    // The next owner applies both, in order, once each: g3 takes the first, the
    // second waits for a recv that never comes.
    let owner = Owner::start(journal);
    assert_eq!(
        await_status(journal, "g3", "completed")["workflow"]["output"],
        14
    );
    let waiting = json(journal, &["messages", "--to", "g3"]);
    let values: Vec<&Value> = waiting
        .as_array()
        .expect("array")
        .iter()
        .map(|m| &m["value"])
        .collect();
    assert_eq!(values, [&Value::from(8)]);

    // gc beside the live owner: the finished runs go, and nothing else.
    let report = json(journal, &["gc", "--older-than", "0s"]);
    let finished = if postgres { 7 } else { 5 };
    assert_eq!(report["workflows"], finished, "{report}");
    assert!(
        json(journal, &["list"])["workflows"]
            .as_array()
            .expect("array")
            .is_empty()
    );
    if postgres {
        // Nothing to do: PostgreSQL's autovacuum reclaims the space.
        assert_eq!(code(&durable(journal, &["vacuum"])), 0);
        return;
    }
    // A vacuum needs the journal to itself.
    let refused = durable(journal, &["vacuum"]);
    assert_eq!(code(&refused), 1);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("lock"),
        "{refused:?}"
    );
    drop(owner);
    assert_eq!(code(&durable(journal, &["vacuum"])), 0);
}
