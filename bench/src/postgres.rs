//! `durable-bench --journal postgres`: the workloads on a PostgreSQL journal, against
//! raw tokio-postgres doing the same database work on the same server (see the crate's
//! documentation for the table of workloads and baselines).
//!
//! Every run gets fresh schemas, `bench_<pid>_<k>`: one for the journal (created by
//! the runtime's first open, before the clock starts) and one for the baseline's
//! `steps`; both are dropped after the run, and whatever this process left behind (an
//! error mid-run) is dropped at the end.

mod baseline;

use std::io::BufRead as _;
use std::io::Read as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durable_runtime::Runtime;
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use crate::sampler::Sampler;
use crate::{
    Journal, Options, PARK, RECEIVED, ROUNDS, Res, Row, Run, Setting, TABLE_HEADER, Target,
    Workload, concurrent, median, one_step, print_targets, receiver, run_all, scales, sequential,
    usage,
};

/// The workloads measured on PostgreSQL, as `--only` names them.
pub(crate) const WORKLOADS: [&str; 8] = [
    "seq",
    "fanout",
    "many",
    "start",
    "replay",
    "recv_wake",
    "queue",
    "queue_wake",
];

/// `durable-bench --child pg_receiver SCHEMA ROUNDS`: the receiving process of
/// `recv_wake` (see [`run_child`]).
pub(crate) const CHILD: &str = "pg_receiver";

/// The id of `recv_wake`'s receiving workflow.
const RECEIVER_ID: &str = "receiver";

/// How long the `recv_wake` driver waits for a line from its child before giving up.
const CHILD_SILENCE: Duration = Duration::from_secs(30);

/// The PostgreSQL server `DATABASE_URL` names.
pub(crate) struct Server {
    /// `DATABASE_URL` as given: it may hold a password, so it is never printed.
    url: String,
    /// The same, parsed, for the baselines' connections.
    config: tokio_postgres::Config,
    /// `user@host:port/database`: what errors and the output show.
    shown: String,
    /// The start of every schema this process makes: `bench_<pid>_`.
    prefix: String,
    next: AtomicU32,
}

