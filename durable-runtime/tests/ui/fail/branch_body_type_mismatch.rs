use durable_runtime::branch;

#[branch]
async fn helper(x: u32) -> u32 {
    x > 1
}

fn main() {}
