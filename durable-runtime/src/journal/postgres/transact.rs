//! Transaction steps on PostgreSQL: the application's statements and the step's record
//! commit in one transaction, on a connection of a small pool of the store's.
//!
//! A transaction step does not go through the writer: its transaction stays open while
//! the application's statements run (several round trips), and the writer's batches
//! must not wait behind it. It runs in a task of the caller's tokio runtime, on a
//! connection of its own:
//! 1. `BEGIN`, then the step's workflow row is key-share-locked and checked to be
//!    this executor's (a takeover or a resume, which lock the row FOR UPDATE before
//!    they change its owner, wait for the transaction; a transaction that starts after
//!    one sees the new owner; a cancel or an outcome, which update other columns, do
//!    not wait), and the transaction's id is read;
//! 2. the application's closure runs with the transaction;
//! 3. if it returned `Ok`, the step's record is inserted in the same transaction, on
//!    the condition that the transaction is still the one of step 1 (a closure that
//!    ran `COMMIT` itself is caught, not recorded), and the transaction commits;
//!    otherwise it rolls back and its outcome (an `Err`, a panic) is recorded by the
//!    writer, as any step's.
//!
//! A connection that drops before the commit was sent loses the transaction: the step
//! runs again on a new connection, after the old session is gone (its transaction can
//! no longer hold row locks). A connection that drops as the commit was sent leaves
//! the commit unknown: the old session is ended and waited for, and then the journal
//! says. The step's record exists with this executor's id if and only if the
//! transaction committed.
//!
//! The sessions set `idle_in_transaction_session_timeout` to the lease: a process
//! paused inside a transaction step (or cut off) cannot hold the workflow's row, and
//! with it the takeover of its workflows, for longer than that.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement, Transaction};

use super::writer::{Command, Op, taken_over};
use super::{PgConfig, PgError, Session, connection_lost, schema, store_error, without_nul};
use crate::error::{StoreError, StoreErrorKind};
use crate::journal::{
    Ack, Effect, RecordedOutcome, Replier, StepKey, StepRecord, already_recorded, no_such_run,
};
use crate::util::{lock, now_ms, panic_message};

/// The application's work in a transaction step on PostgreSQL: runs with the step's
/// transaction, and answers what to record and whether its writes are kept (`false`:
/// rolled back, and the outcome, an `Err` or a panic, still recorded); `Err` records
/// nothing and fails the step. It may run more than once (a connection that dropped
/// before the commit); one run's writes at most commit.
pub(crate) type PgTxFn = Box<
    dyn for<'t> FnMut(&'t Transaction<'t>) -> BoxFuture<'t, Result<(RecordedOutcome, bool), String>>
        + Send,
>;

/// How many transaction steps run at once, each on a connection of its own; the rest
/// wait for a connection.
pub(crate) const TRANSACTION_CONNECTIONS: usize = 8;

/// The transaction steps' connections, and what the steps need of the store.
#[derive(Debug)]
pub(super) struct TxPool {
    config: PgConfig,
    /// The journal as messages show it.
    path: Arc<Path>,
    lease: Duration,
    /// This runtime's executor now (a new one after a takeover).
    me: Arc<AtomicI64>,
    /// The writer's queue: outcomes that keep no writes are recorded there.
    writes: mpsc::UnboundedSender<Command>,
    idle: Mutex<Vec<TxConn>>,
    permits: tokio::sync::Semaphore,
    /// Steps in flight, which a close waits for.
    running: AtomicUsize,
    ended: (Mutex<()>, Condvar),
    /// The testkit's simulated crash.
    #[cfg(feature = "testkit")]
    pub(super) halt: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// A connection of the pool, with its statements.
struct TxConn {
    client: Client,
    /// Its session, to end it if the connection drops.
    session: Session,
    /// The executor its session's `durable.executor` names.
    me: i64,
    check: Statement,
    record: Statement,
}

impl std::fmt::Debug for TxConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxConn")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A transaction step in flight, counted out of [`TxPool::running`] when dropped.
struct Running(Arc<TxPool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        let _guard = lock(&self.0.ended.0);
        self.0.ended.1.notify_all();
    }
}

