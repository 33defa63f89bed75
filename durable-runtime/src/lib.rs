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
//!   `4.2`), claimed when the step is called, and recorded with a fingerprint of its
//!   arguments. If the code asks for a different step at a recorded path, asks for the
//!   recorded step with other arguments, or finishes without asking for a recorded one,
//!   the run stops with [`Error::Divergence`] and the journal is left untouched.
//! - **A recorded value comes back as recorded, or as an error.** Never as another
//!   value: see [Changing recorded types](#changing-recorded-types). Every read checks
//!   the value's checksum; a damaged row is [`Error::Corrupt`].
//! - **Nothing escapes the journal silently.** What a replay would repeat or skip
//!   (`Runtime::start` in a workflow body, a step in a spawned future that is not a
//!   branch) is [`Error::Unrecorded`], naming what to use instead.
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
//! Replay checks each step's name and the fingerprint of its arguments ([`Fingerprint`]:
//! their serde representation; an argument that is not `Serialize`, such as a client
//! handle, counts by position only). It follows type changes that keep a value (a field
//! added with its default, an integer widened, a value made an `Option`). Maps and
//! sequences are compared as collections, so a `HashSet` passed through a step replays,
//! and a step given the same elements in another order is not caught.
//!
//! # Changing recorded types
//!
//! Recorded values are read back through the types of the code that resumes them. The
//! default [`Codec::Cbor`] records field and variant names, so a type can change the way
//! serde allows and pending workflows still resume with their recorded values: a field
//! added with `#[serde(default)]` (or as an `Option`), a field removed, a variant added
//! or moved, an integer type changed to any other that holds the value. A change the
//! value cannot follow (a field's type that cannot hold it, a recorded variant removed,
//! a number out of range) is [`Error::Incompatible`], naming the step, the type and the
//! place in the value; the workflow stays pending, and the journal as it was.
//!
//! ```
//! use durable_runtime::Codec;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! enum StatusV1 { Pending, Approved }
//! #[derive(Serialize, Deserialize)]
//! struct OrderV1 { sku: String, qty: u32, status: StatusV1 }
//!
//! // The next release: a variant added in front, `qty` widened, a field added.
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum StatusV2 { Draft, Pending, Approved }
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct OrderV2 { sku: String, qty: u64, status: StatusV2, #[serde(default)] gift: bool }
//!
//! let recorded = Codec::Cbor.encode(&OrderV1 { sku: "tea".into(), qty: 7, status: StatusV1::Approved })?;
//! let read: OrderV2 = Codec::decode(&recorded)?;
//! assert_eq!(read, OrderV2 { sku: "tea".into(), qty: 7, status: StatusV2::Approved, gift: false });
//!
//! // A change the value cannot follow is an error that says where, never another value.
//! #[derive(Debug, Serialize, Deserialize)]
//! struct OrderV3 { sku: String, qty: String }
//! let err = Codec::decode::<OrderV3>(&recorded).unwrap_err();
//! assert_eq!(err.to_string(), "invalid type: integer `7`, expected a string (at `.qty`)");
//! # Ok::<(), durable_runtime::CodecError>(())
//! ```
//!
//! [`Codec::Bincode`] ([`RuntimeBuilder::codec`]) is smaller and stores no names: it
//! follows only what keeps its bytes meaning the same value, and refuses the rest
//! through a fingerprint of each value's shape recorded beside it. Every value records
//! the codec that wrote it, so the choice can change between runs.
//!
//! A step's `Err` is recorded like its `Ok`: its error type must be serde too. For
//! errors that are not (`std::io::Error`, `anyhow::Error`), return [`StepError`].
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
//! - `on_interrupt = "fail"`: if a crash interrupts the body before its result is
//!   recorded, recovery records the step as failed instead of running it again (the
//!   default, `"rerun"`, runs it again). For effects that must not happen twice; such a
//!   step pays one extra commit, for a start record, before its body runs.
//!
//! A step's `Err` is recorded and replayed like an `Ok`. A panic in a step is caught,
//! recorded, and fails the workflow with [`Error::Failed`]; other workflows keep running.
//! A step called outside any workflow, or from inside another step's body, is a plain
//! call: it runs (with its retries) and records nothing.
//!
//! # Workflow primitives
//!
//! Each is a journaled operation that claims its position when called, like a step, so
//! it replays deterministically, and records under a name starting with `durable::`:
//!
//! - time and randomness: [`sleep`] (the wake-up time is recorded, so a restart sleeps
//!   only for what is left), [`now`], [`random`], [`uuid`];
//! - messages: [`send`] and [`Runtime::send`], [`recv`] (FIFO per workflow and topic,
//!   each message received exactly once, woken without polling);
//! - events: [`set_event`], [`get_event`] and [`Runtime::get_event`];
//! - child workflows: awaiting a [`WorkflowCall`] inside a workflow, [`start_child`],
//!   [`join_all`];
//! - durable choice: [`select`], [`select_all`] (the winner is recorded and replayed);
//! - control: [`Runtime::cancel`], [`Runtime::resume`], [`WorkflowCall::timeout`];
//! - [`sqlite::transaction`] steps, whose database writes commit with their checkpoint;
//! - [`patched`], for changing a workflow's code under pending executions.
//!
//! # The journal
//!
//! One SQLite file in WAL mode, created owner-only (`0600`), locked by the runtime that
//! opened it (`<file>.lock`): a second runtime, in this or another process, gets
//! [`Error::Locked`]. [`Runtime::close`] releases it once running step bodies have
//! finished and checkpointed; dropping a runtime without closing it leaves its
//! workflows running, and the journal locked until they finish. Commits are `synchronous=FULL` unless you choose
//! [`Durability::Normal`] (or [`Durability::Off`], for tests). One writer thread commits
//! checkpoints in batches: a sequential step costs one commit, with no added wait, and
//! steps finishing together share one. The writer's batching policy and the schema are
//! documented in the repository's `docs/journal.md`; the schema changes only through
//! numbered migrations.
//!
//! To look at a journal without running it (a dashboard, a debugging session), open a
//! [`JournalView`]: read-only, it lists the workflow runs, their steps and events and the
//! queued messages while a runtime in this or another process holds the journal, and
//! takes no lock.
//!
//! # Reading the source
//!
//! The crate is layered, and each layer can be read after the ones it uses: small leaves
//! (`util`, `path`, `codec`, `error`), then `journal` (the one `Store` trait every
//! database implements, and the SQLite journal), then `engine` (one run: claims, the step
//! future, replay), then the primitives, then `runtime`. The repository's
//! `docs/architecture.md` draws the layers, the directions allowed between them, and the
//! path of one step from `#[step]` to its journal row.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.89.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
mod client;
mod codec;
mod cron;
mod engine;
mod error;
mod journal;
mod path;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod primitives;
mod runtime;
pub mod sqlite;
mod state;
mod step_error;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit;
mod trace;
mod util;

pub use crate::client::{Client, DEFAULT_APPLY_TIMEOUT, Delivery};
pub use crate::codec::{Codec, CodecError, Fingerprint, MAX_VALUE_BYTES};
pub use crate::engine::call::WorkflowCall;
pub use crate::engine::scope::{StepContext, step_context};
pub use crate::engine::step::{Retryable, Step, StepBody};
pub use crate::error::{
    ArgumentsChanged, CancelReason, Error, FailureKind, Location, Result, StoreError,
    StoreErrorKind,
};
pub use crate::journal::listing::{
    Cursor, DEFAULT_LIST_LIMIT, ListPage, ListQuery, MAX_LIST_LIMIT, Order, ParseCursorError,
    ParseStatusError,
};
pub use crate::journal::retention::GcReport;
pub use crate::journal::sqlite::view::{
    EventView, JournalView, MessageView, RecordedStatus, WorkflowView,
};
pub use crate::journal::{Damage, Durability};
pub use crate::path::{ParsePathError, StepPath};
pub use crate::primitives::child::{ChildHandle, JoinAll, join_all, start_child};
pub use crate::primitives::events::{get_event, set_event};
pub use crate::primitives::messages::{recv, send};
pub use crate::primitives::patch::patched;
pub use crate::primitives::random::{random, uuid};
pub use crate::primitives::select::{Either, select, select_all};
pub use crate::primitives::time::{now, sleep};
pub use crate::runtime::{
    AttemptTime, Enqueue, Health, ManualClock, OnDuplicate, Queue, QueueHandle, QueueInfo,
    QueuedWorkflow, Runtime, RuntimeBuilder, Schedule, ScheduleHandle, ScheduleInfo, StepInfo,
    Tick, WorkflowHandle, WorkflowStatus, enqueue, enqueue_with,
};
pub use crate::step_error::StepError;

/// Makes an `async fn` a durable step: its output is checkpointed, and a replay returns
/// the recorded output instead of running it again.
///
/// ```
/// use durable_runtime::step;
/// # #[derive(serde::Serialize, serde::Deserialize, Debug)] struct PaymentError;
///
/// #[step(retries = 3, backoff = 50ms, backoff_factor = 2.0, max_backoff = 1s)]
/// async fn charge(card: String, cents: u64) -> Result<String, PaymentError> {
///     Ok(format!("charge-{card}-{cents}"))
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Outside a workflow a step is a plain call (nothing is recorded).
/// assert_eq!(charge("4242".into(), 1250).await.unwrap(), "charge-4242-1250");
/// # }
/// ```
///
/// # Options
///
/// | option | meaning | default |
/// |---|---|---|
/// | `name = "..."` | the name recorded in the journal | the function's name |
/// | `retries = N` | retry an attempt that returns `Err` up to `N` more times | `0` |
/// | `backoff = 100ms` | delay before the first retry (`ms`, `s` or `m`) | `100ms` |
/// | `backoff_factor = 2.0` | each further delay is the previous one times this | `2.0` |
/// | `max_backoff = 10s` | no delay is longer than this | `10s` |
/// | `on_interrupt = "rerun"` | what recovery does with an attempt a crash interrupted before its result was recorded: `"rerun"` runs the body again, `"fail"` records the step as failed without running it (for effects that must not happen twice, such as sending money) | `"rerun"` |
/// | `crate = path` | where `durable_runtime` is, if you renamed it | `::durable_runtime` |
///
/// A step whose effect must never happen twice (a payment) takes `on_interrupt =
/// "fail"`: before its body runs, a start record is committed, and if a crash
/// interrupts the body before its result is recorded, recovery records the step as
/// failed ([`FailureKind::StepInterrupted`]) instead of running it again. Check the
/// effect, then [`Runtime::resume`] runs it again.
///
/// ```
/// use durable_runtime::step;
///
/// #[step(on_interrupt = "fail")]
/// async fn wire_money(account: String, cents: u64) -> Result<String, String> {
///     Ok(format!("sent {cents} to {account}"))
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # assert!(wire_money("a".into(), 1).await.is_ok());
/// # }
/// ```
///
/// The backoff options need `retries`. A retried step must return `Result` and take
/// `Clone` arguments (each attempt gets its own copy); only the final attempt's result
/// is recorded. Attempts are not journaled one by one: if the process dies during the
/// retries, the recovered step starts with a fresh budget, and its record's `attempts`
/// counts the attempts of the execution that finished it.
///
/// # Rules
///
/// The function must be a free `async fn` with owned arguments (`String`, not `&str`),
/// because the step's future may outlive its caller (`tokio::spawn`) and is re-run on
/// retry. A pool, a client or a configuration is app state instead: given once to
/// [`RuntimeBuilder::state`] and taken by a `#[state] x: &T` (or `Arc<T>`) parameter,
/// which callers do not pass and the journal never records. Its output must implement
/// serde's `Serialize` and `Deserialize`; `Err` values are recorded like `Ok` values.
/// Step bodies run at least once: make them idempotent (see [`step_context`]).
///
/// # What it expands to
///
/// The function becomes a plain `fn` that claims the step's id *when it is called*, in
/// program order, and returns a [`Step`] future carrying it:
///
/// ```text
/// fn charge(card: String, cents: u64)
///     -> durable_runtime::Step<impl StepBody<Output = Result<String, PaymentError>, ..>>
/// {
///     static OPTIONS: StepOptions = StepOptions::new("charge").retries(3).backoff(..);
///     // Claims the next path in the current workflow scope (nothing outside one),
///     // then, when awaited: the recorded output if there is one, else run the body
///     // with retries and checkpoint its output before returning it.
///     __private::step_retry(&OPTIONS, move || {
///         let card = card.clone();
///         async move { Ok(format!("charge-{card}-{cents}")) }
///     })
/// }
/// ```
///
/// Because the id is claimed at the call, `join!(a(), b())`, `join_all(xs.map(step))`
/// and `tokio::spawn(step(x))` number their steps identically on every run, and a step
/// that is called but never awaited still holds its id.
///
/// If its workflow stops (a divergence, a corrupt row, a journal error), a step future
/// still running never completes: await spawned steps from the workflow (as you would
/// any `JoinHandle`) rather than leaving them detached.
#[doc(inline)]
pub use durable_macros::step;

/// Makes an `async fn` a durable workflow: a function that calls steps and survives
/// crashes, resumed by [`Runtime::open`] from its journal.
///
/// ```
/// use durable_runtime::{Runtime, step, workflow};
///
/// #[step]
/// async fn fetch(n: u32) -> u32 { n * 10 }
///
/// #[workflow]
/// async fn total(ns: Vec<u32>) -> u32 {
///     // Each mapped call claims its id in order: 1, 2, 3.
///     let values = futures::future::join_all(ns.into_iter().map(fetch)).await;
///     // An async block is a branch: its steps are 4.1 and 4.2.
///     let extra = async { fetch(7).await + fetch(8).await }.await;
///     values.iter().sum::<u32>() + extra
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let handle = rt.start(total(vec![1, 2, 3])).await?;
/// assert_eq!(handle.result().await?, 60 + 150);
/// let paths: Vec<String> = rt.steps(handle.id()).await?.iter().map(|s| s.path.to_string()).collect();
/// assert_eq!(paths, ["1", "2", "3", "4.1", "4.2"]);
/// # Ok(())
/// # }
/// ```
///
/// # Options
///
/// `name = "..."` (the name recorded in the journal and used to find the workflow on
/// recovery; default: the function's name, which must be unique in the program) and
/// `crate = path`.
///
/// # Rules
///
/// A free, non-generic `async fn` whose arguments and output implement serde's
/// `Serialize` and `Deserialize` (the input is recorded and decoded again on recovery),
/// and whose future is `Send`. Its body must be deterministic: see the crate
/// documentation.
///
/// # What it expands to
///
/// Calling the function runs nothing: it returns a [`WorkflowCall`] to pass to
/// [`Runtime::start`] or [`Runtime::start_with_id`]. The body is kept in an inner
/// function, registered under the workflow's name (so recovery finds it without a list),
/// and every `async` block and async closure in it is wrapped so that it claims a
/// position when created:
///
/// ```text
/// fn total(ns: Vec<u32>) -> durable_runtime::WorkflowCall<u32> {
///     async fn body(ns: Vec<u32>) -> u32 {
///         let values = join_all(ns.into_iter().map(fetch)).await;
///         let extra = __private::branch(async { fetch(7).await + fetch(8).await }).await;
///         values.iter().sum::<u32>() + extra
///     }
///     static DEF: WorkflowDef<(Vec<u32>,), u32> = WorkflowDef::new("total", |(ns,)| Box::pin(body(ns)));
///     inventory::submit!(WorkflowEntry::new(&DEF));
///     WorkflowCall::new(&DEF, (ns,))
/// }
/// ```
#[doc(inline)]
pub use durable_macros::workflow;

/// Makes an async helper function a branch of the workflow that calls it: the call
/// claims one position, and the steps inside number below it, like an `async` block in a
/// workflow body.
///
/// Without it, a helper that awaits two steps and runs concurrently with other code
/// would number its steps by timing, and a helper moved into `tokio::spawn` would run
/// outside the workflow's scope, so its steps would not be recorded at all. Use it on
/// every async function that calls steps and is called from a workflow.
///
/// ```
/// use durable_runtime::{Runtime, branch, step, workflow};
///
/// #[step]
/// async fn reserve(sku: String) -> String { format!("rsv-{sku}") }
///
/// #[branch]
/// async fn reserve_pair(a: String, b: String) -> (String, String) {
///     (reserve(a).await, reserve(b).await)
/// }
///
/// #[workflow]
/// async fn order() -> Vec<String> {
///     let (x, y) = tokio::join!(reserve_pair("a".into(), "b".into()), reserve_pair("c".into(), "d".into()));
///     vec![x.0, x.1, y.0, y.1]
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let h = rt.start(order()).await?;
/// h.result().await?;
/// let paths: Vec<String> = rt.steps(h.id()).await?.iter().map(|s| s.path.to_string()).collect();
/// assert_eq!(paths, ["1.1", "1.2", "2.1", "2.2"]);
/// # Ok(())
/// # }
/// ```
///
/// The function becomes `fn(..) -> impl Future<Output = T>` that claims its position
/// when called. Option: `crate = path`.
#[doc(inline)]
pub use durable_macros::branch;

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

    pub use crate::codec::fingerprint::Args;
    pub use crate::engine::scope::injected;
    pub use crate::engine::scope::{
        Branched, SpawnArg, SpawnBoxed, SpawnFuture, SpawnOther, Spawned, branch,
    };
    pub use crate::engine::step::{
        Arg, ArgOpaque, ArgViaSerialize, Once, Retry, StepClaim, StepOptions, claim_step, step,
        step_retry,
    };
    pub use crate::engine::workflow::{BoxFuture, WorkflowDef, WorkflowEntry};
    pub use crate::state::StateType;

    /// Types a `#[state]` parameter takes: shared by every step of every workflow.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be app state",
        label = "a `#[state]` type is shared between the steps of every workflow, on any thread",
        note = "app state must be `Send + Sync + 'static`: wrap what is not `Sync` in a `Mutex`"
    )]
    pub trait AppState: Send + Sync + 'static {}
    impl<T: ?Sized + Send + Sync + 'static> AppState for T {}

    /// Asserts at compile time that `T` can be app state; spanned on the user's type.
    pub const fn assert_state<T: ?Sized + AppState>() {}

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
