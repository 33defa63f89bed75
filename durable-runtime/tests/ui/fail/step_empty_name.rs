use durable_runtime::step;

#[step(name = "")]
async fn fetch(id: u32) -> u32 {
    id
}

fn main() {}
