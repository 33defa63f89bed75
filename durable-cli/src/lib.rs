//! The `durable` command: lists, inspects and steers the workflows of a durable
//! journal from outside the process that runs them, while it runs or while it is down.
//!
//! ```text
//! durable --journal shop.db list --status failed
//! durable --journal shop.db show order-42
//! durable --journal shop.db send order-42 approval '{"approved": true, "by": "grace"}'
//! durable --journal shop.db cancel order-42
//! durable --journal shop.db fork order-42 3 order-42-retry
//! durable --journal shop.db gc --older-than 30d
//! durable --journal shop.db timeline order-42 -o order-42.svg
//! durable --journal shop.db start send_invoice invoice-42 '["acme", 129900]'
//! durable --journal shop.db ui
//! DURABLE_JOURNAL='postgres://app@db/app?schema=durable' durable list
//! ```
//!
//! The journal comes from `--journal` or the `DURABLE_JOURNAL` environment variable: a
//! SQLite file, or a PostgreSQL URL.
//! `--json` prints JSON for scripts instead of tables. Recorded values are shown as
//! JSON when the journal's encoding says what they hold (CBOR, the default codec);
//! values recorded with the bincode codec are shown by size only.
//!
//! Commands that change a workflow (`send`, `start`, `cancel`, `resume`, `fork`) go
//! through [`durable_runtime::Client`]. On SQLite they are recorded in the journal and
//! applied by the runtime that owns it, at once if it runs, or at its next open. On
//! PostgreSQL the client applies them itself, and the runtimes sharing the journal act
//! on them at once.
//!
//! Exit codes, for scripts:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (for a command: applied) |
//! | 1 | failed: the journal cannot be read or written, or the runtime refused the command |
//! | 2 | the command line is not valid |
//! | 3 | no such journal, or no such workflow |
//! | 4 | the command is recorded, but no runtime applied it yet: none holds the journal (it is applied at the next open), or the one that does did not within `--wait` |
//!
//! A program can offer the same commands with [`run`], passing its own arguments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `println!`, except that a closed stdout (`durable list | head`) ends the program
/// quietly with status 0 instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod timeline;
mod ui;

