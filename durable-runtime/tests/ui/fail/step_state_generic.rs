use durable_runtime::step;

trait Gateway: Send + Sync + 'static {
    fn charge(&self, cents: u64) -> u64;
}

#[step]
async fn charge<G: Gateway>(#[state] gateway: &G, cents: u64) -> u64 {
    gateway.charge(cents)
}

#[step]
async fn charge_all<'a, G: Gateway>(#[state] gateways: std::sync::Arc<Vec<G>>, cents: u64) -> u64 {
    gateways.iter().map(|g| g.charge(cents)).sum()
}

#[step]
async fn charge_impl(#[state] gateway: &impl Gateway, cents: u64) -> u64 {
    gateway.charge(cents)
}

fn main() {}
