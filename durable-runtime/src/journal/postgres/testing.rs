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
        _ => OWN
            .get_or_init(|| Box::leak(Box::new(Server::start(Fsync::Off))).url.clone())
            .clone(),
    }
}

/// Whether a test server syncs its writes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// As a production server does (`fsync=on`): for tests of durability.
    On,
    /// Not at all (`fsync=off`): faster, for tests that only need a database.
    Off,
}

/// A PostgreSQL server of the test process's own, in a temporary directory, from the
/// PostgreSQL installed under `/usr/lib/postgresql` (run as user `postgres` when the
/// test runs as root). It stops, and its directory goes, when it is dropped or the
/// process ends, however it ends.
#[derive(Debug)]
pub struct Server {
    /// Its URL: `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    root: bool,
    /// The shell that stops the server when its stdin (this pipe) closes.
    keeper: std::process::Child,
}

impl Server {
    /// Starts one. Panics, saying what to install, if it cannot.
    pub fn start(sync: Fsync) -> Server {
        Server::start_with(sync, &[])
    }

    /// Starts one with more server settings (`name=value`, as `-c` takes them).
    pub fn start_with(sync: Fsync, settings: &[&str]) -> Server {
        use std::process::{Command, Stdio};
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
        let mut server = Server {
            url: String::new(),
            bin,
            data,
            root,
            keeper: Command::new("true")
                .spawn()
                .unwrap_or_else(|e| fail(e.to_string())),
        };
        let initdb = server
            .command("initdb")
            .arg("-D")
            .arg(&server.data)
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
        let fsync = match sync {
            Fsync::On => "on",
            Fsync::Off => "off",
        };
        // The server runs until the pipe to `read` closes (this process ends, or the
        // server is dropped), then stops and takes its directory with it.
        let script = format!(
            "'{pg_ctl}' -D '{data}' -l '{dir}/log' -w -o \"-p {port} -k '{dir}' \
             -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=400{extra}\" \
             start >/dev/null || exit 1; read _; \
             '{pg_ctl}' -D '{data}' -m immediate -w stop >/dev/null; rm -rf '{dir}'",
            pg_ctl = server.bin.join("pg_ctl").display(),
            extra = settings
                .iter()
                .map(|s| format!(" -c {s}"))
                .collect::<String>(),
            data = server.data.display(),
            dir = dir.display(),
        );
        server.keeper = server
            .command("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(format!("the server could not start: {e}")));
        server.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        server.wait_ready();
        server
    }

    /// Crashes the server and starts it again (`pg_ctl restart -m immediate`): every
    /// connection drops, and what was not committed is lost, as in a crash of the
    /// database server. Returns once it accepts connections again.
    pub fn restart(&self) {
        let restarted = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "restart"])
            .output()
            .unwrap_or_else(|e| fail(format!("pg_ctl restart could not run: {e}")));
        if !restarted.status.success() {
            fail(format!(
                "pg_ctl restart failed: {}",
                String::from_utf8_lossy(&restarted.stderr)
            ));
        }
        self.wait_ready();
    }

    /// A command of the installed PostgreSQL (or any program), as the server's user.
    fn command(&self, program: &str) -> std::process::Command {
        let path = if program == "sh" {
            program.into()
        } else {
            self.bin.join(program)
        };
        let mut c = if self.root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    }

    fn wait_ready(&self) {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .unwrap_or("");
        for _ in 0..600 {
            let up = std::process::Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", port])
                .status();
            if up.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        fail(format!(
            "the server in {} did not answer within 30 s (see its log there)",
            self.data.display()
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the pipe stops it.
        drop(self.keeper.stdin.take());
        let _ = self.keeper.wait();
    }
}

/// Fails a test that needs PostgreSQL and has none.
fn fail(why: String) -> ! {
    panic!(
        "the PostgreSQL journal's tests need a server, and {why}. Set DATABASE_URL to \
         one (for example postgres://postgres@127.0.0.1:55432/postgres), or install \
         PostgreSQL (apt-get install -y postgresql): the tests then start their own"
    )
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
            let client = connect(&config, "test")
                .await
                .expect("connect to DATABASE_URL");
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
        let client = connect(&config, "test")
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
