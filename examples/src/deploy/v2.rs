//! Build 2 of `fulfil` (see `deploy/driver.rs`): every change keeps the recorded values
//! meaningful. A field added with a default and one removed, `u32` widened to `u64`,
//! `u32` to `i32` for a value that fits, a variant added in front and one moved.

use durable_runtime::{recv, set_event, step, workflow};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    sku: String,
    qty: i32,
    total_cents: u64,
    #[serde(default)]
    gift: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum Decision {
    Draft,
    Rejected,
    Pending,
    Escalated,
    Approved,
}

#[step]
async fn price(id: String) -> Order {
    Order {
        sku: format!("tea-{id}"),
        qty: 7,
        total_cents: 4_000_000_000,
        gift: true,
    }
}

/// Takes the recorded order as its argument: a replay compares the argument's
/// fingerprint, which a field added with its default does not change.
#[step]
async fn ship(order: Order) -> String {
    format!("shipped {}", order.sku)
}

#[step]
async fn decide(qty: u32) -> Decision {
    if qty > 0 {
        Decision::Approved
    } else {
        Decision::Rejected
    }
}

#[workflow]
async fn fulfil(id: String) -> String {
    let order = price(id).await;
    let shipped = ship(order.clone()).await;
    let decision = decide(u32::try_from(order.qty).unwrap_or_default()).await;
    let _ = set_event("waiting", &true).await;
    let _ = recv::<bool>("go", None).await;
    format!(
        "{shipped} v2 sku={} qty={} total={} gift={} decision={decision:?}",
        order.sku, order.qty, order.total_cents, order.gift
    )
}

fn main() -> std::process::ExitCode {
    durable_examples::deploy::main(None)
}
