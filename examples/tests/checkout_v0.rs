//! An older version of the `checkout` workflow, kept to record the fixture
//! `fixtures/checkout-v0.db`: it ran a `fraud_check` step between charging and
//! shipping, sequentially. Today's checkout (in `src/lib.rs`) has no fraud check, so
//! replaying this journal against it diverges at step 4 (see `tests/testkit.rs`).
//!
//! This test binary does not link today's checkout, so this one can have its name.
//! It checks that the fixture replays cleanly against the code that wrote it; with
//! `DURABLE_RECORD_FIXTURES` set, it records the fixture first.

mod common;

use std::path::Path;

use durable_runtime::{Runtime, step, workflow};
use durable_testkit::{Verdict, replay_check};
use serde::{Deserialize, Serialize};

// The types as they were: the same layout as today's, so the recorded input and step
// outputs before the change still decode.

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    email: String,
    lines: Vec<Line>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Receipt {
    order_id: String,
    total_cents: u64,
    charge_id: String,
    reservations: Vec<String>,
    tracking: String,
    receipt_message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum ShopError {
    EmptyOrder,
    UnknownSku(String),
    BadQuantity(String),
    OutOfStock(String),
    GatewayTimeout,
}

#[step]
async fn validate_order(order: Order) -> Result<u64, ShopError> {
    Ok(order.lines.iter().map(|l| 450 * u64::from(l.qty)).sum())
}

#[step]
async fn reserve_stock(order_id: String, sku: String, qty: u32) -> Result<String, ShopError> {
    Ok(format!("rsv-{order_id}-{sku}-{qty}"))
}

#[step]
async fn charge_card(order_id: String, cents: u64) -> Result<String, ShopError> {
    Ok(format!("ch-{order_id}-{cents}"))
}

#[step]
async fn fraud_check(charge_id: String) -> Result<bool, ShopError> {
    Ok(!charge_id.is_empty())
}

#[step]
async fn ship(order_id: String, reservations: Vec<String>) -> Result<String, ShopError> {
    Ok(format!("TRK-{order_id}-{}", reservations.len()))
}

#[step]
async fn send_receipt(
    email: String,
    order_id: String,
    tracking: String,
) -> Result<String, ShopError> {
    Ok(format!("msg-{email}-{order_id}-{tracking}"))
}

#[workflow(name = "checkout")]
async fn checkout_v0(order: Order) -> Result<Receipt, ShopError> {
    let total_cents = validate_order(order.clone()).await?;
    let reserve_all = async {
        let mut held = Vec::new();
        for line in order.lines.clone() {
            held.push(reserve_stock(order.id.clone(), line.sku, line.qty).await?);
        }
        Ok::<_, ShopError>(held)
    };
    let (reserved, charged) = tokio::join!(reserve_all, charge_card(order.id.clone(), total_cents));
    let (reservations, charge_id) = (reserved?, charged?);
    fraud_check(charge_id.clone()).await?;
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

fn order(i: u32) -> Order {
    Order {
        id: format!("order-{i}"),
        email: format!("customer{i}@example.com"),
        lines: vec![Line {
            sku: "tea".into(),
            qty: i,
        }],
    }
}

fn record(path: &Path) {
    let _ = std::fs::remove_file(path);
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    tokio.block_on(async {
        let rt = Runtime::open(path).await.expect("open");
        for i in 1..=2 {
            let h = rt
                .start_with_id(format!("order-{i}"), checkout_v0(order(i)))
                .await
                .expect("start");
            h.result()
                .await
                .expect("finished")
                .expect("checkout succeeded");
        }
    });
    drop(tokio);
    common::seal(path);
}

#[test]
fn the_v0_fixture_replays_against_the_code_that_recorded_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkout-v0.db");
    if std::env::var_os("DURABLE_RECORD_FIXTURES").is_some() {
        record(&path);
    }
    let report = replay_check(&path).expect("v0 replays its own journal");
    println!("{report}");
    assert_eq!(report.workflows().len(), 2, "{report}");
    for w in report.workflows() {
        assert!(matches!(w.verdict, Verdict::Ok { replayed: 6 }), "{report}");
    }
}
