//! Procedural macros for [`durable-runtime`](https://docs.rs/durable-runtime).
//!
//! Use them through `durable_runtime::{workflow, step, branch}`; their documentation,
//! with examples, lives there. The expansions name only `durable_runtime::__private`
//! (or the path given with `crate = ..`), which is not public API.

mod args;
mod errors;
mod expand;
mod guard;
mod rewrite;
mod state;
mod validate;

use proc_macro::TokenStream;

/// Makes an `async fn` a durable step. See `durable_runtime::step`.
#[proc_macro_attribute]
pub fn step(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::step(args.into(), item.into()).into()
}

/// Makes an `async fn` a durable workflow. See `durable_runtime::workflow`.
#[proc_macro_attribute]
pub fn workflow(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::workflow(args.into(), item.into()).into()
}

/// Makes an async helper a branch of the workflow that calls it. See
/// `durable_runtime::branch`.
#[proc_macro_attribute]
pub fn branch(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::branch(args.into(), item.into()).into()
}
