//! The PostgreSQL journal (cargo feature `postgres`).
//!
//! A store runs its own thread with a one-thread tokio runtime, so that it lives as long
//! as the store, not as long as the application's runtime. On it:
//! - the writer ([`writer`]) owns one connection and commits batches of writes: it
//!   waits for a write, takes every write queued behind it, and sends the batch's
//!   statements pipelined (`BEGIN`, the writes, `COMMIT` in one round trip where no
//!   write needs an answer before the next), so that a lone step pays one round trip
//!   and one commit, and concurrent steps share them;
//! - a second connection serves reads, which block their caller (the runtime calls
//!   them from `spawn_blocking`) while the store's thread drives the connection, and
//!   holds the executor's advisory lock;
//! - the watcher ([`executor`]) beats the heartbeat, takes over the workflows of
//!   runtimes that are gone, and listens for what other processes notify.
//!
//! Transaction steps ([`transact`]) run on connections of their own, in tasks of the
//! application's runtime.
//!
//! The schema lives in a PostgreSQL schema of its own (`durable` by default), created
//! and changed only by the numbered migrations of [`schema`]. Many runtimes share it,
//! each an executor that owns the workflows it runs (`docs/journal.md`, "PostgreSQL").

use std::path::Path;
#[cfg(any(test, feature = "bench"))]
use std::sync::atomic::Ordering;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Row};

use super::{
    Ack, Builds, Created, Damage, Dormant, Finish, History, NewMessage, NewWorkflow, RecordStatus,
    RecordedOutcome, RecordedStep, Restored, SideRecords, StartedRecord, StepKey, StepRecord,
    Store, TxStep, Wait, WaitRecord, Wakes, WorkflowRecord,
};
use crate::codec::Fingerprint;
use crate::error::{CancelReason, Error, FailureKind, Location, StoreError, StoreErrorKind};
use crate::journal::crc::{
    checks, event_key, keyed_crc32, message_key, started_value, step_key, workflow_key,
};
use crate::journal::queue::QueueState;
use crate::journal::{DAMAGED, JournalOptions};
use crate::path::StepPath;
use crate::util::lock;

pub(crate) mod client;
pub(crate) mod config;
mod executor;
mod queues;
mod schema;
#[cfg(any(test, feature = "testkit"))]
pub(crate) mod testing;
mod tls;
mod transact;
mod writer;

pub(crate) use config::PgConfig;
pub(crate) use transact::PgTxFn;
use writer::{Command, Op};

/// A failure inside the PostgreSQL journal, before it is given the journal's name.
#[derive(Debug)]
pub(crate) enum PgError {
    /// PostgreSQL, or the connection to it, failed.
    Sql(tokio_postgres::Error),
    /// A row holds what durable never writes.
    Damaged(String),
    /// The journal's schema was written by a newer durable (its version).
    Newer(i64),
    /// The fence refused a batch: another runtime took this one's workflows over.
    Fenced,
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Sql(e)
    }
}

/// Whether `e` means the connection is gone (the server restarted or shut down, the
/// network dropped) rather than that a statement failed.
pub(super) fn connection_lost(e: &PgError) -> bool {
    let PgError::Sql(e) = e else {
        return false;
    };
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // Connection exceptions, and the server shutting down or restarting.
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// `e` as the error of the journal shown as `path`.
pub(crate) fn store_error(path: &Path, e: PgError) -> StoreError {
    match e {
        PgError::Sql(e) => sql_error(path, &e),
        PgError::Damaged(message) => StoreError::new(path, StoreErrorKind::Damaged, message),
        PgError::Fenced => StoreError::new(
            path,
            StoreErrorKind::TakenOver,
            "another runtime sharing this journal took over this runtime's workflows: this \
             one was out of touch with the database for longer than its lease (paused, or \
             cut off). They go on there, and this runtime records nothing more for them",
        ),
        PgError::Newer(version) => StoreError::new(
            path,
            StoreErrorKind::NewerSchema,
            format!(
                "the journal's schema is version {version}, written by a newer durable than this \
                 one (which knows versions up to {}); run the newer version",
                schema::VERSION
            ),
        ),
    }
}

/// A PostgreSQL failure, with what a user needs: the server's message and its SQLSTATE,
/// or what happened to the connection. Never the URL or its password (tokio-postgres
/// does not know the URL, and durable keeps only its shown form).
fn sql_error(path: &Path, e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let kind = match db.code().code() {
            // A constraint durable's own statements never break unless the schema was
            // changed outside durable.
            c if c.starts_with("23") => StoreErrorKind::Invariant,
            // Insufficient privilege, read-only transaction.
            "42501" | "25006" => StoreErrorKind::ReadOnly,
            // Undefined table or column: the schema was changed outside durable.
            "42P01" | "42703" => StoreErrorKind::Damaged,
            _ => StoreErrorKind::Io,
        };
        return StoreError::new(
            path,
            kind,
            format!(
                "PostgreSQL refused a statement: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            ),
        );
    }
    let message = if e.is_closed() {
        "the connection to PostgreSQL was closed".to_owned()
    } else {
        format!("PostgreSQL: {}", config::chain(e))
    };
    StoreError::new(path, StoreErrorKind::Io, message)
}

/// The PostgreSQL journal: the store's thread, the writer's queue and the readers'
/// connection.
#[derive(Debug)]
pub(crate) struct PgStore {
    /// The journal as messages show it (the URL without its password).
    path: Arc<Path>,
    schema: String,
    /// This runtime's executor id (a new one after its workflows were taken over).
    me: Arc<AtomicI64>,
    /// The transaction steps' connections.
    transactions: Arc<transact::TxPool>,
    writes: mpsc::UnboundedSender<Command>,
    /// Stops the watcher (heartbeats, claims, notifications).
    stop_watch: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Where the workflows claimed after the open go.
    takeovers: Arc<Mutex<executor::Takeovers>>,
    /// Where the cancellations other processes made go.
    cancels: executor::Cancels,
    /// The readers' connection; `None` once closed.
    reader: executor::ReaderSlot,
    /// The workflows claimed at the open: the first listing of pending workflows, if
    /// it comes before any write (or the close), which could change what is pending.
    claimed: Mutex<Option<Vec<WorkflowRecord>>>,
    /// Whether `claimed` may still be there (to skip its lock on each write after).
    claimed_kept: AtomicBool,
    #[cfg(any(test, feature = "bench"))]
    stats: Arc<Stats>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    /// The testkit's simulated crash.
    #[cfg(feature = "testkit")]
    halt: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// What the writer counts.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Write transactions committed.
    pub(crate) commits: AtomicU64,
}

/// Connects to PostgreSQL as one of durable's connections (`role`): the client, with its connection driven on the current
/// runtime until the client is dropped.
async fn connect(config: &PgConfig, role: &str) -> Result<Client, PgError> {
    let settings = config.for_connection(role);
    // A connection's error reaches its client's next request as a closed connection.
    Ok(match &config.tls {
        Some(tls) => {
            let (client, connection) = settings.connect(tls.clone()).await?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = settings.connect(NoTls).await?;
            tokio::spawn(connection);
            client
        }
    })
}

/// A connection's server session (its backend's pid and start time), to end it after
/// the connection dropped: until the session is over, a transaction sent on it may
/// still commit (its `COMMIT` late on the network), or hold its locks.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pid: i32,
    started: String,
}

