//! Prove your own durable workflows crash-safe and deterministic.
//!
//! Add `durable-testkit` as a dev-dependency. It has four parts:
//!
//! | part | call | what it checks |
//! |---|---|---|
//! | crash at every step | [`crash_at_every_step`] | a crash on either side of any checkpoint recovers to the uninterrupted result, and no step whose record committed runs again |
//! | completion orders | [`explore_completion_orders`] | the steps, their arguments and their outputs do not depend on which concurrent step finishes first (nor on clocks, randomness or `HashMap` order) |
//! | replay check | [`replay_check`] | today's code still replays a recorded journal (a fixture from production) step for step |
//! | fixtures | [`TempJournal`], [`recorded_steps`] | a temporary journal and a runtime in one call; recorded steps as plain data |
//!
//! ```
//! use durable_runtime::{step, workflow};
//!
//! #[step]
//! async fn reserve(sku: String) -> String { format!("rsv-{sku}") }
//!
//! #[step]
//! async fn charge(cents: u64) -> String { format!("ch-{cents}") }
//!
//! #[workflow]
//! async fn checkout(sku: String, cents: u64) -> (String, String) {
//!     let (r, c) = tokio::join!(reserve(sku), charge(cents));
//!     (r, c)
//! }
//!
//! // In a plain `#[test]`:
//! durable_testkit::crash_at_every_step(|| checkout("tea".into(), 450)).run().unwrap();
//! durable_testkit::explore_completion_orders(|| checkout("tea".into(), 450)).run().unwrap();
//! ```
//!
//! The checks block and give every run a tokio runtime of its own (a crash drops that
//! runtime mid-flight), so call them from a plain `#[test]`, not from inside an async
//! test. Each check returns a report on success and an error whose `Debug` output is a
//! readable account of what failed, so `.unwrap()` or `.expect(..)` prints it.
//!
//! # Workflows that use the primitives
//!
//! - Crash points are the checkpoints recorded as steps: user steps and the
//!   primitives' records (`sleep`, `now`, `random`, `send`, `set_event`, a child's
//!   result, a `select`'s winner), in the checked workflow and in its child workflows
//!   (reported as `step 1 of child workflow <id>`). A `recv`'s answer and a transaction
//!   step are committed by the journal writer on its own and are not crash points here;
//!   the repository's examples kill real processes around them.
//! - Journals are compared path by path up to the first `select` whose winner differs
//!   between the two runs, and a path that only one run recorded is accepted in a
//!   workflow that selects (whether a losing branch recorded before the select returned
//!   depends on timing).
//! - Each scenario is a fresh execution: a result that depends on `now()`, `random()`,
//!   `uuid()` or a timing-dependent `select` differs between scenarios, and the crash
//!   check reports it. Make such inputs fixed in the test.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.89.

mod crash;
mod explore;
pub mod faults;
mod journal;
#[cfg(feature = "postgres")]
pub mod postgres;
mod replay;

pub use crate::crash::{CrashCheck, CrashFailure, CrashReport, StepRuns, crash_at_every_step};
pub use crate::explore::{
    ExploreCheck, ExploreFailure, ExploreReport, SEED_VAR, explore_completion_orders,
};
pub use crate::journal::{TempJournal, recorded_steps};
pub use crate::replay::{ReplayFailure, ReplayReport, Replayed, Verdict, replay_check};
