use durable_runtime::workflow;

struct Receipt {
    cents: u64,
}

#[workflow]
async fn checkout(cents: u64) -> Receipt {
    Receipt { cents }
}

fn main() {}
