//! The expansions name only absolute paths: user items that shadow prelude and `core`
//! names, or share a name with the macros and their helpers, change nothing.
#![allow(dead_code, non_camel_case_types)]

use ::durable_runtime::{branch, step, workflow};

// Shadow the prelude and well-known paths the expansions could be tempted to use.
struct Result;
struct Option;
struct Ok;
struct Err;
struct Some;
struct None;
struct Clone;
struct Send;
struct Future;
struct Vec;
struct String;
type Box = ();
mod core {}
mod std {}
mod serde {}
mod durable_runtime {}
mod inventory {}

// Local items named like the runtime's helpers.
fn step() {}
fn branch() {}
fn boxed_send() {}
fn assert_journaled() {}
struct StepOptions;
struct WorkflowDef;
struct __DURABLE_STEP;
struct __DURABLE_WORKFLOW;

mod steps {
    use ::durable_runtime::step;

    #[step]
    pub(crate) async fn add(a: u32, b: u32) -> u32 {
        a + b
    }

    #[step(retries = 2, backoff = 1ms)]
    pub(crate) async fn checked(a: u32) -> ::core::result::Result<u32, u32> {
        ::core::result::Result::Ok(a)
    }
}

#[branch]
async fn twice(x: u32) -> u32 {
    steps::add(x, x).await
}

#[workflow]
async fn total(x: u32) -> u32 {
    let a = twice(x).await;
    let b = async { steps::add(a, 1).await }.await;
    match steps::checked(b).await {
        ::core::result::Result::Ok(v) => v,
        ::core::result::Result::Err(e) => e,
    }
}

fn main() {
    step();
    branch();
    boxed_send();
    assert_journaled();
    let _call = total(1);
}
