use durable_runtime::branch;

#[branch]
fn helper(x: u32) -> u32 {
    x
}

fn main() {}
