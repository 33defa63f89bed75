//! `shop`: an HTTP service (axum) that runs each order as a durable workflow, and
//! survives `kill -9` at any moment. Copy it as the starting point of a service.
//!
//! ```text
//! cargo run -p durable-examples --bin shop -- --journal shop.db --listen 127.0.0.1:8080
//! ```
//!
//! `--journal` is a SQLite file (created if missing) or a PostgreSQL URL
//! (`postgres://user@host/db?schema=shop`). The service prints
//! `listening on http://ADDR` on stdout once it takes requests (`--listen 127.0.0.1:0`
//! picks a free port), and logs to stderr: text lines, or JSON lines with `--log-json`,
//! filtered by `RUST_LOG` (`info` unless set; `RUST_LOG=shop=debug,durable_runtime=info`).
//! `shop --help` lists every option.
//!
//! # Routes
//!
//! | route | answers |
//! |---|---|
//! | `POST /orders` | 202 `{"id", "status"}` (200 with `"result"` once finished): starts the order; the `Idempotency-Key` header becomes its id |
//! | `GET /orders/{id}` | 200 `{"id", "status", "result" or "failure", "steps"}`; 404 |
//! | `POST /orders/{id}/approve` | 202 `{"id", "status": "approved"}`, also to a retry; 404; 409 if it has finished or needs no approval |
//! | `GET /healthz` | 200 with the runtime's `Health` while the service takes work; 503 once not |
//!
//! - `status` is `pending`, `waiting_approval`, `completed`, `failed` (the order could
//!   not go through: `failure` says why) or `cancelled`. `steps` lists the recorded
//!   steps (path, name, `done`, attempts).
//! - `POST /orders` takes `{"email": "...", "items": [{"sku": "mug", "qty": 1}, ...]}`.
//!   The key is 1 to 100 letters, digits, `-`, `_`, `.` or `:`; a missing or bad key, or
//!   a body that is not an order, is a 400; a product the shop does not sell, a
//!   quantity out of 1-100 or an address without `@`, a 422; a body over 64 KiB, a 413.
//! - `POST /orders` and `GET /orders/{id}` take `?wait_ms=N` (up to 30 s): answer once
//!   the order has finished, or after N ms, whichever comes first.
//! - An approval sent before the order is priced gets a 409 with `Retry-After: 1`.
//! - Errors are JSON, `{"error": "..."}`, in words for the caller: 4xx for a mistake of
//!   the caller's, 503 with `Retry-After` for what a retry fixes (a shutdown under way,
//!   a journal that does not answer).
//!
//! ```text
//! curl -s localhost:8080/orders -H 'Idempotency-Key: order-1001' \
//!     -d '{"email":"ada@example.com","items":[{"sku":"mug","qty":2},{"sku":"tee","qty":1}]}'
//! curl -s localhost:8080/orders/order-1001
//! curl -s localhost:8080/orders -H 'Idempotency-Key: order-1002' \
//!     -d '{"email":"bo@example.com","items":[{"sku":"desk","qty":2}]}'
//! curl -s localhost:8080/orders/order-1002/approve -d '{"by":"grace"}'
//! curl -s localhost:8080/healthz
//! ```
//!
//! # Orders
//!
//! An order is the workflow [`shop_checkout`]: price it (`price_order`); if it comes to
//! more than $1,000.00, wait for an approval (a message on topic `approval`, which
//! `POST /orders/{id}/approve` sends); reserve every item at once (one `reserve_item`
//! step per item, retried while the warehouse is busy); charge the customer
//! (`charge_payment`, retried when the gateway does not answer); ship; send the
//! receipt. If the charge fails for good, the reservations are released. Each step's
//! result is recorded in the journal, so after a crash the order goes on where it
//! was, without running a recorded step again.
//!
//! The warehouse, the payment gateway and the mailer are simulated here, as app state
//! the steps take through `#[state]` parameters ([`Catalog`], [`Warehouse`],
//! [`Payments`], [`Mailer`]); replace them with your clients. The simulations are
//! slow on purpose (`--step-delay-ms`, 50 ms by default), the warehouse answers "busy"
//! to the first attempt of one reservation in four, and the gateway loses the answer to
//! one charge in five (after charging), so the retries have work to do.
//!
//! # Idempotency: one workflow per key, one charge per order
//!
//! - The `Idempotency-Key` is the workflow id, and `Runtime::start_with_id` starts a
//!   workflow at most once per id, whatever happens: the same key again (a client's
//!   retry, two requests at once, a request after a restart) gets the same order. Every
//!   answer for a key names the same id, and once finished the same result.
//! - The same key with another order is refused (422): the handler compares the order
//!   in the request with the order the journal recorded for the key (the workflow's
//!   input, read with `Runtime::workflow`). Equal means equal as values (the
//!   email and the items, in order), not byte for byte.
//! - Step bodies are *at least once*: a crash after a body ran but before its record
//!   committed runs it again. So the gateway deduplicates, as real ones do (Stripe's
//!   `Idempotency-Key`): the charge step passes `step_context().idempotency_key()`
//!   (`<order id>/<step path>`, the same on every attempt and after every restart),
//!   and the gateway returns the charge it made for that key instead of charging again.
//!
//! With `--side-log PATH` the simulated gateway keeps its charges in a file, as a
//! provider keeps them on its side: one line per real charge,
//! `<idempotency key> <order id> <cents>`, appended (`O_APPEND`) and synced
//! (`fdatasync`) under a lock after checking that the key has no charge yet, and read
//! back at start. `tests/shop.rs` kills the service at random moments and counts the
//! lines: one per order. Without a side log the gateway keeps its charges in memory
//! and forgets them when the process ends, so a charge step run again after a crash
//! charges again: a provider's deduplication must outlive your outages. `--body-log PATH` makes every step body append
//! `<order id> <path> <step> <attempt> start|end`, for the tests.
//!
//! # Shutting down: drain with a deadline
//!
//! On SIGTERM (or Ctrl-C) the service:
//!
//! 1. answers 503 to `GET /healthz` at once, so a load balancer stops sending it
//!    requests, and ends every `?wait_ms=` long poll with the order's status as it is;
//! 2. after `--drain-delay-ms` (0 by default; give your load balancer's health check
//!    interval here), stops accepting connections and lets the requests in flight finish;
//! 3. closes the runtime (`Runtime::close_with_grace`): running step bodies finish and
//!    their results are recorded, each workflow stops at that step boundary, and waiting
//!    ones (an order waiting for approval) stop at once. They stay pending in the
//!    journal, and the next start resumes them;
//! 4. exits with status 0.
//!
//! Steps 2 and 3 share one deadline, `--grace-ms` (10 s by default) after the listener
//! closes (keep the drain delay and the grace together under your platform's kill
//! timeout: Kubernetes sends SIGKILL 30 s after SIGTERM by default): a step body still running then is dropped, and runs again at the next start
//! (at least once, as after a crash). A second signal exits at once; the journal
//! recovers from that as from a crash. `kill -9` needs no cooperation at all: the next
//! start resumes every pending order.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::IntoFuture;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use durable_runtime::{
    Error, Runtime, StepInfo, StoreErrorKind, WorkflowHandle, WorkflowStatus, recv, step,
    step_context, workflow,
};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

