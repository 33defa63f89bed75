use std::rc::Rc;

use durable_runtime::{step, workflow};

#[step]
async fn fetch(id: u32) -> u32 {
    id
}

#[workflow]
async fn total(id: u32) -> u32 {
    let cache = Rc::new(id);
    let fetched = fetch(id).await;
    *cache + fetched
}

fn main() {}
