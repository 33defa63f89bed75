//! PostgreSQL for the tests: the server they run against, and a journal schema per
//! test directory.

use std::path::Path;

use super::{PgConfig, connect, schema};

/// The server the tests use: `DATABASE_URL`. Without one they fail, saying how to get
/// one; they never pass by skipping.
pub(crate) fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "the PostgreSQL journal's tests need a server: set DATABASE_URL, for example \
             postgres://postgres@127.0.0.1:55432/postgres (`.ci/run` starts one in a \
             temporary directory and sets it; the README shows how)"
        ),
    }
}

/// The journal of the test directory `dir`: a schema of its own in the test server,
/// emptied the first time `dir` asks for it (a schema left by an earlier run goes).
pub(crate) fn config_for(dir: &Path) -> PgConfig {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(dir);
    let schema = format!("durable_test_{hash:016x}");
    let url = database_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let config = PgConfig::parse(&format!("{url}{separator}schema={schema}"))
        .expect("DATABASE_URL is a valid PostgreSQL URL");
    let marker = dir.join("postgres-schema");
    if !marker.exists() {
        on_own_runtime(|| async {
            let client = connect(&config).await.expect("connect to DATABASE_URL");
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    schema::quoted(&schema)
                ))
                .await
                .expect("drop a test schema");
        });
        std::fs::write(&marker, &schema).expect("mark the test directory");
    }
    config
}

/// Changes every value of the (closed) journal of `dir` so that it no longer matches
/// its checksum, for the contract's damage rule.
pub(crate) fn damage_every_value(dir: &Path) {
    let config = config_for(dir);
    on_own_runtime(|| async {
        let client = connect(&config)
            .await
            .expect("connect to damage the journal");
        let s = schema::quoted(&config.schema);
        client
            .batch_execute(&format!(
                "UPDATE {s}.workflows SET input = input || '\\x00'::bytea,
                                          output = output || '\\x00'::bytea;
                 UPDATE {s}.steps SET output = output || '\\x00'::bytea WHERE output IS NOT NULL;
                 UPDATE {s}.messages SET payload = payload || '\\x00'::bytea;
                 UPDATE {s}.events SET value = value || '\\x00'::bytea;
                 UPDATE {s}.started SET wake_at = wake_at + 1;
                 UPDATE {s}.patches SET name = name || '!';"
            ))
            .await
            .expect("damage the journal");
    });
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own (callable
/// from async tests).
pub(crate) fn on_own_runtime<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(f());
            })
            .join()
            .expect("the PostgreSQL helper panicked");
    });
}