// ---------------------------------------------------------------------------------------
// The command line.

/// An HTTP shop whose orders are durable workflows.
#[derive(Debug, Parser)]
#[command(name = "shop")]
struct Args {
    /// The journal: a SQLite file (created if missing) or a PostgreSQL URL.
    #[arg(long, value_name = "FILE|URL", required_unless_present = "check")]
    journal: Option<String>,
    /// Where to listen; port 0 picks a free one (the `listening on` line names it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// How long a shutdown waits for requests in flight and running step bodies.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    grace_ms: u64,
    /// How long a shutdown keeps accepting requests (answering 503 to `/healthz`)
    /// before it closes the listener.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    drain_delay_ms: u64,
    /// The simulated gateway's charges, one line each, kept across restarts.
    #[arg(long, value_name = "PATH")]
    side_log: Option<PathBuf>,
    /// Append a line to this file when each step body starts and ends (for tests).
    #[arg(long, value_name = "PATH")]
    body_log: Option<PathBuf>,
    /// How long each simulated provider call takes.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    step_delay_ms: u64,
    /// Check that no two workflows linked into this program share a name, print their
    /// names, and exit (a check to run before a deploy).
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return match Runtime::check_registry() {
            Ok(names) => {
                println!("workflows: {}", names.join(", "));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shop: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(args.log_json);
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (stdout carries the `listening on` line), filtered by `RUST_LOG`.
fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::LevelFilter;

    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if json {
        logs.json().try_init()
    } else {
        logs.try_init()
    };
    if let Err(e) = installed {
        eprintln!("shop: no logs: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Serving, and shutting down.

/// Opens the runtime, serves until a signal, drains, closes.
async fn serve(args: Args) -> Result<(), String> {
    let journal = args.journal.clone().ok_or("--journal is required")?;
    let latency = Duration::from_millis(args.step_delay_ms);
    let grace = Duration::from_millis(args.grace_ms);
    if let Some(path) = &args.body_log {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the body log {}: {e}", path.display()))?;
        let _ = BODY_LOG.set(file);
    }
    // Installed before the first request can come, so a SIGTERM from then on drains.
    let mut signals = Signals::new().map_err(|e| format!("cannot watch for signals: {e}"))?;

    let payments = Payments::open(args.side_log.as_deref(), latency)
        .map_err(|e| format!("cannot open the side log: {e}"))?;
    let catalog = Arc::new(Catalog {
        latency,
        approval_over_cents: APPROVAL_OVER_CENTS,
    });
    let rt = Runtime::builder(&journal)
        .state(catalog.clone())
        .state(Arc::new(Warehouse::new(latency)))
        .state(Arc::new(payments))
        .state(Arc::new(Mailer { latency }))
        .open()
        .await
        .map_err(|e| format!("cannot open the journal: {e}"))?;
    if !rt.recovered().is_empty() {
        info!(orders = rt.recovered().len(), "resuming pending orders");
    }
    for problem in rt.unrecoverable() {
        warn!("a pending workflow cannot run here: {problem}");
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            let _ = rt.close_with_grace(grace).await;
            return Err(format!("cannot listen on {}: {e}", args.listen));
        }
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (draining_tx, draining) = watch::channel(false);
    let app = App {
        rt: rt.clone(),
        catalog,
        draining,
    };
    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async move {
                let _ = accepting_stopped.await;
            })
            .into_future(),
    );
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    info!(%addr, journal = %rt.path().display(), "listening");

    // Serve until a signal (or until the server fails).
    let failed = tokio::select! {
        name = signals.next() => {
            info!(signal = name, "shutting down: draining");
            None
        }
        served = &mut server => Some(format!("the server stopped: {served:?}")),
    };
    // 1. Not ready any more; long polls answer now.
    draining_tx.send_replace(true);
    // A second signal exits at once: to the journal, a crash.
    tokio::spawn(async move {
        let name = signals.next().await;
        warn!(signal = name, "second signal: exiting without draining");
        std::process::exit(1);
    });
    // 2. Stop accepting, let requests in flight finish.
    tokio::time::sleep(Duration::from_millis(args.drain_delay_ms)).await;
    let deadline = Instant::now() + grace;
    let _ = stop_accepting.send(());
    if failed.is_none() {
        match tokio::time::timeout(grace, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!("the server stopped with an error: {e}"),
            Ok(Err(e)) => warn!("the server task failed: {e}"),
            Err(_) => {
                // Their connections end with the process.
                warn!("requests still in flight after the grace period: not waiting for them");
                server.abort();
            }
        }
    }
    // 3. Running step bodies finish and are recorded; pending orders wait for the next
    // start.
    let left = deadline.saturating_duration_since(Instant::now());
    let closed = rt.close_with_grace(left).await;
    match (failed, closed) {
        (None, Ok(())) => {
            info!("closed: pending orders resume at the next start");
            Ok(())
        }
        (Some(failure), _) => Err(failure),
        (None, Err(e)) => Err(format!("closing the journal failed: {e}")),
    }
}

/// SIGTERM and Ctrl-C (SIGINT), both watched from the start: a signal that comes
/// before the service waits for it still drains, rather than kill the process.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Waits for the next signal; its name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

// ---------------------------------------------------------------------------------------
// Orders: what a client posts, what the workflow records and returns.

/// Orders over this total wait for an approval: $1,000.00.
const APPROVAL_OVER_CENTS: u64 = 100_000;
/// The topic approvals are sent on.
const APPROVAL: &str = "approval";
/// The name of the record a `recv` makes (an approval received).
const RECV_RECORD: &str = "durable::recv";

/// What the shop sells, and at what price (cents).
const PRODUCTS: &[(&str, u64)] = &[
    ("mug", 1_200),
    ("tee", 2_500),
    ("lamp", 8_900),
    ("chair", 39_900),
    ("desk", 64_900),
];

/// An order as a client posts it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    email: String,
    items: Vec<Item>,
}

/// One item of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    sku: String,
    qty: u32,
}

/// The workflow's input: the order, under its id (the idempotency key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Order {
    id: String,
    email: String,
    items: Vec<Item>,
}

