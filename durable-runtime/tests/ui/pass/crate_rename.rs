//! `crate = ..` points the expansions at a renamed `durable_runtime`, written as a path
//! or as a string.
#![allow(dead_code)]

extern crate durable_runtime as renamed;

use ::durable_runtime as also_renamed;

// Nothing named `durable_runtime` is reachable from here through the usual path.
mod durable_runtime {}

#[renamed::step(crate = renamed)]
async fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[renamed::step(crate = also_renamed, retries = 1)]
async fn checked(a: u32) -> Result<u32, u32> {
    Ok(a)
}

#[renamed::branch(crate = "renamed")]
async fn twice(x: u32) -> u32 {
    add(x, x).await
}

#[renamed::workflow(crate = ::durable_runtime, name = "renamed_total")]
async fn total(x: u32) -> u32 {
    let a = twice(x).await;
    checked(a).await.unwrap_or(0)
}

fn main() {
    assert_eq!(total(1).name(), "renamed_total");
}