impl Server {
    /// The server `DATABASE_URL` names; no connection yet.
    fn from_env() -> Res<Server> {
        let url = std::env::var("DATABASE_URL").map_err(|_| {
            "--journal postgres runs on the server DATABASE_URL names, and it is not set \
             (for example DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres)"
        })?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("DATABASE_URL must be a postgres:// URL".into());
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            format!(
                "DATABASE_URL is not a URL tokio-postgres reads ({e}); give it without \
                 `schema=`: every run makes its own schemas"
            )
        })?;
        // An unreachable host (packets dropped) fails in seconds rather than minutes.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let user = config.get_user().unwrap_or("").to_owned();
        let shown = format!(
            "{user}@{host}:{}/{}",
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_dbname().unwrap_or(&user),
        );
        Ok(Server {
            url,
            config,
            shown,
            prefix: format!("bench_{}_", std::process::id()),
            next: AtomicU32::new(0),
        })
    }

    /// A new connection, driven on the current runtime until the client is dropped.
    async fn client(&self) -> Res<Client> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            // tokio-postgres's message leaves the cause (refused, timed out) to its source.
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("cannot connect to PostgreSQL at {}: {e}{cause}", self.shown)
        })?;
        tokio::spawn(async move {
            // Its error reaches the client's next request as a closed connection.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A schema name no one uses yet.
    fn schema(&self) -> String {
        format!(
            "{}{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The runtime's URL for the journal in `schema`.
    fn journal_url(&self, schema: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={schema}", self.url)
    }

    /// Opens (creating, at the first open) the journal in `schema`.
    async fn open(&self, schema: &str) -> Res<Runtime> {
        Ok(Runtime::builder(self.journal_url(schema)).open().await?)
    }

    /// Drops every schema whose name starts with this process's prefix.
    async fn drop_ours(&self, admin: &Client) -> Res<()> {
        let left = admin
            .query(
                "SELECT nspname::text FROM pg_namespace WHERE left(nspname, length($1)) = $1",
                &[&self.prefix],
            )
            .await?;
        for row in left {
            let name: String = row.try_get(0)?;
            admin
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await?;
        }
        Ok(())
    }
}

/// The server's version and the settings that decide what a commit costs.
struct Settings {
    version: String,
    synchronous_commit: String,
    fsync: String,
}

/// What `admin`'s server runs with: printed first, for the figures depend on it.
async fn settings(admin: &Client) -> Res<Settings> {
    let row = admin
        .query_one(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),
                    current_setting('fsync')",
            &[],
        )
        .await?;
    Ok(Settings {
        version: row.try_get(0)?,
        synchronous_commit: row.try_get(1)?,
        fsync: row.try_get(2)?,
    })
}

/// `durable-bench --journal postgres`.
pub(crate) async fn run(o: &Options) -> Res<()> {
    let server = Server::from_env()?;
    // Also the check that the server is there, before anything else is tried.
    let admin = server.client().await?;
    let measured = measure_all(o, &server, &admin).await;
    // Whatever a failed run left, too.
    let dropped = server.drop_ours(&admin).await;
    measured?;
    dropped
}

/// The server's settings, each workload's row, the scale lines and the targets.
async fn measure_all(o: &Options, server: &Server, admin: &Client) -> Res<()> {
    let s = settings(admin).await?;
    if o.json {
        println!(
            "{{\"journal\": \"postgres\", \"server\": \"{}\", \"version\": \"{}\", \"synchronous_commit\": \"{}\", \"fsync\": \"{}\"}}",
            server.shown, s.version, s.synchronous_commit, s.fsync
        );
    } else {
        println!(
            "journal: PostgreSQL {} at {} (synchronous_commit={}, fsync={}; the sync column \
             is synchronous_commit)",
            s.version, server.shown, s.synchronous_commit, s.fsync
        );
    }
    // The baselines' rows go into tables made from a journal's own `steps`.
    let template = server.schema();
    server.open(&template).await?.close().await?;
    let setting = Setting::Postgres(s.synchronous_commit);
    let mut workloads = vec![
        Workload::Seq(100),
        Workload::Seq(1000),
        Workload::Fanout(100),
        Workload::Fanout(1000),
        Workload::Many,
        Workload::Start,
        Workload::Replay(100),
        Workload::Replay(1000),
        Workload::RecvWake,
        Workload::Queue,
        Workload::QueueWake,
    ];
    workloads.retain(|w| o.only.contains(&w.name()));
    if !o.json {
        println!("{TABLE_HEADER}");
    }
    let mut rows = Vec::new();
    for w in workloads {
        let row = measure(server, admin, &template, &setting, o.runs, w).await?;
        println!("{}", if o.json { row.json() } else { row.table_line() });
        rows.push(row);
    }
    scales(&rows, o.json);
    print_targets(&targets(&rows), o.json, Journal::Postgres);
    Ok(())
}

/// `w` and its baseline, interleaved: once to warm up, then `runs` times each.
async fn measure(
    server: &Server,
    admin: &Client,
    template: &str,
    setting: &Setting,
    runs: usize,
    w: Workload,
) -> Res<Row> {
    // Warm-up: the server's caches and plans, this process's allocator; not counted.
    one_run(server, admin, template, w).await?;
    let mut our_runs = Vec::with_capacity(runs);
    let mut base_runs = Vec::with_capacity(runs);
    let sampler = Sampler::start();
    for _ in 0..runs {
        let (ours, base) = one_run(server, admin, template, w).await?;
        our_runs.push(ours);
        base_runs.push(base);
    }
    Ok(Row::from_runs(
        w,
        setting.clone(),
        &our_runs,
        &base_runs,
        sampler.stop(),
    ))
}

/// One run of our side of `w`, then one of its baseline, each in schemas of its own,
/// dropped afterwards (the tables grow run after run otherwise, and a bigger index
/// costs more per insert).
async fn one_run(server: &Server, admin: &Client, template: &str, w: Workload) -> Res<(Run, Run)> {
    let journal = server.schema();
    let scratch = server.schema();
    let runs = async {
        let ours = ours(server, admin, &journal, w).await?;
        let base = baseline(server, admin, template, &journal, &scratch, w).await?;
        Res::Ok((ours, base))
    }
    .await;
    // Dropped whether the run succeeded or not.
    let dropped = admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {journal} CASCADE; DROP SCHEMA IF EXISTS {scratch} CASCADE"
        ))
        .await;
    let runs = runs?;
    dropped?;
    Ok(runs)
}