use clap::{Parser, Subcommand};
use comfy_table::{ContentArrangement, Table, presets};
use durable_runtime::{
    Client, Cursor, Delivery, Error, ListQuery, Order, RecordedStatus, StepInfo, WorkflowView,
};
use serde_json::{Value, json};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "durable",
    version,
    about = "List, inspect and steer the workflows of a durable journal",
    after_help = "Exit codes: 0 done, 1 failed, 2 bad command line, 3 no such journal or \
                  workflow, 4 command recorded but not applied yet."
)]
struct Cli {
    /// The journal: a SQLite file, or a PostgreSQL URL
    /// (`postgres://user@host/db?schema=durable`; keep a password in DURABLE_JOURNAL
    /// or PGPASSWORD rather than on the command line).
    #[arg(long, short, env = "DURABLE_JOURNAL", global = true)]
    journal: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List workflow runs, newest first.
    List {
        /// Only runs in this status: pending, completed, failed or cancelled.
        #[arg(long)]
        status: Option<RecordedStatus>,
        /// Only runs of this workflow.
        #[arg(long)]
        name: Option<String>,
        /// Only children of this workflow.
        #[arg(long)]
        parent: Option<String>,
        /// Only runs started at or after this time (RFC 3339, such as 2026-12-05T10:00:00Z).
        #[arg(long)]
        started_after: Option<jiff::Timestamp>,
        /// Only runs started before this time (RFC 3339).
        #[arg(long)]
        started_before: Option<jiff::Timestamp>,
        /// Oldest first.
        #[arg(long)]
        oldest_first: bool,
        /// At most this many runs (1 to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=10000))]
        limit: u16,
        /// The page after this cursor (printed at the end of a listing).
        #[arg(long)]
        after: Option<Cursor>,
    },
    /// Show one workflow run and its steps.
    Show {
        /// The workflow id.
        id: String,
    },
    /// The recorded steps of a workflow run.
    Steps {
        /// The workflow id.
        id: String,
    },
    /// The events a workflow run set.
    Events {
        /// The workflow id.
        id: String,
    },
    /// The messages waiting to be received.
    Messages {
        /// Only those for this workflow.
        #[arg(long)]
        to: Option<String>,
    },
    /// Send a message (a JSON value) to a workflow, as `Runtime::send` does.
    Send {
        /// The workflow it is for.
        id: String,
        /// Its topic.
        topic: String,
        /// The value, as JSON: `7`, `"text"`, `{"approved": true}` (`-`: read it from
        /// stdin).
        value: String,
        /// How long to wait for the runtime that owns the journal to apply it.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Cancel a workflow and its pending children.
    Cancel {
        /// The workflow id.
        id: String,
        /// How long to wait for the runtime that owns the journal to apply it.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Start workflow ID as a run of the workflow named NAME (once: nothing happens if
    /// ID is a run of NAME already).
    Start {
        /// The workflow's name (its function's name, or the `name = ...` it gives).
        name: String,
        /// The new run's id.
        id: String,
        /// Its arguments as a JSON array, `[30]` or `["acme", 129900]` (`-`: read it
        /// from stdin). None for a workflow without arguments.
        #[arg(default_value = "[]")]
        input: String,
        /// How long to wait for the runtime that owns the journal to apply it.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Start NEW_ID as a fork of ID: it reuses ID's recorded steps before FROM_STEP
    /// and runs the rest with the owner's current code.
    Fork {
        /// The workflow to fork.
        id: String,
        /// The first step to run again (a path from `durable show`, such as 3 or 2.1).
        from_step: String,
        /// The new workflow's id.
        new_id: String,
        /// How long to wait for the runtime that owns the journal to apply it.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Delete the workflow runs that finished more than --older-than ago, with
    /// everything recorded for them (never a pending run, nor one a pending or
    /// resumable run may still need), and give the space back. Safe while a runtime
    /// holds the journal.
    Gc {
        /// How old a finished run must be to go: 30d, 12h, 90m, 10s.
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
    /// Rewrite the journal compactly and make it one `gc` shrinks (for journals made
    /// before schema 13). Needs the journal to itself: no runtime may hold it.
    Vacuum,
    /// Draw a workflow's timeline: one row per branch, a bar per step attempt.
    Timeline {
        /// The workflow id.
        id: String,
        /// Where to write it: FILE.svg (the picture) or FILE.html (a page with it).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Serve a local web view of the journal (read-only unless --allow-control).
    Ui {
        /// The address to listen on (loopback unless you say otherwise).
        #[arg(long, default_value = "127.0.0.1:7777")]
        bind: std::net::SocketAddr,
        /// Allow cancel and resume from the pages, for requests that carry --token.
        #[arg(long, requires = "token")]
        allow_control: bool,
        /// The token control requests must carry (with --allow-control).
        #[arg(long, env = "DURABLE_UI_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Resume a cancelled or failed workflow from its last recorded step.
    Resume {
        /// The workflow id.
        id: String,
        /// How long to wait for the runtime that owns the journal to apply it.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
    },
}

/// `500ms`, `10s`, `2m`, `12h`, `30d`: a whole number and a unit.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| {
        format!("{text:?} is not a duration: write it as 500ms, 10s, 2m, 12h or 30d")
    })?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        "d" => Ok(Duration::from_secs(n.saturating_mul(86_400))),
        _ => Err(format!(
            "{text:?} is not a duration: write it as 500ms, 10s, 2m, 12h or 30d"
        )),
    }
}

/// Why a command did not succeed, and its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match e {
            Error::NotFound { .. } => 3,
            Error::Store(ref e) if e.kind() == durable_runtime::StoreErrorKind::NotAJournal => 3,
            Error::InvalidId { .. } => 2,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// Runs the `durable` command with `args` (the program's name first, as
/// `std::env::args_os` gives them), printing to stdout and stderr, and answers the
/// exit code.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("durable: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Whether `journal` is a PostgreSQL URL rather than a file.
fn is_url(journal: &std::path::Path) -> bool {
    journal.to_str().is_some_and(|j| {
        j.split_once("://").is_some_and(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
        })
    })
}

fn execute(cli: Cli) -> Result<u8, Failure> {
    let Some(journal) = cli.journal else {
        return Err(Failure {
            code: 2,
            message: "no journal: pass --journal PATH, or set DURABLE_JOURNAL".into(),
        });
    };
    if !is_url(&journal) && !journal.exists() {
        return Err(Failure {
            code: 3,
            message: format!(
                "no journal at {}: give the path of an existing journal (a runtime creates \
                 one at its first open)",
                journal.display()
            ),
        });
    }
    let client = Client::open(&journal)?;
    let json = cli.json;
    match cli.command {
        Command::List {
            status,
            name,
            parent,
            started_after,
            started_before,
            oldest_first,
            limit,
            after,
        } => {
            let mut query = ListQuery::new().limit(usize::from(limit));
            if let Some(s) = status {
                query = query.status(s);
            }
            if let Some(n) = name {
                query = query.name(n);
            }
            if let Some(p) = parent {
                query = query.parent(p);
            }
            if let Some(t) = started_after {
                query = query.started_after(system_time(t)?);
            }
            if let Some(t) = started_before {
                query = query.started_before(system_time(t)?);
            }
            if oldest_first {
                query = query.order(Order::OldestFirst);
            }
            if let Some(c) = after {
                query = query.after(c);
            }
            let page = client.list(&query)?;
            if json {
                let rows: Vec<Value> = page.workflows.iter().map(workflow_json).collect();
                print_json(&json!({
                    "workflows": rows,
                    "next": page.next.map(|c| c.to_string()),
                }));
            } else {
                let mut table = table(&["ID", "NAME", "STATUS", "STARTED", "DURATION", "PARENT"]);
                for w in &page.workflows {
                    add_row(
                        &mut table,
                        vec![
                            w.id.clone(),
                            w.name.clone(),
                            w.status.to_string(),
                            time(w.created_at_ms),
                            w.finished_at_ms
                                .map_or_else(|| "running".into(), |f| span(f - w.created_at_ms)),
                            w.parent_id.clone().unwrap_or_default(),
                        ],
                    );
                }
                out!("{table}");
                match page.next {
                    Some(c) => out!("more: --after {c}"),
                    None => out!("{} run(s)", page.workflows.len()),
                }
            }
            Ok(0)
        }
        Command::Show { id } => {
            let w = found(&id, client.workflow(&id)?)?;
            let steps = client.steps(&id)?;
            if json {
                print_json(&json!({
                    "workflow": workflow_json(&w),
                    "steps": steps.iter().map(|s| step_json(Some(&w), s)).collect::<Vec<_>>(),
                }));
            } else {
                out!("workflow  {}", clean(&w.id));
                out!("name      {}", clean(&w.name));
                out!("status    {}", clean(&status_line(&w)));
                if let Some(p) = &w.parent_id {
                    out!("parent    {}", clean(p));
                }
                if let Some(f) = &w.forked_from {
                    out!("forked    from {}", clean(f));
                }
                out!("started   {}", time(w.created_at_ms));
                for r in &w.replayed_at_ms {
                    out!(
                        "restarted {} (replayed the steps recorded before)",
                        time(*r)
                    );
                }
                if let Some(f) = w.finished_at_ms {
                    out!(
                        "finished  {} (after {})",
                        time(f),
                        span(f - w.created_at_ms)
                    );
                }
                out!(
                    "input     {}",
                    preview(&value_text(w.input::<Value>()), 200)
                );
                match w.output::<Value>() {
                    Ok(Some(v)) => out!("output    {}", clean(&preview(&v.to_string(), 200))),
                    Ok(None) => {}
                    Err(e) => out!("output    {}", value_text(Err(e))),
                }
                out!();
                print_steps(Some(&w), &steps);
            }
            Ok(0)
        }
        Command::Steps { id } => {
            let steps = client.steps(&id)?;
            let w = client.workflow(&id)?;
            if steps.is_empty() {
                found(&id, w.clone())?;
            }
            if json {
                let all = steps.iter().map(|s| step_json(w.as_ref(), s)).collect();
                print_json(&Value::Array(all));
            } else {
                print_steps(w.as_ref(), &steps);
            }
            Ok(0)
        }
        Command::Events { id } => {
            let events = client.events(&id)?;
            if events.is_empty() {
                found(&id, client.workflow(&id)?)?;
            }
            if json {
                let rows: Vec<Value> = events
                    .iter()
                    .map(|e| {
                        json!({
                            "key": e.key,
                            "set_at": time(e.set_at_ms),
                            "value": value_json(e.value::<Value>()),
                        })
                    })
                    .collect();
                print_json(&Value::Array(rows));
            } else {
                let mut table = table(&["KEY", "SET", "VALUE"]);
                for e in &events {
                    add_row(
                        &mut table,
                        vec![
                            e.key.clone(),
                            time(e.set_at_ms),
                            preview(&value_text(e.value::<Value>()), 80),
                        ],
                    );
                }
                out!("{table}");
            }
            Ok(0)
        }
        Command::Messages { to } => {
            let messages: Vec<_> = client
                .messages()?
                .into_iter()
                .filter(|m| to.as_ref().is_none_or(|t| &m.destination == t))
                .collect();
            if json {
                let rows: Vec<Value> = messages
                    .iter()
                    .map(|m| {
                        json!({
                            "to": m.destination,
                            "topic": m.topic,
                            "sent_at": time(m.sent_at_ms),
                            "value": value_json(m.value::<Value>()),
                        })
                    })
                    .collect();
                print_json(&Value::Array(rows));
            } else {
                let mut table = table(&["TO", "TOPIC", "SENT", "VALUE"]);
                for m in &messages {
                    add_row(
                        &mut table,
                        vec![
                            m.destination.clone(),
                            m.topic.clone(),
                            time(m.sent_at_ms),
                            preview(&value_text(m.value::<Value>()), 80),
                        ],
                    );
                }
                out!("{table}");
            }
            Ok(0)
        }
        Command::Send {
            id,
            topic,
            value,
            wait,
        } => {
            let value: Value = serde_json::from_str(&argument(value)?).map_err(|e| Failure {
                code: 2,
                message: format!(
                    "the value is not JSON ({e}): write it as 7, \"text\" or {{\"approved\": true}}"
                ),
            })?;
            let client = client.apply_timeout(wait);
            let delivery = block_on(client.send(&id, &topic, &value))??;
            Ok(report(json, "send", &id, delivery))
        }
        Command::Start {
            name,
            id,
            input,
            wait,
        } => {
            let input = match serde_json::from_str::<Value>(&argument(input)?) {
                // No arguments: the empty tuple.
                Ok(Value::Array(args)) if args.is_empty() => Value::Null,
                Ok(args @ Value::Array(_)) => args,
                Ok(_) | Err(_) => {
                    return Err(Failure {
                        code: 2,
                        message: "the input is not a JSON array of the workflow's arguments: \
                                  write it as [30] or [\"acme\", 129900] ([] for none)"
                            .into(),
                    });
                }
            };
            let client = client.apply_timeout(wait);
            let delivery = block_on(client.start(&name, &id, &input))??;
            Ok(report(json, "start", &id, delivery))
        }
        Command::Cancel { id, wait } => {
            let client = client.apply_timeout(wait);
            let delivery = block_on(client.cancel(&id))??;
            Ok(report(json, "cancel", &id, delivery))
        }
        Command::Fork {
            id,
            from_step,
            new_id,
            wait,
        } => {
            let client = client.apply_timeout(wait);
            let delivery = block_on(client.fork(&id, &from_step, &new_id))??;
            Ok(report(json, "fork", &id, delivery))
        }
        Command::Gc { older_than } => {
            let report = block_on(client.gc(older_than))??;
            if json {
                print_json(&json!({
                    "workflows": report.workflows,
                    "commands": report.commands,
                    "reclaimed": report.reclaimed,
                }));
            } else {
                out!(
                    "deleted {} finished run(s) and {} applied command(s); {}",
                    report.workflows,
                    report.commands,
                    if report.reclaimed {
                        "their space went back to the file system"
                    } else if client.view().is_none() {
                        "PostgreSQL's autovacuum reclaims their space"
                    } else {
                        "their space stays in the file for new runs (run `durable vacuum` \
                         once, while no runtime holds the journal, to make gc shrink it)"
                    }
                );
            }
            Ok(0)
        }
        Command::Vacuum => {
            block_on(client.vacuum())??;
            if !json {
                if client.view().is_none() {
                    out!("nothing to do on PostgreSQL: its autovacuum reclaims the space gc frees");
                } else {
                    out!("vacuumed {}: gc now gives space back", journal.display());
                }
            }
            Ok(0)
        }
        Command::Timeline { id, output } => {
            let Some((w, steps, children, events)) = ui::gather(&client, &id)? else {
                return Err(Error::NotFound { workflow_id: id }.into());
            };
            let now = now_ms();
            let text = match output.extension().and_then(|e| e.to_str()) {
                Some("svg") => timeline::svg(&w, &steps, now, &|child| format!("#{child}")),
                Some("html" | "htm") => ui::page(
                    &w.id,
                    None,
                    &ui::workflow_body(&w, &steps, &children, &events, now, false),
                ),
                _ => {
                    return Err(Failure {
                        code: 2,
                        message: format!(
                            "{}: name the file .svg (the picture) or .html (a page with it)",
                            output.display()
                        ),
                    });
                }
            };
            std::fs::write(&output, text).map_err(|e| Failure {
                code: 1,
                message: format!("cannot write {}: {e}", output.display()),
            })?;
            if !json {
                out!("wrote the timeline of {id} to {}", output.display());
            }
            Ok(0)
        }
        Command::Ui {
            bind,
            allow_control,
            token,
        } => {
            let token = if allow_control {
                match token.filter(|t| t.len() >= 8) {
                    Some(t) => Some(t),
                    None => {
                        return Err(Failure {
                            code: 2,
                            message: "--allow-control needs a --token (or DURABLE_UI_TOKEN) of at least 8 characters, which control requests must carry"
                                .into(),
                        });
                    }
                }
            } else {
                if token.is_some() {
                    eprintln!(
                        "durable: a token is given but not --allow-control: the view is read-only"
                    );
                }
                None
            };
            let served = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure {
                    code: 1,
                    message: format!("cannot start an async runtime: {e}"),
                })?
                .block_on(ui::serve(client, bind, token));
            served.map_err(|message| Failure { code: 1, message })?;
            Ok(0)
        }
        Command::Resume { id, wait } => {
            let client = client.apply_timeout(wait);
            let delivery = block_on(client.resume(&id))??;
            Ok(report(json, "resume", &id, delivery))
        }
    }
}

/// `t` as a `SystemTime`.
fn system_time(t: jiff::Timestamp) -> Result<std::time::SystemTime, Failure> {
    std::time::SystemTime::try_from(t).map_err(|e| Failure {
        code: 2,
        message: format!("the time {t} is out of range: {e}"),
    })
}

/// Runs a client's command on a runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start an async runtime: {e}"),
        })?;
    Ok(rt.block_on(f))
}

