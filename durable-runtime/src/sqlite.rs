//! What only the SQLite journal offers: transaction steps, whose writes to the
//! journal's database commit in the same transaction as their checkpoint.
//!
//! A later journal (PostgreSQL) gets its own flavour beside this one.
//!
//! The [`rusqlite`] a transaction step's closure receives is re-exported here: use
//! `durable_runtime::sqlite::rusqlite` in your steps, and you need no dependency of
//! your own that must match ours.
//!
//! ```
//! use durable_runtime::sqlite::rusqlite;
//!
//! fn count_orders(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<i64> {
//!     tx.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
//! }
//! # let _ = count_orders;
//! ```
//!
//! **One SQLite per program.** rusqlite links the SQLite C library through
//! `libsqlite3-sys`, under `links = "sqlite3"`, and Cargo allows one package with that
//! `links` value in a build. A service that already depends, directly or through
//! another crate (an `sqlx` with its SQLite feature, for one), on another version of
//! `libsqlite3-sys` cannot add `durable-runtime` as it is: Cargo refuses the build
//! with a `links` conflict naming both. Move the service to the rusqlite this crate
//! uses (`cargo tree -i libsqlite3-sys` shows who pulls which), or keep its own SQLite
//! access in a separate process. A PostgreSQL journal does not change this: the SQLite
//! journal is always built in.

pub use rusqlite;

use std::future::{Future, pending};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::journal::TxWork;
use crate::primitives::transaction::{self, TxSlot};
use crate::primitives::{Claimed, claim, not_in_workflow, op_or, or_stop};

/// A transaction step: runs `f` in a transaction on the journal's own SQLite database,
/// and commits the step's checkpoint in that same transaction, so its writes happen
/// exactly once: a crash before the commit loses both, and a replay returns the
/// recorded result without running `f`.
///
/// `f` runs on the journal's writer thread while it holds the database's write lock:
/// keep it to a few statements. Create your own tables (any name not starting with
/// `durable_`) in the same file. If `f` returns `Err`, its writes are rolled back and
/// the `Err` is recorded (and replayed); if it panics, its writes are rolled back and
/// the workflow fails as for a panicking step. `f` must not end the transaction
/// itself.
///
/// Only the journal's file: SQLite does not commit a transaction atomically across
/// attached databases when the main one is in WAL mode, so a write to an attached file
/// could survive a crash without its checkpoint.
///
/// ```
/// use durable_runtime::sqlite::transaction;
/// use durable_runtime::{Runtime, workflow};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct DbError(String);
/// impl From<rusqlite::Error> for DbError {
///     fn from(e: rusqlite::Error) -> Self { DbError(e.to_string()) }
/// }
///
/// #[workflow]
/// async fn record_order(sku: String) -> Result<i64, DbError> {
///     transaction("insert_order", move |tx| {
///         tx.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, sku TEXT)", [])?;
///         tx.execute("INSERT INTO orders (sku) VALUES (?1)", [&sku])?;
///         Ok(tx.last_insert_rowid())
///     })
///     .await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let rt = Runtime::open(dir.path().join("journal.db")).await?;
/// let id = rt.start(record_order("tea".into())).await?.result().await?;
/// assert_eq!(id.unwrap(), 1);
/// # Ok(())
/// # }
/// ```
///
/// Outside a workflow there is no journal to write to: the future returns
/// `Err(E::from(..))` with a [`rusqlite::Error::ToSqlConversionFailure`] that wraps
/// [`Error::NotInWorkflow`](crate::Error::NotInWorkflow).
pub fn transaction<T, E, F>(
    name: &'static str,
    f: F,
) -> impl Future<Output = Result<T, E>> + Send + 'static
where
    F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E> + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + From<rusqlite::Error> + Send + 'static,
{
    let claimed = claim(name);
    async move {
        let op = op_or!(
            claimed,
            Err(E::from(rusqlite::Error::ToSqlConversionFailure(Box::new(
                not_in_workflow(
                    "durable_runtime::sqlite::transaction",
                    "a transaction step writes to the journal's database: call it in a `#[workflow]` body"
                )
            ))))
        );
        if let Some(recorded) = op.replayed::<Result<T, E>>() {
            return or_stop!(op, recorded);
        }
        if !op.may_run() {
            return pending().await;
        }
        let slot = TxSlot::new();
        let out = slot.clone();
        let codec = op.claim.ctx.codec;
        let label = transaction::label(&op);
        let work: crate::journal::sqlite::TxFn = Box::new(move |tx| {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx)));
            out.ran(codec, &label, ran)
        });
        transaction::finish(&op, TxWork::Sqlite(work), slot).await
    }
}
