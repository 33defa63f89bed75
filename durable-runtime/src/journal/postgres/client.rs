//! A client of a PostgreSQL journal ([`crate::Client`]): reads and commands made
//! straight on the journal's tables, on a connection of its own.
//!
//! A client is not an executor: it owns no workflow, beats no heartbeat and claims
//! nothing. Every process may write a PostgreSQL journal, so a command is applied in
//! the statement that makes it, and tells the runtimes sharing the journal in the same
//! transaction (`NOTIFY`, delivered at its commit):
//! - a message wakes the runs parked waiting for it, wherever they run;
//! - a cancel makes the runtime running the workflows stop their runs at their next
//!   step, as a cancel in its own process does;
//! - a resumed workflow keeps its owner, which runs it again (if that runtime is
//!   gone, another claims it); a forked or started workflow has no owner, and every
//!   runtime that links its workflow tries to claim it at once: one does, and runs it
//!   (a queued one goes back to its queue).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::{PgConfig, PgError, connect, connection_lost, executor, schema, store_error};
use crate::RecordedStatus;
use crate::error::{CancelReason, Error, StoreError, StoreErrorKind};
use crate::journal::crc::{event_key, keyed_crc32, message_key, workflow_key};
use crate::journal::listing::{ListPage, ListQuery};
use crate::journal::retention::{GcBatch, GcReport};
use crate::journal::sqlite::view::{EventView, MessageView, WorkflowView, status_counts};
use crate::journal::{ForkSpec, Forked, StepInfo, WaitFor};
use crate::util::lock;

/// A client's connection to a PostgreSQL journal, driven on a thread of its own (so
/// that its blocking reads work from any thread, a tokio worker included).
#[derive(Debug)]
pub(crate) struct PgClient {
    /// The journal as messages show it (the URL without its password).
    path: Arc<Path>,
    config: PgConfig,
    /// The schema, quoted.
    s: String,
    /// The channel the journal's runtimes listen on.
    channel: String,
    /// The client's thread's runtime, which drives its connection.
    handle: tokio::runtime::Handle,
    conn: Mutex<Option<Arc<Client>>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

/// How many times a read whose connection dropped is made again (on a new one).
const READ_TRIES: u32 = 3;

impl PgClient {
    /// Connects to the journal `config` names, which must exist at this build's schema.
    pub(crate) fn open(config: PgConfig) -> Result<PgClient, Error> {
        let path: Arc<Path> = Arc::from(Path::new(config.shown()));
        let io =
            |message: String| Error::from(StoreError::new(&*path, StoreErrorKind::Io, message));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io(format!("cannot start the client's thread: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("durable-client".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| io(format!("cannot start the client's thread: {e}")))?;
        let client = PgClient {
            s: schema::quoted(&config.schema),
            channel: executor::channel(&config.schema),
            path,
            config,
            handle,
            conn: Mutex::new(None),
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        };
        let schema_name = client.config.schema.clone();
        let version = client.read(async |c, _| {
            let version = schema::current_version(c, &schema_name).await?;
            if version.is_some_and(|v| v >= schema::VERSION) {
                // Refuses a journal a newer durable wrote.
                schema::is_current(c, &schema_name).await?;
            }
            Ok(version)
        })?;
        match version {
            None => Err(StoreError::new(
                &*client.path,
                StoreErrorKind::NotAJournal,
                format!(
                    "there is no journal in schema `{schema_name}` of this database: a Runtime \
                     creates it at its first open (is the URL's `schema` the one the runtime \
                     uses?)"
                ),
            )
            .into()),
            Some(v) if v < schema::VERSION => Err(client.refuse(format!(
                "the journal is at schema version {v}, older than this build's {}: open it \
                 with a Runtime of this build first, which upgrades it",
                schema::VERSION
            ))),
            Some(_) => Ok(client),
        }
    }

    /// The journal as messages show it.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn refuse(&self, message: String) -> Error {
        StoreError::new(&*self.path, StoreErrorKind::Io, message).into()
    }

    /// The client's connection, made (again) if it has none or it dropped.
    async fn connection(&self) -> Result<Arc<Client>, PgError> {
        if let Some(c) = lock(&self.conn).as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (tx, rx) = oneshot::channel();
        let config = self.config.clone();
        // Made on the client's thread, which drives it from then on.
        self.handle.spawn(async move {
            let _ = tx.send(connect(&config, "client").await);
        });
        let made = Arc::new(rx.await.map_err(|_| {
            PgError::Damaged("the client's thread stopped while it connected".into())
        })??);
        *lock(&self.conn) = Some(made.clone());
        Ok(made)
    }

    /// Runs `read` on the client's connection, blocking until it is done; made again
    /// on a new connection if the connection dropped (a database restart).
    fn read<T>(
        &self,
        read: impl AsyncFn(&Client, &str) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            let done = super::block_on(async {
                let c = self.connection().await?;
                read(&c, &self.s).await
            });
            match done {
                Err(e) if connection_lost(&e) && tries + 1 < READ_TRIES => {
                    tries += 1;
                    lock(&self.conn).take();
                    thread::sleep(Duration::from_millis(100));
                }
                done => return done.map_err(|e| store_error(&self.path, e)),
            }
        }
    }

