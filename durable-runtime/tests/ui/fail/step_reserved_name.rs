use durable_runtime::step;

#[step(name = "durable::sleep")]
async fn nap(ms: u64) -> u64 {
    ms
}

fn main() {}
