//! Build 2 of `fulfil` (see `deploy/driver.rs`) with a change the recorded values cannot
//! follow: `total_cents` became an `i32`, which the recorded 4,000,000,000 does not fit.

use durable_runtime::{recv, set_event, step, workflow};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    sku: String,
    qty: u32,
    total_cents: i32,
    discontinued: bool,
}

#[derive(Debug, Serialize, Deserialize)]
enum Decision {
    Pending,
    Approved,
    Rejected,
}

#[step]
async fn price(id: String) -> Order {
    Order {
        sku: format!("tea-{id}"),
        qty: 7,
        total_cents: 1,
        discontinued: false,
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
    let decision = decide(order.qty).await;
    let _ = set_event("waiting", &true).await;
    let _ = recv::<bool>("go", None).await;
    format!(
        "{shipped} v2-out-of-range total={} decision={decision:?}",
        order.total_cents
    )
}

fn main() -> std::process::ExitCode {
    durable_examples::deploy::main(None)
}
