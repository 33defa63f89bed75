//! PostgreSQL for tests of workflows on a PostgreSQL journal (feature `postgres`).
//!
//! ```no_run
//! # async fn f() -> Result<(), durable_runtime::Error> {
//! // A schema of the test's own in the test server.
//! let url = format!("{}?schema=orders_test", durable_testkit::postgres::database_url());
//! let rt = durable_runtime::Runtime::open(&url).await?;
//! # Ok(()) }
//! ```

/// The URL of a PostgreSQL server for tests: the one `DATABASE_URL` names, or else one
/// this test process starts once, in a temporary directory, from the PostgreSQL
/// installed under `/usr/lib/postgresql` (as user `postgres` when run as root), which
/// stops, and takes its directory with it, when the process ends, however it ends.
///
/// # Panics
///
/// If `DATABASE_URL` is not set and no server can be started; the message says what to
/// install or set. A test that needs PostgreSQL fails without one, it never passes by
/// skipping.
pub fn database_url() -> String {
    durable_runtime::testkit::postgres_url()
}

/// Whether a [`Server`] syncs its writes (`fsync`).
pub use durable_runtime::testkit::PostgresFsync as Fsync;
/// A PostgreSQL server of the test's own, which a test can crash and restart
/// ([`Server::restart`]): in a temporary directory, from the PostgreSQL installed under
/// `/usr/lib/postgresql`, stopped and removed when dropped or when the process ends.
pub use durable_runtime::testkit::PostgresServer as Server;
