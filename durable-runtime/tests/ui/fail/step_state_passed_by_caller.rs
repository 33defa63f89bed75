use std::sync::Arc;

use durable_runtime::{step, workflow};

struct Db;

#[step]
async fn query(#[state] db: Arc<Db>, id: u32) -> u32 {
    let _ = db;
    id
}

#[workflow]
async fn flow(id: u32) -> u32 {
    // The state comes from the runtime, not from the caller.
    query(Arc::new(Db), id).await
}

fn main() {}
