//! PostgreSQL for the tests: the server they run against, and a journal schema per
//! test directory.

#[cfg(test)]
use std::path::Path;

#[cfg(test)]
use super::{PgConfig, connect, schema};

/// The server the tests use: `DATABASE_URL` if it is set (`.ci/run` starts one and sets
/// it); otherwise one this test process starts in a temporary directory from the
/// PostgreSQL installed on the machine, which stops when the process ends, however it
/// ends. Without either, the tests fail, saying what to do: they never pass by
/// skipping.
pub(crate) fn database_url() -> String {
    static OWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => OWN.get_or_init(start_server).clone(),
    }
}

/// Starts a PostgreSQL server of this process's own (see [`database_url`]).
fn start_server() -> String {
    use std::process::{Command, Stdio};
    let fail = |why: String| -> ! {
        panic!(
            "the PostgreSQL journal's tests need a server, and {why}. Set DATABASE_URL to \
             one (for example postgres://postgres@127.0.0.1:55432/postgres), or install \
             PostgreSQL (apt-get install -y postgresql): the tests then start their own"
        )
    };
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .filter_map(|v| v.ok().map(|v| v.path().join("bin")))
                .filter(|b| b.join("initdb").exists())
                .max_by_key(|b| {
                    let version = b.parent().and_then(|v| v.file_name());
                    version.and_then(|v| v.to_str()?.parse::<u32>().ok())
                })
        })
        .unwrap_or_else(|| {
            fail(
                "DATABASE_URL is not set and no PostgreSQL is installed in /usr/lib/postgresql"
                    .into(),
            )
        });
    let dir = std::env::temp_dir().join(format!(
        "durable-test-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir(&dir)
        .unwrap_or_else(|e| fail(format!("cannot create {}: {e}", dir.display())));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    // `initdb` refuses to run as root: run the server as user postgres.
    let as_server = |program: &str| {
        let mut c = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            Command::new(program)
        };
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    if root {
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        if !chown.is_ok_and(|s| s.success()) {
            fail(format!("cannot give {} to user postgres", dir.display()));
        }
    }
    let data = dir.join("data");
    let initdb = as_server(&bin.join("initdb").to_string_lossy())
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .output()
        .unwrap_or_else(|e| fail(format!("initdb could not run: {e}")));
    if !initdb.status.success() {
        fail(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    // The server runs until this process's end closes the pipe to `read`, then stops
    // and takes its directory with it.
    let script = format!(
        "'{postgres}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
         -c fsync=off -c max_connections=400 >'{dir}/log' 2>&1 & pid=$!; read _; \
         kill -INT $pid; wait $pid; rm -rf '{dir}'",
        postgres = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let server = as_server("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(format!("the server could not start: {e}")));
    // Kept for the life of the process: its stdin is the pipe.
    Box::leak(Box::new(server));
    let ready = bin.join("pg_isready");
    for _ in 0..300 {
        let up = Command::new(&ready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status();
        if up.is_ok_and(|s| s.success()) {
            return format!("postgres://postgres@127.0.0.1:{port}/postgres");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    fail(format!(
        "the server started in {} did not answer within 15 s (see its log there)",
        dir.display()
    ))
}

#[cfg(test)]
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

#[cfg(test)]
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

#[cfg(test)]
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
