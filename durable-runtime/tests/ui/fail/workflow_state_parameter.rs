use durable_runtime::workflow;

struct Db;

#[workflow]
async fn flow(#[state] db: &Db, id: u32) -> u32 {
    let _ = db;
    id
}

fn main() {}