/// One timed run of our side of `w`, on a fresh journal in `schema`.
async fn ours(server: &Server, admin: &Client, schema: &str, w: Workload) -> Res<Run> {
    match w {
        Workload::Replay(n) => return replay(server, admin, schema, n).await,
        Workload::RecvWake => return recv_wake(server, schema).await,
        // On PostgreSQL the server's settings decide durability, not the builder's.
        Workload::Queue => {
            let url = server.journal_url(schema);
            return crate::queue::through_queue(std::path::Path::new(&url), Default::default())
                .await;
        }
        Workload::QueueWake => {
            let url = server.journal_url(schema);
            return crate::queue::wake(std::path::Path::new(&url), Default::default()).await;
        }
        Workload::Typed(_) | Workload::QueueFloor => {
            return Err(format!("{} is not measured on PostgreSQL", w.name()).into());
        }
        _ => {}
    }
    let rt = server.open(schema).await?;
    let before = rt.journal_commits();
    let cpu = usage::cpu_seconds();
    let start = Instant::now();
    match w {
        Workload::Seq(n) => drop(rt.start(sequential(n)).await?.result().await?),
        Workload::Fanout(n) => drop(rt.start(concurrent(n)).await?.result().await?),
        Workload::Many => run_all(&rt, 200, |_| (None, sequential(10))).await?,
        Workload::Start => run_all(&rt, 1000, |i| (Some(format!("wf-{i}")), one_step(i))).await?,
        Workload::Typed(_)
        | Workload::Replay(_)
        | Workload::RecvWake
        | Workload::Queue
        | Workload::QueueFloor
        | Workload::QueueWake => {}
    }
    let run = Run {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: usage::cpu_seconds() - cpu,
        commits: rt.journal_commits() - before,
        from_call_s: None,
    };
    rt.close().await?;
    Ok(run)
}

/// Records an `n`-step workflow, closes the runtime, marks the workflow unfinished (as
/// a crash before its outcome was written would leave it), then times an open that
/// resumes it, up to its result.
async fn replay(server: &Server, admin: &Client, schema: &str, n: u32) -> Res<Run> {
    {
        let rt = server.open(schema).await?;
        rt.start_with_id("replay", sequential(n))
            .await?
            .result()
            .await?;
        rt.close().await?;
    }
    // No runtime has the journal open: the next open claims the workflow from the
    // closed one (marked gone when it closed) and replays it.
    admin
        .execute(
            &format!(
                "UPDATE {schema}.workflows SET status = 'pending', output = NULL,
                     output_crc32 = NULL WHERE id = 'replay'"
            ),
            &[],
        )
        .await?;
    let cpu = usage::cpu_seconds();
    let start = Instant::now();
    let rt = server.open(schema).await?;
    let handle = rt.start_with_id("replay", sequential(n)).await?;
    handle.result().await?;
    let run = Run {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: usage::cpu_seconds() - cpu,
        // The outcome's; every step came from the journal.
        commits: rt.journal_commits(),
        from_call_s: None,
    };
    let resumed = rt.recovered().iter().any(|id| id == "replay");
    rt.close().await?;
    if !resumed {
        return Err("replay: the open did not resume the pending workflow".into());
    }
    Ok(run)
}

