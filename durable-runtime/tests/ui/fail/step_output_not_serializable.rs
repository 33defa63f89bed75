use durable_runtime::step;

struct Receipt {
    id: u32,
}

#[step]
async fn charge(id: u32) -> Receipt {
    Receipt { id }
}

fn main() {}
