//! Many runtimes on one journal: each is an *executor*, a row in `executors` with a
//! heartbeat, and owns the pending workflows whose `owner` is its id.
//!
//! - **Liveness.** An executor's writer connection holds an advisory lock keyed by its
//!   id for as long as it lives, and a watcher task beats its heartbeat every third of
//!   its lease. Another executor finds it gone when the lock is free (its process
//!   ended and the server dropped its connection: SIGKILL, a crash, a clean exit) or
//!   when its heartbeat is older than its lease (a paused process, a lost machine, a
//!   network cut the server has not noticed).
//! - **Takeover.** Every live executor claims, every half of its lease and at its open,
//!   the pending workflows of executors found gone and those with no owner (released
//!   by a runtime that closed), in one statement: marking an executor dead and moving
//!   its workflows commit together, and row locks make each workflow move once, to
//!   one claimer.
//! - **Fencing.** Every batch of writes first passes the fence (the body of
//!   `fence(me, n)`, inline in the writer), which updates (and so locks) the executor's
//!   own row, recording the batch's number `n`, and fails unless it is alive. A
//!   takeover's `UPDATE` of that row waits for a batch in flight to commit, and a batch
//!   after it fails. A step record alone in its batch has no fence: it reads its
//!   workflow's owner under a share lock, which a takeover's owner update waits for
//!   (and rechecks after). Nothing is recorded for a workflow after another executor
//!   took it, and the new owner's replay sees everything recorded before.
//! - **Wake-ups across processes.** A batch that sends a message or sets an event also
//!   `NOTIFY`s, in its transaction (delivered at its commit). The watcher `LISTEN`s on
//!   a connection of its own and hands what was written to the writer, which answers
//!   its parked waits for it at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::writer::Command;
use super::{PgConfig, PgError, schema};
use crate::journal::WaitFor;
use crate::journal::crc::crc32;
use crate::util::lock;

/// How long a runtime may be out of touch before another takes over its workflows,
/// unless the builder says otherwise.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The shortest lease: heartbeats and claims more often than this would load the
/// database for nothing.
pub(crate) const MIN_LEASE: Duration = Duration::from_millis(200);

/// Registers this runtime as an executor on the readers' connection `c`, which holds
/// the executor's lock from then on (the watcher keeps that connection up, and takes
/// the lock again when it makes it again); answers its id.
pub(super) async fn register(c: &Client, s: &str, lease: Duration) -> Result<i64, PgError> {
    registered(register_statement(c, s, lease, None).await?)
}

/// The executor's id from [`register_statement`]'s rows.
fn registered(rows: Vec<tokio_postgres::Row>) -> Result<i64, PgError> {
    let row = rows
        .first()
        .ok_or_else(|| PgError::Damaged("registering the executor answered no row".into()))?;
    Ok(row.try_get(0)?)
}

/// The statement that registers an executor (see [`register`]): it makes the row, takes
/// the lock and sets the session's executor (`set_executor`) at once. Typed, so one
/// round trip: nothing is prepared first. With `if_version`, only if the journal's
/// schema is that version (no row otherwise).
async fn register_statement(
    c: &Client,
    s: &str,
    lease: Duration,
    if_version: Option<&str>,
) -> Result<Vec<tokio_postgres::Row>, PgError> {
    let name = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned()),
        std::process::id()
    );
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    // The lock is taken in the statement that makes the row: no other executor can see
    // the row without the lock.
    Ok(c.query_typed(
        &format!(
            "INSERT INTO {s}.executors (name, lease_ms)
             SELECT $1, $2 WHERE $4::text IS NULL
                 OR EXISTS (SELECT 1 FROM {s}.meta
                            WHERE key = 'schema_version' AND value = $4::text)
             RETURNING id, pg_advisory_lock($3::int4, id::int4)::text,
                       set_config('durable.executor', id::text, false)"
        ),
        &[
            (&name, Type::TEXT),
            (&lease_ms, Type::INT8),
            (&schema::executor_lock_class(s), Type::INT4),
            (&if_version, Type::TEXT),
        ],
    )
    .await?)
}

