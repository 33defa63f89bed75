//! durable's benchmark: what a checkpoint costs, next to what SQLite (or PostgreSQL)
//! itself costs.
//!
//! ```text
//! cargo run --release --bin durable-bench              # a table, then the targets
//! cargo run --release --bin durable-bench -- --json    # one JSON object per line
//! cargo run --release --bin durable-bench -- --quick   # 3 runs, no n = 10,000
//! cargo run --release --bin durable-bench -- --only seq,fanout --sync off
//! DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres \
//!     cargo run --release --bin durable-bench -- --journal postgres   # see below
//! ```
//!
//! Every JSON line says which journal it measured: `"journal": "sqlite"` or `"postgres"`.
//!
//! Every workload runs against a fresh journal file, once to warm up and then `--runs`
//! times (default 5), interleaved with its baseline: raw rusqlite with the same pragmas
//! (WAL, the same `synchronous`) writing rows of the same shape as durable's step table
//! (the table is made from the `CREATE TABLE` of a journal durable created). Each side's
//! figure is the median of its runs, and `ratio` is ours / baseline, so noise from a
//! shared machine mostly cancels.
//!
//! | workload | ours | baseline |
//! |---|---|---|
//! | `seq` | one workflow, `n` sequential no-op steps | `n` single-row commits |
//! | `typed` | as `seq`, each step taking an order (a struct with three lines, about 150 bytes encoded) and returning a receipt | `n` single-row commits of a receipt-sized output |
//! | `fanout` | one workflow, `n` concurrent no-op steps (`join_all`) | `n` rows, 100 per commit |
//! | `many` | 200 workflows x 10 sequential steps, started at once | 2,000 rows, 100 per commit |
//! | `replay` | open a journal and finish a pending workflow whose `n` steps are recorded | open and one `SELECT` of those `n` rows |
//! | `start` | start 1,000 one-step workflows with explicit ids, at once | 2,000 rows, 100 per commit |
//! | `recv_wake` | a workflow waiting in `recv`: from `Runtime::send` returning to `recv` returning, median of 100 | one single-row commit after the same 1 ms idle, median of 100 |
//! | `queue` | 10,000 one-step workflows enqueued at once on a queue of concurrency 100, up to every result | 20,000 rows (a workflow's and its step's each), 100 per commit |
//! | `queue_floor` | as `queue` | what `queue` writes, as raw statements in the fewest commits it can take (see below) |
//! | `queue_wake` | a queue of concurrency 1 with 101 one-step workflows: from a workflow's handle returning its result (the commit that ended it, and freed its slot, has happened) to the next one's step starting, median of 100 | one single-row commit, back to back, median of 100 |
//!
//! `queue_floor` runs `queue` against its own rows: 10,000 workflow rows inserted
//! queued, 100 per commit, into the journal's own tables and indexes (copied from a
//! journal durable made); then 100 at a time, a commit that marks them dispatched and
//! records their steps and a commit that records their outcomes (a step's record
//! commits before its workflow's outcome, so a generation takes two): 300 commits,
//! no reads, no dispatch decisions. Its ratio is what the runtime adds to the rows a
//! queue must write. The `queue` target line also prints that baseline against
//! `queue`'s: what those rows alone cost, in units of the 20,000 plain rows the
//! target counts. The workflow rows carry the queue's indexes and are written three
//! times (queued, dispatched, finished), so that figure is above 2 on these
//! machines: the `queue` target of 2 cannot be met by a faster runtime, only by
//! writing less per queued workflow.
//!
//! `typed` is `seq` with the values a service passes: what it adds to `seq`'s per-step
//! cost is the argument fingerprint, and encoding (and checking) a struct instead of an
//! integer.
//!
//! `recv_wake` times one message at a time, each sent once the previous one was received
//! and the workflow has had 1 ms to wait again, so every `send` finds a parked `recv` and
//! an idle writer; the baseline's commits have the same pause between them (a commit
//! after an idle millisecond costs more than one right after another, on tmpfs too).
//! The writer answers a parked `recv` in the transaction that sends its message, so
//! `recv` returns about when `send` does: the measure, from `send` returning to `recv`
//! returning, is near zero (counted as zero when `recv` came back first). The target
//! line also prints the wider measure, from `send` being called, which includes the
//! send's own commit and the wake-ups of the writer thread and of both tasks.
//! Its figures are per message (`ours_s` is the median latency, `base_s` the median
//! commit, `n` the number of messages), and `commits` counts every commit of the 100
//! rounds: two a message (the send with the recv it answers, and the empty one that
//! parks the next wait).
//!
//! `queue_wake` measures what a queue adds to a start: a freed slot is taken in the
//! commit that frees it (the dispatch runs inside it), so the next workflow starts as
//! soon as the runtime hears of that commit, sooner than another commit would take. Its
//! target line also prints a whole turn of the queue, from one workflow's step starting
//! to the next one's: the step's checkpoint, the commit that ends its workflow and
//! dispatches the next, and the launch. `commits` counts every commit of the 100 turns.
//!
//! `seq`, `fanout` and `replay` run at n = 100, 1,000 and 10,000; a `scale` line per
//! workload and setting gives the per-step cost at each size and the marginal cost (the
//! slope) between sizes, which should stay flat (for `replay` it shows that reading a
//! journal costs one query, not one per step). Journals for `synchronous=FULL` and `NORMAL`
//! live in `--dir` (default: the system temporary directory, on disk); for `OFF` they
//! live in `--tmpfs` (default `/dev/shm`), where the runtime's own CPU cost shows.
//! Besides wall time each row reports CPU time (every thread of the process, from
//! `getrusage`) and `overhead_us`, the wall time per step above the baseline's.
//!
//! A `10k_x_10` line reports 10,000 workflows of 10 steps started at once: total time,
//! peak RSS and peak open descriptors (sampled from `/proc`). Then come the scale
//! workloads (`parked`, `long_replay` with `bytes`, `history_open`: see [`scale`]), each
//! a JSON line in either output mode. Last, each target of the performance issue is
//! checked against the figures above.
//!
//! # PostgreSQL
//!
//! `--journal postgres` runs `seq` and `fanout` (n = 100 and 1,000), `many`, `start`,
//! `replay` (n = 100 and 1,000), `recv_wake`, `queue` and `queue_wake` on a PostgreSQL
//! journal, on the server
//! that `DATABASE_URL` names (without `schema=`; an error says so if it is unset or the
//! server cannot be reached), with `--json`, `--quick`, `--runs` and `--only` as above.
//! Each run, ours and its baseline, gets fresh schemas, `bench_<pid>_<k>`: the
//! journal's (made by the runtime's first open, before the clock starts) and the
//! baseline's, both dropped after the run. The baselines are raw tokio-postgres on the
//! same server, so under the same `synchronous_commit` and `fsync` (printed first; the
//! `sync` column shows `synchronous_commit`, which decides there what a commit waits
//! for, as [`Durability`] does not), writing rows into a copy of a journal's `steps`
//! (`LIKE ... INCLUDING ALL`: its columns, collation and primary key), with their
//! statements prepared before the clock starts. Runs are interleaved, and figures are
//! medians, as on SQLite.
//!
//! | workload | ours | baseline |
//! |---|---|---|
//! | `seq` | as on SQLite | `n` autocommitted single-row `INSERT`s, one at a time: a round trip and a commit each |
//! | `fanout` | as on SQLite | `n` rows, 100 per transaction, each transaction's `BEGIN`, `INSERT`s and `COMMIT` pipelined |
//! | `many`, `start` | as on SQLite | 2,000 rows, 100 per transaction, pipelined |
//! | `replay` | a workflow of `n` steps is recorded, its runtime closed, and the workflow marked pending by SQL (as a crash before its outcome would leave it); timed: an open that claims and replays it, up to its result | a new connection and one `SELECT` of those `n` rows (the columns and order of the journal's own read) |
//! | `recv_wake` | across two processes, below | one autocommitted single-row `INSERT` after the same 1 ms idle, median of 100 |
//! | `queue` | as on SQLite | 20,000 rows, 100 per transaction, pipelined |
//! | `queue_wake` | as on SQLite | one autocommitted single-row `INSERT`, back to back, median of 100 |
//!
//! `recv_wake` on PostgreSQL crosses processes, as two services sharing a journal do:
//! a child process (`durable-bench --child pg_receiver SCHEMA ROUNDS`, the URL in the
//! `DATABASE_URL` it inherits) opens the journal and runs the receiving workflow; this
//! process opens the same journal and sends one message at a time, each once the child
//! reported the previous one received and 1 ms has passed. The message reaches the
//! child's runtime through the journal's `NOTIFY`, and the child's writer takes it (and
//! records the `recv`) in a transaction of its own: the measure, from `send` returning
//! here to `recv` returning there, is at least that round trip and commit. Both
//! instants are read from the wall clock (microseconds since the epoch, one machine),
//! the child's passed back on its stdout. `commits` counts both runtimes' (per message:
//! the send, the take, and the commit that parks the next wait), and `cpu_us` both
//! processes' CPU per message. Elsewhere CPU time is this process's only: the server's
//! work is in no figure but wall time.
//!
//! The targets on PostgreSQL are ratios: `seq` (n = 1,000) at most 1.3; `fanout`
//! (n = 1,000), `many`, `start` and `recv_wake` at most 2; `replay` (n = 1,000) at
//! most 3.