    /// The connection a command is made on (once: a command whose connection dropped
    /// may have committed, so it is not made again).
    async fn for_command(&self) -> Result<Arc<Client>, Error> {
        self.connection()
            .await
            .map_err(|e| store_error(&self.path, e).into())
    }

    /// The error for a command that failed with `e`.
    fn failed(&self, e: impl Into<PgError>) -> Error {
        let e = e.into();
        if connection_lost(&e) {
            lock(&self.conn).take();
            return StoreError::new(
                &*self.path,
                StoreErrorKind::Io,
                "the connection to the PostgreSQL journal dropped while the command was sent: \
                 it may or may not have been applied (look before sending it again)",
            )
            .into();
        }
        store_error(&self.path, e).into()
    }

    pub(crate) fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.read(async |c, s| super::list_on(c, s, query).await)
    }

    pub(crate) fn workflow(&self, id: &str) -> Result<Option<WorkflowView>, StoreError> {
        if id.contains('\0') {
            // No PostgreSQL text holds it: no workflow has it.
            return Ok(None);
        }
        self.read(async |c, s| super::view_on(c, s, id).await)
    }

    pub(crate) fn steps(&self, id: &str) -> Result<Vec<StepInfo>, StoreError> {
        if id.contains('\0') {
            return Ok(Vec::new());
        }
        let steps = self.read(async |c, s| super::steps_after(c, s, id, None, usize::MAX).await)?;
        // A damaged step fails the read: every one here is intact.
        Ok(steps
            .into_iter()
            .map(|st| StepInfo::new(id, st, true))
            .collect())
    }

