//! The example workflows, as a library: the `checkout` program runs them, and the
//! tests check them with `durable-testkit` (crash at every step, completion orders,
//! replay of recorded journals).
//!
//! [`checkout`] is a shop checkout:
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
//! [`expense`] is an expense report that waits for a manager's approval (a message from
//! outside), publishes its status (an event), sleeps durably and pays out in a child
//! workflow; the `approval` program runs it.

#[path = "deploy/driver.rs"]
pub mod deploy;
pub mod expense;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use durable_runtime::{branch, step, step_context, workflow};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// The shop: an order, what checkout returns, and how it can fail.

/// An order as the web shop hands it to checkout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// The order id; checkout runs under it as its workflow id.
    pub id: String,
    /// Where the receipt goes.
    pub email: String,
    /// What was ordered.
    pub lines: Vec<Line>,
}

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// What a successful checkout returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The order.
    pub order_id: String,
    /// What was charged.
    pub total_cents: u64,
    /// The payment gateway's charge id.
    pub charge_id: String,
    /// One stock reservation per line.
    pub reservations: Vec<String>,
    /// The shipment's tracking number.
    pub tracking: String,
    /// The receipt mail's id.
    pub receipt_message: String,
}

/// Why a checkout (or one of its steps) failed. Errors are values: a step's `Err` is
/// recorded in the journal and replayed like an `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShopError {
    /// The order has no lines.
    EmptyOrder,
    /// The shop does not sell this product.
    UnknownSku(String),
    /// A line's quantity is 0 or over 100.
    BadQuantity(String),
    /// The product is out of stock.
    OutOfStock(String),
    /// The payment gateway did not answer in time.
    GatewayTimeout,
}

