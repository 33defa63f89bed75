use durable_runtime::step;

#[step]
fn fetch(id: u32) -> u32 {
    id
}

fn main() {}
