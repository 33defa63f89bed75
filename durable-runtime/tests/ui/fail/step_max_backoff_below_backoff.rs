use durable_runtime::step;

#[step(retries = 3, backoff = 2s, max_backoff = 500ms)]
async fn fetch(id: u32) -> Result<u32, String> {
    Ok(id)
}

fn main() {}
