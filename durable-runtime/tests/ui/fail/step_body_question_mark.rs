use durable_runtime::step;

#[step]
async fn parse(text: String) -> Result<u32, String> {
    let n: u32 = text.parse()?;
    Ok(n)
}

fn main() {}
