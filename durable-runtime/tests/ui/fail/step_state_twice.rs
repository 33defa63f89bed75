use durable_runtime::step;

struct Db;

#[step]
async fn query(#[state] #[state] db: &Db, id: u32) -> u32 {
    let _ = db;
    id
}

fn main() {}