impl Session {
    /// The session of `c`.
    pub(super) async fn of(c: &Client) -> Result<Session, PgError> {
        // Typed, so one round trip; the one session's row, not the whole view.
        let row = c
            .query_typed(
                "SELECT pid, extract(epoch FROM backend_start)::text
                 FROM pg_catalog.pg_stat_get_activity(pg_backend_pid())",
                &[],
            )
            .await?;
        let row = row
            .first()
            .ok_or_else(|| PgError::Damaged("the server does not list this session".into()))?;
        Ok(Session {
            pid: row.try_get(0)?,
            started: row.try_get(1)?,
        })
    }

    /// Ends this session (through `c`, another connection) and waits until it is gone:
    /// its transaction has then committed or rolled back, and holds no lock. A session
    /// the server already closed is gone at once.
    pub(super) async fn end(&self, c: &Client) -> Result<(), PgError> {
        loop {
            let row = c
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity
                     WHERE pid = $1 AND extract(epoch FROM backend_start) = $2::text::numeric",
                    &[&self.pid, &self.started],
                )
                .await?;
            if row.try_get::<_, i64>(0)? == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// For how long an open whose connection dropped starts again.
const OPEN_PATIENCE: Duration = Duration::from_secs(30);

/// One try at opening the journal: the writer's connection and session, the readers'
/// connection, this runtime's executor, and the workflows it claimed at once (their
/// rows), with the schema migrated. The writer prepares its statements once the open
/// is over, while the runtime reads what it resumes. `reached`: set once the server
/// answered.
async fn open_once(
    config: &PgConfig,
    lease: Duration,
    names: Option<&[&'static str]>,
    reached: &mut bool,
) -> Result<((Client, Session), Client, i64, Vec<Row>), PgError> {
    // The writer's connection, and the readers' one, which the watcher keeps up and
    // which holds the executor's lock for as long as the runtime lives.
    let (mut client, reader) =
        futures_util::future::try_join(connect(config, "writer"), connect(config, "reader"))
            .await?;
    *reached = true;
    // One trip on each connection: the writer's session, and, on the readers', the
    // schema's version read, this runtime registered as an executor and its first
    // claim made, pipelined. Claimed before the runtime lists its pending workflows:
    // those of runtimes that stopped, and those nobody owns, are its own.
    let (session, registered) = futures_util::future::try_join(
        Session::of(&client),
        executor::register_and_claim(&reader, &config.schema, lease, names),
    )
    .await?;
    let (me, claimed) = match registered {
        Some(registered) => registered,
        // A new journal, or one an earlier durable made: migrated first.
        None => {
            schema::migrate(&mut client, &config.schema).await?;
            let s = schema::quoted(&config.schema);
            let me = executor::register(&reader, &s, lease).await?;
            (me, executor::claim(&reader, &s, me, names, true).await?)
        }
    };
    Ok(((client, session), reader, me, claimed))
}

impl PgStore {
    /// Opens (and creates or migrates) the journal `config` names. Blocking: call it
    /// off the async threads.
    pub(crate) fn open(config: &PgConfig, options: &JournalOptions) -> Result<PgStore, Error> {
        let path: Arc<Path> = Arc::from(Path::new(config.shown()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("durable-postgres")
            .build()
            .map_err(|e| {
                Error::Store(StoreError::new(
                    &*path,
                    StoreErrorKind::Io,
                    format!("cannot start the journal's thread: {e}"),
                ))
            })?;
        let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
        let (writes, queue) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let takeovers = Arc::new(Mutex::new(executor::Takeovers::Held(Vec::new())));
        let cancels = executor::Cancels::default();
        let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel();
        let lease = options
            .lease
            .unwrap_or(executor::DEFAULT_LEASE)
            .max(executor::MIN_LEASE);
        // Set once the executor is registered; the watcher changes it after a takeover.
        let current = Arc::new(AtomicI64::new(0));
        let thread = {
            let current = current.clone();
            let config = config.clone();
            let shown = path.clone();
            let stats = stats.clone();
            let codec = options.codec;
            let names = options.workflows.clone();
            let writes = writes.clone();
            let takeovers = takeovers.clone();
            let cancels = cancels.clone();
            #[cfg(feature = "testkit")]
            let halt = options.halt.clone();
            thread::Builder::new()
                .name("durable-postgres".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let opened = async {
                            // A connection that drops while the journal opens (the
                            // database restarting, a failover, a session killed) makes
                            // the open start again, for a while; a server that cannot
                            // be reached at all fails the open at once.
                            let started = tokio::time::Instant::now();
                            let mut wait = Duration::from_millis(50);
                            let (w, reader, me, claimed) = loop {
                                let mut reached = false;
                                match open_once(&config, lease, names.as_deref(), &mut reached)
                                    .await
                                {
                                    Err(e)
                                        if reached
                                            && connection_lost(&e)
                                            && started.elapsed() < OPEN_PATIENCE =>
                                    {
                                        tracing::info!(
                                            "the connection to the PostgreSQL journal dropped \
                                             while it opened; opening it again"
                                        );
                                        tokio::time::sleep(wait).await;
                                        wait = (wait * 2).min(Duration::from_secs(1));
                                    }
                                    opened => break opened?,
                                }
                            };
                            let reader: executor::ReaderSlot =
                                Arc::new(Mutex::new(Some(Arc::new(reader))));
                            let mut w =
                                writer::Writer::new(w, config.clone(), me, shown, codec, stats);
                            #[cfg(feature = "testkit")]
                            {
                                w.halt = halt;
                            }
                            w.queues = queues::Queues::new(names.as_deref());
                            let watch = executor::Watch {
                                writer_pid: w.pid.clone(),
                                config: config.clone(),
                                reader: reader.clone(),
                                me: current.clone(),
                                lease,
                                names,
                                writes,
                                takeovers,
                                cancels,
                            };
                            // What this executor owns at its open is what it claimed:
                            // the first listing of its pending workflows is these rows
                            // (or, if one cannot be read, the listing reads them again,
                            // and says why).
                            let claimed = claimed
                                .iter()
                                .map(|r| workflow_row(r, 0))
                                .collect::<Result<Vec<_>, _>>()
                                .ok();
                            Ok::<_, PgError>((w, (reader, claimed), me, watch))
                        }
                        .await;
                        match opened {
                            Ok((w, opened, me, watch)) => {
                                current.store(me, std::sync::atomic::Ordering::SeqCst);
                                let _ = opened_tx.send(Ok(opened));
                                tokio::spawn(executor::watch(watch, watch_stopped));
                                w.run(queue).await;
                            }
                            Err(e) => {
                                let _ = opened_tx.send(Err(e));
                            }
                        }
                    });
                })
                .map_err(|e| {
                    Error::Store(StoreError::new(
                        &*path,
                        StoreErrorKind::Io,
                        format!("cannot start the journal's thread: {e}"),
                    ))
                })?
        };
        let (reader, claimed) = match opened_rx.recv() {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(Error::Store(store_error(&path, e)));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Store(StoreError::new(
                    &*path,
                    StoreErrorKind::Io,
                    "the journal's thread stopped while opening it",
                )));
            }
        };
        #[cfg_attr(not(feature = "testkit"), allow(unused_mut))]
        let mut transactions = transact::TxPool::new(
            config.clone(),
            path.clone(),
            lease,
            current.clone(),
            writes.clone(),
        );
        #[cfg(feature = "testkit")]
        {
            transactions.halt = options.halt.clone();
        }
        Ok(PgStore {
            path,
            schema: config.schema.clone(),
            me: current,
            transactions: Arc::new(transactions),
            writes,
            stop_watch: Mutex::new(Some(stop_watch)),
            takeovers,
            cancels,
            reader,
            claimed_kept: AtomicBool::new(claimed.is_some()),
            claimed: Mutex::new(claimed),
            #[cfg(any(test, feature = "bench"))]
            stats,
            thread: Mutex::new(Some(thread)),
            #[cfg(feature = "testkit")]
            halt: options.halt.clone(),
        })
    }