/// What `price_order` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Priced {
    lines: Vec<PricedLine>,
    total_cents: u64,
    needs_approval: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PricedLine {
    sku: String,
    qty: u32,
    unit_cents: u64,
}

/// An approval, sent to the order on topic [`APPROVAL`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    by: String,
}

/// What a completed order returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    order_id: String,
    email: String,
    total_cents: u64,
    charge_id: String,
    reservations: Vec<String>,
    tracking: String,
    receipt_id: String,
    approved_by: Option<String>,
}

/// Why an order failed. Recorded like a result, so it is a value, not an error type
/// that cannot be serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum OrderError {
    /// The shop does not sell this (any more: prices are looked up in a step).
    UnknownProduct(String),
    /// The warehouse stayed busy through every retry.
    WarehouseBusy,
    /// The payment gateway did not answer through every retry.
    PaymentUnavailable(String),
    /// Something that is not the customer's doing.
    Internal(String),
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::UnknownProduct(sku) => write!(f, "the shop does not sell {sku:?}"),
            OrderError::WarehouseBusy => write!(f, "the warehouse could not reserve the items"),
            OrderError::PaymentUnavailable(why) => write!(f, "the payment failed: {why}"),
            OrderError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

/// What a `shop_checkout` workflow returns.
type Outcome = Result<Receipt, OrderError>;

// ---------------------------------------------------------------------------------------
// The workflow and its steps.