mod baseline;
mod postgres;
mod queue;
mod sampler;
mod scale;
mod usage;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use std::sync::Mutex;

use durable_runtime::{Durability, Error, Runtime, WorkflowCall, recv, step, workflow};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::sampler::{Peaks, Sampler};

#[step]
async fn noop(i: u32) -> u32 {
    i
}

#[workflow]
async fn sequential(n: u32) -> u32 {
    let mut total = 0u32;
    for i in 0..n {
        total = total.wrapping_add(noop(i).await);
    }
    total
}

#[workflow]
async fn concurrent(n: u32) -> u32 {
    let all = futures::future::join_all((0..n).map(noop)).await;
    all.into_iter().fold(0, u32::wrapping_add)
}

#[workflow]
async fn one_step(i: u32) -> u32 {
    noop(i).await
}

/// What `typed`'s steps take: an order as a service would pass it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<Line>,
    coupon: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    sku: String,
    qty: u32,
    unit_cents: u64,
}

/// What `typed`'s steps return.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Receipt {
    order_id: u64,
    total_cents: u64,
    lines: u32,
    status: Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Status {
    Charged,
    Declined { reason: String },
}

/// Bytes of a receipt as the journal records it, about: the `typed` baseline's rows.
const RECEIPT_BYTES: usize = 64;

fn order(i: u32) -> Order {
    Order {
        id: u64::from(i),
        customer: format!("customer-{}", i % 97),
        lines: (0..3)
            .map(|k| Line {
                sku: format!("SKU-{:05}", (i * 7 + k) % 10_000),
                qty: 1 + k,
                unit_cents: u64::from(199 + 100 * k),
            })
            .collect(),
        coupon: i.is_multiple_of(5).then(|| "WINTER".to_owned()),
    }
}

#[step]
async fn price(order: Order) -> Receipt {
    let total = order
        .lines
        .iter()
        .map(|l| u64::from(l.qty) * l.unit_cents)
        .sum();
    Receipt {
        order_id: order.id,
        total_cents: total,
        lines: order.lines.len() as u32,
        status: if order.coupon.is_some() {
            Status::Declined {
                reason: "coupon expired".to_owned(),
            }
        } else {
            Status::Charged
        },
    }
}

#[workflow]
async fn priced(n: u32) -> u64 {
    let mut total = 0u64;
    for i in 0..n {
        total = total.wrapping_add(price(order(i)).await.total_cents);
    }
    total
}

/// Messages `recv_wake` sends per run (after one more, not timed, to warm up).
const ROUNDS: u32 = 100;

/// How long `recv_wake` waits after a message was received before it sends the next,
/// so that the workflow is surely parked in its next `recv` (and the writer idle).
const PARK: Duration = Duration::from_millis(1);