    pub(crate) fn events(&self, id: &str) -> Result<Vec<EventView>, StoreError> {
        if id.contains('\0') {
            return Ok(Vec::new());
        }
        self.read(async |c, s| {
            let rows = c
                .query_typed(
                    &format!(
                        "SELECT key, value, crc32, set_at FROM {s}.events
                         WHERE run = (SELECT run FROM {s}.workflows WHERE id = $1) ORDER BY key"
                    ),
                    &[(&id, Type::TEXT)],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let (key, value): (String, Vec<u8>) = (r.try_get(0)?, r.try_get(1)?);
                    let intact = super::intact(&event_key(id, &key), &value, r.try_get(2)?);
                    Ok(EventView::new(id, key, r.try_get(3)?, value, intact))
                })
                .collect()
        })
    }

    pub(crate) fn messages(&self) -> Result<Vec<MessageView>, StoreError> {
        self.read(async |c, s| {
            let rows = c
                .query_typed(
                    &format!(
                        "SELECT seq, destination, topic, payload, crc32, sent_at FROM {s}.messages
                         ORDER BY destination, topic, seq"
                    ),
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let (destination, topic, payload): (String, String, Vec<u8>) =
                        (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
                    let intact =
                        super::intact(&message_key(&destination, &topic), &payload, r.try_get(4)?);
                    Ok(MessageView::new(
                        &self.path,
                        r.try_get(0)?,
                        destination,
                        topic,
                        r.try_get(5)?,
                        payload,
                        intact,
                    ))
                })
                .collect()
        })
    }

    pub(crate) fn counts(&self) -> Result<Vec<(RecordedStatus, u64)>, StoreError> {
        let counted = self.read(async |c, s| {
            let rows = c
                .query_typed(
                    &format!("SELECT status, count(*) FROM {s}.workflows GROUP BY status"),
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?)))
                .collect::<Result<Vec<_>, PgError>>()
        })?;
        Ok(status_counts(&counted))
    }

    /// Sends a message (encoded already) to `destination` on `topic`, and wakes the run
    /// parked waiting for it, in whichever process it runs.
    pub(crate) async fn send(
        &self,
        destination: &str,
        topic: &str,
        payload: &[u8],
        at: i64,
    ) -> Result<(), Error> {
        if topic.contains('\0') {
            return Err(self.refuse(format!(
                "the topic `{}` holds the NUL character, which PostgreSQL text cannot hold",
                topic.escape_debug()
            )));
        }
        let crc = super::crc_column(keyed_crc32(&message_key(destination, topic), payload));
        let woken = executor::payload(&WaitFor::Message {
            destination: destination.to_owned(),
            topic: topic.to_owned(),
        })
        .unwrap_or_else(|| "*".to_owned());
        let c = self.for_command().await?;
        let s = &self.s;
        c.execute(
            &format!(
                "WITH ins AS (INSERT INTO {s}.messages (destination, topic, payload, crc32, sent_at)
                              VALUES ($1, $2, $3, $4, $5) RETURNING 1)
                 SELECT pg_notify($6, $7) FROM ins"
            ),
            &[
                &destination,
                &topic,
                &payload,
                &crc,
                &at,
                &self.channel,
                &woken,
            ],
        )
        .await
        .map_err(|e| self.failed(e))?;
        Ok(())
    }

    /// Records workflow `id`, a run of `name` with the encoded `input`, with no owner,
    /// and has the runtimes claim it; nothing if `id` exists as a run of `name`.
    pub(crate) async fn start(
        &self,
        id: &str,
        name: &str,
        input: &[u8],
        at: i64,
    ) -> Result<(), Error> {
        let crc = super::crc_column(keyed_crc32(&workflow_key(id), input));
        let c = self.for_command().await?;
        let s = &self.s;
        let row = c
            .query_one(
                &format!(
                    "WITH ins AS (
                         INSERT INTO {s}.workflows (id, name, status, input, input_crc32,
                                                    created_at, updated_at)
                         VALUES ($1, $2, 'pending', $3, $4, $5, $5)
                         ON CONFLICT (id) DO NOTHING RETURNING run)
                     SELECT (SELECT count(*) FROM ins),
                            (SELECT name FROM {s}.workflows WHERE id = $1),
                            pg_notify($6, $7)"
                ),
                &[
                    &id,
                    &name,
                    &input,
                    &crc,
                    &at,
                    &self.channel,
                    &executor::CLAIM_PAYLOAD,
                ],
            )
            .await
            .map_err(|e| self.failed(e))?;
        let made: i64 = row.try_get(0).map_err(|e| self.failed(e))?;
        let mut existing: Option<String> = row.try_get(1).map_err(|e| self.failed(e))?;
        if made == 0 && existing.is_none() {
            // Made by another transaction since this statement's snapshot.
            existing = c
                .query_opt(
                    &format!("SELECT name FROM {s}.workflows WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(|e| self.failed(e))?
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| self.failed(e))?;
        }
        match existing {
            Some(existing) if made == 0 && existing != name => Err(Error::WorkflowMismatch {
                workflow_id: id.to_owned(),
                existing,
                requested: name.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Cancels `id` and its pending descendants; answers the ids cancelled.
    pub(crate) async fn cancel(&self, id: &str, at: i64) -> Result<Vec<String>, Error> {
        let reason = CancelReason::Requested;
        let stop = executor::cancel_payload(Some(id));
        let dispatch = super::queues::queue_payload(None);
        let c = self.for_command().await?;
        let row = c
            .query_one(
                &super::writer::cancel_sql(
                    &self.s,
                    "SELECT coalesce((SELECT array_agg(id::text) FROM up), '{}'),
                            pg_notify($5, $6), pg_notify($5, $7)",
                ),
                &[
                    &id,
                    &reason.as_str(),
                    &reason.to_string(),
                    &at,
                    &self.channel,
                    &stop,
                    &dispatch,
                ],
            )
            .await
            .map_err(|e| self.failed(e))?;
        row.try_get::<_, Vec<String>>(0).map_err(|e| self.failed(e))
    }

    /// Makes `id` (failed or cancelled) and its cancelled descendants pending again:
    /// the runtime that owned each runs it again, or, if it is gone, one that links
    /// its workflow claims it. Answers the ids resumed.
    pub(crate) async fn resume(&self, id: &str, at: i64) -> Result<Vec<String>, Error> {
        let claim = executor::CLAIM_PAYLOAD;
        let dispatch = super::queues::queue_payload(None);
        let owner = executor::resume_payload(id);
        let c = self.for_command().await?;
        let row = c
            .query_one(
                &super::writer::resume_sql(
                    &self.s,
                    "SELECT coalesce((SELECT array_agg(id::text) FROM up), '{}'),
                            pg_notify($3, $4), pg_notify($3, $5), pg_notify($3, $6)",
                ),
                &[&id, &at, &self.channel, &claim, &dispatch, &owner],
            )
            .await
            .map_err(|e| self.failed(e))?;
        row.try_get::<_, Vec<String>>(0).map_err(|e| self.failed(e))
    }

    /// Makes a fork (see [`crate::journal::Store::fork`]) with no owner, and has the
    /// runtimes claim it.
    pub(crate) async fn fork(&self, spec: ForkSpec) -> Result<Forked, Error> {
        let c = self.for_command().await?;
        let forked = super::fork_on(&c, &self.s, &spec)
            .await
            .map_err(|e| self.failed(e))?;
        if matches!(forked, Forked::New { .. }) {
            self.notify(executor::CLAIM_PAYLOAD).await?;
        }
        Ok(forked)
    }

    /// Deletes the runs that finished at or before `cutoff_ms` (see
    /// [`crate::Runtime::gc`]), batch by batch.
    pub(crate) async fn gc(&self, cutoff_ms: i64) -> Result<GcReport, Error> {
        let mut report = GcReport::default();
        let mut after = i64::MIN;
        loop {
            let c = self.for_command().await?;
            let batch: GcBatch = super::gc_batch_on(&c, &self.s, cutoff_ms, after)
                .await
                .map_err(|e| self.failed(e))?;
            report.workflows += batch.deleted;
            match batch.next {
                Some(next) => after = next,
                None => return Ok(report),
            }
        }
    }

    async fn notify(&self, payload: &str) -> Result<(), Error> {
        let c = self.for_command().await?;
        c.execute("SELECT pg_notify($1, $2)", &[&self.channel, &payload])
            .await
            .map_err(|e| self.failed(e))
            .map(drop)
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        lock(&self.conn).take();
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&self.thread).take()
            && thread.thread().id() != thread::current().id()
        {
            let _ = thread.join();
        }
    }
}
