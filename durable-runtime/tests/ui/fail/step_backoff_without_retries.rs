use durable_runtime::step;

#[step(backoff = 100ms)]
async fn fetch(id: u32) -> Result<u32, String> {
    Ok(id)
}

fn main() {}