/// One order, from pricing to receipt. The workflow id is the order id.
///
/// The body only decides what to call next from its input and from step results, so a
/// replay after a restart calls the same steps: everything that varies (prices, the
/// warehouse, the gateway) happens in steps, whose results are recorded.
#[workflow]
async fn shop_checkout(order: Order) -> Outcome {
    let priced = price_order(order.items.clone()).await?;

    // Wait for an approval, as long as it takes: across restarts, and with no memory
    // held after a minute (the workflow goes dormant and a message wakes it).
    let approved_by = if priced.needs_approval {
        match recv::<Approval>(APPROVAL, None).await {
            Ok(Some(approval)) => Some(approval.by),
            Ok(None) => return Err(OrderError::Internal("no approval came".into())),
            Err(e) => return Err(OrderError::Internal(e.to_string())),
        }
    } else {
        None
    };

    // Every item at once. Each `reserve_item` takes its step path when it is called,
    // in item order, so a replay matches them up whichever finished first.
    let reserved = join_all(
        priced
            .lines
            .iter()
            .map(|line| reserve_item(line.sku.clone(), line.qty)),
    )
    .await;
    let mut reservations = Vec::new();
    let mut failure = None;
    for r in reserved {
        match r {
            Ok(reservation) => reservations.push(reservation),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        if !reservations.is_empty() {
            release_items(reservations).await;
        }
        return Err(e);
    }

    let charge = match charge_payment(order.id.clone(), priced.total_cents).await {
        Ok(charge) => charge,
        Err(e) => {
            release_items(reservations).await;
            return Err(e);
        }
    };
    let tracking = ship_order(order.id.clone(), reservations.clone()).await;
    let receipt_id = send_receipt(
        order.email.clone(),
        order.id.clone(),
        priced.total_cents,
        tracking.clone(),
    )
    .await;
    Ok(Receipt {
        order_id: order.id,
        email: order.email,
        total_cents: priced.total_cents,
        charge_id: charge.id,
        reservations,
        tracking,
        receipt_id,
        approved_by,
    })
}

/// Prices the items from the catalog. A step, so the prices of the moment are recorded:
/// a price change while the order waits for approval does not change its total.
#[step]
async fn price_order(#[state] catalog: &Catalog, items: Vec<Item>) -> Result<Priced, OrderError> {
    let body = Body::start("price_order");
    tokio::time::sleep(catalog.latency).await;
    let priced = catalog.price(&items);
    body.end(priced.is_ok());
    priced
}

/// Reserves one item. The warehouse is sometimes busy: up to 4 more attempts, 20 ms
/// apart and then longer.
#[step(retries = 4, backoff = 20ms)]
async fn reserve_item(
    #[state] warehouse: &Warehouse,
    sku: String,
    qty: u32,
) -> Result<String, OrderError> {
    let body = Body::start("reserve_item");
    let reserved = warehouse.reserve(&idempotency_key(), &sku, qty).await;
    body.end(reserved.is_ok());
    reserved
}

/// Gives reservations back (an order that cannot be charged).
#[step]
async fn release_items(#[state] warehouse: &Warehouse, reservations: Vec<String>) {
    let body = Body::start("release_items");
    warehouse.release(&reservations).await;
    body.end(true);
}

/// Charges the order. The gateway deduplicates on the step's idempotency key, which is
/// the same on every attempt and every re-execution after a crash: a body that runs
/// again gets the charge it made the first time. Retried when the gateway does not
/// answer (it may have charged: the retry finds out, by the key).
#[step(retries = 4, backoff = 50ms)]
async fn charge_payment(
    #[state] payments: Arc<Payments>,
    order_id: String,
    cents: u64,
) -> Result<Charge, OrderError> {
    let body = Body::start("charge_payment");
    let charged = payments
        .charge(idempotency_key(), order_id, cents)
        .await
        .map_err(OrderError::PaymentUnavailable);
    body.end(charged.is_ok());
    charged
}

/// Books the shipment; returns its tracking number.
#[step]
async fn ship_order(
    #[state] warehouse: &Warehouse,
    order_id: String,
    reservations: Vec<String>,
) -> String {
    let body = Body::start("ship_order");
    let tracking = warehouse
        .ship(&idempotency_key(), &order_id, &reservations)
        .await;
    body.end(true);
    tracking
}

/// Emails the receipt (a mailer that deduplicates on the key sends it once).
#[step]
async fn send_receipt(
    #[state] mailer: &Mailer,
    email: String,
    order_id: String,
    total_cents: u64,
    tracking: String,
) -> String {
    let body = Body::start("send_receipt");
    let sent = mailer
        .send(
            &idempotency_key(),
            &email,
            &order_id,
            total_cents,
            &tracking,
        )
        .await;
    body.end(true);
    sent
}

/// The running step's idempotency key, `<workflow id>/<path>`.
fn idempotency_key() -> String {
    step_context().map_or_else(|| "outside-a-workflow".to_owned(), |s| s.idempotency_key())
}

// ---------------------------------------------------------------------------------------
// The providers, simulated: the app state the steps take.

/// The price list.
#[derive(Debug)]
struct Catalog {
    latency: Duration,
    approval_over_cents: u64,
}

impl Catalog {
    fn price_of(&self, sku: &str) -> Option<u64> {
        PRODUCTS.iter().find(|(s, _)| *s == sku).map(|(_, p)| *p)
    }

    fn price(&self, items: &[Item]) -> Result<Priced, OrderError> {
        let mut lines = Vec::new();
        let mut total_cents = 0;
        for item in items {
            let unit_cents = self
                .price_of(&item.sku)
                .ok_or_else(|| OrderError::UnknownProduct(item.sku.clone()))?;
            total_cents += unit_cents * u64::from(item.qty);
            lines.push(PricedLine {
                sku: item.sku.clone(),
                qty: item.qty,
                unit_cents,
            });
        }
        Ok(Priced {
            lines,
            total_cents,
            needs_approval: total_cents > self.approval_over_cents,
        })
    }

    /// Checks an order before it starts: what a caller can fix gets a 422 now rather
    /// than a failed order later.
    fn check(&self, order: &OrderRequest) -> Result<(), ApiError> {
        let unprocessable =
            |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message);
        let email = order.email.trim();
        if email.len() > 254 {
            return Err(unprocessable(format!(
                "an email address has at most 254 bytes, not {}",
                email.len()
            )));
        }
        if !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
            return Err(unprocessable(format!(
                "{} is not an email address",
                quoted(&order.email)
            )));
        }
        if order.items.is_empty() || order.items.len() > 20 {
            return Err(unprocessable(format!(
                "an order has 1 to 20 items, not {}",
                order.items.len()
            )));
        }
        for item in &order.items {
            if self.price_of(&item.sku).is_none() {
                let skus: Vec<&str> = PRODUCTS.iter().map(|(s, _)| *s).collect();
                return Err(unprocessable(format!(
                    "the shop does not sell {}; it sells {}",
                    quoted(&item.sku),
                    skus.join(", ")
                )));
            }
            if item.qty == 0 || item.qty > 100 {
                return Err(unprocessable(format!(
                    "the quantity of {} must be 1 to 100, not {}",
                    quoted(&item.sku),
                    item.qty
                )));
            }
        }
        Ok(())
    }
}