    /// Queues a write; its answer comes through the returned [`Ack`].
    fn write<T>(&self, op: impl FnOnce(super::Replier<T>) -> Op) -> Ack<T> {
        self.forget_claimed();
        let (tx, ack) = Ack::channel(&self.path);
        // A closed queue drops the op with its replier: the Ack answers Closed.
        let _ = self.writes.send(Command::Write(op(tx)));
        ack
    }

    /// Drops what the open claimed: from now on, listing the pending workflows reads
    /// them.
    fn forget_claimed(&self) {
        if self
            .claimed_kept
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            lock(&self.claimed).take();
        }
    }

    /// Runs `read` on the readers' connection, blocking until it is done.
    ///
    /// A read whose connection dropped waits for the watcher to connect again (the
    /// database restarting, a failover), and is made again: a replay waits for the
    /// database rather than fail.
    fn read<T>(
        &self,
        read: impl AsyncFn(&Client, &str) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        let s = schema::quoted(&self.schema);
        loop {
            let client = lock(&self.reader).clone().ok_or_else(|| self.closed())?;
            match block_on(read(&client, &s)) {
                Err(e) if connection_lost(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                done => return done.map_err(|e| store_error(&self.path, e)),
            }
        }
    }

    /// Refuses a text PostgreSQL cannot hold: one with the NUL character.
    fn text(&self, what: &str, text: &str) -> Result<(), StoreError> {
        if text.contains('\0') {
            Err(StoreError::new(
                &*self.path,
                StoreErrorKind::Invariant,
                format!(
                    "{what} holds the NUL character (`{}`), which PostgreSQL text cannot hold",
                    text.escape_debug()
                ),
            ))
        } else {
            Ok(())
        }
    }

    fn closed(&self) -> StoreError {
        StoreError::new(&*self.path, StoreErrorKind::Closed, "the journal is closed")
    }
}

/// Runs `f` to its end on this thread, which sleeps while `f` waits. Reads wait for
/// the store's own thread, which drives the connections, so they need no runtime of
/// the caller's: this works on any thread, a tokio worker included (the engine reads
/// a long history's next batch on the workflow's thread, as SQLite's reads block it).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

impl Store for PgStore {
    fn path(&self) -> &Path {
        &self.path
    }

    fn create_workflow(&self, workflow: NewWorkflow) -> Ack<Created> {
        if let Some(q) = &workflow.queued {
            let refused = self
                .text("a queue's name", &q.queue)
                .and_then(|()| self.text("a partition key", &q.partition))
                .and_then(|()| match &q.dedup {
                    Some(d) => self.text("a deduplication id", d),
                    None => Ok(()),
                });
            if let Err(e) = refused {
                return refuse(&self.path, e);
            }
        }
        self.write(|r| Op::Create(workflow, r))
    }

    fn record_step(&self, mut step: StepRecord) -> Ack {
        if let RecordedOutcome::Panicked(m) | RecordedOutcome::Interrupted(m) = &mut step.outcome {
            without_nul(m);
        }
        let refused = match &step.effect {
            super::Effect::None => Ok(()),
            super::Effect::Send(m) => self.text("a topic", &m.topic),
            super::Effect::SetEvent(e) => self.text("an event key", &e.0),
        };
        match refused {
            Ok(()) => self.write(|r| Op::Record(step, r)),
            Err(e) => refuse(&self.path, e),
        }
    }

    fn finish_workflow(&self, mut finish: Finish) -> Ack<bool> {
        if let super::Finished::Failed(_, m) = &mut finish.outcome {
            without_nul(m);
        }
        self.write(|r| Op::Finish(finish, r))
    }

    fn record_started(&self, key: StepKey, at: i64) -> Ack {
        self.write(|r| Op::Started(key, at, r))
    }

    fn record_patch(&self, workflow_id: Arc<str>, path: StepPath, name: &'static str) -> Ack {
        self.write(|r| Op::Patch(workflow_id, path, name, r))
    }

    fn send(&self, message: NewMessage) -> Ack {
        match self.text("a topic", &message.topic) {
            Ok(()) => self.write(|r| Op::Send(message, r)),
            Err(e) => refuse(&self.path, e),
        }
    }

    fn wait(&self, wait: Wait) -> Ack<Option<Vec<u8>>> {
        let checked = match &wait.what {
            super::WaitFor::Message { topic, .. } => self.text("a topic", topic),
            super::WaitFor::Event { key, .. } => self.text("an event key", key),
        };
        match checked {
            Ok(()) => self.write(|r| Op::Wait(wait, r)),
            Err(e) => refuse(&self.path, e),
        }
    }

    fn expire(&self, wait: WaitRecord) -> Ack<Option<Vec<u8>>> {
        self.write(|r| Op::Expire(wait, r))
    }

    fn give_back(&self, key: StepKey, topic: String) -> Ack {
        self.write(|r| Op::GiveBack(key, topic, r))
    }

    fn cancel(&self, id: String, reason: CancelReason, at: i64) -> Ack<Vec<String>> {
        self.write(|r| Op::Cancel(id, reason, at, r))
    }

    fn resume(&self, id: String, at: i64) -> Ack<Vec<String>> {
        self.write(|r| Op::Resume(id, at, r))
    }

    fn list(
        &self,
        query: &super::listing::ListQuery,
    ) -> Result<super::listing::ListPage, StoreError> {
        self.read(async |c, s| list_on(c, s, query).await)
    }

    fn view(&self, id: &str) -> Result<Option<super::sqlite::view::WorkflowView>, StoreError> {
        if id.contains('\0') {
            // No PostgreSQL text holds it: no workflow has it.
            return Ok(None);
        }
        self.read(async |c, s| view_on(c, s, id).await)
    }

    fn fork(&self, spec: super::ForkSpec) -> Result<super::Forked, StoreError> {
        self.read(async |c, s| fork_on(c, s, &spec).await)
    }

    fn gc_batch(
        &self,
        cutoff_ms: i64,
        after: i64,
    ) -> Result<super::retention::GcBatch, StoreError> {
        self.read(async |c, s| gc_batch_on(c, s, cutoff_ms, after).await)
    }

    fn gc_commands(&self, _cutoff_ms: i64) -> Result<u64, StoreError> {
        // No command table (see `commands`).
        Ok(0)
    }

    fn vacuum_step(&self) -> Result<i64, StoreError> {
        // PostgreSQL's own (auto)vacuum reclaims the space of deleted rows.
        Ok(0)
    }