/// Prints what became of a command; answers its exit code.
/// A command-line argument, or stdin if it is `-`.
fn argument(given: String) -> Result<String, Failure> {
    if given != "-" {
        return Ok(given);
    }
    let mut read = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut read).map_err(|e| Failure {
        code: 2,
        message: format!("cannot read stdin: {e}"),
    })?;
    Ok(read)
}

fn report(json: bool, what: &str, id: &str, delivery: Delivery) -> u8 {
    let (applied, text, code) = match delivery {
        Delivery::Applied => (true, format!("{what} {id}: applied"), 0),
        _ => (
            false,
            format!(
                "{what} {id}: recorded in the journal, not applied yet: no runtime holds the \
                 journal now (the next one to open it applies it), or the one that does did \
                 not within --wait"
            ),
            4,
        ),
    };
    if json {
        print_json(&json!({ "command": what, "workflow": id, "applied": applied }));
    } else {
        out!("{text}");
    }
    code
}

/// The workflow `id` found, or the failure that says it is not there.
fn found(id: &str, w: Option<WorkflowView>) -> Result<WorkflowView, Failure> {
    w.ok_or_else(|| {
        Failure::from(Error::NotFound {
            workflow_id: id.to_owned(),
        })
    })
}

fn status_line(w: &WorkflowView) -> String {
    match (&w.failure_message, &w.cancel_reason) {
        (Some(m), _) => format!("{} ({m})", w.status),
        (None, Some(r)) => format!("{} ({r})", w.status),
        _ => w.status.to_string(),
    }
}

