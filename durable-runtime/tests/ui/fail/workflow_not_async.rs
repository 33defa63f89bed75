use durable_runtime::workflow;

#[workflow]
fn checkout(order: u32) -> u32 {
    order
}

fn main() {}
