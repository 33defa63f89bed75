//! An expense report waiting for approval, across process restarts.
//!
//! ```text
//! cargo run -p durable-examples --bin approval
//! ```
//!
//! With no arguments the program runs a demo: it creates a fresh journal and runs
//! itself as a child process (`approval run`) that files report `exp-1`. It kills that
//! process (SIGKILL) while the report waits for approval, starts a new one, approves the
//! report with a second command (`approval approve`), kills the process again during
//! the cooling-off sleep, and starts a last one, which finishes the report.
//!
//! By hand, in two terminals:
//!
//! ```text
//! # terminal 1: file the report; stop it (Ctrl-C) and run it again whenever you like
//! cargo run -p durable-examples --bin approval -- run --journal /tmp/exp.db
//! # terminal 2: the manager approves (or add --reject)
//! cargo run -p durable-examples --bin approval -- approve --journal /tmp/exp.db --by grace
//! ```
//!
//! The workflow is [`expense_report`] (see the `durable_examples::expense` module): a
//! step, an event (`status`, read here by the caller), a message (`decision`, sent by
//! the second command), a durable sleep (the cooling-off period) and a child workflow
//! (`payout`).
//!
//! `approve` runs while another process owns the journal. On a PostgreSQL journal
//! (`--journal postgres://...`), which many processes share, it opens the journal and
//! sends the decision itself. A SQLite journal is held by one process at a time, so
//! there `approve` is a [`Client`]: it records the decision in the journal and wakes
//! `run`, which sends it to the workflow at once. A decision recorded while `run` is
//! down is sent at its next open.
//!
//! Modes:
//!
//! - `approval run --journal PATH [--cooling-off-s N] [--approval-timeout-s N]`: opens
//!   the journal (resuming the report if it is pending), files `exp-1` unless it exists,
//!   prints its status as it changes, and prints the result and the report's journal when it finishes. The timings apply when the report
//!   is first filed (they are its input).
//! - `approval approve --journal PATH [--by NAME] [--reject]`: the manager's decision.

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durable_examples::expense::{
    DECISION, Decision, Outcome, Policy, STATUS, clock, demo_report, dollars, expense_report,
};
use durable_runtime::{Client, Delivery, Runtime, WorkflowStatus};

const REPORT: &str = "exp-1";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => demo(),
        Some("run") => run(&args[1..]),
        Some("approve") => approve(&args[1..]),
        Some(_) => Err(USAGE.into()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("approval: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: approval                      (the demo: crashes and restarts)
       approval run --journal PATH [--cooling-off-s N] [--approval-timeout-s N]
       approval approve --journal PATH [--by NAME] [--reject]";

type Res<T> = Result<T, Box<dyn Error>>;

/// `--name value` options.
fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn required<'a>(args: &'a [String], name: &str) -> Res<&'a str> {
    option(args, name).ok_or_else(|| format!("missing {name}\n{USAGE}").into())
}

fn seconds(args: &[String], name: &str, default: u64) -> Res<Duration> {
    Ok(Duration::from_secs(match option(args, name) {
        Some(s) => s.parse().map_err(|e| format!("{name} {s}: {e}"))?,
        None => default,
    }))
}

/// Whether the journal is a PostgreSQL database, which any number of processes share:
/// `approve` then opens it and sends the decision itself, with no client.
fn shared(journal: &Path) -> bool {
    journal
        .to_str()
        .is_some_and(|j| j.starts_with("postgres://") || j.starts_with("postgresql://"))
}

// ---------------------------------------------------------------------------------------
// The process that owns the journal.