fn print_steps(w: Option<&WorkflowView>, steps: &[StepInfo]) {
    let mut table = table(&[
        "PATH", "NAME", "KIND", "STATUS", "ATTEMPTS", "STARTED", "DURATION", "OUTPUT",
    ]);
    for s in steps {
        add_row(
            &mut table,
            vec![
                s.path.to_string(),
                s.name.clone(),
                kind(s).into(),
                step_status(w, s).into(),
                s.attempts.to_string(),
                time(s.started_at_ms),
                span(s.finished_at_ms - s.started_at_ms),
                if s.panicked {
                    String::new()
                } else {
                    preview(&value_text(s.output::<Value>()), 60)
                },
            ],
        );
    }
    out!("{table}");
    let internal = steps.iter().filter(|s| kind(s) == "internal").count();
    if internal > 0 {
        out!(
            "{} step(s), {internal} of them internal: records durable keeps for its own \
             operations (durable::sleep, durable::recv, ...), not steps of your code",
            steps.len()
        );
    } else {
        out!("{} step(s)", steps.len());
    }
}

/// Whether a record is one of the user's steps or one of durable's own operations.
fn kind(s: &StepInfo) -> &'static str {
    if s.name.starts_with("durable::") {
        "internal"
    } else {
        "step"
    }
}