    fn reclaims(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn commands(&self) -> Result<Vec<super::command::PendingCommand>, StoreError> {
        // No command table: every process may open a PostgreSQL journal itself.
        Ok(Vec::new())
    }

    fn apply_command(&self, _seq: i64, _outcome: String, _send: Option<NewMessage>) -> Ack<bool> {
        let (reply, ack) = Ack::channel(&self.path);
        let _ = reply.send(Ok(false));
        ack
    }

    fn transaction(&self, step: TxStep) -> Ack {
        self.forget_claimed();
        let (reply, ack) = Ack::channel(&self.path);
        match step.work {
            super::TxWork::Postgres(work) => {
                self.transactions
                    .run(step.key, step.started_at, work, reply);
            }
            super::TxWork::Sqlite(_) => {
                let _ = reply.send(Err(super::other_database(&self.path, &step, "PostgreSQL")));
            }
        }
        ack
    }

    fn dormant(&self, _dormant: Dormant) -> Ack<bool> {
        // Runs stay in memory while they wait: nothing is dropped, nothing changes.
        let (tx, ack) = Ack::channel(&self.path);
        let _ = tx.send(Ok(false));
        ack
    }

    fn awake(&self, _run: Arc<str>) {}

    fn restore_dormant(
        &self,
        _builds: Option<&Builds>,
        _wakes: Wakes,
    ) -> Result<Vec<Restored>, StoreError> {
        Ok(Vec::new())
    }

    fn steps_after(
        &self,
        workflow_id: &str,
        after: Option<&StepPath>,
        limit: usize,
    ) -> Result<Vec<RecordedStep>, StoreError> {
        self.read(async |c, s| steps_after(c, s, workflow_id, after, limit).await)
    }

    fn side_records(&self, workflow_id: &str) -> Result<SideRecords, StoreError> {
        self.read(async |c, s| side_records(c, s, workflow_id).await)
    }

    fn histories(
        &self,
        ids: &[Arc<str>],
        limit: usize,
    ) -> Result<Vec<Result<History, StoreError>>, StoreError> {
        let path = self.path.clone();
        self.read(async |c, s| {
            // Pipelined: every run's queries go out before the first answer is read.
            let reads = ids.iter().map(|id| async {
                let (steps, side) = futures_util::future::join(
                    steps_after(c, s, id, None, limit),
                    side_records(c, s, id),
                )
                .await;
                steps.and_then(|steps| Ok((steps, side?)))
            });
            let mut read = Vec::with_capacity(ids.len());
            for history in futures_util::future::join_all(reads).await {
                match history {
                    // The connection dropped: all of it is read again once it is back.
                    Err(e) if connection_lost(&e) => return Err(e),
                    history => read.push(history.map_err(|e| store_error(&path, e))),
                }
            }
            Ok(read)
        })
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.read(async |c, s| {
            let row = c
                .query_typed_opt(
                    &format!(
                        "SELECT {} FROM {s}.workflows WHERE id = $1",
                        workflow_columns("")
                    ),
                    &[(&id, Type::TEXT)],
                )
                .await?;
            row.map(|r| workflow_row(&r, 0)).transpose()
        })
    }

    fn finished_among(&self, ids: &[Arc<str>]) -> Result<Vec<WorkflowRecord>, StoreError> {
        let ids: Vec<&str> = ids.iter().map(|id| &**id).collect();
        self.read(async |c, s| {
            let rows = c
                .query_typed(
                    &format!(
                        "SELECT {} FROM {s}.workflows WHERE id = ANY($1) AND status <> 'pending'",
                        workflow_columns("")
                    ),
                    &[(&ids, Type::TEXT_ARRAY)],
                )
                .await?;
            rows.iter().map(|r| workflow_row(r, 0)).collect()
        })
    }

    fn pending_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        // At the open, this executor owns what it claimed, read as it claimed it: no
        // second trip. (The watcher's claims go to `takeovers`, not here.)
        if let Some(claimed) = lock(&self.claimed).take() {
            return Ok(claimed);
        }
        self.read(async |c, s| {
            let rows = c
                .query_typed(
                    &format!(
                        "SELECT {} FROM {s}.workflows
                         WHERE status = 'pending' AND owner = $1 ORDER BY created_at, id",
                        workflow_columns("")
                    ),
                    &[(
                        &self.me.load(std::sync::atomic::Ordering::SeqCst),
                        Type::INT8,
                    )],
                )
                .await?;
            rows.iter().map(|r| workflow_row(r, 0)).collect()
        })
    }

    fn check(&self) -> Result<Vec<Damage>, StoreError> {
        self.read(async |c, s| check(c, s).await)
    }

    fn queue_news(&self, to: mpsc::UnboundedSender<super::queue::QueueNews>) {
        // Its first dispatch (of every queue) also puts back in their queues the
        // workflows that executors which stopped had been dispatched, and the held ones.
        let (reply, ack) = Ack::channel(&self.path);
        drop(ack);
        let _ = self.writes.send(Command::Write(Op::Dispatch(
            writer::DispatchOp {
                news: Some(to),
                queues: None,
                requeue: true,
                held: true,
            },
            reply,
        )));
    }

    fn set_queue(&self, set: super::queue::SetLimits) -> Ack {
        match self.text("a queue's name", &set.queue) {
            Ok(()) => self.write(|r| Op::SetQueue(set, crate::util::now_ms(), r)),
            Err(e) => refuse(&self.path, e),
        }
    }

    fn set_schedule(&self, write: super::schedule::ScheduleWrite) -> Ack {
        match self.text("a schedule's name", &write.name) {
            Ok(()) => self.write(|r| Op::Schedule(write, crate::util::now_ms(), r)),
            Err(e) => refuse(&self.path, e),
        }
    }

    fn schedule_state(
        &self,
        name: &str,
    ) -> Result<Option<super::schedule::ScheduleState>, StoreError> {
        self.read(async |c, s| queues::schedule_state(c, s, name).await)
    }

    fn dispatch(&self) -> Ack {
        self.write(|r| {
            Op::Dispatch(
                writer::DispatchOp {
                    news: None,
                    queues: None,
                    requeue: false,
                    held: false,
                },
                r,
            )
        })
    }

    fn hold(&self, id: Arc<str>) -> Ack {
        self.write(|r| Op::Hold(id, crate::util::now_ms(), r))
    }

    fn queue_stats(&self, queue: &str) -> Result<super::queue::QueueStats, StoreError> {
        self.read(async |c, s| queues::stats(c, s, queue).await)
    }