/// Microseconds since the Unix epoch at `t`: the clock both processes of `recv_wake`
/// read (on one machine).
fn epoch_us(t: SystemTime) -> Res<i64> {
    Ok(i64::try_from(t.duration_since(UNIX_EPOCH)?.as_micros())?)
}

/// What the child reported when its `recv` returned.
struct Got {
    value: u64,
    /// When `recv` returned, in microseconds since the epoch.
    at_us: i64,
    /// The child runtime's commits so far, and its process's CPU seconds.
    commits: u64,
    cpu_s: f64,
}

/// The receiving process of `recv_wake`; killed if dropped while it runs.
struct Receiver {
    child: Option<Child>,
    /// Its stdout, line by line.
    lines: mpsc::UnboundedReceiver<String>,
    /// Its stdin, never written: the child exits when it closes, so that it does not
    /// wait for messages for ever if this process dies (and cannot kill it).
    _stdin: Option<ChildStdin>,
}

impl Receiver {
    /// Starts `durable-bench --child pg_receiver SCHEMA ROUNDS` (it finds the server in
    /// the `DATABASE_URL` it inherits: the URL, which may hold a password, stays off
    /// its command line).
    fn spawn(schema: &str, rounds: u32) -> Res<Receiver> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--child", CHILD, schema, &rounds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the recv_wake child has no stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        // The timed instants are taken in each process; how soon this thread passes a
        // line on changes only when the next message goes (after `PARK` anyway).
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Receiver {
            _stdin: child.stdin.take(),
            child: Some(child),
            lines,
        })
    }

    /// The child's next line, split into words.
    async fn line(&mut self, waiting_for: &str) -> Res<Vec<String>> {
        match tokio::time::timeout(CHILD_SILENCE, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line.split_whitespace().map(str::to_owned).collect()),
            Ok(None) => {
                let status = match self.child.as_mut().map(Child::wait) {
                    Some(Ok(status)) => status.to_string(),
                    _ => "unknown status".to_owned(),
                };
                Err(format!(
                    "the recv_wake child ended ({status}) while the driver waited for \
                     {waiting_for}"
                )
                .into())
            }
            Err(_) => Err(format!(
                "the recv_wake child said nothing for {} s while the driver waited for \
                 {waiting_for}",
                CHILD_SILENCE.as_secs()
            )
            .into()),
        }
    }

    async fn ready(&mut self) -> Res<()> {
        match self.line("it to start").await?.as_slice() {
            [w] if w == "ready" => Ok(()),
            other => Err(format!("the recv_wake child said {other:?}, not `ready`").into()),
        }
    }

    async fn got(&mut self) -> Res<Got> {
        match self.line("a message to be received").await?.as_slice() {
            [w, value, at_us, commits, cpu_s] if w == "got" => Ok(Got {
                value: value.parse()?,
                at_us: at_us.parse()?,
                commits: commits.parse()?,
                cpu_s: cpu_s.parse()?,
            }),
            other => Err(format!("the recv_wake child said {other:?}, not `got ...`").into()),
        }
    }

    /// Waits for the child's last line (its commits and CPU seconds at the end) and
    /// for it to exit.
    async fn finish(mut self) -> Res<(u64, f64)> {
        let done = match self.line("its workflow's result").await?.as_slice() {
            [w, commits, cpu_s] if w == "done" => (commits.parse()?, cpu_s.parse()?),
            other => {
                return Err(format!("the recv_wake child said {other:?}, not `done ...`").into());
            }
        };
        let mut child = self
            .child
            .take()
            .ok_or("the recv_wake child was collected")?;
        let deadline = Instant::now() + CHILD_SILENCE;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    return Err(format!("the recv_wake child failed ({status})").into());
                }
                return Ok(done);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the recv_wake child did not exit after its workflow finished".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `recv_wake` across processes: a child process opens the journal in `schema` and runs
