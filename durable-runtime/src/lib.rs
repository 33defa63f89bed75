//! Durable execution for async Rust, journaled to an embedded SQLite database.
//!
//! Mark async functions `#[workflow]` and `#[step]`. Each completed step's output is
//! checkpointed to the journal; if the process dies, the next [`Runtime::open`] resumes
//! every interrupted workflow, returning recorded outputs for the steps that finished and
//! running only the rest.
//!
//! ```
//! use durable_runtime::{Runtime, step, workflow};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Order { sku: String, qty: u32, cents: u64 }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! enum ShopError { OutOfStock, Declined }
//!
//! #[step(retries = 3)]
//! async fn reserve(sku: String, qty: u32) -> Result<String, ShopError> {
//!     Ok(format!("rsv-{sku}-{qty}"))
//! }
//!
//! #[step]
//! async fn charge(cents: u64) -> Result<String, ShopError> {
//!     if cents == 0 { return Err(ShopError::Declined) }
//!     Ok(format!("ch-{cents}"))
//! }
//!
//! #[workflow]
//! async fn checkout(order: Order) -> Result<(String, String), ShopError> {
//!     // Both steps claim their ids (1 and 2) when called, so they replay the same
//!     // way whichever finishes first.
//!     let (r, c) = tokio::join!(reserve(order.sku.clone(), order.qty), charge(order.cents));
//!     Ok((r?, c?))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("shop.db");
//! let rt = Runtime::open(&path).await?; // resumes pending workflows
//! let order = Order { sku: "tea".into(), qty: 2, cents: 1250 };
//! let handle = rt.start_with_id("order-42", checkout(order)).await?;
//! let (reservation, charge) = handle.result().await?.expect("checkout succeeded");
//! assert_eq!(reservation, "rsv-tea-2");
//! assert_eq!(charge, "ch-1250");
//!
//! // Starting the same id again runs nothing: it returns the recorded result.
//! let again = rt.start_with_id("order-42", checkout(Order { sku: "x".into(), qty: 0, cents: 0 })).await?;
//! assert_eq!(again.result().await?.expect("recorded").1, "ch-1250");
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Recorded outputs are exactly-once.** A step's result is written to the journal
//!   once and never changes; replay returns it without running the body.
//! - **Step bodies are at-least-once.** A crash after a body finished but before its
//!   checkpoint committed runs the body again on recovery, so make steps idempotent (or
//!   give external APIs an idempotency key).
//! - **Workflow ids are idempotent.** Starting an id that exists, running or finished,
//!   never runs its body a second time.
//! - **Replay never diverges silently.** Each step is identified by its *path* (`3`,
//!   `4.2`), claimed when the step is called. If the code asks for a different step at a
//!   recorded path, or finishes without asking for a recorded one, the run stops with
//!   [`Error::Divergence`] and the journal is left untouched.
//!
//! # Determinism
//!
//! A workflow body must call the same steps in the same order every time it runs, given
//! the same input and the same step outputs. Step ids are claimed in *program order* when
//! a step function is called, not when it is polled, so `tokio::join!`, `join_all`,
//! `FuturesUnordered`, `tokio::spawn` of a step and a `biased` `select!` all number their
//! steps the same way whatever finishes first. Every `async` block and async closure in a
//! `#[workflow]` body, and every [`#[branch]`](branch) function, is a *branch*: it claims
//! one position when created and numbers its own steps below it (`4.1`, `4.2`), so
//! sequences running concurrently cannot interleave their numbering.
//!
//! What breaks determinism: branching on anything that is not an input or a step output
//! (the wall clock, random numbers, `HashMap` iteration order, environment variables,
//! which of two concurrent steps finished first). Put such reads inside a step, whose
//! output is recorded.
//!
//! # Steps
//!
//! `#[step]` goes on an `async fn` with owned arguments whose output implements serde's
//! `Serialize` and `Deserialize`. Options:
//!
//! - `name = "..."`: the name recorded in the journal (default: the function's name).
//!   Renaming a step function without keeping its name makes pending workflows diverge.
//! - `retries = N`: retry an attempt that returns `Err` up to `N` more times (the step
//!   must return `Result`, and its arguments must be `Clone`, since each attempt gets
//!   its own copy). Only the final attempt's result is recorded.
//! - `backoff = 100ms`, `backoff_factor = 2.0`, `max_backoff = 10s`: the delay before the
//!   first retry, its growth per retry, and its cap (these defaults).
//!
//! A step's `Err` is recorded and replayed like an `Ok`. A panic in a step is caught,
//! recorded, and fails the workflow with [`Error::Failed`]; other workflows keep running.
//! A step called outside any workflow, or from inside another step's body, is a plain
//! call: it runs (with its retries) and records nothing.
//!
//! # The journal
//!
//! One SQLite file in WAL mode, created owner-only (`0600`), locked by the runtime that
//! opened it (`<file>.lock`): a second runtime, in this or another process, gets
//! [`Error::Locked`]. Commits are `synchronous=FULL` unless you choose
//! [`Durability::Normal`]. One writer thread commits checkpoints in batches: a
//! sequential step costs one commit, and steps finishing together share one. The schema
//! is documented in the repository's `docs/journal.md` and changes only through numbered
//! migrations.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.89.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod codec;
mod context;
mod error;
mod path;
mod runtime;
mod scope;
mod step;
mod store;
mod workflow;

pub use crate::codec::{Bincode, Codec, CodecError, MAX_VALUE_BYTES};
pub use crate::error::{Error, FailureKind, Location, Result, StoreError, StoreErrorKind};
pub use crate::path::{ParsePathError, StepPath};
pub use crate::runtime::{Runtime, RuntimeBuilder, StepInfo, WorkflowHandle, WorkflowStatus};
pub use crate::scope::{StepContext, step_context};
pub use crate::step::{Retryable, Step, StepBody};
pub use crate::store::sqlite::Durability;
pub use crate::workflow::WorkflowCall;

#[doc(inline)]
pub use durable_macros::{branch, step, workflow};

/// What the code generated by `#[workflow]`, `#[step]` and `#[branch]` names.
///
/// Not public API: anything here can change in any release. The macros emit absolute
/// paths into this module only, so a user item named `core`, `Result` or `Box` cannot
/// change what the expansion means.
#[doc(hidden)]
pub mod __private {
    pub use ::core;
    pub use ::inventory;
    pub use ::std::boxed::Box;
    pub use ::std::clone::Clone;

    pub use crate::scope::{Branched, branch};
    pub use crate::step::{Once, Retry, StepOptions, step, step_retry};
    pub use crate::workflow::{BoxFuture, WorkflowDef, WorkflowEntry};

    /// Values a workflow takes as input or returns: recorded in the journal.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be recorded in the journal",
        label = "step outputs and workflow inputs and outputs must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
        note = "derive them with `#[derive(serde::Serialize, serde::Deserialize)]`"
    )]
    pub trait Journaled: ::serde::Serialize + ::serde::de::DeserializeOwned {}
    impl<T: ::serde::Serialize + ::serde::de::DeserializeOwned> Journaled for T {}

    /// Asserts at compile time that `T` can be journaled; spanned on the user's type.
    pub const fn assert_journaled<T: Journaled>() {}

    /// Boxes a workflow body. The `Send` bound is the check that the body can move
    /// between threads; the call is spanned on the workflow's name.
    pub fn boxed_send<F>(f: F) -> BoxFuture<F::Output>
    where
        F: ::core::future::Future + Send + 'static,
    {
        Box::pin(f)
    }
}
