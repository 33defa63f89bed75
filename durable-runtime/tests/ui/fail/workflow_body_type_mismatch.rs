use durable_runtime::workflow;

#[workflow]
async fn total(id: u32) -> u32 {
    let doubled: String = id * 2;
    doubled
}

fn main() {}