    fn pending_summary(&self) -> Result<(u64, Option<i64>), StoreError> {
        self.read(async |c, s| {
            let row = c
                .query_one(
                    &format!(
                        "SELECT count(*), min(created_at) FROM {s}.workflows \
                         WHERE status = 'pending'"
                    ),
                    &[],
                )
                .await?;
            Ok((u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1)))
        })
    }

    fn writer_alive(&self) -> bool {
        !self.writes.is_closed()
            && lock(&self.thread)
                .as_ref()
                .is_some_and(|h| !h.is_finished())
    }

    fn queued(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<super::queue::QueuedRow>, StoreError> {
        self.read(async |c, s| queues::queued(c, s, queue, limit).await)
    }

    fn queue_of(&self, id: &str) -> Result<Option<Option<String>>, StoreError> {
        self.read(async |c, s| queues::queue_of(c, s, id).await)
    }

    fn takeovers(&self, to: mpsc::UnboundedSender<Arc<str>>) {
        let mut takeovers = lock(&self.takeovers);
        if let executor::Takeovers::Held(held) = &mut *takeovers {
            for id in held.drain(..) {
                let _ = to.send(id);
            }
        }
        *takeovers = executor::Takeovers::To(to);
    }

    fn replayed(&self, _ids: Vec<Arc<str>>, _at: i64) -> Ack {
        // Recorded by the claims that gave this runtime its runs (see `executor::claim`).
        let (reply, ack) = Ack::channel(&self.path);
        let _ = reply.send(Ok(()));
        ack
    }

    fn cancellations(&self, to: mpsc::UnboundedSender<Option<Arc<str>>>) {
        *lock(&self.cancels) = Some(to);
    }

    fn close(&self) -> Result<(), StoreError> {
        self.forget_claimed();
        // Transaction steps still running commit first (or fail, if they were taken
        // over): their records go in before the workflows are given up.
        if !self.transactions.wait_idle(CLOSE_WITHIN) {
            tracing::warn!(
                "transaction steps still ran {CLOSE_WITHIN:?} after the close began; their \
                 workflows go to the next runtime, which runs them again unless they commit"
            );
        }
        self.transactions.close_idle();
        if let Some(stop) = lock(&self.stop_watch).take() {
            let _ = stop.send(());
        }
        let reader = lock(&self.reader).take();
        drop(reader);
        let (tx, rx) = std::sync::mpsc::channel();
        if self.writes.send(Command::Close(tx)).is_ok() {
            // A server that stopped answering must not hold the close for ever: the
            // connections go with the process, and the workflows to the next runtime.
            if rx.recv_timeout(CLOSE_WITHIN).is_err() {
                return Err(StoreError::new(
                    &*self.path,
                    StoreErrorKind::Io,
                    format!(
                        "PostgreSQL did not answer the close within {CLOSE_WITHIN:?}; what was \
                         queued may not be committed, and this runtime's workflows go to the \
                         next runtime after its lease"
                    ),
                ));
            }
        }
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        Ok(())
    }

    #[cfg(any(test, feature = "bench"))]
    fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }
}

/// A write answered at once with `e`.
fn refuse<T>(path: &Arc<Path>, e: StoreError) -> Ack<T> {
    let (tx, ack) = Ack::channel(path);
    let _ = tx.send(Err(e));
    ack
}

/// A message (a panic's, a failure's) as PostgreSQL text can hold it: each NUL
/// character shown as `␀`.
fn without_nul(message: &mut String) {
    if message.contains('\0') {
        *message = message.replace('\0', "\u{2400}");
    }
}

/// How long a close waits for the writer to commit what was queued.
const CLOSE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(stop) = lock(&self.stop_watch).take() {
            let _ = stop.send(());
        }
        #[cfg(feature = "testkit")]
        if self
            .halt
            .as_ref()
            .is_some_and(|h| h.load(std::sync::atomic::Ordering::SeqCst))
        {
            // The testkit's simulated crash: the writer ends at once, without touching
            // the network; its connection (and the executor's lock) is gone when this
            // returns, as a dead process's would be.
            let _ = self.writes.send(Command::Stop);
            if let Some(thread) = lock(&self.thread).take() {
                let _ = thread.join();
            }
            return;
        }
        // The writer commits what was queued and ends with the queue; the thread is
        // not joined here (a drop must not block on the network).
        let _ = self.writes.send(Command::Stop);
    }
}

// Reads.

/// The columns [`workflow_row`] reads, in its order, of the table or alias `t` (empty:
/// the table unnamed).
/// How many columns [`workflow_columns`] names.
const WORKFLOW_COLUMNS_READ: usize = 13;

pub(super) fn workflow_columns(t: &str) -> String {
    let t = if t.is_empty() {
        String::new()
    } else {
        format!("{t}.")
    };
    format!(
        "{t}id, {t}name, {t}status, {t}input, {t}output, {t}error_kind, {t}error, \
         {t}input_crc32, {t}output_crc32, {t}deadline_at, {t}parent_id, \
         ({t}status = 'pending' AND {t}owner IS DISTINCT FROM \
          current_setting('durable.executor', true)::bigint), {t}queue_state"
    )
}

/// The columns of a run as a listing shows it ([`view_row`] reads them).
fn view_columns() -> String {
    format!(
        "{}, created_at, updated_at, app_version, forked_from, replays, run",
        workflow_columns("")
    )
}

/// A run as a listing shows it, and its run number, from [`view_columns`].
fn view_row(r: &Row) -> Result<(i64, super::sqlite::view::WorkflowView), PgError> {
    let w = workflow_row(r, 0)?;
    let n = WORKFLOW_COLUMNS_READ;
    let view = super::sqlite::view::WorkflowView::from_record(
        w,
        r.try_get(n)?,
        r.try_get(n + 1)?,
        r.try_get(n + 2)?,
        r.try_get(n + 3)?,
        r.try_get(n + 4)?,
    );
    Ok((r.try_get::<_, i64>(n + 5)?, view))
}

/// A page of the runs that match `query` (see `Store::list`).
async fn list_on(
    c: &Client,
    s: &str,
    query: &super::listing::ListQuery,
) -> Result<super::listing::ListPage, PgError> {
    let (before, order) = query.order.sql();
    let status = query.status.map(|s| s.as_str().to_owned());
    let after = query.after.map(|c| c.0);
    let fetch = query.fetch();
    let rows = c
        .query_typed(
            &format!(
                "SELECT {} FROM {s}.workflows
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR name = $2)
                   AND ($3::bigint IS NULL OR created_at >= $3)
                   AND ($4::bigint IS NULL OR created_at < $4)
                   AND ($5::text IS NULL OR parent_id = $5)
                   AND ($6::bigint IS NULL OR run {before} $6)
                 ORDER BY run {order} LIMIT $7",
                view_columns()
            ),
            &[
                (&status, Type::TEXT),
                (&query.name, Type::TEXT),
                (&query.started_after_ms, Type::INT8),
                (&query.started_before_ms, Type::INT8),
                (&query.parent, Type::TEXT),
                (&after, Type::INT8),
                (&fetch, Type::INT8),
            ],
        )
        .await?;
    let rows = rows.iter().map(view_row).collect::<Result<Vec<_>, _>>()?;
    Ok(super::listing::ListPage::of(rows, query))
}

/// Workflow `id` as a listing shows it, if the journal has it.
async fn view_on(
    c: &Client,
    s: &str,
    id: &str,
) -> Result<Option<super::sqlite::view::WorkflowView>, PgError> {
    let row = c
        .query_typed_opt(
            &format!("SELECT {} FROM {s}.workflows WHERE id = $1", view_columns()),
            &[(&id, Type::TEXT)],
        )
        .await?;
    row.map(|r| view_row(&r).map(|(_, view)| view)).transpose()
}

