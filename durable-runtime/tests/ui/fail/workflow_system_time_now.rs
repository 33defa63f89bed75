use durable_runtime::workflow;

#[workflow]
async fn stamp() -> u64 {
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn main() {}
