use durable_runtime::workflow;

struct Order {
    cents: u64,
}

#[workflow]
async fn checkout(order: Order) -> u64 {
    order.cents
}

fn main() {}
