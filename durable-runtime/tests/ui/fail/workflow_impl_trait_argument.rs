use durable_runtime::workflow;

#[workflow]
async fn checkout(order: impl serde::Serialize) -> u32 {
    let _ = order;
    1
}

fn main() {}