/// What became of a recorded step in its run `w`: `ran` (in the run's latest start),
/// `replayed` (it ran before the run was started again from the journal, which then
/// returned its recorded result), `copied` (from the run a fork came from), or
/// `panicked`.
pub(crate) fn step_status(w: Option<&WorkflowView>, s: &StepInfo) -> &'static str {
    if s.panicked {
        return "panicked";
    }
    let Some(w) = w else { return "recorded" };
    if s.finished_at_ms < w.created_at_ms {
        "copied"
    } else if w.replayed_at_ms.iter().any(|r| s.finished_at_ms <= *r) {
        "replayed"
    } else {
        "ran"
    }
}

fn workflow_json(w: &WorkflowView) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "status": w.status.as_str(),
        "parent": w.parent_id,
        "forked_from": w.forked_from,
        "started_at": time(w.created_at_ms),
        "finished_at": w.finished_at_ms.map(time),
        "replayed_at": w.replayed_at_ms.iter().map(|t| time(*t)).collect::<Vec<_>>(),
        "failure": w.failure_message,
        "cancel_reason": w.cancel_reason.map(|r| r.to_string()),
        "input": value_json(w.input::<Value>()),
        "output": value_json(w.output::<Value>().map(Option::unwrap_or_default)),
    })
}

fn step_json(w: Option<&WorkflowView>, s: &StepInfo) -> Value {
    json!({
        "path": s.path.to_string(),
        "name": s.name,
        "kind": kind(s),
        "status": step_status(w, s),
        "attempts": s.attempts,
        "started_at": time(s.started_at_ms),
        "duration_ms": s.finished_at_ms - s.started_at_ms,
        "output": if s.panicked { Value::Null } else { value_json(s.output::<Value>()) },
    })
}

