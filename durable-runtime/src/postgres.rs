//! What only the PostgreSQL journal offers: transaction steps, whose writes to the
//! journal's database commit in the same transaction as their checkpoint (cargo
//! feature `postgres`).
//!
//! [`tokio_postgres`] is re-exported: the transaction a step gets is of this version.

pub use tokio_postgres;

use std::future::{Future, pending};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Transaction;

use crate::error::Error;
use crate::journal::postgres::PgTxFn;
use crate::journal::{RecordedOutcome, TxWork};
use crate::primitives::transaction::{self, TxSlot};
use crate::primitives::{Claimed, claim, not_in_workflow, op_or, or_stop};

/// A transaction step: runs `f` in a transaction on the PostgreSQL database of the
/// journal, and commits the step's checkpoint in that same transaction, so its writes
/// happen exactly once: a crash before the commit loses both, and a replay returns
/// the recorded result without running `f`.
///
/// `f` gets the transaction and returns its work as a boxed future
/// (`Box::pin(async move { .. })`). The transaction runs on a connection of its own
/// (the journal keeps up to eight for transaction steps; more wait for one), in the
/// journal's database, with PostgreSQL's default isolation (read committed). Write to
/// your own tables, in any schema but the journal's.
///
/// - If `f` returns `Err`, its writes are rolled back, and the `Err` is recorded (and
///   replayed). Return the error of a failed statement: PostgreSQL aborts the
///   transaction at the first failed statement, and an `Ok` after one is refused, with
///   nothing recorded.
/// - If `f` panics, its writes are rolled back and the workflow fails as for a panicking
///   step.
/// - If the connection drops before the commit (the database restarting, a failover),
///   nothing was kept, and `f` runs again on a new connection once the database is back:
///   each run gets a clone of `f` (hence `Clone`), and one run's writes at most commit.
///   Effects outside the database (an HTTP call) can happen more than once, as in any
///   step. If it drops as the commit is sent, the journal tells whether it committed.
/// - `f` must not end the transaction itself (`COMMIT` or `ROLLBACK`): that is caught,
///   and the step fails without a record.
/// - Settings: use `SET LOCAL`, which ends with the transaction. A plain `SET` stays
///   on the connection, which other transaction steps use after this one.
/// - The transaction holds its workflow's row: keep it short. A transaction idle for
///   longer than the runtime's lease ([`RuntimeBuilder::lease`](crate::RuntimeBuilder::lease))
///   is ended by the server, so that a paused process cannot hold it; the step then
///   runs again, or stops if another runtime took the workflow over meanwhile.
///
/// ```no_run
/// use durable_runtime::postgres::transaction;
/// use durable_runtime::{Runtime, workflow};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct DbError(String);
/// impl From<durable_runtime::postgres::tokio_postgres::Error> for DbError {
///     fn from(e: durable_runtime::postgres::tokio_postgres::Error) -> Self {
///         DbError(e.to_string())
///     }
/// }
/// impl From<durable_runtime::Error> for DbError {
///     fn from(e: durable_runtime::Error) -> Self { DbError(e.to_string()) }
/// }
///
/// #[workflow]
/// async fn save_order(sku: String) -> Result<i64, DbError> {
///     transaction("insert_order", move |tx| {
///         Box::pin(async move {
///             let row = tx
///                 .query_one("INSERT INTO orders (sku) VALUES ($1) RETURNING id", &[&sku])
///                 .await?;
///             Ok(row.try_get(0)?)
///         })
///     })
///     .await
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// let rt = Runtime::open("postgres://app@db.internal/shop").await?;
/// let id = rt.start(save_order("tea".into())).await?.result().await?;
/// println!("order {}", id.unwrap());
/// # Ok(())
/// # }
/// ```
///
/// When the step's result is used with `?` rather than returned, Rust cannot tell the
/// closure's error type from its `?`s: name it at the end of the closure
/// (`Ok::<_, DbError>(id)`).
///
/// On an SQLite journal the step fails with an error that points at
/// [`sqlite::transaction`](crate::sqlite::transaction). Outside a workflow there is no
/// journal to write to: the future returns `Err(E::from(`[`Error::NotInWorkflow`]`))`.
pub fn transaction<T, E, F>(
    name: &'static str,
    f: F,
) -> impl Future<Output = Result<T, E>> + Send + 'static
where
    F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, E>> + Clone + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + From<Error> + Send + 'static,
{
    let claimed = claim(name);
    async move {
        let op = op_or!(
            claimed,
            Err(E::from(not_in_workflow(
                "durable_runtime::postgres::transaction",
                "a transaction step writes to the journal's database: call it in a `#[workflow]` body"
            )))
        );
        if let Some(recorded) = op.replayed::<Result<T, E>>() {
            return or_stop!(op, recorded);
        }
        if !op.may_run() {
            return pending().await;
        }
        // The run's result, or its panic's message.
        let slot = TxSlot::new();
        let out = slot.clone();
        let codec = op.claim.ctx.codec;
        let label: Arc<str> = transaction::label(&op).into();
        let work = pg_work(move |tx| {
            let f = f.clone();
            let out = out.clone();
            let label = label.clone();
            Box::pin(async move {
                // An earlier try's answer (its connection dropped) is not this one's.
                out.clear();
                // Called in the future: a panic before the closure's first await is
                // caught as well.
                let ran = AssertUnwindSafe(async move { f(tx).await })
                    .catch_unwind()
                    .await;
                out.ran(codec, &label, ran)
            })
        });
        transaction::finish(&op, TxWork::Postgres(work), slot).await
    }
}

/// `w` as the journal takes a transaction step's work (a closure given straight to a
/// function with this bound gets its higher-ranked signature).
fn pg_work<W>(w: W) -> PgTxFn
where
    W: for<'t> FnMut(&'t Transaction<'t>) -> BoxFuture<'t, Result<(RecordedOutcome, bool), String>>
        + Send
        + 'static,
{
    Box::new(w)
}
