//! A workflow whose body is a single expression on one line compiles without warnings:
//! the expansion must not wrap the user's block in braces of its own (`unused_braces`).
#![deny(warnings)]

use durable_runtime::{step, workflow};

#[step]
async fn double(x: u32) -> u32 { x * 2 }

#[workflow]
async fn just_a_value(x: u32) -> u32 { x }

#[workflow]
async fn just_a_step(x: u32) -> u32 { double(x).await }

fn main() {
    drop((just_a_value(1), just_a_step(2)));
}
