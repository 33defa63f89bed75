use std::cell::Cell;

use durable_runtime::step;

#[step]
async fn count(#[state] hits: &Cell<u32>) -> u32 {
    hits.get()
}

fn main() {}