/// An open's first trip on the readers' connection `c`, pipelined: the schema's
/// version read, this runtime registered as an executor ([`register`]) and its first
/// claim made ([`claim`]), the last two only if the schema is current. Answers the
/// executor's id and the claimed rows; `None` if the schema needs migrating first
/// (then nothing was registered or claimed). Refuses a schema a newer durable wrote.
pub(super) async fn register_and_claim(
    c: &Client,
    schema: &str,
    lease: Duration,
    names: Option<&[&'static str]>,
) -> Result<Option<(i64, Vec<tokio_postgres::Row>)>, PgError> {
    let s = schema::quoted(schema);
    let version = schema::VERSION.to_string();
    let (current, registered_rows, claimed) = futures_util::future::join3(
        schema::is_current(c, schema),
        register_statement(c, &s, lease, Some(&version)),
        // Claims as the executor the statement before set on the session; none if
        // it registered nothing.
        claim_as(c, &s, None, names, true),
    )
    .await;
    // The registration is the authority: it ran only if the schema was current when
    // it ran (a migration may commit between the version read and it, which waits for
    // the migration's locks), and then the claim ran as its executor.
    let current = current?;
    match registered_rows {
        Ok(rows) if !rows.is_empty() => Ok(Some((registered(rows)?, claimed?))),
        // Not current: nothing was registered or claimed; migrate first.
        Ok(_) => Ok(None),
        // No schema yet, so no table to insert into.
        Err(_) if !current => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tells the session of `c` its executor: every statement that records reads it
/// (`current_setting('durable.executor')`).
pub(super) async fn set_executor(c: &Client, me: i64) -> Result<(), PgError> {
    c.batch_execute(&format!("SET durable.executor = '{me}'"))
        .await?;
    Ok(())
}

/// Claims the pending workflows of executors found gone, and those with no owner;
/// answers their rows ([`super::workflow_columns`]: the id first), oldest first. Only workflows named in `names` (a program claims only what it
/// can run; `None`: any, for a store opened without a program, as in its tests).
/// `judge`: whether this claimer may find others gone (not for a lease after it
/// connected again). Also forgets executors dead for an hour that own nothing.
pub(super) async fn claim(
    c: &Client,
    s: &str,
    me: i64,
    names: Option<&[&'static str]>,
    judge: bool,
) -> Result<Vec<tokio_postgres::Row>, PgError> {
    claim_as(c, s, Some(me), names, judge).await
}

/// [`claim`] as executor `me`, or, if `None`, as the one the session of `c` is
/// (`durable.executor`; nothing is claimed if it has none).
async fn claim_as(
    c: &Client,
    s: &str,
    me: Option<i64>,
    names: Option<&[&'static str]>,
    judge: bool,
) -> Result<Vec<tokio_postgres::Row>, PgError> {
    let any = names.is_none();
    let names = names.unwrap_or_default();
    let rows = c
        .query_typed(
            &format!(
                "WITH me AS (SELECT coalesce($1::int8,
                                      current_setting('durable.executor', true)::bigint) AS id),
                 -- Who is gone, judged without writing: the rows `pick` locks are
                 -- rechecked (EvalPlanQual) against this, which PostgreSQL cannot do
                 -- against a data-modifying CTE.
                 judged AS (
                     SELECT e.id FROM {s}.executors e
                     WHERE e.dead_at IS NULL AND e.id <> (SELECT id FROM me)
                       AND EXISTS (SELECT 1 FROM {s}.executors
                                   WHERE id = (SELECT id FROM me) AND dead_at IS NULL)
                       -- Not for a lease after this claimer connected (again): after
                       -- the database restarts, the others need that long to reconnect
                       -- and beat again.
                       AND $4
                       AND (e.heartbeat_at < now() - e.lease_ms * interval '1 millisecond'
                            -- A free lock means its process ended, unless the server
                            -- itself started less than a lease ago: then every lock is
                            -- free until its executor has reconnected.
                            OR pg_postmaster_start_time()
                                   < now() - e.lease_ms * interval '1 millisecond'
                               AND NOT EXISTS (
                                SELECT 1 FROM pg_catalog.pg_locks l
                                WHERE l.locktype = 'advisory' AND l.granted
                                  AND l.database = (SELECT oid FROM pg_catalog.pg_database
                                                    WHERE datname = current_database())
                                  AND l.classid = $2::int4::oid
                                  AND l.objid = e.id::int4::oid AND l.objsubid = 2))),
                 gone AS (
                     UPDATE {s}.executors e SET dead_at = now()
                     WHERE e.dead_at IS NULL AND e.id IN (SELECT id FROM judged)
                     RETURNING e.id),
                 -- Locked FOR UPDATE, which a transaction step's key-share lock on
                 -- its workflow's row holds off (the update alone would not); rows
                 -- locked now are claimed at a later claim rather than waited for.
                 pick AS (
                     SELECT x.run FROM {s}.workflows x
                     WHERE x.status = 'pending'
                       -- A claimer taken over itself claims nothing.
                       AND EXISTS (SELECT 1 FROM {s}.executors
                                   WHERE id = (SELECT id FROM me) AND dead_at IS NULL)
                       AND ($5 OR x.name = ANY($3::text[]))
                       -- A queued workflow goes back to its queue instead (see
                       -- `queues::requeue_sql`): a dispatch gives it its next owner.
                       AND x.queue_state IS NULL
                       AND (x.owner IS NULL
                            OR x.owner IN (SELECT id FROM judged)
                            OR x.owner IN (SELECT id FROM {s}.executors
                                           WHERE dead_at IS NOT NULL))
                     FOR UPDATE OF x SKIP LOCKED),
                 -- A run that recorded steps since it was made replays them here.
                 claimed AS (
                     UPDATE {s}.workflows w SET owner = (SELECT id FROM me),
                         replays = CASE WHEN EXISTS (
                                 SELECT 1 FROM {s}.steps x
                                 WHERE x.run = w.run AND x.finished_at >= w.created_at)
                             THEN coalesce(w.replays || ',', '') || $6::bigint::text
                             ELSE w.replays END
                     FROM pick WHERE w.run = pick.run
                     RETURNING w.*),
                 forgotten AS (
                     DELETE FROM {s}.executors e
                     -- Only by a registered claimer: an open refused (a newer schema)
                     -- or about to migrate writes nothing.
                     WHERE (SELECT id FROM me) IS NOT NULL
                       AND e.dead_at < now() - interval '1 hour'
                       AND NOT EXISTS (SELECT 1 FROM {s}.workflows w
                                       WHERE w.owner = e.id AND w.status = 'pending'))
                 SELECT {} FROM claimed ORDER BY created_at, id",
                super::workflow_columns("claimed")
            ),
            &[
                (&me, Type::INT8),
                (&schema::executor_lock_class(s), Type::INT4),
                (&names, Type::TEXT_ARRAY),
                (&judge, Type::BOOL),
                (&any, Type::BOOL),
                (&crate::util::now_ms(), Type::INT8),
            ],
        )
        .await?;
    Ok(rows)
}

/// The ids of claimed rows ([`claim`]).
pub(super) fn claimed_ids(rows: &[tokio_postgres::Row]) -> Result<Vec<String>, PgError> {
    rows.iter()
        .map(|r| r.try_get(0).map_err(PgError::from))
        .collect()
}

/// A closing executor gives its pending workflows up (another live executor takes them
/// at its next claim, or the next open) and marks itself gone.
/// Its dispatched workflows go back to their queues, and every process hears so on
/// `channel`.
pub(super) async fn release(c: &Client, s: &str, me: i64, channel: &str) -> Result<(), PgError> {
    c.batch_execute(&format!(
        "BEGIN;
         UPDATE {s}.workflows SET owner = NULL,
             queue_state = CASE WHEN queue_state = 'running' THEN 'queued' ELSE queue_state END
         WHERE run IN (SELECT run FROM {s}.workflows
                       WHERE owner = {me} AND status = 'pending' FOR UPDATE);
         UPDATE {s}.executors SET dead_at = now() WHERE id = {me} AND dead_at IS NULL;
         SELECT pg_notify('{channel}', '{all}');
         COMMIT;",
        channel = channel,
        all = super::queues::queue_payload(None),
    ))
    .await?;
    Ok(())
}

/// The channel a journal's writers notify, and its watchers listen on.
pub(super) fn channel(schema: &str) -> String {
    format!("durable_{:08x}", crc32(schema.as_bytes()))
}

/// A notification's payload for what a write sent or set; `None` if it would not fit
/// (the watcher then rechecks every parked wait).
pub(super) fn payload(what: &WaitFor) -> Option<String> {
    const SEP: char = '\u{1f}';
    let text = match what {
        WaitFor::Message { destination, topic } => format!("m{SEP}{destination}{SEP}{topic}"),
        WaitFor::Event { workflow_id, key } => format!("e{SEP}{workflow_id}{SEP}{key}"),
    };
    // PostgreSQL's limit is 8000 bytes.
    (text.len() < 7_900).then_some(text)
}

/// The notification payload that tells every process workflow `id` (`None`: any) was
/// cancelled with its pending descendants: each stops its runs of them.
pub(super) fn cancel_payload(id: Option<&str>) -> String {
    match id {
        Some(id) if id.len() < 7_900 => format!("c\u{1f}{id}"),
        _ => "c\u{1f}".to_owned(),
    }
}

/// The notification payload that tells the runtime owning workflow `id` (and its
/// descendants) that a client resumed it: it runs them again.
pub(super) fn resume_payload(id: &str) -> String {
    format!("r\u{1f}{id}")
}

/// The notification payload that makes every process claim the pending workflows
/// nobody owns at once (a client resumed, forked or started one), rather than at its
/// next periodic claim.
pub(super) const CLAIM_PAYLOAD: &str = "w\u{1f}";

/// What a notification's payload asks of its hearers.
enum Heard {
    /// Parked waits for this (`None`: every one, for "*" or a payload not ours) look
    /// again.
    Wait(Option<WaitFor>),
    /// This queue (`None`: every one) is dispatched again: it gained a workflow, a free
    /// slot or other limits (see [`super::queues::queue_payload`]).
    Queue(Option<String>),
    /// This workflow (`None`: any) and its pending descendants were cancelled.
    Cancelled(Option<String>),
    /// Pending workflows without an owner wait to be claimed.
    Claim,
    /// A client resumed this workflow: its owner runs it (and its descendants) again.
    Resumed(String),
}

/// What a payload made by [`payload`] or [`super::queues::queue_payload`] asks.
fn asked(payload: &str) -> Heard {
    if let Some(queue) = payload.strip_prefix("q\u{1f}") {
        return Heard::Queue((queue != "*").then(|| queue.to_owned()));
    }
    if let Some(id) = payload.strip_prefix("c\u{1f}") {
        return Heard::Cancelled((!id.is_empty()).then(|| id.to_owned()));
    }
    if payload == CLAIM_PAYLOAD {
        return Heard::Claim;
    }
    if let Some(id) = payload.strip_prefix("r\u{1f}") {
        return Heard::Resumed(id.to_owned());
    }
    Heard::Wait(parse(payload))
}

/// What a payload made by [`payload`] names; `None`: anything ("*", or not ours).
fn parse(payload: &str) -> Option<WaitFor> {
    let mut parts = payload.splitn(3, '\u{1f}');
    let (kind, a, b) = (parts.next()?, parts.next()?, parts.next()?);
    match kind {
        "m" => Some(WaitFor::Message {
            destination: a.to_owned(),
            topic: b.to_owned(),
        }),
        "e" => Some(WaitFor::Event {
            workflow_id: a.to_owned(),
            key: b.to_owned(),
        }),
        _ => None,
    }
}

/// Where the workflows claimed after the open go: held until the runtime asks.
#[derive(Debug)]
pub(super) enum Takeovers {
    Held(Vec<Arc<str>>),
    To(mpsc::UnboundedSender<Arc<str>>),
}

impl Takeovers {
    pub(super) fn hand_over(&mut self, ids: impl IntoIterator<Item = Arc<str>>) {
        match self {
            Takeovers::Held(held) => held.extend(ids),
            Takeovers::To(to) => {
                for id in ids {
                    let _ = to.send(id);
                }
            }
        }
    }
}

/// Where the cancellations other processes made go, once the runtime asks.
pub(super) type Cancels = Arc<Mutex<Option<mpsc::UnboundedSender<Option<Arc<str>>>>>>;

/// The readers' connection, which heartbeats and claims also use: the watcher makes it
/// again when it drops; `None` once the store is closed.
pub(super) type ReaderSlot = Arc<Mutex<Option<Arc<Client>>>>;

/// Connects the readers' connection of executor `me`.
pub(super) async fn reader(config: &PgConfig, me: i64) -> Result<Client, PgError> {
    let client = super::connect(config, "reader").await?;
    // Its reads tell this runtime's workflows from others'.
    set_executor(&client, me).await?;
    Ok(client)
}

/// The readers' connection, made again if it dropped; `None` if it cannot be now, or
/// the store is closed. `connected` is set when it is made again. The executor's lock
/// goes with a dropped session, and is taken again here (`locked` says whether this
/// session holds it): a session the server has not found dead yet may still hold it,
/// and meanwhile the connection serves reads and heartbeats, and the lock is tried
/// again at every look.
async fn healthy(
    w: &Watch,
    me: i64,
    connected: &mut tokio::time::Instant,
    locked: &mut bool,
) -> Option<Arc<Client>> {
    let mut current = lock(&w.reader).clone()?;
    if current.is_closed() {
        let fresh = Arc::new(reader(&w.config, me).await.ok()?);
        {
            let mut slot = lock(&w.reader);
            // Not if the store closed meanwhile.
            slot.as_ref()?;
            *slot = Some(fresh.clone());
        }
        *connected = tokio::time::Instant::now();
        *locked = false;
        tracing::info!("the readers' connection to the PostgreSQL journal is back");
        current = fresh;
    }
    if !*locked {
        let taken = current
            .query_one(
                "SELECT pg_try_advisory_lock($1::int4, $2::bigint::int4)",
                &[
                    &schema::executor_lock_class(&schema::quoted(&w.config.schema)),
                    &me,
                ],
            )
            .await;
        *locked = taken.ok().and_then(|r| r.try_get(0).ok()).unwrap_or(false);
    }
    Some(current)
}

/// What the watcher needs.
pub(super) struct Watch {
    pub(super) config: PgConfig,
    /// The connection heartbeats and claims go through (the readers').
    pub(super) reader: ReaderSlot,
    /// This runtime's executor, which the watcher changes after a takeover.
    pub(super) me: Arc<std::sync::atomic::AtomicI64>,
    pub(super) lease: Duration,
    pub(super) names: Option<Arc<[&'static str]>>,
    pub(super) writes: mpsc::UnboundedSender<Command>,
    pub(super) takeovers: Arc<Mutex<Takeovers>>,
    /// Where cancellations other processes made go (see `Store::cancellations`).
    pub(super) cancels: Cancels,
    /// The backend pid of this runtime's writer session: its own notifications about
    /// queues need no dispatch here (its transaction dispatched them).
    pub(super) writer_pid: Arc<std::sync::atomic::AtomicI32>,
}

impl Watch {
    /// Asks the writer to dispatch `queues` (`None`: every one), first putting back in
    /// their queues the workflows of executors that stopped if `requeue`.
    fn dispatch(&self, queues: Option<Vec<Arc<str>>>, requeue: bool) {
        let (reply, ack) = crate::journal::Ack::channel(&Arc::from(std::path::Path::new("")));
        drop(ack);
        let _ = self.writes.send(Command::Write(super::writer::Op::Dispatch(
            super::writer::DispatchOp {
                news: None,
                queues,
                requeue,
                held: false,
            },
            reply,
        )));
    }
}

/// Beats the heartbeat, claims the workflows of executors gone, and passes
/// notifications to the writer, until the store closes (`stop` resolves).
pub(super) async fn watch(w: Watch, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let s = schema::quoted(&w.config.schema);
    let mut beat = tokio::time::interval(w.lease / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut claims = tokio::time::interval(w.lease / 2);
    claims.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first ticks are at once: the open has just beaten and claimed.
    beat.tick().await;
    claims.tick().await;
    // The listening connection, and what it hears.
    let mut listener: Option<(Client, mpsc::UnboundedReceiver<(i32, String)>)> = None;
    let mut me = w.me.load(std::sync::atomic::Ordering::SeqCst);
    // Whether the readers' session holds the executor's lock (registration took it).
    let mut locked = true;
    // When the readers' connection was last made: after the database restarts, every
    // executor's lock is free until it reconnects, so for a lease after reconnecting a
    // free lock alone does not make another executor gone.
    let mut connected = tokio::time::Instant::now() - w.lease;
    // Since when (ms) the listening connection is down, once it was up.
    let mut deaf_since: Option<i64> = None;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listener.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            if let Ok(client) = listen(&w.config, tx).await {
                listener = Some((client, rx));
                // Notifications sent while nobody listened are lost: look again,
                // dispatch every queue, and check every run here for a cancel.
                let _ = w.writes.send(Command::Recheck(None));
                w.dispatch(None, false);
                if let Some(to) = &*lock(&w.cancels) {
                    let _ = to.send(None);
                }
                // And what clients resumed meanwhile for this runtime to run.
                if let Some(since) = deaf_since.take()
                    && let Some(client) = healthy(&w, me, &mut connected, &mut locked).await
                {
                    resumed_while_deaf(&w, &client, &s, me, since).await;
                }
            }
        }
        let heard = async {
            match &mut listener {
                Some((_, rx)) => rx.recv().await,
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((0, String::new()))
                }
            }
        };
        let event = tokio::select! {
            _ = &mut stop => return,
            _ = check.tick() => Event::Check,
            _ = beat.tick() => Event::Beat,
            _ = claims.tick() => Event::Claim,
            payload = heard => Event::Heard(payload),
        };
        match event {
            Event::Check => {
                let _ = healthy(&w, me, &mut connected, &mut locked).await;
            }
            Event::Beat => {
                let Some(client) = healthy(&w, me, &mut connected, &mut locked).await else {
                    continue;
                };
                let beaten = client
                    .execute(
                        &format!(
                            "UPDATE {s}.executors SET heartbeat_at = now()
                             WHERE id = $1 AND dead_at IS NULL"
                        ),
                        &[&me],
                    )
                    .await;
                match beaten {
                    Ok(0) => {
                        // Found gone by another runtime, which took its workflows over:
                        // they go on there. This runtime goes on as a new executor.
                        match rejoin(&client, &s, me, w.lease).await {
                            Ok(new) => {
                                locked = true;
                                tracing::error!(
                                    executor = me,
                                    new_executor = new,
                                    "another runtime took over this runtime's workflows (it \
                                     found this one gone: out of touch with the database for \
                                     longer than its lease, or its connection dropped); they go \
                                     on there, and this runtime goes on with new work"
                                );
                                me = new;
                                w.me.store(new, std::sync::atomic::Ordering::SeqCst);
                                let _ = w.writes.send(Command::Executor(new));
                            }
                            Err(e) => tracing::warn!(error = ?e, "could not register again"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        error = %super::config::chain(&e),
                        "the heartbeat could not reach the PostgreSQL journal"
                    ),
                }
            }
            Event::Claim => {
                let Some(client) = healthy(&w, me, &mut connected, &mut locked).await else {
                    continue;
                };
                claim_now(&w, &client, &s, me, connected).await;
                // The queues' safety poll, which also puts back in their queues the
                // workflows dispatched to executors found gone (now, or by others).
                w.dispatch(None, true);
            }
            Event::Heard(Some(first)) => {
                if let Some((_, rx)) = &mut listener {
                    let mut keys = Vec::new();
                    let mut queues = Some(Vec::new());
                    let mut claims = false;
                    let mut resumed: Vec<String> = Vec::new();
                    let own = w.writer_pid.load(std::sync::atomic::Ordering::Relaxed);
                    let mut next = Some(first);
                    while let Some((pid, p)) = next {
                        match asked(&p) {
                            Heard::Wait(key) => keys.push(key),
                            // Its own cancellations stopped its runs as they were made.
                            Heard::Cancelled(_) if pid == own => {}
                            Heard::Cancelled(id) => {
                                if let Some(to) = &*lock(&w.cancels) {
                                    let _ = to.send(id.map(Arc::from));
                                }
                            }
                            Heard::Claim => claims = true,
                            Heard::Resumed(id) => resumed.push(id),
                            // Its own transaction dispatched what it notifies about.
                            Heard::Queue(_) if pid == own => {}
                            Heard::Queue(None) => queues = None,
                            Heard::Queue(Some(q)) => {
                                if let Some(queues) = &mut queues
                                    && !queues.iter().any(|x: &Arc<str>| **x == *q)
                                {
                                    queues.push(Arc::from(q));
                                }
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    if !keys.is_empty() {
                        let keys = keys.into_iter().collect::<Option<Vec<_>>>();
                        let _ = w.writes.send(Command::Recheck(keys));
                    }
                    if queues.as_ref().is_none_or(|q| !q.is_empty()) {
                        w.dispatch(queues, false);
                    }
                    if (claims || !resumed.is_empty())
                        && let Some(client) = healthy(&w, me, &mut connected, &mut locked).await
                    {
                        if !resumed.is_empty() {
                            run_resumed(&w, &client, &s, me, &resumed).await;
                        }
                        if claims {
                            claim_now(&w, &client, &s, me, connected).await;
                        }
                    }
                }
            }
            // The listening connection ended: listen again.
            Event::Heard(None) => {
                listener = None;
                deaf_since.get_or_insert_with(crate::util::now_ms);
            }
        }
    }
}

/// Hands the runtime the workflows a client resumed (`ids`, and their descendants)
/// that this executor owns, to run again.
async fn run_resumed(w: &Watch, client: &Client, s: &str, me: i64, ids: &[String]) {
    let rows = client
        .query_typed(
            &format!(
                "SELECT w.id FROM {s}.workflows w, unnest($1::text[]) r(id)
                 WHERE (w.id = r.id OR (w.id >= r.id || '/' AND w.id < r.id || '0'))
                   AND w.status = 'pending' AND w.owner = $2 AND w.queue_state IS NULL"
            ),
            &[(&ids, Type::TEXT_ARRAY), (&me, Type::INT8)],
        )
        .await;
    hand_over_found(w, rows, "the workflows a client resumed");
}

/// Hands the runtime the workflows `rows` found (their ids first), to run; or says
/// that `what` could not be read.
fn hand_over_found(
    w: &Watch,
    rows: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    what: &str,
) {
    match rows
        .map_err(PgError::from)
        .and_then(|rows| claimed_ids(&rows))
    {
        Ok(ids) => lock(&w.takeovers).hand_over(ids.into_iter().map(Arc::from)),
        Err(e) => tracing::warn!(
            error = ?e,
            "could not read {what}; they run at the next open"
        ),
    }
}

/// How far before the listening connection went down a client's resume is looked
/// for when it is up again: clients' clocks may be behind this one's.
const RESUME_SLACK_MS: i64 = 60_000;

/// Hands the runtime the workflows it owns that changed (a client's resume) since
/// `since` (ms), when the listening connection went down: their notifications were
/// lost. Those running here already are left to their run.
async fn resumed_while_deaf(w: &Watch, client: &Client, s: &str, me: i64, since: i64) {
    let rows = client
        .query_typed(
            &format!(
                "SELECT id FROM {s}.workflows
                 WHERE owner = $1 AND status = 'pending' AND queue_state IS NULL
                   -- Resumed (a start leaves them equal) in the window.
                   AND updated_at > created_at AND updated_at >= $2"
            ),
            &[(&me, Type::INT8), (&(since - RESUME_SLACK_MS), Type::INT8)],
        )
        .await;
    hand_over_found(
        w,
        rows,
        "the workflows resumed while the journal's notifications were not heard",
    );
}

/// Claims the pending workflows of executors gone and those nobody owns, and hands
/// them to the runtime. `connected`: when the readers' connection was last made.
async fn claim_now(w: &Watch, client: &Client, s: &str, me: i64, connected: tokio::time::Instant) {
    let trust_locks = connected.elapsed() >= w.lease;
    let claimed = claim(client, s, me, w.names.as_deref(), trust_locks).await;
    match claimed.and_then(|rows| claimed_ids(&rows)) {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(
                workflows = ids.len(),
                "took over pending workflows (of runtimes that stopped, or resumed, forked or \
                 started by a client)"
            );
            lock(&w.takeovers).hand_over(ids.into_iter().map(Arc::from));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            error = ?e,
            "claiming the workflows of stopped runtimes failed; trying again"
        ),
    }
}

/// Registers a new executor for this runtime, whose old one `old` another runtime
/// found gone: its lock goes, and the new one's is taken.
async fn rejoin(c: &Client, s: &str, old: i64, lease: Duration) -> Result<i64, PgError> {
    c.execute(
        "SELECT pg_advisory_unlock($1::int4, $2::bigint::int4)",
        &[&schema::executor_lock_class(s), &old],
    )
    .await?;
    register(c, s, lease).await
}

/// What woke the watcher.
enum Event {
    /// Time to look at the readers' connection.
    Check,
    Beat,
    Claim,
    /// A notification's sender (its backend pid) and payload; `None`: the listening
    /// connection ended.
    Heard(Option<(i32, String)>),
}

/// Drives the listening connection, passing each notification's payload to `heard`,
/// until it ends (dropping `heard` tells the watcher).
async fn hear<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    heard: mpsc::UnboundedSender<(i32, String)>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if heard
                    .send((n.process_id(), n.payload().to_owned()))
                    .is_err()
                {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// Opens the listening connection and `LISTEN`s on the journal's channel; each
/// notification's payload goes to `heard`.
async fn listen(
    config: &PgConfig,
    heard: mpsc::UnboundedSender<(i32, String)>,
) -> Result<Client, PgError> {
    let settings = config.for_connection("listener");
    let client = match &config.tls {
        Some(tls) => {
            let (client, connection) = settings.connect(tls.clone()).await?;
            tokio::spawn(hear(connection, heard));
            client
        }
        None => {
            let (client, connection) = settings.connect(NoTls).await?;
            tokio::spawn(hear(connection, heard));
            client
        }
    };
    client
        .batch_execute(&format!("LISTEN {}", channel(&config.schema)))
        .await?;
    Ok(client)
}