/// a [`receiver`]; this process opens the same journal and sends it one message at a
/// time, each once the previous one was received and [`PARK`] has passed. Returns the
/// median time from `send` returning here to `recv` returning there (both read from
/// the wall clock), the CPU time per message of both processes, and the commits of
/// both runtimes in the timed rounds.
async fn recv_wake(server: &Server, schema: &str) -> Res<Run> {
    // This open creates the journal; the child's finds it made.
    let rt = server.open(schema).await?;
    let mut child = Receiver::spawn(schema, ROUNDS + 1)?;
    child.ready().await?;
    let mut after_send = Vec::with_capacity(ROUNDS as usize);
    let mut from_call = Vec::with_capacity(ROUNDS as usize);
    let (mut before, mut cpu) = (0, 0.0);
    let (mut child_before, mut child_cpu) = (0, 0.0);
    for i in 0..=ROUNDS {
        tokio::time::sleep(PARK).await;
        if i == 1 {
            // Round 0 warmed up; the timed rounds start here, with the wait parked.
            before = rt.journal_commits();
            cpu = usage::cpu_seconds();
        }
        let called = epoch_us(SystemTime::now())?;
        rt.send(RECEIVER_ID, "ping", &u64::from(i)).await?;
        let sent = epoch_us(SystemTime::now())?;
        let got = child.got().await?;
        if got.value != u64::from(i) {
            return Err(format!("recv_wake sent {i} but received {}", got.value).into());
        }
        if i == 0 {
            (child_before, child_cpu) = (got.commits, got.cpu_s);
        } else {
            // Zero when `recv` returned first (it cannot, across processes, but for a
            // clock step).
            after_send.push((got.at_us - sent).max(0) as f64 / 1e6);
            from_call.push((got.at_us - called).max(0) as f64 / 1e6);
        }
    }
    let cpu_s = usage::cpu_seconds() - cpu;
    let commits = rt.journal_commits() - before;
    let (child_commits, child_cpu_s) = child.finish().await?;
    rt.close().await?;
    Ok(Run {
        wall_s: median(after_send),
        cpu_s: (cpu_s + child_cpu_s - child_cpu) / f64::from(ROUNDS),
        // The sends here; the takes (each with the recv it answers), the commits that
        // park the next wait, and the outcome there.
        commits: commits + child_commits.saturating_sub(child_before),
        from_call_s: Some(median(from_call)),
    })
}

/// The entry point of `durable-bench --child pg_receiver SCHEMA ROUNDS`: opens the
/// journal in `SCHEMA` on the server of `DATABASE_URL`, starts a [`receiver`] of
/// `ROUNDS` messages, and prints `ready`, then `got VALUE AT_US COMMITS CPU_S` as each
/// `recv` returns (when, in microseconds since the epoch; this runtime's commits and
/// this process's CPU seconds so far), and `done COMMITS CPU_S` at the end.
pub(crate) async fn run_child(args: &[String]) -> Res<()> {
    let (schema, rounds) = match args {
        [schema, rounds] => (schema, rounds.parse::<u32>()?),
        _ => return Err(format!("--child {CHILD} takes SCHEMA ROUNDS, not {args:?}").into()),
    };
    // The driver keeps our stdin open while it lives; if it dies, nobody sends the rest.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        eprintln!("durable-bench --child {CHILD}: the driver went away");
        std::process::exit(3);
    });
    let server = Server::from_env()?;
    let rt = server.open(schema).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    *RECEIVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
    let handle = rt.start_with_id(RECEIVER_ID, receiver(rounds)).await?;
    println!("ready");
    for _ in 0..rounds {
        let (value, _, wall) = rx.recv().await.ok_or("the receiver stopped reporting")?;
        println!(
            "got {value} {} {} {}",
            epoch_us(wall)?,
            rt.journal_commits(),
            usage::cpu_seconds()
        );
    }
    handle.result().await??;
    println!("done {} {}", rt.journal_commits(), usage::cpu_seconds());
    rt.close().await?;
    Ok(())
}

