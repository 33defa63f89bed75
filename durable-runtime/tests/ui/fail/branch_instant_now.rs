use durable_runtime::branch;

#[branch]
async fn timed(x: u64) -> u64 {
    let start = std::time::Instant::now();
    x + start.elapsed().as_millis() as u64
}

fn main() {}
