use durable_runtime::step;

#[step(on_interrupt = "skip")]
async fn send_payment(amount: u64) -> u64 {
    amount
}

fn main() {}