/// Makes workflow `spec.new_id` a fork of `spec.origin` (see `Store::fork`), owned by
/// the session's executor (none for a client's session: the runtimes claim it).
async fn fork_on(c: &Client, s: &str, spec: &super::ForkSpec) -> Result<super::Forked, PgError> {
    use super::Forked;
    let before = spec.before.to_key();
    {
        let existing = c
            .query_typed_opt(
                &format!("SELECT forked_from FROM {s}.workflows WHERE id = $1"),
                &[(&spec.new_id, Type::TEXT)],
            )
            .await?;
        if let Some(row) = existing {
            return Ok(Forked::Exists {
                forked_from: row.try_get(0)?,
            });
        }
        let origin = c
            .query_typed_opt(
                &format!(
                    "SELECT {} FROM {s}.workflows WHERE id = $1",
                    workflow_columns("")
                ),
                &[(&spec.origin, Type::TEXT)],
            )
            .await?;
        let Some(origin) = origin else {
            return Ok(Forked::NoOrigin);
        };
        let origin = workflow_row(&origin, 0)?;
        if let Some((_, why)) = &origin.damaged {
            return Err(PgError::Damaged(why.clone()));
        }
        // Every step of the origin, each checked against its checksum.
        let all = steps_after(c, s, &spec.origin, None, usize::MAX).await?;
        // When the fork point began in the origin (see the SQLite journal's fork).
        let cut = all
            .iter()
            .filter(|st| st.path.to_key() >= before)
            .map(|st| st.started_at)
            .min()
            .unwrap_or(i64::MAX);
        // Results only: a recorded panic or interruption runs again in the fork.
        let steps: Vec<_> = all
            .into_iter()
            .filter(|st| st.path.to_key() < before)
            .filter(|st| matches!(st.outcome, RecordedOutcome::Output(_)))
            .collect();
        // The events set before the fork point, keyed anew.
        let events = c
            .query_typed(
                &format!(
                    "SELECT key, value, crc32, set_at FROM {s}.events
                     WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1)
                       AND set_at < $2"
                ),
                &[(&spec.origin, Type::TEXT), (&cut, Type::INT8)],
            )
            .await?;
        let (mut ev_keys, mut ev_values, mut ev_crcs, mut ev_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in events {
            let (key, value): (String, Vec<u8>) = (r.try_get(0)?, r.try_get(1)?);
            if !intact(&event_key(&spec.origin, &key), &value, r.try_get(2)?) {
                return Err(damaged(format!(
                    "event `{key}` of workflow {}, which a fork would copy",
                    spec.origin
                )));
            }
            ev_crcs.push(crc_column(keyed_crc32(
                &event_key(&spec.new_id, &key),
                &value,
            )));
            ev_at.push(r.try_get::<_, i64>(3)?);
            ev_keys.push(key);
            ev_values.push(value);
        }
        let n = steps.len();
        let mut cols = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for st in &steps {
            let (output, error, kind) = st.outcome.columns();
            let path = st.path.to_key();
            cols.8.push(crc_column(keyed_crc32(
                &step_key(&spec.new_id, &path, &st.name),
                output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()),
            )));
            cols.0.push(path);
            cols.1.push(st.name.clone());
            cols.2.push(output.map(<[u8]>::to_vec));
            cols.3.push(error.map(str::to_owned));
            cols.4.push(i64::from(st.attempts));
            cols.5.push(st.started_at);
            cols.6.push(st.finished_at);
            cols.7.push(kind.map(str::to_owned));
            cols.9.push(super::fingerprint_column(st.args));
            cols.10.push(st.attempt_times.clone());
        }
        // The origin's patch markers before the step, keyed anew.
        let patches = c
            .query_typed(
                &format!(
                    "SELECT path, name FROM {s}.patches
                     WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1)
                       AND path < $2"
                ),
                &[(&spec.origin, Type::TEXT), (&before, Type::TEXT)],
            )
            .await?;
        let (mut patch_paths, mut patch_names, mut patch_crcs) =
            (Vec::new(), Vec::new(), Vec::new());
        for r in patches {
            let (path, name): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            patch_crcs.push(crc_column(keyed_crc32(
                &step_key(&spec.new_id, &path, &name),
                &[],
            )));
            patch_paths.push(path);
            patch_names.push(name);
        }
        let crc = crc_column(keyed_crc32(&workflow_key(&spec.new_id), &origin.input));
        let app_version = spec.app_version.as_deref();
        // One statement: the run, its steps and its patch markers, or nothing.
        let made = c
            .query_one(
                &format!(
                    "WITH w AS (
                         INSERT INTO {s}.workflows (id, name, status, input, input_crc32,
                             owner, app_version, created_at, updated_at, forked_from)
                         VALUES ($1, $2, 'pending', $3, $4,
                             nullif(current_setting('durable.executor', true), '')::bigint, $5, $6, $6, $7)
                         ON CONFLICT (id) DO NOTHING RETURNING run),
                     st AS (
                         INSERT INTO {s}.steps (run, path, name, output, error, attempts,
                             started_at, finished_at, error_kind, crc32, args_fingerprint,
                             attempt_times)
                         SELECT w.run, u.* FROM w, unnest($8::text[], $9::text[],
                             $10::bytea[], $11::text[], $12::int8[], $13::int8[],
                             $14::int8[], $15::text[], $16::int8[], $17::int8[],
                             $18::text[]) u),
                     p AS (
                         INSERT INTO {s}.patches (run, path, name, crc32)
                         SELECT w.run, u.* FROM w,
                             unnest($19::text[], $20::text[], $21::int8[]) u),
                     ev AS (
                         INSERT INTO {s}.events (run, key, value, crc32, set_at)
                         SELECT w.run, u.* FROM w,
                             unnest($22::text[], $23::bytea[], $24::int8[],
                                    $25::int8[]) u)
                     SELECT count(*) FROM w"
                ),
                &[
                    &spec.new_id,
                    &origin.name,
                    &origin.input,
                    &crc,
                    &app_version,
                    &spec.at,
                    &spec.origin,
                    &cols.0,
                    &cols.1,
                    &cols.2,
                    &cols.3,
                    &cols.4,
                    &cols.5,
                    &cols.6,
                    &cols.7,
                    &cols.8,
                    &cols.9,
                    &cols.10,
                    &patch_paths,
                    &patch_names,
                    &patch_crcs,
                    &ev_keys,
                    &ev_values,
                    &ev_crcs,
                    &ev_at,
                ],
            )
            .await?;
        let made: i64 = made.try_get(0)?;
        if made == 0 {
            // Made by someone else meanwhile.
            let row = c
                .query_typed_opt(
                    &format!("SELECT forked_from FROM {s}.workflows WHERE id = $1"),
                    &[(&spec.new_id, Type::TEXT)],
                )
                .await?;
            let forked_from = match row {
                Some(r) => r.try_get(0)?,
                None => None,
            };
            return Ok(Forked::Exists { forked_from });
        }
        Ok(Forked::New { steps: n })
    }
}

