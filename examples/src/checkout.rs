//! A shop checkout as a durable workflow, and a demo of crash recovery.
//!
//! ```text
//! cargo run -p durable-examples --bin checkout
//! ```
//!
//! With no arguments (or only `--journal`) the program runs a demo: it creates a fresh
//! journal (or uses the one `--journal` names: a file, or a PostgreSQL URL, whose
//! demo gets a schema of its own unless the URL names one), runs itself as
//! a child process that starts checkout `order-42` and aborts in the middle of it (a real
//! crash: no unwinding, no shutdown), then runs a second child on the same journal. The
//! second child resumes the interrupted checkout: the steps the first child recorded are
//! replayed from the journal, only the rest run.
//!
//! The workflow, [`checkout`]:
//!
//! 1. `validate_order` checks the order and prices it;
//! 2. at the same time, `reserve_all` reserves every line item (one `reserve_stock`
//!    step per line, all running at once: paths `2.1`, `2.2`, ...) and
//! 3. `charge_card` charges the card, retried with backoff when the (simulated)
//!    payment gateway times out;
//! 4. `ship` books the shipment, and
//! 5. `send_receipt` emails the receipt, passing the step's idempotency key to the mailer.
//!
//! If an item is out of stock the charge is refunded (`refund`), and reservations already
//! made are released (`release_stock`).
//!
//! Other modes (used by the demo and by `tests/crash.rs`):
//!
//! - `checkout demo-run --journal PATH [--crash-in STEP]`: one run of the demo's child.
//! - `checkout worker --journal PATH --log PATH --orders N --step-delay-ms D [--lease-ms L]`: starts
//!   orders `order-1` to `order-N` (or finds them in the journal), waits for all of
//!   them and prints `RESULT <id> <result>` for each. Every step body appends
//!   `<workflow id> <path> <step name> <µs since the epoch>` to the log file when it
//!   starts. On a PostgreSQL journal several workers can run the same orders: each
//!   order runs in one of them, the others watch for its result, and a worker that
//!   dies has its orders taken over (`--lease-ms`: `RuntimeBuilder::lease`).

use std::error::Error;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use durable_examples::{CONFIG, Config, RAN_HERE, checkout, demo_order, lock, worker_order};
use durable_runtime::Runtime;

