use durable_runtime::step;

#[step]
async fn greeting() -> Result<&'static str, String> {
    Ok("hello")
}

fn main() {}
