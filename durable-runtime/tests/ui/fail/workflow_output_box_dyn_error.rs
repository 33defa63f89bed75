use durable_runtime::workflow;

#[workflow]
async fn import(path: String) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    Ok(path.len() as u32)
}

fn main() {}
