use durable_runtime::{step, workflow};

#[step]
async fn quote(provider: u32) -> u32 {
    provider
}

#[workflow]
async fn cheapest() -> u32 {
    tokio::select! {
        a = quote(1) => a,
        b = quote(2) => b,
    }
}

fn main() {}
