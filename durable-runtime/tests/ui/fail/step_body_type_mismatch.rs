use durable_runtime::step;

#[step]
async fn fetch(id: u32) -> u32 {
    format!("{id}")
}

fn main() {}
