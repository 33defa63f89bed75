use durable_runtime::workflow;

#[workflow]
async fn checkout<T: serde::Serialize>(order: T) -> u32 {
    let _ = order;
    1
}

fn main() {}