// ---------------------------------------------------------------------------------------
// Modes.

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => demo(None),
        Some("--journal") => required(&args, "--journal").and_then(|j| demo(Some(j))),
        Some("demo-run") => demo_run(&args[1..]),
        Some("worker") => worker(&args[1..]),
        Some(_) => Err(USAGE.into()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("checkout: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: checkout [--journal PATH|URL]   (the crash-and-recover demo)
       checkout demo-run --journal PATH [--crash-in STEP]
       checkout worker --journal PATH --log PATH --orders N --step-delay-ms D [--lease-ms L]";

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

fn tokio_runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The demo: a child process crashes partway through a checkout, a second one recovers it.
fn demo(journal: Option<&str>) -> Res<ExitCode> {
    // A journal of its own for every demo run: two demos at once cannot meet, and the
    // file (or schema) stays for inspection afterwards.
    let pid = std::process::id();
    let (journal, shown, inspect, left) = match journal {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let (url, schema) = match url.split('?').nth(1).and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("schema=").map(str::to_owned))
            }) {
                Some(schema) => (url.to_owned(), schema),
                None => {
                    let schema = format!("durable_checkout_demo_{pid}");
                    let sep = if url.contains('?') { '&' } else { '?' };
                    (format!("{url}{sep}schema={schema}"), schema)
                }
            };
            let inspect = format!(
                "  psql <the URL> -c 'select id, path, s.name, attempts from {schema}.steps s \
                 join {schema}.workflows using (run)'"
            );
            let left = Left::Schema(schema.clone());
            (url, format!("PostgreSQL schema {schema}"), inspect, left)
        }
        given => {
            let file = given.map(PathBuf::from).unwrap_or_else(|| {
                std::env::temp_dir().join(format!("durable-checkout-demo-{pid}.db"))
            });
            let inspect = format!(
                "  sqlite3 {} 'select id, path, s.name, attempts from durable_steps s join \
                 durable_workflows using (run)'",
                file.display()
            );
            (
                file.display().to_string(),
                file.display().to_string(),
                inspect,
                Left::Files(file),
            )
        }
    };
    let exe = std::env::current_exe()?;
    let child = |extra: &[&str]| -> Res<std::process::ExitStatus> {
        Ok(Command::new(&exe)
            .arg("demo-run")
            .arg("--journal")
            .arg(&journal)
            .args(extra)
            .status()?)
    };

    println!("durable checkout demo: a crash in the middle of a checkout, then a recovery");
    println!("journal: {shown} (new, empty)");
    println!();
    println!("== Run 1: a child process starts checkout order-42 and will crash inside `ship`");
    let status = child(&["--crash-in", "ship"])?;
    if status.success() {
        return Err("run 1 was meant to crash, but it exited normally".into());
    }
    println!("== Run 1 died ({status}). Steps it finished are in the journal.");
    println!("  (Steps 2.1-2.3, one reservation per line, and step 3, the charge, run at the");
    println!("  same time, so their lines come in the order they happen to run. Each step's");
    println!("  number is taken when it is called, not when it ends, so a replay matches");
    println!("  every record to the same call whatever the order.)");
    println!();
    println!("== Run 2: a new child process opens the same journal");
    let status = child(&[])?;
    if !status.success() {
        return Err(format!("run 2 failed ({status})").into());
    }
    println!();
    println!("Steps run 1 recorded were not run again. `ship` had started in run 1 but was");
    println!("not recorded when the process died, so it ran again: step bodies are");
    println!("at-least-once, recorded results exactly-once.");
    println!("Inspect the journal:");
    println!("{inspect}");
    match left {
        Left::Files(file) => {
            // The journal, and what SQLite and the runtime keep beside it.
            let names: Vec<String> = ["", "-wal", "-shm", ".lock"]
                .iter()
                .map(|suffix| format!("{}{suffix}", file.display()))
                .filter(|name| std::path::Path::new(name).exists())
                .collect();
            println!("The demo leaves these files (remove them when done):");
            for name in names {
                println!("  {name}");
            }
        }
        Left::Schema(schema) => {
            println!("The demo leaves PostgreSQL schema {schema} (remove it when done:");
            println!("  psql <the URL> -c 'DROP SCHEMA {schema} CASCADE')");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a demo leaves behind, to name at its end.
enum Left {
    /// The journal file (and the files beside it).
    Files(PathBuf),
    /// The journal's PostgreSQL schema.
    Schema(String),
}

/// One run of the demo's child process.
fn demo_run(args: &[String]) -> Res<ExitCode> {
    let journal = PathBuf::from(required(args, "--journal")?);
    CONFIG
        .set(Config {
            verbose: true,
            log: None,
            step_delay: Duration::from_millis(150),
            crash_in: option(args, "--crash-in").map(str::to_owned),
        })
        .map_err(|_| "configured twice")?;
    tokio_runtime()?.block_on(async {
        let rt = Runtime::open(&journal).await?;
        println!("  process {} opened the journal", std::process::id());
        if rt.recovered().is_empty() {
            println!("  nothing to recover; starting checkout order-42");
        } else {
            println!(
                "  resuming interrupted workflow(s): {}",
                rt.recovered().join(", ")
            );
            println!("  start_with_id(\"order-42\") again: the id exists, so this returns the");
            println!("  resumed run instead of starting a second checkout");
        }
        let handle = rt.start_with_id("order-42", checkout(demo_order())).await?;
        match handle.result().await? {
            Ok(r) => println!(
                "  order-42 finished: charged {} cents ({}), ships as {}, receipt {}",
                r.total_cents, r.charge_id, r.tracking, r.receipt_message
            ),
            Err(e) => println!("  order-42 finished: checkout failed: {e:?}"),
        }
        println!("  journal of order-42:");
        let ran_here = lock(&RAN_HERE).clone();
        for s in rt.steps("order-42").await? {
            let here = ran_here.contains(&("order-42".to_owned(), s.path.to_string()));
            let how = if here {
                "ran in this process"
            } else {
                "replayed from the journal"
            };
            let attempts = if s.attempts > 1 {
                format!(" ({} attempts)", s.attempts)
            } else {
                String::new()
            };
            println!(
                "    {:<4} {:<14} {how}{attempts}",
                s.path.to_string(),
                s.name
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs orders `order-1..=N` to completion (resuming or finding them in the journal).
fn worker(args: &[String]) -> Res<ExitCode> {
    let journal = Path::new(required(args, "--journal")?).to_owned();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(required(args, "--log")?)?;
    let orders: usize = required(args, "--orders")?.parse()?;
    let delay: u64 = required(args, "--step-delay-ms")?.parse()?;
    CONFIG
        .set(Config {
            verbose: false,
            log: Some(log),
            step_delay: Duration::from_millis(delay),
            crash_in: None,
        })
        .map_err(|_| "configured twice")?;
    tokio_runtime()?.block_on(async {
        let mut builder = Runtime::builder(&journal);
        if let Some(ms) = option(args, "--lease-ms") {
            builder = builder.lease(Duration::from_millis(ms.parse()?));
        }
        let rt = builder.open().await?;
        let mut handles = Vec::new();
        for i in 1..=orders {
            let order = worker_order(i);
            handles.push(rt.start_with_id(order.id.clone(), checkout(order)).await?);
        }
        let mut code = ExitCode::SUCCESS;
        for h in handles {
            let result = h.result().await;
            if result.is_err() {
                code = ExitCode::FAILURE;
            }
            println!("RESULT {} {result:?}", h.id());
        }
        Ok(code)
    })
}
