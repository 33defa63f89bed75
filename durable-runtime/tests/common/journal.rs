//! One test body, two journals: SQLite (a file in a temporary directory) and PostgreSQL
//! (a schema of its own in the test server, `durable_runtime::testkit::postgres_url`).
//!
//! [`on_both_journals!`](crate::common::on_both_journals) turns a test body
//! `async fn name(journal: Journal)` into the tests `name::sqlite` and `name::postgres`
//! (the latter only with the `postgres` and `testkit` features). The raw access the
//! tests need (a dump of a table, a workflow made pending again, a statement) is here
//! for both journals, with the SQLite table names (`durable_steps`): on PostgreSQL they
//! name the tables of the journal's schema (`steps`).

use std::path::{Path, PathBuf};

use durable_runtime::Runtime;

/// A fresh, empty journal; a PostgreSQL one drops its schema when dropped.
#[derive(Debug)]
pub enum Journal {
    /// A file `journal.db` in a temporary directory.
    Sqlite {
        /// The directory, removed on drop.
        dir: tempfile::TempDir,
        /// The journal file in it.
        path: PathBuf,
    },
    /// A schema of its own in the test server.
    #[cfg(all(feature = "postgres", feature = "testkit"))]
    Postgres {
        /// The journal's URL (the server's, with `schema=`), as `Runtime::builder`
        /// takes it.
        url: PathBuf,
        /// The server's URL, for raw connections.
        server: String,
        /// The schema.
        schema: String,
    },
}

impl Journal {
    /// A new SQLite journal.
    pub fn sqlite() -> Journal {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.db");
        Journal::Sqlite { dir, path }
    }

    /// A new PostgreSQL journal: a schema no other test uses.
    #[cfg(all(feature = "postgres", feature = "testkit"))]
    pub fn postgres() -> Journal {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let server = durable_runtime::testkit::postgres_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "both_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = PathBuf::from(format!("{server}{sep}schema={schema}"));
        Journal::Postgres {
            url,
            server,
            schema,
        }
    }

    /// Another new journal of the same kind.
    pub fn another(&self) -> Journal {
        match self {
            Journal::Sqlite { .. } => Journal::sqlite(),
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            Journal::Postgres { .. } => Journal::postgres(),
        }
    }

    /// What `Runtime::builder` takes: the file, or the URL.
    pub fn path(&self) -> &Path {
        match self {
            Journal::Sqlite { path, .. } => path,
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            Journal::Postgres { url, .. } => url,
        }
    }

    /// Lets go of `rt` before the journal is opened again (with `common::reopen`). On
    /// SQLite it is dropped (the next open waits for its lock). On PostgreSQL it is
    /// closed: a dropped runtime gives its workflows back only when its writer gets to
    /// it, in the background, and nothing makes the next open wait for that (there is
    /// no lock to wait on), so an open just after a drop may resume none of them.
    pub async fn release(&self, rt: Runtime) {
        match self {
            Journal::Sqlite { .. } => drop(rt),
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            Journal::Postgres { .. } => rt.close().await.expect("close"),
        }
    }

