use durable_runtime::workflow;

#[workflow(name = "durable::checkout")]
async fn checkout(order: u32) -> u32 {
    order
}

fn main() {}