/// The warehouse: reservations and shipments, keyed by the steps' idempotency keys.
#[derive(Debug)]
struct Warehouse {
    latency: Duration,
}

impl Warehouse {
    /// One reservation in this many answers "busy" to its first attempt (chosen by its
    /// key, so a retry always gets through: the simulation never fails an order).
    const BUSY_EVERY: u64 = 4;

    fn new(latency: Duration) -> Warehouse {
        Warehouse { latency }
    }

    async fn reserve(&self, key: &str, sku: &str, qty: u32) -> Result<String, OrderError> {
        tokio::time::sleep(self.latency).await;
        let first_attempt = durable_runtime::step_context().is_none_or(|c| c.attempt() == 1);
        let unlucky = key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
            .is_multiple_of(Self::BUSY_EVERY);
        if first_attempt && unlucky {
            info!(key, sku, "warehouse busy (simulated); the step retries");
            return Err(OrderError::WarehouseBusy);
        }
        info!(key, sku, qty, "reserved");
        Ok(format!("rsv-{}", key.replace('/', "-")))
    }

    async fn release(&self, reservations: &[String]) {
        tokio::time::sleep(self.latency).await;
        info!(?reservations, "released");
    }

    async fn ship(&self, key: &str, order_id: &str, reservations: &[String]) -> String {
        tokio::time::sleep(self.latency).await;
        info!(key, order_id, items = reservations.len(), "shipped");
        format!("trk-{}", key.replace('/', "-"))
    }
}

/// The mailer.
#[derive(Debug)]
struct Mailer {
    latency: Duration,
}

impl Mailer {
    async fn send(
        &self,
        key: &str,
        email: &str,
        order_id: &str,
        total_cents: u64,
        tracking: &str,
    ) -> String {
        tokio::time::sleep(self.latency).await;
        info!(key, email, order_id, total_cents, tracking, "receipt sent");
        format!("rcpt-{}", key.replace('/', "-"))
    }
}

/// A charge the gateway made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Charge {
    id: String,
    cents: u64,
}

/// The payment gateway, deduplicating by idempotency key. With a side log its
/// charges outlive the process, as a real provider's do.
#[derive(Debug)]
struct Payments {
    latency: Duration,
    ledger: Mutex<Ledger>,
}

#[derive(Debug)]
struct Ledger {
    /// The side log, appended to.
    file: Option<File>,
    /// Every charge made, by idempotency key.
    charges: HashMap<String, Charge>,
    /// Charges made by this process.
    made: u64,
}

impl Payments {
    /// The answer to one new charge in this many is lost (after charging).
    const LOSE_EVERY: u64 = 5;