/// When [`receiver`] got a message: the value, and the time (monotonic, for a driver in
/// this process; wall-clock, for one in another process: PostgreSQL's `recv_wake`).
type Received = (u64, Instant, SystemTime);

/// Where [`received`] reports to the `recv_wake` run in progress, if any.
static RECEIVED: Mutex<Option<mpsc::UnboundedSender<Received>>> = Mutex::new(None);

/// Tells the `recv_wake` driver when `recv` returned `value`. Outside the workflow body,
/// where `#[workflow]`'s guard rails (which refuse clock reads) cannot see it: this is
/// instrumentation, and the instant never reaches the journal or the workflow's logic.
fn received(value: u64) {
    let (at, wall) = (Instant::now(), SystemTime::now());
    let tx = RECEIVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(tx) = tx.as_ref() {
        let _ = tx.send((value, at, wall));
    }
}

/// Receives `n` messages on topic `ping`, one at a time, reporting each as it returns.
#[workflow]
async fn receiver(n: u32) -> Result<u64, String> {
    let mut total = 0u64;
    for _ in 0..n {
        let value = recv::<u64>("ping", None)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("recv without a timeout returned no message")?;
        received(value);
        total = total.wrapping_add(value);
    }
    Ok(total)
}

/// A `synchronous` setting, as durable and as SQLite spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    Full,
    Normal,
    Off,
}

impl Sync {
    const ALL: [Sync; 3] = [Sync::Full, Sync::Normal, Sync::Off];

    fn durability(self) -> Durability {
        match self {
            Sync::Full => Durability::Full,
            Sync::Normal => Durability::Normal,
            Sync::Off => Durability::Off,
        }
    }

    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
            Sync::Off => "OFF",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sync::Full => "full",
            Sync::Normal => "normal",
            Sync::Off => "off",
        }
    }
}

/// What a row was measured on: a SQLite journal at a `synchronous` setting, or a
/// PostgreSQL server, named by its `synchronous_commit` (there the server, not
/// [`Durability`], decides what a commit waits for).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Sqlite(Sync),
    Postgres(String),
}

impl Setting {
    /// The `journal` of the JSON lines.
    fn journal(&self) -> &'static str {
        match self {
            Setting::Sqlite(_) => Journal::Sqlite.name(),
            Setting::Postgres(_) => Journal::Postgres.name(),
        }
    }

    /// The `sync` column.
    fn name(&self) -> &str {
        match self {
            Setting::Sqlite(s) => s.name(),
            Setting::Postgres(synchronous_commit) => synchronous_commit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Seq(u32),
    Typed(u32),
    Fanout(u32),
    Many,
    Replay(u32),
    Start,
    RecvWake,
    Queue,
    QueueFloor,
    QueueWake,
}

const WORKLOAD_NAMES: [&str; 10] = [
    "seq",
    "typed",
    "fanout",
    "many",
    "replay",
    "start",
    "recv_wake",
    "queue",
    "queue_floor",
    "queue_wake",
];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Seq(_) => "seq",
            Workload::Typed(_) => "typed",
            Workload::Fanout(_) => "fanout",
            Workload::Many => "many",
            Workload::Replay(_) => "replay",
            Workload::Start => "start",
            Workload::RecvWake => "recv_wake",
            Workload::Queue => "queue",
            Workload::QueueFloor => "queue_floor",
            Workload::QueueWake => "queue_wake",
        }
    }

    /// Steps the workload records (or replays).
    fn n(self) -> u32 {
        match self {
            Workload::Seq(n) | Workload::Typed(n) | Workload::Fanout(n) | Workload::Replay(n) => n,
            Workload::Many => 2_000,
            Workload::Start => 1_000,
            Workload::RecvWake => ROUNDS,
            Workload::Queue | Workload::QueueFloor => queue::ITEMS,
            Workload::QueueWake => queue::TURNS,
        }
    }

    /// How many steps one figure (wall and CPU time) covers: the whole workload's,
    /// except for `recv_wake` and `queue_wake`, whose figures are per message or turn.
    fn per_figure(self) -> u32 {
        match self {
            Workload::RecvWake | Workload::QueueWake => 1,
            w => w.n(),
        }
    }

    /// What the baseline does, on `setting`'s database.
    fn baseline(self, setting: &Setting) -> String {
        match self {
            Workload::Seq(n) => format!("{n} single-row commits"),
            Workload::Typed(n) => format!("{n} single-row commits of {RECEIPT_BYTES} bytes"),
            Workload::Fanout(n) => format!("{n} rows, 100 per commit"),
            Workload::Many | Workload::Start => "2000 rows, 100 per commit".to_owned(),
            Workload::Replay(n) => match setting {
                Setting::Sqlite(_) => format!("open + one SELECT of {n} rows"),
                Setting::Postgres(_) => format!("connect + one SELECT of {n} rows"),
            },
            Workload::RecvWake => format!(
                "one single-row commit after {} ms idle, median of {ROUNDS}",
                PARK.as_millis()
            ),
            Workload::Queue => format!("{} rows, 100 per commit", 2 * queue::ITEMS),
            Workload::QueueFloor => format!(
                "the queue's own writes, raw, in {} commits",
                3 * queue::ITEMS / queue::CONCURRENCY
            ),
            Workload::QueueWake => format!(
                "one single-row commit, back to back, median of {}",
                queue::TURNS
            ),
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Which journal the workloads run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    Sqlite,
    /// The server `DATABASE_URL` names.
    Postgres,
}

impl Journal {
    /// The `journal` of the JSON lines.
    fn name(self) -> &'static str {
        match self {
            Journal::Sqlite => "sqlite",
            Journal::Postgres => "postgres",
        }
    }
}

struct Options {
    json: bool,
    quick: bool,
    runs: usize,
    dir: PathBuf,
    tmpfs: PathBuf,
    only: Vec<&'static str>,
    syncs: Vec<Sync>,
    journal: Journal,
}

const USAGE: &str = "usage: durable-bench [--json] [--quick] [--runs N] [--dir DIR] [--tmpfs DIR]
                     [--only seq,typed,fanout,many,replay,start,recv_wake,queue,queue_floor,
                            queue_wake,
                            big,parked,long_replay,history_open]
                     [--sync full,normal,off]
       DATABASE_URL=postgres://... durable-bench --journal postgres [--json] [--quick] [--runs N]
                     [--only seq,fanout,many,start,replay,recv_wake]";