/// Deletes one batch of the runs that finished at or before `cutoff_ms` (see
/// `Store::gc_batch`).
async fn gc_batch_on(
    c: &Client,
    s: &str,
    cutoff_ms: i64,
    after: i64,
) -> Result<super::retention::GcBatch, PgError> {
    let limit = i64::try_from(super::sqlite::retention::GC_BATCH).unwrap_or(500);
    {
        // One statement: every part sees the same snapshot, and a run is deleted
        // only if its parent and children are not pending in it. The rows are
        // locked as they are deleted; a run that turned pending meanwhile (a
        // resume) is passed over by the recheck of `status` under the lock.
        let row = c
            .query_typed_one(
                &format!(
                    "WITH scanned AS (
                         SELECT max(run) AS last FROM (
                             SELECT run FROM {s}.workflows WHERE run > $2 ORDER BY run LIMIT $3
                         ) x),
                     doomed AS (
                         SELECT w.run, w.id FROM {s}.workflows w, scanned
                         WHERE w.run > $2 AND w.run <= scanned.last
                           AND w.status <> 'pending' AND w.updated_at <= $1
                           AND NOT EXISTS (SELECT 1 FROM {s}.workflows p
                                           WHERE p.id = w.parent_id
                                             AND p.status <> 'completed')
                           AND NOT EXISTS (SELECT 1 FROM {s}.workflows k
                                           WHERE k.status = 'pending' AND k.parent_id = w.id)
                           AND NOT EXISTS (SELECT 1 FROM {s}.workflows f
                                           WHERE f.status = 'pending'
                                             AND f.forked_from IN (w.id, w.parent_id))
                         FOR UPDATE OF w),
                     gone AS (DELETE FROM {s}.workflows w USING doomed d
                              WHERE w.run = d.run AND w.status <> 'pending'
                              RETURNING w.run, w.id),
                     d1 AS (DELETE FROM {s}.steps WHERE run IN (SELECT run FROM gone)),
                     d2 AS (DELETE FROM {s}.events WHERE run IN (SELECT run FROM gone)),
                     d3 AS (DELETE FROM {s}.started WHERE run IN (SELECT run FROM gone)),
                     d4 AS (DELETE FROM {s}.patches WHERE run IN (SELECT run FROM gone)),
                     d5 AS (DELETE FROM {s}.messages
                            WHERE destination IN (SELECT id FROM gone))
                     SELECT (SELECT last FROM scanned), (SELECT count(*) FROM gone)"
                ),
                &[
                    (&cutoff_ms, Type::INT8),
                    (&after, Type::INT8),
                    (&limit, Type::INT8),
                ],
            )
            .await?;
        let last: Option<i64> = row.try_get(0)?;
        let deleted: i64 = row.try_get(1)?;
        Ok(super::retention::GcBatch {
            deleted: u64::try_from(deleted).unwrap_or(0),
            next: last,
        })
    }
}

/// A checksum as a column holds it: a CRC-32 in a `bigint`.
pub(super) fn crc_column(crc: u32) -> i64 {
    i64::from(crc)
}

/// Whether a value recorded under `key` matches its checksum `column`. Every row of
/// this journal has one: a missing or impossible checksum fails.
pub(super) fn intact(key: &[&[u8]], bytes: &[u8], column: Option<i64>) -> bool {
    column
        .and_then(|c| u32::try_from(c).ok())
        .is_some_and(|crc| checks(key, bytes, Some(crc)))
}

/// Reads a workflow row whose columns ([`workflow_columns`]) start at `at`.
pub(super) fn workflow_row(r: &Row, at: usize) -> Result<WorkflowRecord, PgError> {
    let id: String = r.try_get(at)?;
    let status: String = r.try_get(at + 2)?;
    let invalid = |what: String| PgError::Damaged(format!("workflow {id} {what}"));
    let status = match status.as_str() {
        "pending" => RecordStatus::Pending,
        "completed" => RecordStatus::Completed,
        "failed" => RecordStatus::Failed,
        "cancelled" => RecordStatus::Cancelled,
        other => return Err(invalid(format!("has unknown status `{other}`"))),
    };
    let kind: Option<String> = r.try_get(at + 5)?;
    let error: Option<String> = r.try_get(at + 6)?;
    let cancelled = match (status, kind.as_deref().map(CancelReason::parse)) {
        (RecordStatus::Cancelled, Some(Some(reason))) => Some(reason),
        (RecordStatus::Cancelled, _) => {
            return Err(invalid("is cancelled but records no known reason".into()));
        }
        _ => None,
    };
    let failure = match (status, kind, error) {
        (RecordStatus::Failed, Some(k), m) => match FailureKind::parse(&k) {
            Some(k) => Some((k, m.unwrap_or_default())),
            None => return Err(invalid(format!("has unknown error kind `{k}`"))),
        },
        (RecordStatus::Failed, None, _) => {
            return Err(invalid("is failed but records no error kind".into()));
        }
        _ => None,
    };
    let queue_state = match r.try_get::<_, Option<String>>(at + 12)? {
        None => None,
        Some(s) => Some(
            QueueState::parse(&s)
                .ok_or_else(|| invalid(format!("has unknown queue state `{s}`")))?,
        ),
    };
    let input: Vec<u8> = r.try_get(at + 3)?;
    let output: Option<Vec<u8>> = r.try_get(at + 4)?;
    let output_crc: Option<i64> = r.try_get(at + 8)?;
    let damaged = if !intact(&workflow_key(&id), &input, r.try_get(at + 7)?) {
        Some((Location::Input, DAMAGED.to_owned()))
    } else if !output
        .as_ref()
        .is_none_or(|o| intact(&workflow_key(&id), o, output_crc))
    {
        Some((Location::Output, DAMAGED.to_owned()))
    } else {
        None
    };
    Ok(WorkflowRecord {
        elsewhere: r.try_get::<_, Option<bool>>(at + 11)?.unwrap_or(false),
        queue_state,
        damaged,
        cancelled,
        deadline_at: r.try_get(at + 9)?,
        parent_id: r.try_get(at + 10)?,
        name: r.try_get(at + 1)?,
        status,
        input,
        output,
        failure,
        id,
    })
}

use crate::journal::INTERRUPTED;

/// The error for a recorded value that fails its checksum.
fn damaged(what: String) -> PgError {
    PgError::Damaged(format!(
        "{what} does not match its checksum: the journal is damaged (restore it from a backup, \
         or remove the workflow's rows to give it up)"
    ))
}