/// The baseline of `w`, on the scratch schema `scratch` (its `steps` made from the one
/// in `template`); `replay`'s reads the journal our run left in `journal`.
async fn baseline(
    server: &Server,
    admin: &Client,
    template: &str,
    journal: &str,
    scratch: &str,
    w: Workload,
) -> Res<Run> {
    if let Workload::Replay(n) = w {
        let (took, rows) = baseline::select(server, journal, "replay").await?;
        if rows != n as usize {
            return Err(format!("replay baseline read {rows} rows, expected {n}").into());
        }
        return Ok(Run {
            wall_s: took.wall_s,
            cpu_s: took.cpu_s,
            commits: 0,
            from_call_s: None,
        });
    }
    baseline::scratch(admin, template, scratch).await?;
    if w == Workload::RecvWake {
        let (latencies, cpu_s) =
            baseline::commit_latencies(server, scratch, ROUNDS as usize, PARK).await?;
        return Ok(Run {
            wall_s: median(latencies),
            cpu_s,
            commits: u64::from(ROUNDS),
            from_call_s: None,
        });
    }
    if w == Workload::QueueWake {
        let turns = crate::queue::TURNS;
        let (latencies, cpu_s) =
            baseline::commit_latencies(server, scratch, turns as usize, crate::queue::BACK_TO_BACK)
                .await?;
        return Ok(Run {
            wall_s: median(latencies),
            cpu_s: cpu_s / f64::from(turns),
            commits: u64::from(turns),
            from_call_s: None,
        });
    }
    let (rows, per_commit) = match w {
        Workload::Seq(n) => (n, 1),
        Workload::Fanout(n) => (n, 100),
        Workload::Many | Workload::Start => (2000, 100),
        Workload::Queue => (2 * crate::queue::ITEMS, 100),
        Workload::Typed(_)
        | Workload::Replay(_)
        | Workload::RecvWake
        | Workload::QueueFloor
        | Workload::QueueWake => {
            return Err(format!("no PostgreSQL baseline for {}", w.name()).into());
        }
    };
    let took = baseline::commits(server, scratch, rows as usize, per_commit as usize).await?;
    Ok(Run {
        wall_s: took.wall_s,
        cpu_s: took.cpu_s,
        commits: u64::from(rows.div_ceil(per_commit)),
        from_call_s: None,
    })
}

/// The targets of the PostgreSQL issue, checked against the rows.
fn targets(rows: &[Row]) -> Vec<Target> {
    let row = |w: Workload| rows.iter().find(|r| r.workload == w);
    let mut out = Vec::new();
    for (w, limit) in [
        (Workload::Seq(1000), 1.3),
        (Workload::Fanout(1000), 2.0),
        (Workload::Many, 2.0),
        (Workload::Start, 2.0),
        (Workload::Replay(1000), 3.0),
    ] {
        if let Some(r) = row(w) {
            out.push(Target {
                what: format!("{} ratio on postgres (n = {})", w.name(), w.n()),
                measured: r.ratio(),
                limit,
            });
        }
    }
    if let Some(r) = row(Workload::RecvWake) {
        out.push(Target {
            what: format!(
                "recv_wake ratio on postgres, across processes (send returned -> recv returned {:.1} us, one commit {:.1} us; from send called {:.1} us)",
                r.ours_s * 1e6,
                r.baseline_s * 1e6,
                r.from_call_s.unwrap_or(f64::NAN) * 1e6
            ),
            measured: r.ratio(),
            limit: 2.0,
        });
    }
    out
}