fn price_cents(sku: &str) -> Option<u64> {
    match sku {
        "tea" => Some(450),
        "mug" => Some(1200),
        "kettle" => Some(3500),
        "rare-vinyl" => Some(9900),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// The workflow and its steps.

/// Checks out one order. Its id in the journal is the order id.
///
/// A workflow body must make the same step calls every time it runs given the same
/// input and step outputs: everything that varies (stock, the payment gateway) happens
/// inside steps, whose outputs are recorded.
#[workflow]
pub async fn checkout(order: Order) -> Result<Receipt, ShopError> {
    let total_cents = validate_order(order.clone()).await?; // step 1

    // Reserve stock and charge the card at the same time. Each claims its step id when
    // it is called (reserve_all: 2, charge_card: 3), so the ids are the same on every
    // run whichever finishes first.
    let (reserved, charged) = tokio::join!(
        reserve_all(order.id.clone(), order.lines.clone()),
        charge_card(order.id.clone(), total_cents),
    );
    let charge_id = match charged {
        Ok(charge_id) => charge_id,
        Err(e) => {
            if let Ok(reservations) = reserved {
                release_stock(reservations).await;
            }
            return Err(e);
        }
    };
    let reservations = match reserved {
        Ok(reservations) => reservations,
        Err(e) => {
            refund(charge_id).await?;
            return Err(e);
        }
    };

    let tracking = ship(order.id.clone(), reservations.clone()).await?;
    let receipt_message = send_receipt(order.email, order.id.clone(), tracking.clone()).await?;
    Ok(Receipt {
        order_id: order.id,
        total_cents,
        charge_id,
        reservations,
        tracking,
        receipt_message,
    })
}

/// Reserves every line at once: one `reserve_stock` step per line. As a branch it takes
/// one position in the workflow (`2`) and numbers its own steps below it (`2.1`, `2.2`).
/// If any line is out of stock, the reservations that succeeded are released.
#[branch]
async fn reserve_all(order_id: String, lines: Vec<Line>) -> Result<Vec<String>, ShopError> {
    // The step ids are claimed here, in line order, when `reserve_stock` is called; the
    // spawned tasks may then finish in any order.
    let tasks: Vec<_> = lines
        .into_iter()
        .map(|line| tokio::spawn(reserve_stock(order_id.clone(), line.sku, line.qty)))
        .collect();
    let mut held = Vec::new();
    let mut failure = None;
    for task in tasks {
        match task.await.expect("a reservation task was cancelled") {
            Ok(reservation) => held.push(reservation),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        None => Ok(held),
        Some(e) => {
            if !held.is_empty() {
                release_stock(held).await;
            }
            Err(e)
        }
    }
}

#[step]
async fn validate_order(order: Order) -> Result<u64, ShopError> {
    simulate_work("validate_order", format!("{} line(s)", order.lines.len())).await;
    if order.lines.is_empty() {
        return Err(ShopError::EmptyOrder);
    }
    let mut total = 0;
    for line in &order.lines {
        let price =
            price_cents(&line.sku).ok_or_else(|| ShopError::UnknownSku(line.sku.clone()))?;
        if line.qty == 0 || line.qty > 100 {
            return Err(ShopError::BadQuantity(line.sku.clone()));
        }
        total += price * u64::from(line.qty);
    }
    Ok(total)
}

#[step]
async fn reserve_stock(order_id: String, sku: String, qty: u32) -> Result<String, ShopError> {
    simulate_work("reserve_stock", format!("{qty} x {sku}")).await;
    if sku == "rare-vinyl" {
        return Err(ShopError::OutOfStock(sku));
    }
    Ok(format!("rsv-{order_id}-{sku}-{qty}"))
}

#[step]
async fn release_stock(reservations: Vec<String>) {
    simulate_work(
        "release_stock",
        format!("{} reservation(s)", reservations.len()),
    )
    .await;
}

/// Charges the card. The simulated gateway times out on the first request this process
/// makes for an order; `retries = 3` tries again after 50 ms, then 100 ms, then 200 ms.
#[step(retries = 3, backoff = 50ms)]
async fn charge_card(order_id: String, cents: u64) -> Result<String, ShopError> {
    simulate_work("charge_card", format!("{cents} cents")).await;
    if lock(&GATEWAY_SEEN).insert(order_id.clone()) {
        say(format_args!(
            "payment gateway timed out (simulated); the step retries"
        ));
        return Err(ShopError::GatewayTimeout);
    }
    Ok(format!("ch-{order_id}-{cents}"))
}

#[step]
async fn refund(charge_id: String) -> Result<String, ShopError> {
    simulate_work("refund", charge_id.clone()).await;
    Ok(format!("rf-{charge_id}"))
}

#[step]
async fn ship(order_id: String, reservations: Vec<String>) -> Result<String, ShopError> {
    simulate_work("ship", format!("{} parcel item(s)", reservations.len())).await;
    Ok(format!("TRK-{order_id}"))
}

/// Emails the receipt. The step body runs at least once: if the process dies after the
/// mail went out but before the step's record committed, it runs again. The idempotency
/// key (`<workflow id>/<path>`) is the same every time, so a mailer that deduplicates on
/// it sends one mail.
#[step]
async fn send_receipt(
    email: String,
    order_id: String,
    tracking: String,
) -> Result<String, ShopError> {
    let key = step_context()
        .map(|s| s.idempotency_key())
        .unwrap_or_default();
    simulate_work("send_receipt", format!("to {email}, idempotency key {key}")).await;
    // mailer.send(&email, &format!("Order {order_id} ships as {tracking}"), &key).await
    let _ = (order_id, tracking);
    Ok(format!("msg-{key}"))
}

// ---------------------------------------------------------------------------------------
// Simulated work, and what the demo and the crash test observe of it.

/// How this process was asked to behave.
#[derive(Debug)]
pub struct Config {
    /// Print each step as it runs (the demo).
    pub verbose: bool,
    /// Where every step body appends `<workflow id> <path> <step name>` (the crash test).
    pub log: Option<File>,
    /// Roughly how long one step's simulated work takes.
    pub step_delay: Duration,
    /// Abort the process when this step starts (the demo's crash).
    pub crash_in: Option<String>,
}

/// How this process was asked to behave; set once, before the first step runs.
pub static CONFIG: OnceLock<Config> = OnceLock::new();

/// The `(workflow id, path)` of every step body that ran in this process.
pub static RAN_HERE: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Orders the simulated payment gateway has seen in this process.
static GATEWAY_SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Locks a mutex, ignoring poisoning (every critical section is a plain update).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn config() -> &'static Config {
    CONFIG.get_or_init(|| Config {
        verbose: false,
        log: None,
        step_delay: Duration::from_millis(100),
        crash_in: None,
    })
}

/// Prints a line about the running step (demo only).
fn say(message: std::fmt::Arguments<'_>) {
    if config().verbose {
        let path = step_context()
            .map(|s| s.path().to_string())
            .unwrap_or_default();
        println!("    step {path:<4} {message}");
    }
}

/// The start of every step body: records that the body ran, then "works" for a while.
async fn simulate_work(name: &str, detail: String) {
    let cfg = config();
    let (workflow_id, path) = step_context()
        .map(|s| (s.workflow_id().to_owned(), s.path().to_string()))
        .unwrap_or_default();
    if let Some(mut log) = cfg.log.as_ref() {
        // One write of the whole line, to a file opened in append mode: which body, and
        // when it started (µs since the epoch; the tests compare it with when its
        // step's record was made).
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        log.write_all(format!("{workflow_id} {path} {name} {us}\n").as_bytes())
            .expect("cannot write the step log");
    }
    say(format_args!("{name:<14} runs: {detail}"));
    if cfg.crash_in.as_deref() == Some(name) {
        say(format_args!(
            "*** the process aborts here (simulated crash) ***"
        ));
        std::process::abort();
    }
    // Vary the work a little per step, so concurrent steps finish in varying orders.
    let spread = workflow_id
        .bytes()
        .chain(path.bytes())
        .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b))
        % 4;
    lock(&RAN_HERE).insert((workflow_id, path));
    tokio::time::sleep(cfg.step_delay + cfg.step_delay * spread / 4).await;
}

/// The demo's order: three lines, all in stock.
pub fn demo_order() -> Order {
    Order {
        id: "order-42".into(),
        email: "ada@example.com".into(),
        lines: vec![
            Line {
                sku: "tea".into(),
                qty: 2,
            },
            Line {
                sku: "mug".into(),
                qty: 1,
            },
            Line {
                sku: "kettle".into(),
                qty: 1,
            },
        ],
    }
}

/// Order `order-<i>` of the crash test: one to three lines; every fifth order wants an
/// out-of-stock item (refund), every seventh has an invalid quantity.
pub fn worker_order(i: usize) -> Order {
    const SKUS: [&str; 3] = ["tea", "mug", "kettle"];
    let mut lines: Vec<Line> = (0..1 + i % 3)
        .map(|k| Line {
            sku: SKUS[(i + k) % 3].into(),
            qty: 1 + u32::from((i + k) % 2 == 1),
        })
        .collect();
    if i.is_multiple_of(5) {
        lines.push(Line {
            sku: "rare-vinyl".into(),
            qty: 1,
        });
    }
    if i.is_multiple_of(7) {
        lines[0].qty = 0;
    }
    Order {
        id: format!("order-{i}"),
        email: format!("customer{i}@example.com"),
        lines,
    }
}
