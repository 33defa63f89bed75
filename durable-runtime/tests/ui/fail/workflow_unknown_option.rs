use durable_runtime::workflow;

#[workflow(retries = 3)]
async fn checkout(order: u32) -> u32 {
    order
}

fn main() {}