/// A recorded value as JSON, or an object that says why it is not shown.
fn value_json(v: durable_runtime::Result<Value>) -> Value {
    match v {
        Ok(v) => v,
        Err(e) => json!({ "not_shown": not_shown(&e) }),
    }
}

/// A recorded value as one line of text.
fn value_text(v: durable_runtime::Result<Value>) -> String {
    match v {
        Ok(v) => v.to_string(),
        Err(e) => format!("<{}>", not_shown(&e)),
    }
}

fn not_shown(e: &Error) -> String {
    match e {
        // A value whose encoding does not describe itself (the bincode codec), or one
        // of durable's own records, which wrap the value they hold.
        Error::Incompatible { .. } => "binary value, not shown".into(),
        other => other.to_string(),
    }
}

/// `text` with its control characters shown as `\u{..}` escapes: values a workflow
/// or a sender chose must not move the cursor or retitle the terminal.
fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `text` cut to `max` characters.
fn preview(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Milliseconds since the epoch as UTC time.
fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// A duration in milliseconds, readably.
fn span(ms: i64) -> String {
    match ms {
        ..0 => "0ms".into(),
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.2}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// Adds `cells` to `table`, each cleaned of control characters.
fn add_row(table: &mut Table, cells: Vec<String>) {
    table.add_row(cells.iter().map(|c| clean(c)).collect::<Vec<_>>());
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    t
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => out!("{text}"),
        Err(e) => eprintln!("durable: cannot print JSON: {e}"),
    }
}