    /// Every column of every row of `table` (its SQLite name, `durable_steps`), as
    /// text, in a stable order: two dumps are equal exactly when the table did not
    /// change.
    pub fn dump(&self, table: &str) -> Vec<Vec<String>> {
        match self {
            Journal::Sqlite { path, .. } => super::dump(path, table),
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            Journal::Postgres { server, schema, .. } => {
                let statement = format!("SELECT * FROM {} ORDER BY 1, 2", pg_sql(schema, table));
                on_postgres(server, async move |c| {
                    let rows = c.simple_query(&statement).await?;
                    Ok(rows
                        .iter()
                        .filter_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                                (0..r.len())
                                    .map(|i| format!("{:?}", r.get(i)))
                                    .collect::<Vec<_>>(),
                            ),
                            _ => None,
                        })
                        .collect())
                })
                .expect("dump")
            }
        }
    }

    /// Runs `statement` (SQLite's SQL, `?1` parameters, `durable_` table names) against
    /// the journal directly, with text parameters.
    pub fn sql(&self, statement: &str, params: &[&str]) {
        match self {
            Journal::Sqlite { path, .. } => {
                super::sql(path, statement, rusqlite::params_from_iter(params));
            }
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            Journal::Postgres { server, schema, .. } => {
                let statement = pg_sql(schema, statement);
                let params = owned(params);
                on_postgres(server, async move |c| {
                    c.execute(&statement, &refs(&params)).await
                })
                .expect("raw sql");
            }
        }
    }

    /// The first column, as text, of the rows `query` (as for [`sql`](Self::sql))
    /// answers, in its order.
    pub fn strings(&self, query: &str, params: &[&str]) -> Vec<String> {
        match self {
            Journal::Sqlite { path, .. } => {
                let conn = rusqlite::Connection::open(path).expect("open journal");
                conn.prepare(query)
                    .and_then(|mut s| {
                        s.query_map(rusqlite::params_from_iter(params), |r| r.get(0))?
                            .collect()
                    })
                    .expect("query")
            }
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            Journal::Postgres { server, schema, .. } => {
                let query = pg_sql(schema, query);
                let params = owned(params);
                on_postgres(server, async move |c| {
                    let rows = c.query(&query, &refs(&params)).await?;
                    rows.iter().map(|r| r.try_get(0)).collect()
                })
                .expect("query")
            }
        }
    }

    /// Makes a finished workflow look as if the process died after its last step but
    /// before recording the workflow's outcome: the next open resumes (replays) it.
    /// Only while no runtime holds the journal.
    pub fn make_pending(&self, id: &str) {
        match self {
            Journal::Sqlite { path, .. } => super::make_pending(path, id),
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            Journal::Postgres { .. } => self.sql(
                "UPDATE durable_workflows SET status = 'pending', output = NULL, \
                 output_crc32 = NULL WHERE id = ?1",
                &[id],
            ),
        }
    }
}

/// A statement in SQLite's words (`durable_steps`, `?1`) in PostgreSQL's, on the
/// journal in `schema` (`"schema".steps`, `$1`).
#[cfg(all(feature = "postgres", feature = "testkit"))]
pub fn pg_sql(schema: &str, statement: &str) -> String {
    statement
        .replace("durable_", &format!("\"{schema}\"."))
        .replace('?', "$")
}

#[cfg(all(feature = "postgres", feature = "testkit"))]
fn owned(params: &[&str]) -> Vec<String> {
    params.iter().map(|&p| p.to_owned()).collect()
}