/// How one try at a transaction step ended.
enum Tried {
    /// Committed with its record.
    Committed,
    /// Rolled back; this outcome is recorded by the writer.
    Record(RecordedOutcome),
    /// Refused, with nothing committed.
    Refused(StoreError),
    /// The connection dropped before the commit was sent: nothing committed.
    Lost,
    /// The connection dropped as the commit was sent: it may have committed.
    Unsure,
    /// The testkit's simulated crash: nothing committed, nobody hears back.
    Halted,
}

impl TxPool {
    pub(super) fn new(
        config: PgConfig,
        path: Arc<Path>,
        lease: Duration,
        me: Arc<AtomicI64>,
        writes: mpsc::UnboundedSender<Command>,
    ) -> TxPool {
        TxPool {
            config,
            path,
            lease,
            me,
            writes,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(TRANSACTION_CONNECTIONS),
            running: AtomicUsize::new(0),
            ended: (Mutex::new(()), Condvar::new()),
            #[cfg(feature = "testkit")]
            halt: None,
        }
    }

    fn halted(&self) -> bool {
        #[cfg(feature = "testkit")]
        if let Some(h) = &self.halt {
            return h.load(Ordering::SeqCst);
        }
        false
    }

    /// Runs the transaction step `key` in a task of the caller's tokio runtime; its
    /// answer comes through `reply`.
    pub(super) fn run(
        self: &Arc<Self>,
        key: StepKey,
        started_at: i64,
        work: PgTxFn,
        reply: Replier<()>,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let _ = reply.send(Err(StoreError::new(
                &*self.path,
                StoreErrorKind::Invariant,
                "a transaction step on PostgreSQL runs on the tokio runtime of its workflow, \
                 and there is none on this thread",
            )));
            return;
        };
        self.running.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.clone());
        runtime.spawn(async move {
            let pool = &running.0;
            let answer = pool.transact(&key, started_at, work).await;
            if let Some(answer) = answer {
                let _ = reply.send(answer);
            }
            // `running` counts the step out when dropped: here, or with the task if
            // its runtime goes away first.
            drop(running);
        });
    }

    /// Waits until no transaction step runs, for at most `within`; whether none does.
    pub(super) fn wait_idle(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut guard = lock(&self.ended.0);
        while self.running.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = match self.ended.1.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// Runs the step until it is committed, recorded, or refused; `None` after the
    /// testkit's simulated crash.
    async fn transact(
        &self,
        key: &StepKey,
        started_at: i64,
        mut work: PgTxFn,
    ) -> Option<Result<(), StoreError>> {
        let Ok(_permit) = self.permits.acquire().await else {
            return Some(Err(closed(&self.path)));
        };
        let mut wait = Duration::from_millis(50);
        loop {
            if self.halted() {
                return None;
            }
            let me = self.me.load(Ordering::SeqCst);
            let mut conn = match self.connection(me).await {
                Ok(conn) => conn,
                Err(e) if connection_lost(&e) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => return Some(Err(store_error(&self.path, e))),
            };
            let began = std::time::Instant::now();
            let tried = match self
                .attempt(&mut conn, me, key, started_at, &mut work)
                .await
            {
                Ok(tried) => tried,
                Err(e) if connection_lost(&e) => Tried::Lost,
                // A serialization failure or a deadlock: the transaction rolled back,
                // and runs again.
                Err(e) if retryable(&e) => {
                    tracing::info!(
                        step = %key.path,
                        name = key.name,
                        error = ?e,
                        "a transaction step's transaction failed to serialize; running it again"
                    );
                    self.give_back(conn);
                    continue;
                }
                Err(e) => {
                    self.give_back(conn);
                    return Some(Err(self.refused(key, e)));
                }
            };
            match tried {
                Tried::Committed => {
                    self.give_back(conn);
                    return Some(Ok(()));
                }
                Tried::Refused(e) => {
                    self.give_back(conn);
                    return Some(Err(e));
                }
                Tried::Halted => return None,
                Tried::Record(outcome) => {
                    self.give_back(conn);
                    return Some(self.record(key, started_at, outcome).await);
                }
                Tried::Lost => {
                    // Its transaction can no longer commit; once its session is gone
                    // it holds no row lock either, and the step runs again.
                    self.end_session(&conn.session).await;
                    if began.elapsed() >= self.lease {
                        // Most likely the server ended a transaction idle for longer
                        // than the lease: running it again would end the same way.
                        return Some(Err(StoreError::new(
                            &*self.path,
                            StoreErrorKind::Io,
                            format!(
                                "transaction step {} (`{}`) of workflow {} lost its \
                                 connection after {:?}, longer than the runtime's lease \
                                 ({:?}): the server ends a transaction step's transaction \
                                 once it has been idle (waiting on the closure) for the \
                                 lease. Keep waits outside the closure, or raise \
                                 `RuntimeBuilder::lease`",
                                key.path,
                                key.name,
                                key.workflow_id,
                                began.elapsed(),
                                self.lease
                            ),
                        )));
                    }
                    tracing::warn!(
                        step = %key.path,
                        name = key.name,
                        workflow = %key.workflow_id,
                        "a transaction step's connection dropped before its commit; running \
                         it again on a new connection"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Tried::Unsure => {
                    self.end_session(&conn.session).await;
                    match self.committed(key, me).await {
                        Ok(true) => return Some(Ok(())),
                        Ok(false) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }

    /// One try: `BEGIN`, the check, the application's work, the record, `COMMIT`.
    async fn attempt(
        &self,
        conn: &mut TxConn,
        me: i64,
        key: &StepKey,
        started_at: i64,
        work: &mut PgTxFn,
    ) -> Result<Tried, PgError> {
        let id: &str = &key.workflow_id;
        let tx = conn.client.transaction().await?;
        let Some(row) = tx.query_opt(&conn.check, &[&id, &me]).await? else {
            return Ok(Tried::Refused(no_such_run(&self.path, id)));
        };
        let (mine, xid): (bool, i64) = (row.try_get(0)?, row.try_get(1)?);
        if !mine {
            return Ok(Tried::Refused(taken_over(&self.path, id)));
        }
        let ran = AssertUnwindSafe(async { work(&tx).await })
            .catch_unwind()
            .await;
        let (outcome, keep) = match ran {
            Ok(Ok(ran)) => ran,
            Ok(Err(message)) => {
                tx.rollback().await?;
                return Ok(Tried::Refused(StoreError::new(
                    &*self.path,
                    StoreErrorKind::Invariant,
                    message,
                )));
            }
            Err(payload) => (
                RecordedOutcome::Panicked(format!(
                    "step {} (`{}`) panicked: {}",
                    key.path,
                    key.name,
                    panic_message(&*payload)
                )),
                false,
            ),
        };
        if !keep {
            // A rollback that fails for a dropped connection says the outcome may be
            // the connection's, not the application's: the step runs again.
            tx.rollback().await?;
            return Ok(Tried::Record(outcome));
        }
        let (output, error, kind) = outcome.columns();
        let path = key.path.to_key();
        let crc = super::crc_column(crate::journal::crc::keyed_crc32(
            &crate::journal::crc::step_key(id, &path, key.name),
            output.unwrap_or_else(|| error.unwrap_or_default().as_bytes()),
        ));
        let fingerprint = crate::journal::fingerprint_column(key.args);
        let recorded = tx
            .query_one(
                &conn.record,
                &[
                    &id,
                    &path,
                    &key.name,
                    &output,
                    &error,
                    &1i64,
                    &started_at,
                    &now_ms(),
                    &crc,
                    &kind,
                    &fingerprint,
                    &xid,
                ],
            )
            .await;
        let row = match recorded {
            Ok(row) => row,
            Err(e) if aborted(&e) => {
                return Ok(Tried::Refused(StoreError::new(
                    &*self.path,
                    StoreErrorKind::Invariant,
                    format!(
                        "transaction step {} (`{}`) of workflow {id} returned `Ok`, but a \
                         statement of its transaction failed, and PostgreSQL aborted the \
                         transaction: nothing was recorded or kept. Return the statement's \
                         error from the closure (it is then recorded, and replayed)",
                        key.path, key.name
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let (runs, mine, inserted, same): (i64, i64, i64, bool) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        if !same {
            return Ok(Tried::Refused(StoreError::new(
                &*self.path,
                StoreErrorKind::Invariant,
                format!(
                    "transaction step {} (`{}`) of workflow {id} ended the transaction it was \
                     given (COMMIT or ROLLBACK); its writes may have committed without its \
                     record. Leave the transaction to durable, which commits it with the \
                     step's record",
                    key.path, key.name
                ),
            )));
        }
        if runs == 0 {
            return Ok(Tried::Refused(no_such_run(&self.path, id)));
        }
        if mine == 0 {
            return Ok(Tried::Refused(taken_over(&self.path, id)));
        }
        if inserted == 0 {
            return Ok(Tried::Refused(already_recorded(&self.path, key)));
        }
        if self.halted() {
            // Dropped: rolled back.
            return Ok(Tried::Halted);
        }
        match tx.commit().await.map_err(PgError::Sql) {
            Ok(()) => Ok(Tried::Committed),
            Err(e) if connection_lost(&e) => Ok(Tried::Unsure),
            Err(e) => Err(e),
        }
    }

    /// After a commit whose answer was lost (its session ended since): whether the step
    /// is recorded by executor `me`, which means the transaction committed. Waits for
    /// the database.
    async fn committed(&self, key: &StepKey, me: i64) -> Result<bool, StoreError> {
        let s = schema::quoted(&self.config.schema);
        let sql = format!(
            "SELECT s.executor FROM {s}.steps s JOIN {s}.workflows w ON w.run = s.run
             WHERE w.id = $1 AND s.path = $2"
        );
        let id: &str = &key.workflow_id;
        let path = key.path.to_key();
        let mut wait = Duration::from_millis(50);
        loop {
            let read = async {
                let client = super::connect(&self.config, "transaction").await?;
                let row = client.query_opt(&sql, &[&id, &path]).await?;
                Ok::<_, PgError>(row.map(|r| r.try_get::<_, Option<i64>>(0)).transpose()?)
            };
            match read.await {
                Ok(None) => return Ok(false),
                Ok(Some(by)) if by == Some(me) => return Ok(true),
                // Recorded by another runtime, which took the workflow over.
                Ok(Some(_)) => return Err(taken_over(&self.path, id)),
                Err(e) if connection_lost(&e) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(store_error(&self.path, e)),
            }
        }
    }

    /// Ends the session of a connection that dropped, and waits until it is gone (see
    /// [`Session::end`]). Waits for the database.
    async fn end_session(&self, session: &Session) {
        let mut wait = Duration::from_millis(20);
        loop {
            let ended = async {
                let client = super::connect(&self.config, "transaction").await?;
                session.end(&client).await
            };
            match ended.await {
                Ok(()) => return,
                Err(e) if connection_lost(&e) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    // Not allowed to end it: it ends with its connection, or at the
                    // idle-in-transaction timeout (the lease).
                    tracing::warn!(
                        error = ?e,
                        "could not end the session of a transaction step's dropped connection"
                    );
                    tokio::time::sleep(self.lease).await;
                    return;
                }
            }
        }
    }

    /// A connection of the pool, or a new one; its session names executor `me`.
    async fn connection(&self, me: i64) -> Result<TxConn, PgError> {
        let idle = lock(&self.idle).pop();
        let mut conn = match idle {
            Some(conn) if !conn.client.is_closed() => conn,
            _ => self.connect(me).await?,
        };
        if conn.me != me {
            conn.client
                .query_one(
                    "SELECT set_config('durable.executor', $1, false)",
                    &[&me.to_string()],
                )
                .await?;
            conn.me = me;
        }
        Ok(conn)
    }

    async fn connect(&self, me: i64) -> Result<TxConn, PgError> {
        let client = super::connect(&self.config, "transaction").await?;
        // The setting is an int4 of milliseconds: a lease longer than 24 days gets the
        // longest it can hold.
        let lease_ms = i32::try_from(self.lease.as_millis()).unwrap_or(i32::MAX);
        client
            .query_one(
                "SELECT set_config('durable.executor', $1, false),
                        set_config('idle_in_transaction_session_timeout', $2, false)",
                &[&me.to_string(), &lease_ms.to_string()],
            )
            .await?;
        let session = Session::of(&client).await?;
        let s = schema::quoted(&self.config.schema);
        let check = client
            .prepare(&format!(
                "SELECT owner IS NOT DISTINCT FROM $2, txid_current()
                 FROM {s}.workflows WHERE id = $1 FOR KEY SHARE"
            ))
            .await?;
        let record = client
            .prepare(&super::writer::transaction_record_sql(&s))
            .await?;
        Ok(TxConn {
            client,
            session,
            me,
            check,
            record,
        })
    }

    /// Closes the idle connections (the journal is closing).
    pub(super) fn close_idle(&self) {
        lock(&self.idle).clear();
    }

    fn give_back(&self, conn: TxConn) {
        if !conn.client.is_closed() {
            lock(&self.idle).push(conn);
        }
    }

    /// Records, through the writer, the outcome of a step whose writes rolled back.
    async fn record(
        &self,
        key: &StepKey,
        started_at: i64,
        mut outcome: RecordedOutcome,
    ) -> Result<(), StoreError> {
        if let RecordedOutcome::Panicked(m) | RecordedOutcome::Interrupted(m) = &mut outcome {
            without_nul(m);
        }
        let step = StepRecord {
            workflow_id: key.workflow_id.clone(),
            path: key.path.clone(),
            name: key.name,
            args: key.args,
            outcome,
            attempts: 1,
            started_at,
            finished_at: now_ms(),
            attempt_times: None,
            effect: Effect::None,
        };
        let (reply, ack): (_, Ack) = Ack::channel(&self.path);
        if self
            .writes
            .send(Command::Write(Op::Record(step, reply)))
            .is_err()
        {
            return Err(closed(&self.path));
        }
        ack.await
    }

    /// A failure of a step's transaction that is not a dropped connection.
    fn refused(&self, key: &StepKey, e: PgError) -> StoreError {
        let e = store_error(&self.path, e);
        StoreError::new(
            &*self.path,
            e.kind(),
            format!(
                "transaction step {} (`{}`) of workflow {}: {}",
                key.path,
                key.name,
                key.workflow_id,
                e.message()
            ),
        )
    }
}

/// Whether `e` is a serialization failure or a deadlock, after which the transaction
/// rolled back and may be run again.
fn retryable(e: &PgError) -> bool {
    matches!(e, PgError::Sql(e) if e.code().is_some_and(|c| matches!(c.code(), "40001" | "40P01")))
}

/// Whether `e` says the transaction was aborted by an earlier failed statement.
fn aborted(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.code().code() == "25P02")
}

fn closed(path: &Path) -> StoreError {
    StoreError::new(path, StoreErrorKind::Closed, "the journal is closed")
}