/// The recorded steps of one run after `after`, in path order, at most `limit`.
async fn steps_after(
    c: &Client,
    s: &str,
    workflow_id: &str,
    after: Option<&StepPath>,
    limit: usize,
) -> Result<Vec<RecordedStep>, PgError> {
    let after = after.map(StepPath::to_key).unwrap_or_default();
    // NULL: no limit.
    let limit = i64::try_from(limit).ok();
    // Typed, as every read here: one round trip, nothing prepared first.
    let rows = c
        .query_typed(
            &format!(
                "SELECT path, name, output, error, attempts, started_at, finished_at, crc32,
                        error_kind, args_fingerprint, attempt_times
                 FROM {s}.steps WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1)
                 AND path > $2 ORDER BY path LIMIT $3"
            ),
            &[
                (&workflow_id, Type::TEXT),
                (&after, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter().map(|r| step_row(r, workflow_id)).collect()
}

/// Reads a step row, checked against its checksum.
fn step_row(r: &Row, workflow_id: &str) -> Result<RecordedStep, PgError> {
    let path: String = r.try_get(0)?;
    let name: String = r.try_get(1)?;
    let output: Option<Vec<u8>> = r.try_get(2)?;
    let error: Option<String> = r.try_get(3)?;
    let Some(parsed) = StepPath::from_key(&path) else {
        return Err(PgError::Damaged(format!(
            "workflow {workflow_id} has a step at `{path}`, which is not a step path"
        )));
    };
    let value = output
        .as_deref()
        .or(error.as_ref().map(String::as_bytes))
        .unwrap_or_default();
    if !intact(&step_key(workflow_id, &path, &name), value, r.try_get(7)?) {
        return Err(damaged(format!(
            "the recorded result of step {parsed} of workflow {workflow_id}"
        )));
    }
    let kind: Option<String> = r.try_get(8)?;
    let outcome = match (output, error) {
        (Some(o), None) => RecordedOutcome::Output(o),
        (None, Some(e)) if kind.as_deref() == Some(INTERRUPTED) => RecordedOutcome::Interrupted(e),
        (None, Some(e)) => RecordedOutcome::Panicked(e),
        _ => {
            return Err(PgError::Damaged(format!(
                "step {parsed} of workflow {workflow_id} records both or neither of output and \
                 error"
            )));
        }
    };
    let attempts: i64 = r.try_get(4)?;
    let attempts = u32::try_from(attempts).map_err(|_| {
        PgError::Damaged(format!(
            "step {parsed} of workflow {workflow_id} records {attempts} attempts"
        ))
    })?;
    let args: Option<i64> = r.try_get(9)?;
    Ok(RecordedStep {
        path: parsed,
        name,
        args: args.map(|a| Fingerprint(a as u64)),
        outcome,
        attempts,
        started_at: r.try_get(5)?,
        finished_at: r.try_get(6)?,
        attempt_times: r.try_get(10)?,
    })
}

/// What one run recorded beside its steps, each record checked against its checksum.
async fn side_records(c: &Client, s: &str, workflow_id: &str) -> Result<SideRecords, PgError> {
    let run = format!("(SELECT run FROM {s}.workflows WHERE id = $1)");
    let started_sql = format!(
        "SELECT path, name, started_at, wake_at, crc32 FROM {s}.started WHERE run = {run}
         ORDER BY path"
    );
    let patches_sql =
        format!("SELECT path, name, crc32 FROM {s}.patches WHERE run = {run} ORDER BY path, name");
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 1] =
        [(&workflow_id, Type::TEXT)];
    let started = c.query_typed(&started_sql, &params);
    let patches = c.query_typed(&patches_sql, &params);
    let (started, patches) = futures_util::future::join(started, patches).await;
    let parse = |path: &str, what: &str| {
        StepPath::from_key(path).ok_or_else(|| {
            PgError::Damaged(format!(
                "workflow {workflow_id} has a {what} at `{path}`, which is not a step path"
            ))
        })
    };
    let mut out = SideRecords::default();
    for r in started? {
        let (path, name): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        let wake_at: Option<i64> = r.try_get(3)?;
        let value = started_value(r.try_get(2)?, wake_at);
        if !intact(
            &step_key(workflow_id, &path, &name),
            value.as_bytes(),
            r.try_get(4)?,
        ) {
            return Err(damaged(format!(
                "the start record of step {} ({name}) of workflow {workflow_id}",
                shown(&path)
            )));
        }
        out.started.push(StartedRecord {
            path: parse(&path, "start record")?,
            wake_at,
        });
    }
    for r in patches? {
        let (path, name): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        if !intact(&step_key(workflow_id, &path, &name), &[], r.try_get(2)?) {
            return Err(damaged(format!(
                "the patch marker {name} at {} of workflow {workflow_id}",
                shown(&path)
            )));
        }
        out.patches.push((parse(&path, "patch marker")?, name));
    }
    Ok(out)
}

/// A stored path key as users read paths, or as stored if it is not one.
fn shown(key: &str) -> String {
    StepPath::from_key(key).map_or_else(|| key.to_owned(), |p| p.to_string())
}

/// Every recorded value against its checksum, one [`Damage`] per finding.
async fn check(c: &Client, s: &str) -> Result<Vec<Damage>, PgError> {
    let mut found = Vec::new();
    for r in c
        .query(
            &format!(
                "SELECT {} FROM {s}.workflows ORDER BY run",
                workflow_columns("")
            ),
            &[],
        )
        .await?
    {
        match workflow_row(&r, 0) {
            Ok(w) => {
                if let Some((location, _)) = &w.damaged {
                    found.push(Damage::new(
                        Some(&w.id),
                        format!("its {location} does not match its checksum"),
                    ));
                }
            }
            Err(PgError::Damaged(what)) => {
                let id: Option<String> = r.try_get(0).ok();
                found.push(Damage::new(id.as_deref(), what));
            }
            Err(e) => return Err(e),
        }
    }
    let owners = format!("JOIN {s}.workflows w ON w.run = x.run");
    for r in c
        .query(
            &format!(
                "SELECT x.path, x.name, x.output, x.error, w.id, x.crc32 FROM {s}.steps x {owners}
                 ORDER BY x.run, x.path"
            ),
            &[],
        )
        .await?
    {
        let (path, name, id): (String, String, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(4)?);
        let output: Option<Vec<u8>> = r.try_get(2)?;
        let error: Option<String> = r.try_get(3)?;
        let value = output
            .as_deref()
            .or(error.as_ref().map(String::as_bytes))
            .unwrap_or_default();
        if !intact(&step_key(&id, &path, &name), value, r.try_get(5)?) {
            found.push(Damage::new(
                Some(&id),
                format!(
                    "the recorded result of step {} ({name}) does not match its checksum",
                    shown(&path)
                ),
            ));
        }
    }
    for r in c
        .query(
            &format!(
                "SELECT x.path, x.name, x.started_at, x.wake_at, w.id, x.crc32
                 FROM {s}.started x {owners} ORDER BY x.run, x.path"
            ),
            &[],
        )
        .await?
    {
        let (path, name, id): (String, String, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(4)?);
        let value = started_value(r.try_get(2)?, r.try_get(3)?);
        if !intact(
            &step_key(&id, &path, &name),
            value.as_bytes(),
            r.try_get(5)?,
        ) {
            found.push(Damage::new(
                Some(&id),
                format!(
                    "the start record of step {} ({name}) does not match its checksum",
                    shown(&path)
                ),
            ));
        }
    }
    for r in c
        .query(
            &format!(
                "SELECT x.path, x.name, w.id, x.crc32 FROM {s}.patches x {owners}
                 ORDER BY x.run, x.path"
            ),
            &[],
        )
        .await?
    {
        let (path, name, id): (String, String, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if !intact(&step_key(&id, &path, &name), &[], r.try_get(3)?) {
            found.push(Damage::new(
                Some(&id),
                format!(
                    "the patch marker {name} at {} does not match its checksum",
                    shown(&path)
                ),
            ));
        }
    }
    for r in c
        .query(
            &format!(
                "SELECT x.key, x.value, w.id, x.crc32 FROM {s}.events x {owners}
                 ORDER BY x.run, x.key"
            ),
            &[],
        )
        .await?
    {
        let (key, value, id): (String, Vec<u8>, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if !intact(&event_key(&id, &key), &value, r.try_get(3)?) {
            found.push(Damage::new(
                Some(&id),
                format!("the value of event `{key}` does not match its checksum"),
            ));
        }
    }
    for r in c
        .query(
            &format!(
                "SELECT seq, destination, topic, payload, crc32 FROM {s}.messages ORDER BY seq"
            ),
            &[],
        )
        .await?
    {
        let (seq, destination, topic, payload): (i64, String, String, Vec<u8>) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        if !intact(&message_key(&destination, &topic), &payload, r.try_get(4)?) {
            found.push(Damage::new(
                Some(&destination),
                format!("message {seq} on topic `{topic}` does not match its checksum"),
            ));
        }
    }
    Ok(found)
}