    /// The gateway, with the charges the side log at `path` holds.
    fn open(path: Option<&Path>, latency: Duration) -> std::io::Result<Payments> {
        let mut charges = HashMap::new();
        let file = match path {
            None => None,
            Some(path) => {
                match File::open(path) {
                    Ok(existing) => {
                        for line in BufReader::new(existing).lines() {
                            let line = line?;
                            let fields: Vec<&str> = line.split(' ').collect();
                            let cents = fields.get(2).and_then(|c| c.parse().ok());
                            match (fields.first(), cents) {
                                (Some(key), Some(cents)) if fields.len() == 3 => {
                                    let id = charge_id(key);
                                    charges.insert((*key).to_owned(), Charge { id, cents });
                                }
                                _ => warn!(line, "side log: a line that is not a charge"),
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Some(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(Payments {
            latency,
            ledger: Mutex::new(Ledger {
                file,
                charges,
                made: 0,
            }),
        })
    }

    /// Charges `cents` for `order_id`, once per `key`.
    async fn charge(
        self: Arc<Self>,
        key: String,
        order_id: String,
        cents: u64,
    ) -> Result<Charge, String> {
        tokio::time::sleep(self.latency).await;
        // The file is written and synced under the lock: off the async threads (in the
        // step's span, for the logs).
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| self.charge_now(&key, &order_id, cents))
        })
        .await
        .map_err(|e| format!("the gateway call failed: {e}"))?
    }

    fn charge_now(&self, key: &str, order_id: &str, cents: u64) -> Result<Charge, String> {
        let mut ledger = lock(&self.ledger);
        if let Some(charge) = ledger.charges.get(key) {
            if charge.cents != cents {
                return Err(format!(
                    "idempotency key {key} was used for {} cents, not {cents}",
                    charge.cents
                ));
            }
            info!(key, charge = %charge.id, "charge deduplicated: made before, not again");
            return Ok(charge.clone());
        }
        let charge = Charge {
            id: charge_id(key),
            cents,
        };
        if let Some(file) = ledger.file.as_mut() {
            file.write_all(format!("{key} {order_id} {cents}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("the gateway cannot record the charge: {e}"))?;
        }
        ledger.charges.insert(key.to_owned(), charge.clone());
        ledger.made += 1;
        info!(key, charge = %charge.id, cents, "charged");
        if ledger.made.is_multiple_of(Self::LOSE_EVERY) {
            warn!(
                key,
                "the gateway's answer was lost (simulated); the step retries"
            );
            return Err("the gateway did not answer".into());
        }
        Ok(charge)
    }
}

/// The id of the gateway's charge for idempotency key `key` (one charge per key).
fn charge_id(key: &str) -> String {
    format!("ch_{}", key.replace('/', "-"))
}

/// Locks a mutex; a panic elsewhere does not poison it (each update is one insert).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `--body-log`: every step body appends `<order id> <path> <step> <attempt> start`
/// when it starts and `... end` when it returns (one write each, in append mode).
static BODY_LOG: OnceLock<File> = OnceLock::new();

/// A step body, logged.
struct Body {
    line: Option<String>,
}

impl Body {
    fn start(step: &str) -> Body {
        let line = BODY_LOG.get().and_then(|_| {
            let ctx = step_context()?;
            Some(format!(
                "{} {} {step} {}",
                ctx.workflow_id(),
                ctx.path(),
                ctx.attempt()
            ))
        });
        if let Some(line) = &line {
            body_log(&format!("{line} start\n"));
        }
        Body { line }
    }

    fn end(self, ok: bool) {
        if let Some(line) = self.line {
            body_log(&format!("{line} end {}\n", if ok { "ok" } else { "err" }));
        }
    }
}

fn body_log(line: &str) {
    if let Some(mut file) = BODY_LOG.get()
        && let Err(e) = file.write_all(line.as_bytes())
    {
        warn!("cannot write the body log: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP API.

/// What every handler gets.
#[derive(Clone)]
struct App {
    rt: Runtime,
    catalog: Arc<Catalog>,
    /// True once a shutdown has begun.
    draining: watch::Receiver<bool>,
}

fn router(app: App) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/approve", post(approve_order))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(middleware::from_fn(access_log))
        .with_state(app)
}

/// A span per request, and one log line when it is answered. A workflow the request
/// starts gets a span of its own that follows from this one, so a trace links them.
async fn access_log(request: Request, next: Next) -> Response {
    let span = info_span!("request", method = %request.method(), uri = %request.uri());
    async move {
        let started = Instant::now();
        let response = next.run(request).await;
        info!(
            status = response.status().as_u16(),
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "answered"
        );
        response
    }
    .instrument(span)
    .await
}

/// A failed request: its status and what to tell the caller.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds, for a `Retry-After` header: the same request may succeed then.
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// What the runtime's errors mean to a caller.
    fn runtime(e: Error) -> ApiError {
        match e {
            Error::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "no such order"),
            Error::Closed { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down; retry",
            )
            .retry_after(1),
            Error::InvalidId { reason, .. } => ApiError::bad_request(reason),
            Error::Store(e) if e.kind() == StoreErrorKind::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down; retry",
            )
            .retry_after(1),
            Error::Store(e) => {
                error!("journal: {e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the order journal is unavailable; retry",
                )
                .retry_after(1)
            }
            e => {
                error!("{e}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal error: {e}"),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A caller's text in a message, quoted, and cut short if it is long: an error never
/// echoes a whole request back.
fn quoted(s: &str) -> String {
    match cut(s, 40) {
        Some(head) => format!("{head:?}... ({} bytes)", s.len()),
        None => format!("{s:?}"),
    }
}

/// What a caller's text reads as, in a message that is not quoting it: cut short.
fn shortened(s: &str, max: usize) -> String {
    match cut(s, max) {
        Some(head) => format!("{head}..."),
        None => s.to_owned(),
    }
}

/// The first `max` characters of `s`, if it has more.
fn cut(s: &str, max: usize) -> Option<&str> {
    s.char_indices().nth(max).map(|(at, _)| &s[..at])
}

/// serde's account of a body that is not what the route takes, which may quote the
/// body: cut short, keeping where in the body it is.
fn json_mistake(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    let what = text.strip_suffix(&at).unwrap_or(&text);
    format!("{}{at}", shortened(what, 100))
}

/// A request's body, or, if it is too long or cannot be read, the error to answer.
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body has at most {} KiB", MAX_BODY / 1024),
        ),
        status => ApiError::new(status, e.body_text()),
    })
}

/// `?wait_ms=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

/// The longest `?wait_ms=`.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn wait_of(query: Result<Query<WaitQuery>, QueryRejection>) -> Result<Duration, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(shortened(&e.body_text(), 120)))?;
    Ok(Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT))
}

/// The longest idempotency key.
const MAX_KEY: usize = 100;

/// The `Idempotency-Key` header, checked: it becomes the workflow id, and a word of the
/// side log's lines.
fn idempotency_key_of(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::bad_request(
            "missing the Idempotency-Key header: send a key of your own for each order (a \
             UUID, say), and the same key when you retry it",
        )
    })?;
    let key = value.to_str().unwrap_or_default();
    let fine = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    if key.is_empty() || key.len() > MAX_KEY || !key.chars().all(fine) {
        return Err(ApiError::bad_request(format!(
            "the Idempotency-Key must be 1 to {MAX_KEY} letters, digits, '-', '_', '.' or ':'"
        )));
    }
    Ok(key.to_owned())
}

/// The largest request body: an order of 20 items is well under 4 KiB.
const MAX_BODY: usize = 64 * 1024;

/// `POST /orders`: starts the order under its idempotency key, or finds the one the key
/// started before.
async fn create_order(
    State(app): State<App>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let wait = wait_of(query)?;
    let key = idempotency_key_of(&headers)?;
    let request: OrderRequest = serde_json::from_slice(&body_of(body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not an order ({}); send {{\"email\": \"...\", \"items\": \
             [{{\"sku\": \"mug\", \"qty\": 1}}]}}",
            json_mistake(&e)
        ))
    })?;
    app.catalog.check(&request)?;
    let order = Order {
        id: key.clone(),
        email: request.email,
        items: request.items,
    };
    // At most one workflow per id: a key seen before returns its workflow, whatever
    // this request holds.
    let handle = app
        .rt
        .start_with_id(key.clone(), shop_checkout(order.clone()))
        .await
        .map_err(ApiError::runtime)?;
    if app.recorded_order(&key).await? != order {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "Idempotency-Key {key} was used for another order; use a new key for a new order"
            ),
        ));
    }
    let view = app.view(&handle, wait, false).await?;
    let status = if view.finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = (status, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{key}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /orders/{id}`.
async fn get_order(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<OrderView>, ApiError> {
    let wait = wait_of(query)?;
    let handle = app.handle(&id).await?;
    Ok(Json(app.view(&handle, wait, true).await?))
}

/// `POST /orders/{id}/approve` with `{"by": "name"}`.
async fn approve_order(
    State(app): State<App>,
    UrlPath(id): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let approval: Approval = serde_json::from_slice(&body_of(body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not an approval ({}); send {{\"by\": \"your name\"}}",
            json_mistake(&e)
        ))
    })?;
    if approval.by.trim().is_empty() {
        return Err(ApiError::bad_request(
            "say who approves: {\"by\": \"your name\"}",
        ));
    }
    let handle = app.handle(&id).await?;
    let conflict = |message: String| ApiError::new(StatusCode::CONFLICT, message);
    match handle.status() {
        WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled => {
            return Err(conflict(format!("order {id} has finished")));
        }
        _ => {}
    }
    let steps = app.rt.steps(&id).await.map_err(ApiError::runtime)?;
    match priced(&steps) {
        None => {
            return Err(
                conflict(format!("order {id} is being priced; retry in a moment")).retry_after(1),
            );
        }
        Some(Err(e)) => return Err(conflict(format!("order {id} failed: {e}"))),
        Some(Ok(p)) if !p.needs_approval => {
            return Err(conflict(format!(
                "order {id} does not need an approval (only orders over {} do)",
                dollars(APPROVAL_OVER_CENTS)
            )));
        }
        Some(Ok(_)) => {}
    }
    // Received already (a retry of an approval that went through): nothing to send. A
    // second approval racing the first stays unread in the journal, and goes with the
    // order when finished orders are deleted.
    if !steps.iter().any(|s| s.name == RECV_RECORD) {
        app.rt
            .send(&id, APPROVAL, &approval)
            .await
            .map_err(ApiError::runtime)?;
        info!(order = %id, by = %approval.by, "approval sent");
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "id": id, "status": "approved" })),
    )
        .into_response())
}

/// `GET /healthz`: 200 while the service takes work, 503 once it does not (a journal
/// that does not answer, a shutdown under way).
async fn healthz(State(app): State<App>) -> Response {
    let h = app.rt.health().await;
    let draining = *app.draining.borrow();
    let body = HealthView {
        ready: h.is_ready() && !draining,
        draining,
        journal_reachable: h.journal_reachable,
        writer_alive: h.writer_alive,
        closing: h.closing,
        pending: h.pending,
        running: h.running,
        dormant: h.dormant,
        oldest_pending_ms: h
            .oldest_pending
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        problem: h.problem,
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /healthz`'s answer: `durable_runtime::Health`, and whether a shutdown began.
#[derive(Debug, Serialize)]
struct HealthView {
    ready: bool,
    draining: bool,
    journal_reachable: bool,
    writer_alive: bool,
    closing: bool,
    pending: Option<u64>,
    running: usize,
    dormant: usize,
    oldest_pending_ms: Option<u64>,
    problem: Option<String>,
}

async fn no_method(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {}",
            shortened(request.uri().path(), 100),
            request.method()
        ),
    )
}