/// The scale workloads (see [`scale`]), selected by `--only` like the others.
const SCALE_NAMES: [&str; 3] = ["parked", "long_replay", "history_open"];

fn parse_args() -> Res<Options> {
    let mut o = Options {
        json: false,
        quick: false,
        runs: 5,
        dir: std::env::temp_dir(),
        tmpfs: PathBuf::from("/dev/shm"),
        only: WORKLOAD_NAMES
            .iter()
            .copied()
            .chain(["big"])
            .chain(SCALE_NAMES)
            .collect(),
        syncs: Sync::ALL.to_vec(),
        journal: Journal::Sqlite,
    };
    let mut tmpfs_given = false;
    let (mut only_given, mut sync_given) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "--json" => o.json = true,
            "--quick" => o.quick = true,
            "--runs" => o.runs = value("--runs")?.parse()?,
            "--dir" => o.dir = value("--dir")?.into(),
            "--tmpfs" => {
                o.tmpfs = value("--tmpfs")?.into();
                tmpfs_given = true;
            }
            "--journal" => {
                o.journal = match value("--journal")?.as_str() {
                    "sqlite" => Journal::Sqlite,
                    "postgres" => Journal::Postgres,
                    other => {
                        return Err(format!(
                            "unknown --journal `{other}` (sqlite or postgres)\n{USAGE}"
                        )
                        .into());
                    }
                };
            }
            "--only" => {
                only_given = true;
                o.only = Vec::new();
                for name in value("--only")?.split(',') {
                    let known = WORKLOAD_NAMES
                        .iter()
                        .copied()
                        .chain(["big"])
                        .chain(SCALE_NAMES);
                    match known.into_iter().find(|k| *k == name) {
                        Some(k) => o.only.push(k),
                        None => return Err(format!("unknown workload `{name}`\n{USAGE}").into()),
                    }
                }
            }
            "--sync" => {
                sync_given = true;
                o.syncs = Vec::new();
                for name in value("--sync")?.split(',') {
                    match Sync::ALL.into_iter().find(|s| s.name() == name) {
                        Some(s) => o.syncs.push(s),
                        None => {
                            return Err(format!("unknown --sync `{name}`\n{USAGE}").into());
                        }
                    }
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
        }
    }
    if o.quick {
        o.runs = o.runs.min(3);
    }
    if o.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if o.journal == Journal::Postgres {
        if sync_given {
            return Err(
                "--sync sets SQLite's `synchronous`; on PostgreSQL the server's \
                        `synchronous_commit` decides what a commit waits for"
                    .into(),
            );
        }
        if !only_given {
            o.only = postgres::WORKLOADS.to_vec();
        } else if let Some(name) = o.only.iter().find(|n| !postgres::WORKLOADS.contains(n)) {
            return Err(format!(
                "`{name}` is not measured on PostgreSQL (it measures {})",
                postgres::WORKLOADS.join(",")
            )
            .into());
        }
    }
    if !o.tmpfs.is_dir() {
        if tmpfs_given {
            return Err(format!("--tmpfs {} is not a directory", o.tmpfs.display()).into());
        }
        o.tmpfs = o.dir.clone();
    }
    Ok(o)
}

impl Options {
    /// Where journals for `sync` live.
    fn dir_for(&self, sync: Sync) -> &Path {
        match sync {
            Sync::Off => &self.tmpfs,
            Sync::Full | Sync::Normal => &self.dir,
        }
    }
}

/// Opens a runtime, waiting for a just-dropped one on the same file to let go.
async fn open(path: &Path, sync: Sync) -> Res<Runtime> {
    open_with(path, sync, None).await
}

/// [`open`], with parked workflows going dormant after `evict` (never if `None`).
async fn open_with(path: &Path, sync: Sync, evict: Option<Duration>) -> Res<Runtime> {
    for _ in 0..1000 {
        match Runtime::builder(path)
            .durability(sync.durability())
            .evict_parked_after(evict)
            .open()
            .await
        {
            Err(Error::Locked { .. }) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => return Ok(other?),
        }
    }
    Err(format!("{} stayed locked", path.display()).into())
}