#[cfg(all(feature = "postgres", feature = "testkit"))]
fn refs(params: &[String]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// Runs `f` on a connection to `server` (made once per process and server), from a
/// thread of its own (so from a test's async code and from plain code alike), and waits
/// for it.
#[cfg(all(feature = "postgres", feature = "testkit"))]
pub fn on_postgres<T: Send + 'static>(
    server: &str,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error> + Send + 'static,
) -> Result<T, tokio_postgres::Error> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    /// The helper connections and the runtime that drives them.
    struct Helper {
        runtime: tokio::runtime::Runtime,
        clients: Mutex<HashMap<String, Arc<tokio_postgres::Client>>>,
    }
    static HELPER: OnceLock<Helper> = OnceLock::new();
    let helper = HELPER.get_or_init(|| Helper {
        runtime: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-postgres")
            .enable_all()
            .build()
            .expect("tokio"),
        clients: Mutex::new(HashMap::new()),
    });
    let server = server.to_owned();
    std::thread::spawn(move || {
        helper.runtime.block_on(async move {
            let cached = helper
                .clients
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&server)
                .filter(|c| !c.is_closed())
                .cloned();
            let client = match cached {
                Some(client) => client,
                None => {
                    let (client, connection) =
                        tokio_postgres::connect(&server, tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    let client = Arc::new(client);
                    helper
                        .clients
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(server, client.clone());
                    client
                }
            };
            f(&client).await
        })
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(all(feature = "postgres", feature = "testkit"))]
impl Drop for Journal {
    fn drop(&mut self) {
        let Journal::Postgres { server, schema, .. } = self else {
            return;
        };
        // Best effort: a schema left behind costs only space in a test server. A
        // runtime dropped (not closed) at the end of the test may still be giving its
        // workflows back: the drop can deadlock with that, so it is tried again.
        let drop_schema =
            format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        for _ in 0..5 {
            let statement = drop_schema.clone();
            if on_postgres(server, async move |c| c.batch_execute(&statement).await).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Turns the test body `async fn name(journal: Journal)` (or a plain `fn` under
/// `#[test]`) into two tests with the attribute given, `name::sqlite` and
/// `name::postgres`, each on a fresh journal of its kind. The body keeps the test's
/// name and doc comment.
///
/// Options, after the name: `serial`, for a body that counts in statics: the two tests
/// then run one after the other, never at once (each resets its statics first);
/// `postgres_ignore = "why"`: the PostgreSQL test is `#[ignore]`d.
///
/// ```ignore
/// on_both_journals!(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] name, serial);
/// ```
macro_rules! on_both_journals {
    (#[test] $name:ident $(, $($opt:tt)*)?) => {
        $crate::common::on_both_journals!(@opts [sync] [test] $name [] [] $($($opt)*)?);
    };
    (#[$test:meta] $name:ident $(, $($opt:tt)*)?) => {
        $crate::common::on_both_journals!(@opts [async] [$test] $name [] [] $($($opt)*)?);
    };
    (@opts $kind:tt $test:tt $name:ident [] $ignore:tt serial $(, $($rest:tt)*)?) => {
        $crate::common::on_both_journals!(@opts $kind $test $name [serial] $ignore $($($rest)*)?);
    };
    (@opts $kind:tt $test:tt $name:ident $serial:tt [] postgres_ignore = $why:literal
        $(, $($rest:tt)*)?) => {
        $crate::common::on_both_journals!(
            @opts $kind $test $name $serial [#[ignore = $why]] $($($rest)*)?
        );
    };
    (@opts $kind:tt [$test:meta] $name:ident [$($serial:ident)?] [$($ignore:tt)*]) => {
        mod $name {
            /// Keeps the two tests of a `serial` body apart.
            #[allow(dead_code)]
            static SERIAL: ::tokio::sync::Mutex<()> = ::tokio::sync::Mutex::const_new(());

            $crate::common::on_both_journals!(
                @test $kind [$test] $name sqlite [$($serial)?] []
            );
            #[cfg(all(feature = "postgres", feature = "testkit"))]
            $crate::common::on_both_journals!(
                @test $kind [$test] $name postgres [$($serial)?] [$($ignore)*]
            );
        }
    };
    (@test [async] [$test:meta] $name:ident $journal:ident [$($serial:ident)?] [$($ignore:tt)*]) => {
        #[$test]
        $($ignore)*
        async fn $journal() {
            let _serial = $crate::common::on_both_journals!(@guard [async] $($serial)?);
            super::$name($crate::common::Journal::$journal()).await;
        }
    };
    (@test [sync] [$test:meta] $name:ident $journal:ident [$($serial:ident)?] [$($ignore:tt)*]) => {
        #[$test]
        $($ignore)*
        fn $journal() {
            let _serial = $crate::common::on_both_journals!(@guard [sync] $($serial)?);
            super::$name($crate::common::Journal::$journal());
        }
    };
    (@guard [async] serial) => { Some(SERIAL.lock().await) };
    (@guard [sync] serial) => { Some(SERIAL.blocking_lock()) };
    (@guard $kind:tt) => { None::<::tokio::sync::MutexGuard<'static, ()>> };
}

pub(crate) use on_both_journals;