async fn no_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}",
            request.method(),
            shortened(request.uri().path(), 100)
        ),
    )
}

/// An order as the API shows it.
#[derive(Debug, Serialize)]
struct OrderView {
    id: String,
    /// `pending`, `waiting_approval`, `completed`, `failed` or `cancelled`.
    status: &'static str,
    /// The receipt, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Receipt>,
    /// Why it failed, once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
    /// The recorded steps (`GET` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<StepView>>,
}

impl OrderView {
    fn finished(&self) -> bool {
        matches!(self.status, "completed" | "failed" | "cancelled")
    }
}

#[derive(Debug, Serialize)]
struct StepView {
    path: String,
    name: String,
    /// `done`, or `failed` for a step that panicked.
    status: &'static str,
    attempts: u32,
}

impl App {
    async fn handle(&self, id: &str) -> Result<WorkflowHandle<Outcome>, ApiError> {
        self.rt.handle(id).await.map_err(|e| match e {
            Error::NotFound { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no order {}", shortened(id, 100)),
            ),
            e => ApiError::runtime(e),
        })
    }

    /// The order the journal recorded for workflow `id`.
    async fn recorded_order(&self, id: &str) -> Result<Order, ApiError> {
        let read = match self.rt.workflow(id).await {
            Ok(Some(view)) => view.input::<(Order,)>().map(|(order,)| order),
            Ok(None) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no order {}", shortened(id, 100)),
                ));
            }
            Err(e) => Err(e),
        };
        read.map_err(|e| {
            error!("cannot read an order from the journal: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the order journal cannot be read; retry",
            )
            .retry_after(1)
        })
    }

    /// The order's view, after waiting up to `wait` for it to finish (less if a
    /// shutdown begins).
    async fn view(
        &self,
        handle: &WorkflowHandle<Outcome>,
        wait: Duration,
        with_steps: bool,
    ) -> Result<OrderView, ApiError> {
        if !wait.is_zero() {
            let mut draining = self.draining.clone();
            tokio::select! {
                _ = handle.result() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = draining.wait_for(|d| *d) => {}
            }
        }
        let mut view = OrderView {
            id: handle.id().to_owned(),
            status: "pending",
            result: None,
            failure: None,
            steps: None,
        };
        match handle.status() {
            WorkflowStatus::Completed | WorkflowStatus::Failed => match handle.result().await {
                Ok(Ok(receipt)) => {
                    view.status = "completed";
                    view.result = Some(receipt);
                }
                Ok(Err(e)) => {
                    view.status = "failed";
                    view.failure = Some(e.to_string());
                }
                Err(e) => {
                    view.status = "failed";
                    view.failure = Some(e.to_string());
                }
            },
            WorkflowStatus::Cancelled => view.status = "cancelled",
            // Running here, or pending for the next start.
            _ => {}
        }
        let running = view.status == "pending";
        if running || with_steps {
            let steps = self
                .rt
                .steps(handle.id())
                .await
                .map_err(ApiError::runtime)?;
            let waits = matches!(priced(&steps), Some(Ok(p)) if p.needs_approval)
                && !steps.iter().any(|s| s.name == RECV_RECORD);
            if running && waits {
                view.status = "waiting_approval";
            }
            if with_steps {
                view.steps = Some(
                    steps
                        .iter()
                        .map(|s| StepView {
                            path: s.path.to_string(),
                            name: s.name.clone(),
                            status: if s.panicked { "failed" } else { "done" },
                            attempts: s.attempts,
                        })
                        .collect(),
                );
            }
        }
        Ok(view)
    }
}

/// What `price_order` recorded, if it has.
fn priced(steps: &[StepInfo]) -> Option<Result<Priced, OrderError>> {
    let step = steps.iter().find(|s| s.name == "price_order")?;
    match step.output::<Result<Priced, OrderError>>() {
        Ok(priced) => Some(priced),
        Err(e) => Some(Err(OrderError::Internal(e.to_string()))),
    }
}

/// `$1,000.00`.
fn dollars(cents: u64) -> String {
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("${grouped}.{:02}", cents % 100)
}