fn run(args: &[String]) -> Res<ExitCode> {
    let journal = PathBuf::from(required(args, "--journal")?);
    let policy = Policy {
        cooling_off: seconds(args, "--cooling-off-s", 10)?,
        approval_timeout: seconds(args, "--approval-timeout-s", 3 * 24 * 3600)?,
    };
    let opened_at = SystemTime::now();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        // Opening the journal resumes every pending workflow, exp-1 included.
        let rt = Runtime::open(&journal).await?;
        println!(
            "  process {} opened {} at {} (UTC)",
            std::process::id(),
            rt.path().display(),
            clock(opened_at)
        );
        if rt.recovered().is_empty() {
            println!("  nothing to resume");
        } else {
            println!("  resumed: {}", rt.recovered().join(", "));
        }
        // Files the report, or (if exp-1 exists, pending or finished) returns a handle to
        // it: the input given here is then ignored.
        let handle = rt
            .start_with_id(REPORT, expense_report(demo_report(), policy))
            .await?;

        let mut shown: Option<String> = None;
        loop {
            let finished = handle.status() != WorkflowStatus::Running;
            // The caller's view of the report: its `status` event, as last set.
            let status = rt
                .get_event::<String>(REPORT, STATUS, Duration::ZERO)
                .await?;
            if status.is_some() && status != shown {
                println!("  status of {REPORT}: {}", status.as_deref().unwrap_or(""));
                shown = status;
            }
            if finished {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown_signal() => {
                    // Ctrl-C or SIGTERM: a running step finishes and is recorded, the
                    // report stops at that step boundary, and the journal is released.
                    rt.close().await?;
                    println!("  stopped; {REPORT} stays pending: run `approval run` again to resume it");
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }

        match handle.result().await? {
            Ok(Outcome::Paid {
                approved_by,
                transfer,
            }) => println!(
                "  {REPORT} finished: approved by {approved_by}, {} paid ({transfer})",
                dollars(demo_report().amount_cents)
            ),
            Ok(outcome) => println!("  {REPORT} finished: {outcome:?}"),
            Err(e) => println!("  {REPORT} failed: {e}"),
        }
        print_journal(&rt, opened_at).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C, or SIGTERM (a `kill`, a service manager stopping the program).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // No handler: only Ctrl-C stops it gracefully.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The recorded steps of the report and of its child, and which process recorded them.
async fn print_journal(rt: &Runtime, opened_at: SystemTime) -> Res<()> {
    let opened_ms = i64::try_from(opened_at.duration_since(UNIX_EPOCH)?.as_millis())?;
    let mut ids = vec![REPORT.to_owned()];
    let mut i = 0;
    while let Some(id) = ids.get(i).cloned() {
        println!("  journal of {id}:");
        for s in rt.steps(&id).await? {
            // Records durable keeps for its own operations, beside the report's steps.
            let kind = if s.name.starts_with("durable::") {
                "internal"
            } else {
                "step"
            };
            let by = if s.finished_at_ms < opened_ms {
                "recorded by an earlier process"
            } else {
                "recorded by this process"
            };
            println!(
                "    {:<3} {:<20} {kind:<8} {by}",
                s.path.to_string(),
                s.name
            );
            if s.name == "durable::child" {
                ids.push(format!("{id}/{}", s.path));
            }
        }
        i += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The second command.

fn approve(args: &[String]) -> Res<ExitCode> {
    let journal = PathBuf::from(required(args, "--journal")?);
    let by = option(args, "--by").unwrap_or("grace");
    if by.is_empty() || by.contains(char::is_whitespace) {
        return Err(format!("--by {by:?}: one word, please").into());
    }
    let verb = if args.iter().any(|a| a == "--reject") {
        "reject"
    } else {
        "approve"
    };
    if shared(&journal) {
        // Every process can open a PostgreSQL journal: send the decision directly.
        let decision = Decision {
            approved: verb == "approve",
            by: by.to_owned(),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let rt = Runtime::open(&journal).await?;
                rt.send(REPORT, DECISION, &decision).await?;
                rt.close().await?;
                Ok::<_, Box<dyn Error>>(())
            })?;
        println!("  {by} decided: {verb}; sent to {REPORT}");
        return Ok(ExitCode::SUCCESS);
    }
    if !journal.exists() {
        // A mistyped path would otherwise leave a decision nobody ever reads.
        return Err(format!(
            "no journal at {}: start the report first (approval run --journal {})",
            journal.display(),
            journal.display()
        )
        .into());
    }
    let decision = Decision {
        approved: verb == "approve",
        by: by.to_owned(),
    };
    // Recorded in the journal; the process that owns it sends it to the report.
    let delivery = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let client = Client::open(&journal)?;
            client.send(REPORT, DECISION, &decision).await
        })?;
    match delivery {
        Delivery::Applied => println!("  {by} decided: {verb}; sent to {REPORT}"),
        _ => println!(
            "  {by} decided: {verb}; recorded in {}, and sent to {REPORT} when a process \
             next opens the journal",
            journal.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// The demo.

/// A `run` child process whose output is echoed, and watched for.
struct RunProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl RunProcess {
    fn start(exe: &Path, journal: &Path) -> Res<RunProcess> {
        let mut child = Command::new(exe)
            .args(["run", "--cooling-off-s", "3", "--journal"])
            .arg(journal)
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(RunProcess { child, lines })
    }

    /// Waits (up to 30 s) for a line of output containing `text`.
    fn wait_for(&mut self, text: &str) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("the run process never printed {text:?}").into()),
            }
        }
    }

    /// SIGKILL: no unwinding, no shutdown, like a power cut for the process.
    fn kill(mut self) -> Res<()> {
        self.child.kill()?;
        let status = self.child.wait()?;
        println!("== Killed ({status}).");
        Ok(())
    }

    fn finish(mut self) -> Res<()> {
        let status = self.child.wait()?;
        // The echo thread prints what is left before the channel closes.
        while self.lines.recv().is_ok() {}
        if !status.success() {
            return Err(format!("the last run failed ({status})").into());
        }
        Ok(())
    }
}

fn demo() -> Res<ExitCode> {
    let journal =
        std::env::temp_dir().join(format!("durable-approval-demo-{}.db", std::process::id()));
    let exe = std::env::current_exe()?;

    println!("durable approval demo: an expense report survives two crashes");
    println!("journal: {} (new, empty)", journal.display());
    println!();
    println!("== Run 1 files report {REPORT} and waits for a manager's decision.");
    let mut run1 = RunProcess::start(&exe, &journal)?;
    run1.wait_for("awaiting approval")?;
    run1.kill()?;
    println!();
    println!("== Run 2 opens the same journal: the report is still waiting.");
    let mut run2 = RunProcess::start(&exe, &journal)?;
    run2.wait_for("awaiting approval")?;
    println!("== A second command approves it:");
    let status = Command::new(&exe)
        .args(["approve", "--by", "grace", "--journal"])
        .arg(&journal)
        .status()?;
    if !status.success() {
        return Err(format!("approve failed ({status})").into());
    }
    run2.wait_for("cooling off")?;
    std::thread::sleep(Duration::from_secs(1));
    println!("== One second into the cooling-off period, run 2 dies too.");
    run2.kill()?;
    println!();
    println!("== Run 3 sleeps only what is left of the cooling-off period, then pays.");
    let run3 = RunProcess::start(&exe, &journal)?;
    run3.finish()?;
    println!();
    println!("The payout ran at the time recorded before the crash, not 3 s after run 3");
    println!("started; nothing recorded ran twice. Inspect the journal:");
    println!(
        "  cargo run -p durable-cli -- --journal {} list",
        journal.display()
    );
    println!(
        "  cargo run -p durable-cli -- --journal {} show {REPORT}",
        journal.display()
    );
    println!("Files left behind (delete them when done):");
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut file = journal.clone().into_os_string();
        file.push(suffix);
        if Path::new(&file).exists() {
            println!("  {}", Path::new(&file).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
