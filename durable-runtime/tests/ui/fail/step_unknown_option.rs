use durable_runtime::step;

#[step(retry = 3)]
async fn fetch(id: u32) -> Result<u32, String> {
    Ok(id)
}

fn main() {}
