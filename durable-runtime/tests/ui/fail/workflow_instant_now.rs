use std::time::Instant;

use durable_runtime::workflow;

#[workflow]
async fn timed() -> u64 {
    let start = Instant::now();
    start.elapsed().as_millis() as u64
}

fn main() {}