/// Waits until no runtime holds the journal at `path` (a dropped runtime lets go once
/// its writer has finished), so that a timed open does not include that wait.
async fn wait_unlocked(path: &Path) -> Res<()> {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    let file = std::fs::File::open(&lock)?;
    for _ in 0..1000 {
        match file.try_lock() {
            Ok(()) => return Ok(file.unlock()?),
            Err(std::fs::TryLockError::WouldBlock) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    Err(format!("{} stayed locked", path.display()).into())
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall_s: f64,
    cpu_s: f64,
    commits: u64,
    /// `recv_wake` only: the median from `send` being called to `recv` returning.
    from_call_s: Option<f64>,
}

/// One timed run of our side of `w`, in a fresh journal under `dir`.
async fn ours(dir: &Path, sync: Sync, w: Workload) -> Res<Run> {
    let path = dir.join("journal.db");
    match w {
        Workload::Replay(n) => return replay(&path, sync, n).await,
        Workload::RecvWake => return recv_wake(&path, sync).await,
        Workload::Queue | Workload::QueueFloor => {
            return queue::through_queue(&path, sync.durability()).await;
        }
        Workload::QueueWake => return queue::wake(&path, sync.durability()).await,
        _ => {}
    }
    let rt = open(&path, sync).await?;
    let before = rt.journal_commits();
    let cpu = usage::cpu_seconds();
    let start = Instant::now();
    match w {
        Workload::Seq(n) => drop(rt.start(sequential(n)).await?.result().await?),
        Workload::Typed(n) => drop(rt.start(priced(n)).await?.result().await?),
        Workload::Fanout(n) => drop(rt.start(concurrent(n)).await?.result().await?),
        Workload::Many => run_all(&rt, 200, |_| (None, sequential(10))).await?,
        Workload::Start => run_all(&rt, 1000, |i| (Some(format!("wf-{i}")), one_step(i))).await?,
        Workload::Replay(_)
        | Workload::RecvWake
        | Workload::Queue
        | Workload::QueueFloor
        | Workload::QueueWake => {}
    }
    Ok(Run {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: usage::cpu_seconds() - cpu,
        commits: rt.journal_commits() - before,
        from_call_s: None,
    })
}

/// Starts `count` workflows at once, each from its own task (under the id `call`
/// gives, or a generated one), and waits for them all to finish.
async fn run_all<O>(
    rt: &Runtime,
    count: u32,
    call: impl Fn(u32) -> (Option<String>, WorkflowCall<O>),
) -> Res<()>
where
    O: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let runs: Vec<_> = (0..count)
        .map(|i| {
            let rt = rt.clone();
            let (id, call) = call(i);
            tokio::spawn(async move {
                let handle = match id {
                    Some(id) => rt.start_with_id(id, call).await?,
                    None => rt.start(call).await?,
                };
                handle.result().await
            })
        })
        .collect();
    for r in runs {
        r.await??;
    }
    Ok(())
}

/// Records an `n`-step workflow (at `synchronous=OFF`, to save time: the file is the
/// same), marks it unfinished (as a crash before its outcome was written would), then
/// times an open at `sync` that resumes it, up to its result.
async fn replay(path: &Path, sync: Sync, n: u32) -> Res<Run> {
    {
        let rt = open(path, Sync::Off).await?;
        rt.start_with_id("replay", sequential(n))
            .await?
            .result()
            .await?;
    }
    wait_unlocked(path).await?;
    rusqlite::Connection::open(path)?.execute(
        "UPDATE durable_workflows SET status = 'pending', output = NULL WHERE id = 'replay'",
        [],
    )?;
    let cpu = usage::cpu_seconds();
    let start = Instant::now();
    let rt = open(path, sync).await?;
    let handle = rt.start_with_id("replay", sequential(n)).await?;
    handle.result().await?;
    Ok(Run {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: usage::cpu_seconds() - cpu,
        // The outcome's; every step came from one SELECT.
        commits: rt.journal_commits(),
        from_call_s: None,
    })
}

/// Starts a [`receiver`] and sends it one message at a time, each once the previous one
/// was received and [`PARK`] has passed; returns the median time from `send` returning
/// to `recv` returning, the CPU time per message, and the commits of the timed rounds.
async fn recv_wake(path: &Path, sync: Sync) -> Res<Run> {
    let rt = open(path, sync).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    *RECEIVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
    let handle = rt.start_with_id("receiver", receiver(ROUNDS + 1)).await?;
    let mut after_send = Vec::with_capacity(ROUNDS as usize);
    let mut from_call = Vec::with_capacity(ROUNDS as usize);
    let (mut before, mut cpu) = (0, 0.0);
    for i in 0..=ROUNDS {
        tokio::time::sleep(PARK).await;
        if i == 1 {
            // Round 0 warmed up; the timed rounds start here, with the wait parked.
            before = rt.journal_commits();
            cpu = usage::cpu_seconds();
        }
        let called = Instant::now();
        rt.send("receiver", "ping", &u64::from(i)).await?;
        let sent = Instant::now();
        let (value, at, _) = rx.recv().await.ok_or("the receiver stopped reporting")?;
        if value != u64::from(i) {
            return Err(format!("recv_wake sent {i} but received {value}").into());
        }
        if i > 0 {
            // Zero when `recv` returned first: both are answered by one commit.
            after_send.push(at.saturating_duration_since(sent).as_secs_f64());
            from_call.push(at.saturating_duration_since(called).as_secs_f64());
        }
    }
    let cpu_s = (usage::cpu_seconds() - cpu) / f64::from(ROUNDS);
    RECEIVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    handle.result().await??;
    // Per message the send (which also records the recv it answers) and the (empty)
    // commit that parks the next wait; the last message's is the workflow's outcome.
    let commits = rt.journal_commits() - before;
    Ok(Run {
        wall_s: median(after_send),
        cpu_s,
        commits,
        from_call_s: Some(median(from_call)),
    })
}

/// What the SQLite baselines make their databases from: a journal's `durable_steps`
/// table, and all of a journal's tables and indexes.
struct Schemas {
    steps_table: String,
    journal: String,
}

fn baseline(dir: &Path, sync: Sync, w: Workload, schemas: &Schemas) -> Res<Run> {
    let steps_table = schemas.steps_table.as_str();
    let commits_of = |rows: u32, per_commit: u32, output: usize| -> Res<Run> {
        let took = baseline::commits(
            dir,
            sync,
            steps_table,
            rows as usize,
            per_commit as usize,
            output,
        )?;
        Ok(Run {
            wall_s: took.wall_s,
            cpu_s: took.cpu_s,
            commits: u64::from(rows.div_ceil(per_commit)),
            from_call_s: None,
        })
    };
    let commits = |rows: u32, per_commit: u32| commits_of(rows, per_commit, 2);
    match w {
        Workload::Seq(n) => commits(n, 1),
        Workload::Typed(n) => commits_of(n, 1, RECEIPT_BYTES),
        Workload::Fanout(n) => commits(n, 100),
        Workload::Many | Workload::Start => commits(2000, 100),
        Workload::Queue => commits(2 * queue::ITEMS, 100),
        Workload::QueueFloor => {
            let per_commit = queue::CONCURRENCY as usize;
            let items = queue::ITEMS as usize;
            let took = baseline::queue_writes(dir, sync, &schemas.journal, items, per_commit)?;
            Ok(Run {
                wall_s: took.wall_s,
                cpu_s: took.cpu_s,
                commits: 3 * (items / per_commit) as u64,
                from_call_s: None,
            })
        }
        Workload::QueueWake => {
            let (latencies, cpu_s) = baseline::commit_latencies(
                dir,
                sync,
                steps_table,
                queue::TURNS as usize,
                queue::BACK_TO_BACK,
            )?;
            Ok(Run {
                wall_s: median(latencies),
                cpu_s,
                commits: u64::from(queue::TURNS),
                from_call_s: None,
            })
        }
        Workload::RecvWake => {
            let (latencies, cpu_s) =
                baseline::commit_latencies(dir, sync, steps_table, ROUNDS as usize, PARK)?;
            Ok(Run {
                wall_s: median(latencies),
                cpu_s,
                commits: u64::from(ROUNDS),
                from_call_s: None,
            })
        }
        Workload::Replay(n) => {
            // The same rows our replay reads: the journal our replay run left.
            let (took, rows) = baseline::select(&dir.join("journal.db"), "replay")?;
            if rows != n as usize {
                return Err(format!("replay baseline read {rows} rows, expected {n}").into());
            }
            Ok(Run {
                wall_s: took.wall_s,
                cpu_s: took.cpu_s,
                commits: 0,
                from_call_s: None,
            })
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    workload: Workload,
    setting: Setting,
    ours_s: f64,
    ours_cpu_s: f64,
    commits: u64,
    baseline_s: f64,
    baseline_cpu_s: f64,
    peak_rss_mib: f64,
    /// `recv_wake` only: the median of the runs' `from_call_s`.
    from_call_s: Option<f64>,
}

impl Row {
    /// The medians of `ours` and `base`, interleaved runs of `workload` on `setting`.
    fn from_runs(
        workload: Workload,
        setting: Setting,
        ours: &[Run],
        base: &[Run],
        peaks: Peaks,
    ) -> Row {
        let commits = median(ours.iter().map(|r| r.commits as f64).collect());
        Row {
            workload,
            setting,
            ours_s: median(ours.iter().map(|r| r.wall_s).collect()),
            ours_cpu_s: median(ours.iter().map(|r| r.cpu_s).collect()),
            commits: commits as u64,
            baseline_s: median(base.iter().map(|r| r.wall_s).collect()),
            baseline_cpu_s: median(base.iter().map(|r| r.cpu_s).collect()),
            peak_rss_mib: peaks.rss_mib,
            from_call_s: ours
                .iter()
                .map(|r| r.from_call_s)
                .collect::<Option<Vec<f64>>>()
                .map(median),
        }
    }

    /// What the per-step figures divide by.
    fn n(&self) -> f64 {
        f64::from(self.workload.per_figure())
    }

    fn ratio(&self) -> f64 {
        self.ours_s / self.baseline_s
    }

    fn per_step_us(&self) -> f64 {
        self.ours_s * 1e6 / self.n()
    }

    fn cpu_per_step_us(&self) -> f64 {
        self.ours_cpu_s * 1e6 / self.n()
    }

    fn baseline_cpu_per_step_us(&self) -> f64 {
        self.baseline_cpu_s * 1e6 / self.n()
    }

    /// Wall time per step above the baseline's: the runtime's own cost.
    fn overhead_us(&self) -> f64 {
        (self.ours_s - self.baseline_s) * 1e6 / self.n()
    }

    fn json(&self) -> String {
        format!(
            "{{\"journal\": \"{}\", \"workload\": \"{}\", \"sync\": \"{}\", \"n\": {}, \"ours_s\": {:.6}, \"baseline\": \"{}\", \"baseline_s\": {:.6}, \"ratio\": {:.3}, \"peak_rss_mib\": {:.1}, \"per_step_us\": {:.2}, \"overhead_us\": {:.2}, \"cpu_us\": {:.2}, \"baseline_cpu_us\": {:.2}, \"commits\": {}}}",
            self.setting.journal(),
            self.workload.name(),
            self.setting.name(),
            self.workload.n(),
            self.ours_s,
            self.workload.baseline(&self.setting),
            self.baseline_s,
            self.ratio(),
            self.peak_rss_mib,
            self.per_step_us(),
            self.overhead_us(),
            self.cpu_per_step_us(),
            self.baseline_cpu_per_step_us(),
            self.commits,
        )
    }

    fn table_line(&self) -> String {
        format!(
            "{:<11} {:<7} {:>6} {:>9.4} {:>9.4} {:>6.2} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>7.1}  {}",
            self.workload.name(),
            self.setting.name(),
            self.workload.n(),
            self.ours_s,
            self.baseline_s,
            self.ratio(),
            self.per_step_us(),
            self.overhead_us(),
            self.cpu_per_step_us(),
            self.commits,
            self.peak_rss_mib,
            self.workload.baseline(&self.setting)
        )
    }
}

const TABLE_HEADER: &str = "workload    sync         n    ours_s    base_s  ratio  us/step overhead   cpu_us commits rss_mib  baseline";

async fn measure(o: &Options, sync: Sync, w: Workload, schemas: &Schemas) -> Res<Row> {
    let dir = o.dir_for(sync);
    // Warm-up: caches, the page cache, the allocator; not counted.
    let warm = tempfile::tempdir_in(dir)?;
    ours(warm.path(), sync, w).await?;
    baseline(warm.path(), sync, w, schemas)?;
    let mut our_runs = Vec::new();
    let mut base_runs = Vec::new();
    let sampler = Sampler::start();
    for _ in 0..o.runs {
        let run_dir = tempfile::tempdir_in(dir)?;
        our_runs.push(ours(run_dir.path(), sync, w).await?);
        base_runs.push(baseline(run_dir.path(), sync, w, schemas)?);
    }
    Ok(Row::from_runs(
        w,
        Setting::Sqlite(sync),
        &our_runs,
        &base_runs,
        sampler.stop(),
    ))
}

/// How per-step cost changes with `n` for one workload and setting.
struct Scale {
    of: &'static str,
    setting: Setting,
    n: Vec<u32>,
    per_step_us: Vec<f64>,
    /// Cost of each added step between consecutive sizes: (t2 - t1) / (n2 - n1).
    marginal_us: Vec<f64>,
    /// The same for the baseline.
    baseline_marginal_us: Vec<f64>,
}

impl Scale {
    fn from_rows(rows: &[&Row]) -> Option<Scale> {
        let first = rows.first()?;
        if rows.len() < 2 {
            return None;
        }
        let marginal = |f: fn(&Row) -> f64| -> Vec<f64> {
            rows.windows(2)
                .map(|w| (f(w[1]) - f(w[0])) * 1e6 / (w[1].n() - w[0].n()))
                .collect()
        };
        Some(Scale {
            of: first.workload.name(),
            setting: first.setting.clone(),
            n: rows.iter().map(|r| r.workload.n()).collect(),
            per_step_us: rows.iter().map(|r| r.per_step_us()).collect(),
            marginal_us: marginal(|r| r.ours_s),
            baseline_marginal_us: marginal(|r| r.baseline_s),
        })
    }

    /// The largest relative distance of our marginal costs from their mean.
    fn spread(&self) -> f64 {
        spread(&self.marginal_us)
    }

    fn json(&self) -> String {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{\"journal\": \"{}\", \"workload\": \"scale\", \"of\": \"{}\", \"sync\": \"{}\", \"n\": {:?}, \"per_step_us\": [{}], \"marginal_us\": [{}], \"baseline_marginal_us\": [{}], \"spread\": {:.3}, \"baseline_spread\": {:.3}}}",
            self.setting.journal(),
            self.of,
            self.setting.name(),
            self.n,
            list(&self.per_step_us),
            list(&self.marginal_us),
            list(&self.baseline_marginal_us),
            self.spread(),
            spread(&self.baseline_marginal_us)
        )
    }

    fn table_line(&self) -> String {
        let mut s = format!(
            "scale       {:<7} {:<6}  per step",
            self.setting.name(),
            self.of
        );
        for (n, us) in self.n.iter().zip(&self.per_step_us) {
            let _ = write!(s, "  n={n}: {us:.1} us");
        }
        s.push_str("; marginal");
        for m in &self.marginal_us {
            let _ = write!(s, " {m:.1}");
        }
        s.push_str(" us (baseline");
        for m in &self.baseline_marginal_us {
            let _ = write!(s, " {m:.1}");
        }
        let _ = write!(
            s,
            "), spread {:.0}% (baseline {:.0}%)",
            self.spread() * 100.0,
            spread(&self.baseline_marginal_us) * 100.0
        );
        s
    }
}

/// The largest relative distance of `v`'s values from their mean.
fn spread(v: &[f64]) -> f64 {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    v.iter()
        .map(|m| (m - mean).abs() / mean)
        .fold(0.0, f64::max)
}

/// 10,000 workflows of 10 steps started at once: time, peak RSS, peak descriptors.
struct Big {
    secs: f64,
    rss_mib: f64,
    fds: u64,
    commits: u64,
}

async fn big(o: &Options) -> Res<Big> {
    let dir = tempfile::tempdir_in(&o.dir)?;
    let rt = open(&dir.path().join("journal.db"), Sync::Full).await?;
    let sampler = Sampler::start();
    let start = Instant::now();
    run_all(&rt, 10_000, |_| (None, sequential(10))).await?;
    let secs = start.elapsed().as_secs_f64();
    let peaks = sampler.stop();
    Ok(Big {
        secs,
        rss_mib: peaks.rss_mib,
        fds: peaks.fds,
        commits: rt.journal_commits(),
    })
}

/// A target from the performance issue, checked against a measured figure.
struct Target {
    what: String,
    measured: f64,
    limit: f64,
}

impl Target {
    fn met(&self) -> bool {
        self.measured <= self.limit
    }
}

fn targets(rows: &[Row], scales: &[Scale], big: Option<&Big>) -> Vec<Target> {
    let mut out = Vec::new();
    let row = |w: Workload, s: Sync| {
        rows.iter()
            .find(|r| r.workload == w && r.setting == Setting::Sqlite(s))
    };
    let mut ratio = |w: Workload, limit: f64| {
        if let Some(r) = row(w, Sync::Full) {
            out.push(Target {
                what: format!("{} ratio at full (n = {})", w.name(), w.n()),
                measured: r.ratio(),
                limit,
            });
        }
    };
    ratio(Workload::Seq(1000), 1.25);
    ratio(Workload::Fanout(1000), 2.0);
    ratio(Workload::Many, 2.0);
    ratio(Workload::Replay(1000), 3.0);
    ratio(Workload::Start, 2.0);
    ratio(Workload::Queue, 2.0);
    if let (Some(queue), Some(floor), Some(t)) = (
        row(Workload::Queue, Sync::Full),
        row(Workload::QueueFloor, Sync::Full),
        out.last_mut(),
    ) {
        // What the queue's rows alone cost against the same baseline: a floor for
        // the ratio above.
        t.what.push_str(&format!(
            "; its own writes alone, raw: {:.2}",
            floor.baseline_s / queue.baseline_s
        ));
    }
    // At every setting: the wake-up path must not poll, whatever a commit costs.
    for s in Sync::ALL {
        if let Some(r) = row(Workload::RecvWake, s) {
            out.push(Target {
                what: format!(
                    "recv_wake ratio at {} (send returned -> recv returned {:.1} us, one commit {:.1} us; from send called {:.1} us)",
                    s.name(),
                    r.ours_s * 1e6,
                    r.baseline_s * 1e6,
                    r.from_call_s.unwrap_or(f64::NAN) * 1e6
                ),
                measured: r.ratio(),
                limit: 2.0,
            });
        }
        // A freed slot is taken in the commit that frees it: the next start must come
        // sooner than another commit would.
        if let Some(r) = row(Workload::QueueWake, s) {
            out.push(Target {
                what: format!(
                    "queue_wake latency / one commit at {} (slot freed -> next start {:.1} us, one commit {:.1} us; a whole turn {:.1} us)",
                    s.name(),
                    r.ours_s * 1e6,
                    r.baseline_s * 1e6,
                    r.from_call_s.unwrap_or(f64::NAN) * 1e6
                ),
                measured: r.ratio(),
                limit: 1.0,
            });
        }
    }
    for (w, limit) in [(Workload::Seq(1000), 20.0), (Workload::Fanout(1000), 10.0)] {
        if let Some(r) = row(w, Sync::Off) {
            out.push(Target {
                what: format!(
                    "{} runtime cost per step at off (wall time above the baseline, us)",
                    w.name()
                ),
                measured: r.overhead_us(),
                limit,
            });
            out.push(Target {
                what: format!(
                    "{} runtime CPU per step at off (CPU time above the baseline's, us)",
                    w.name()
                ),
                measured: r.cpu_per_step_us() - r.baseline_cpu_per_step_us(),
                limit,
            });
        }
    }
    if let Some(b) = big {
        out.push(Target {
            what: "10k x 10 workflows peak RSS (MiB)".to_owned(),
            measured: b.rss_mib,
            limit: 256.0,
        });
    }
    for s in scales.iter().filter(|s| s.n.len() >= 3) {
        out.push(Target {
            what: format!(
                "{} at {} marginal per-step cost spread, n = {}..{} (baseline's: {:.2})",
                s.of,
                s.setting.name(),
                s.n[0],
                s.n[s.n.len() - 1],
                spread(&s.baseline_marginal_us)
            ),
            measured: s.spread(),
            limit: 0.25,
        });
    }
    out
}

async fn run(o: Options) -> Res<()> {
    if o.journal == Journal::Postgres {
        return postgres::run(&o).await;
    }
    // The baselines write rows into tables made from the real schema.
    let schemas = {
        let dir = tempfile::tempdir_in(&o.dir)?;
        let journal = dir.path().join("journal.db");
        drop(open(&journal, Sync::Full).await?);
        wait_unlocked(&journal).await?;
        Schemas {
            steps_table: baseline::steps_table(&journal)?,
            journal: baseline::journal_schema(&journal)?,
        }
    };
    let sizes: &[u32] = if o.quick {
        &[100, 1000]
    } else {
        &[100, 1000, 10_000]
    };
    let mut workloads = Vec::new();
    workloads.extend(sizes.iter().map(|&n| Workload::Seq(n)));
    workloads.push(Workload::Typed(1000));
    workloads.extend(sizes.iter().map(|&n| Workload::Fanout(n)));
    workloads.extend([Workload::Many, Workload::Start]);
    workloads.extend(sizes.iter().map(|&n| Workload::Replay(n)));
    workloads.push(Workload::RecvWake);
    workloads.extend([Workload::Queue, Workload::QueueFloor, Workload::QueueWake]);
    workloads.retain(|w| o.only.contains(&w.name()));
    if !o.json {
        println!("{TABLE_HEADER}");
    }
    let mut rows = Vec::new();
    for &sync in &o.syncs {
        for &w in &workloads {
            let row = measure(&o, sync, w, &schemas).await?;
            println!("{}", if o.json { row.json() } else { row.table_line() });
            rows.push(row);
        }
    }
    let scales = scales(&rows, o.json);
    let big = if !o.quick && o.only.contains(&"big") {
        let b = big(&o).await?;
        if o.json {
            println!(
                "{{\"journal\": \"sqlite\", \"workload\": \"10k_x_10\", \"sync\": \"full\", \"n\": 100000, \"ours_s\": {:.3}, \"peak_rss_mib\": {:.1}, \"peak_fds\": {}, \"commits\": {}}}",
                b.secs, b.rss_mib, b.fds, b.commits
            );
        } else {
            println!(
                "10k_x_10 full: 10,000 workflows x 10 steps in {:.2} s, {} commits, peak RSS {:.1} MiB, peak open fds {}",
                b.secs, b.commits, b.rss_mib, b.fds
            );
        }
        Some(b)
    } else {
        None
    };
    let sizes = scale::Sizes::new(o.quick);
    let mut bytes_said = false;
    for &sync in &o.syncs {
        let dir = o.dir_for(sync);
        if o.only.contains(&"parked") {
            println!("{}", scale::parked_line(dir, sync, sizes.parked).await?);
        }
        if o.only.contains(&"long_replay") {
            let (replay, bytes) = scale::long_replay_lines(dir, sync, sizes.steps).await?;
            println!("{replay}");
            if !bytes_said {
                println!("{bytes}");
                bytes_said = true;
            }
        }
        if o.only.contains(&"history_open") {
            println!(
                "{}",
                scale::history_open_line(dir, sync, sizes.history, o.runs).await?
            );
        }
    }
    print_targets(
        &targets(&rows, &scales, big.as_ref()),
        o.json,
        Journal::Sqlite,
    );
    Ok(())
}

/// Prints, and returns, the `scale` lines of `rows`: for each setting, each of `seq`,
/// `fanout` and `replay` that was measured at two sizes or more.
fn scales(rows: &[Row], json: bool) -> Vec<Scale> {
    let mut settings: Vec<&Setting> = Vec::new();
    for r in rows {
        if !settings.contains(&&r.setting) {
            settings.push(&r.setting);
        }
    }
    let mut scales = Vec::new();
    for setting in settings {
        for of in ["seq", "fanout", "replay"] {
            let series: Vec<&Row> = rows
                .iter()
                .filter(|r| &r.setting == setting && r.workload.name() == of)
                .collect();
            if let Some(s) = Scale::from_rows(&series) {
                println!("{}", if json { s.json() } else { s.table_line() });
                scales.push(s);
            }
        }
    }
    scales
}

/// Prints each target, met or missed: a table, or one JSON line each.
fn print_targets(checks: &[Target], json: bool, journal: Journal) {
    if !json && !checks.is_empty() {
        println!("\ntargets:");
    }
    let journal = journal.name();
    for t in checks {
        if json {
            println!(
                "{{\"journal\": \"{journal}\", \"target\": \"{}\", \"measured\": {:.3}, \"limit\": {}, \"met\": {}}}",
                t.what,
                t.measured,
                t.limit,
                t.met()
            );
        } else {
            println!(
                "  {:<4} {:<96} {:>7.3} (limit {})",
                if t.met() { "met" } else { "MISS" },
                t.what,
                t.measured,
                t.limit
            );
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        if args.get(1).map(String::as_str) == Some(postgres::CHILD) {
            return run_in_tokio(postgres::run_child(&args[2..]));
        }
        return run_in_tokio(scale::run_child(&args[1..]));
    }
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("durable-bench: {e}");
            return ExitCode::from(2);
        }
    };
    run_in_tokio(run(options))
}

/// Runs `f` on a multi-threaded tokio runtime; its error, if any, goes to stderr.
fn run_in_tokio(f: impl std::future::Future<Output = Res<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("durable-bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("durable-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
