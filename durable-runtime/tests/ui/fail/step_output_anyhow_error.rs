use durable_runtime::step;

#[step]
async fn fetch_rate(currency: String) -> Result<u64, anyhow::Error> {
    anyhow::ensure!(currency == "EUR", "no rate for {currency}");
    Ok(108)
}

fn main() {}
