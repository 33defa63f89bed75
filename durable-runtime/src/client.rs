//! [`Client`]: looks at and steers the workflows of a journal from outside the process
//! that runs them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::engine::replay::encode_value;
use crate::error::{Error, Result, StoreError, StoreErrorKind};
use crate::journal::StepInfo;
use crate::journal::command::{CommandKind, error_of};
use crate::journal::listing::{ListPage, ListQuery};
use crate::journal::retention::GcReport;
use crate::journal::sqlite::open::{held_by_runtime, take_lock};
use crate::journal::sqlite::view::{EventView, JournalView, MessageView, WorkflowView};
use crate::journal::sqlite::{commands, identity, retention, sql_error, wake};
use crate::runtime::{refuse_in_workflow, validate_id};
use crate::util::{lock, now_ms};

/// How long a command waits for the runtime that owns the journal to apply it, unless
/// [`Client::apply_timeout`] says otherwise.
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of a journal: any process can read its workflows, and send messages to,
/// cancel, resume or fork them, while the runtimes that run them run or while they
/// are down.
///
/// - **SQLite.** A SQLite journal is held by one [`Runtime`](crate::Runtime) at a
///   time, so a client does not change the workflows' records itself. It records each
///   command in the journal (the `durable_commands` table) and wakes the runtime, which
///   applies the commands in the order they were recorded, within milliseconds; a
///   runtime that is down applies them at its next open. Nothing is lost if either
///   side stops in between: a command recorded is applied exactly once, its outcome
///   recorded with it (a message is sent in the transaction that records its outcome).
///   Commands recorded while no runtime held the journal are applied by the next one
///   just after its [`open`](crate::Runtime::open) returns, in the background.
/// - **PostgreSQL** (the `postgres` feature; [`open`](Client::open) takes the URL).
///   Every process may write a PostgreSQL journal, so a client applies each command
///   itself, in one transaction that also tells the runtimes sharing the journal
///   (`NOTIFY`): a message wakes the run waiting for it wherever it runs; a cancel
///   stops the runs of the workflows at their next step (as a cancel in their own
///   process does); a resumed workflow runs again in the runtime that owned it (or is
///   claimed by another if that one is gone); a forked or started one is claimed at
///   once by a runtime that links its workflow, and runs there. Commands answer
///   [`Delivery::Applied`]. The client is not one of the journal's executors: it owns
///   no workflow and runs none.
///
/// Reads ([`list`](Client::list), [`workflow`](Client::workflow), ...) never wait for
/// a runtime. They block the calling thread for the time of a short query.
///
/// ```
/// use durable_runtime::{Client, Delivery, Runtime, recv, workflow};
///
/// #[workflow]
/// async fn job_waits_for_go() -> u32 {
///     recv::<u32>("go", None).await.ok().flatten().unwrap_or(0)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("journal.db");
/// let rt = Runtime::open(&path).await?;
/// let run = rt.start_with_id("job-1", job_waits_for_go()).await?;
///
/// // Another process (here the same one) steers it through the journal.
/// let client = Client::open(&path)?;
/// assert_eq!(client.send("job-1", "go", &7u32).await?, Delivery::Applied);
/// assert_eq!(run.result().await?, 7);
/// assert_eq!(client.workflow("job-1")?.unwrap().output::<u32>()?, Some(7));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Client {
    journal: Journal,
    codec: Codec,
    apply_timeout: Duration,
}

/// The journal a client reads and steers.
#[derive(Debug)]
enum Journal {
    Sqlite(Box<SqliteJournal>),
    /// Read and written straight, on a connection of the client's own.
    #[cfg(feature = "postgres")]
    Postgres(Box<crate::journal::postgres::client::PgClient>),
}

/// A SQLite journal, which a runtime holds: commands go through `durable_commands`.
#[derive(Debug)]
struct SqliteJournal {
    view: JournalView,
    /// The journal's real path (symlinks resolved, absolute): commands go there even if
    /// the process changes its working directory.
    real: PathBuf,
    /// The journal file's identity at the open: a file put in its place is refused.
    file: Option<(u64, u64)>,
    /// The connection commands are written through, opened at the first.
    writer: Arc<Mutex<Option<Connection>>>,
}

/// Refuses a journal file with other names (hard links): SQLite keeps a journal's WAL
/// beside the name it is opened by, so writes made through another name than the
/// runtime's would go to another WAL, and damage the file when copied back.
fn refuse_other_names(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let links = std::fs::metadata(path).map(|m| m.nlink()).unwrap_or(1);
        if links > 1 {
            return Err(StoreError::new(
                path,
                StoreErrorKind::Io,
                format!(
                    "the journal file has {links} names (hard links). SQLite keeps a journal's \
                     WAL beside the name it is opened by, so a client writing through another \
                     name than the runtime's would damage it: remove the other links and open \
                     the journal by the name its runtime uses"
                ),
            )
            .into());
        }
    }
    let _ = path;
    Ok(())
}

/// Runs `f` in an immediate (write) transaction on `c`.
fn in_transaction<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.execute_batch("BEGIN IMMEDIATE")?;
    match f(c) {
        Ok(v) => {
            c.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Applied: by the runtime that owns a SQLite journal, or by the client itself on
    /// a PostgreSQL journal (where a resumed, forked or started workflow then runs as
    /// soon as a runtime that has its workflow takes it).
    Applied,
    /// It is recorded in a SQLite journal, and no runtime applied it yet: none holds
    /// the journal (it is applied at the next open), or the one that does took longer
    /// than the client's [`apply_timeout`](Client::apply_timeout).
    Recorded,
}

impl Client {
    /// A client of the journal `journal`: the path of a SQLite journal, which must
    /// exist, or a PostgreSQL URL (`postgres://...`, with the `postgres` feature) of a
    /// journal a runtime has made.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if there is no journal there, if it is not a journal, or is at
    /// another schema version than this build's (a runtime of this build upgrades it
    /// at its open), or if the database cannot be reached.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> durable_runtime::Result<()> {
    /// use durable_runtime::Client;
    ///
    /// // A SQLite journal: commands go to the runtime that holds it.
    /// let local = Client::open("journal.db")?;
    /// local.send("order-17", "approval", &true).await?;
    ///
    /// // A PostgreSQL journal (the `postgres` feature): the URL the runtimes use.
    /// let shared = Client::open("postgres://app@db.internal/app?schema=durable")?;
    /// shared.cancel("order-18").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(journal: impl AsRef<Path>) -> Result<Client> {
        let path = journal.as_ref();
        let journal = match crate::journal::JournalSpec::new(path) {
            crate::journal::JournalSpec::Sqlite(_) => {
                Journal::Sqlite(Box::new(SqliteJournal::open(path)?))
            }
            #[cfg(feature = "postgres")]
            crate::journal::JournalSpec::Postgres(config) => Journal::Postgres(Box::new(
                crate::journal::postgres::client::PgClient::open(*config)?,
            )),
            crate::journal::JournalSpec::Unusable(_, e) => return Err(e.into()),
        };
        Ok(Client {
            journal,
            codec: Codec::default(),
            apply_timeout: DEFAULT_APPLY_TIMEOUT,
        })
    }

    /// Encodes the values this client sends with `codec` (CBOR by default). Any
    /// runtime decodes either.
    pub fn codec(mut self, codec: Codec) -> Client {
        self.codec = codec;
        self
    }

    /// How long a command waits for the runtime that owns the journal to apply it
    /// before it answers [`Delivery::Recorded`] ([`DEFAULT_APPLY_TIMEOUT`] unless set).
    pub fn apply_timeout(mut self, timeout: Duration) -> Client {
        self.apply_timeout = timeout;
        self
    }

    /// The journal's path, as given to [`open`](Client::open) (a PostgreSQL URL
    /// without its password).
    pub fn path(&self) -> &Path {
        match &self.journal {
            Journal::Sqlite(j) => j.view.path(),
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => pg.path(),
        }
    }

    /// The read-only view of a SQLite journal the client reads through; `None` for a
    /// PostgreSQL journal.
    pub fn view(&self) -> Option<&JournalView> {
        match &self.journal {
            Journal::Sqlite(j) => Some(&j.view),
            #[cfg(feature = "postgres")]
            Journal::Postgres(_) => None,
        }
    }

    /// A page of the workflow runs that match `query`; see [`JournalView::list`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub fn list(&self, query: &ListQuery) -> Result<ListPage> {
        match &self.journal {
            Journal::Sqlite(j) => j.view.list(query),
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => Ok(pg.list(query)?),
        }
    }

    /// The number of workflow runs of each status, in the order pending, completed,
    /// failed, cancelled; see [`JournalView::counts`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub fn counts(&self) -> Result<Vec<(crate::RecordedStatus, u64)>> {
        match &self.journal {
            Journal::Sqlite(j) => j.view.counts(),
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => Ok(pg.counts()?),
        }
    }

    /// The workflow run `id`, if the journal has it; see [`JournalView::workflow`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub fn workflow(&self, id: &str) -> Result<Option<WorkflowView>> {
        match &self.journal {
            Journal::Sqlite(j) => j.view.workflow(id),
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => Ok(pg.workflow(id)?),
        }
    }

    /// The recorded steps of workflow `id`; see [`JournalView::steps`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub fn steps(&self, id: &str) -> Result<Vec<StepInfo>> {
        match &self.journal {
            Journal::Sqlite(j) => j.view.steps(id),
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => Ok(pg.steps(id)?),
        }
    }

    /// The events workflow `id` set; see [`JournalView::events`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub fn events(&self, id: &str) -> Result<Vec<EventView>> {
        match &self.journal {
            Journal::Sqlite(j) => j.view.events(id),
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => Ok(pg.events(id)?),
        }
    }

    /// The messages waiting to be received; see [`JournalView::messages`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub fn messages(&self) -> Result<Vec<MessageView>> {
        match &self.journal {
            Journal::Sqlite(j) => j.view.messages(),
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => Ok(pg.messages()?),
        }
    }

    /// Sends `value` to workflow `destination` on `topic`, as
    /// [`Runtime::send`](crate::Runtime::send) does: it waits, in order, for a
    /// [`recv`](crate::recv) of that workflow, even one not started yet. A workflow
    /// waiting for it wakes once the owner applies the command.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] for a malformed destination, [`Error::Encode`] if the value
    /// does not encode, [`Error::Unrecorded`] in a workflow body (use
    /// [`send`](crate::send) there), [`Error::Store`] if the command cannot be recorded.
    pub async fn send<T: Serialize + DeserializeOwned>(
        &self,
        destination: &str,
        topic: &str,
        value: &T,
    ) -> Result<Delivery> {
        refuse_in_workflow(
            "`Client::send`",
            "use `durable_runtime::send`, which records the send so a replay does not send again",
        )?;
        let destination = validate_id(destination.to_owned())?;
        let payload = encode_value(self.codec, value, || {
            format!("the message on topic `{topic}`")
        })?;
        match &self.journal {
            Journal::Sqlite(j) => {
                j.command(
                    self.apply_timeout,
                    CommandKind::Send,
                    destination,
                    Some(topic),
                    None,
                    Some(payload),
                )
                .await
            }
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => {
                pg.send(&destination, topic, &payload, now_ms()).await?;
                Ok(Delivery::Applied)
            }
        }
    }

    /// Starts workflow `id`: a run of the workflow named `name` (its `#[workflow]`
    /// function's name, or the `name = "..."` it gives) with `input`, its arguments as
    /// a tuple (`(a, b)`; `(a,)` for one argument, `()` for none). Exactly once, as
    /// [`Runtime::start_with_id`](crate::Runtime::start_with_id): if workflow `id`
    /// exists already as a run of `name`, nothing happens. Follow it with
    /// [`workflow`](Client::workflow).
    ///
    /// On SQLite, the runtime that holds the journal starts it (and first checks that
    /// its program has the workflow and that `input` decodes as its arguments). On
    /// PostgreSQL, the client records the run with no owner, and a runtime whose
    /// program has the workflow claims it at once and runs it; an input that does not
    /// decode as its arguments stops the run there with [`Error::Incompatible`] (it
    /// stays pending: cancel it).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> durable_runtime::Result<()> {
    /// # let client = durable_runtime::Client::open("journal.db")?;
    /// // #[workflow] async fn send_invoice(customer: String, cents: u64) -> ... { ... }
    /// client
    ///     .start("send_invoice", "invoice-2026-12-0042", &("acme".to_owned(), 129_900u64))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidId`] for a malformed id, [`Error::Encode`] if the input does not
    /// encode, [`Error::WorkflowMismatch`] if workflow `id` is a run of another
    /// workflow, [`Error::Unrecorded`] in a workflow body (start a child there), and on
    /// SQLite, once the runtime applies it: [`Error::UnknownWorkflow`] if its program
    /// does not have workflow `name`, [`Error::Command`] if `input` does not decode as
    /// its arguments.
    pub async fn start<I: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        id: &str,
        input: &I,
    ) -> Result<Delivery> {
        refuse_in_workflow(
            "`Client::start`",
            "start a child workflow, whose start is recorded",
        )?;
        let id = validate_id(id.to_owned())?;
        let input = encode_value(self.codec, input, || format!("the input of workflow {id}"))?;
        if let Some(found) = self.workflow(&id)? {
            return if found.name == name {
                Ok(Delivery::Applied)
            } else {
                Err(Error::WorkflowMismatch {
                    workflow_id: id,
                    existing: found.name,
                    requested: name.to_owned(),
                })
            };
        }
        match &self.journal {
            Journal::Sqlite(j) => {
                j.command(
                    self.apply_timeout,
                    CommandKind::Start,
                    id,
                    Some(name),
                    None,
                    Some(input),
                )
                .await
            }
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => {
                pg.start(&id, name, &input, now_ms()).await?;
                Ok(Delivery::Applied)
            }
        }
    }

    /// Cancels workflow `id` and its pending descendants, as
    /// [`Runtime::cancel`](crate::Runtime::cancel) does. Cancelling a finished workflow
    /// does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the journal has no workflow `id` (nothing is recorded),
    /// [`Error::Unrecorded`] in a workflow body, [`Error::Store`] if the command cannot
    /// be recorded.
    pub async fn cancel(&self, id: &str) -> Result<Delivery> {
        refuse_in_workflow(
            "`Client::cancel`",
            "cancel it from a step, whose result is recorded",
        )?;
        self.known(id)?;
        match &self.journal {
            Journal::Sqlite(j) => {
                j.command(
                    self.apply_timeout,
                    CommandKind::Cancel,
                    id.to_owned(),
                    None,
                    None,
                    None,
                )
                .await
            }
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => {
                pg.cancel(id, now_ms()).await?;
                Ok(Delivery::Applied)
            }
        }
    }

    /// Continues a cancelled or failed workflow from its last recorded step, as
    /// [`Runtime::resume`](crate::Runtime::resume) does.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the journal has no workflow `id`, [`Error::NotResumable`]
    /// if it is pending or completed, [`Error::UnknownWorkflow`] if the owner's program
    /// does not link its workflow (SQLite; on PostgreSQL it waits, pending, for a
    /// runtime that does), [`Error::Unrecorded`] in a workflow body, [`Error::Store`]
    /// if the command cannot be recorded.
    pub async fn resume(&self, id: &str) -> Result<Delivery> {
        refuse_in_workflow(
            "`Client::resume`",
            "resume it from a step, whose result is recorded",
        )?;
        let found = self.known(id)?;
        if found.status == crate::RecordedStatus::Completed {
            return Err(Error::NotResumable {
                workflow_id: id.to_owned(),
                status: "completed",
            });
        }
        match &self.journal {
            Journal::Sqlite(j) => {
                j.command(
                    self.apply_timeout,
                    CommandKind::Resume,
                    id.to_owned(),
                    None,
                    None,
                    None,
                )
                .await
            }
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => {
                let resumed = pg.resume(id, now_ms()).await?;
                if resumed.iter().any(|r| r == id) {
                    return Ok(Delivery::Applied);
                }
                // Pending (or completed) by now: as the runtime answers.
                let status = self.known(id)?.status;
                Err(Error::NotResumable {
                    workflow_id: id.to_owned(),
                    status: status.as_str(),
                })
            }
        }
    }

    /// Deletes the workflow runs that finished more than `older_than` ago, with
    /// everything recorded for them, as [`Runtime::gc`](crate::Runtime::gc) does: in
    /// short transactions, so a runtime that holds the journal keeps running. Then
    /// gives the freed pages back to the file system (journals made with incremental
    /// vacuum; see [`vacuum`](Client::vacuum) for older ones).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be written (the batches done so far stay
    /// done).
    pub async fn gc(&self, older_than: Duration) -> Result<GcReport> {
        let cutoff = crate::runtime::retention_cutoff(older_than);
        match &self.journal {
            Journal::Sqlite(j) => j.gc(cutoff).await,
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => pg.gc(cutoff).await,
        }
    }

    /// Rewrites the journal file compactly and makes it one that
    /// [`gc`](Client::gc) can shrink (incremental vacuum): for journals made before
    /// schema 13. Needs the journal to itself: no runtime may hold it, and none can
    /// open it until this returns. Takes as long as copying the file. On PostgreSQL,
    /// does nothing: its autovacuum reclaims the space of deleted rows.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if a runtime holds the journal, [`Error::Store`] if it cannot
    /// be written.
    pub async fn vacuum(&self) -> Result<()> {
        match &self.journal {
            Journal::Sqlite(j) => j.vacuum().await,
            #[cfg(feature = "postgres")]
            Journal::Postgres(_) => Ok(()),
        }
    }

    /// Starts workflow `new_id` as a fork of workflow `id` from step `from_step`, as
    /// [`Runtime::fork`](crate::Runtime::fork) does. On SQLite, the runtime that owns
    /// the journal makes it and runs it. On PostgreSQL, the client makes it, and a
    /// runtime that links its workflow claims it at once and runs it.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the journal has no workflow `id` (nothing is recorded),
    /// [`Error::InvalidId`] for a malformed `new_id` or `from_step`,
    /// [`Error::IdTaken`] if `new_id` is another workflow's, and on SQLite what
    /// [`Runtime::fork`](crate::Runtime::fork) answers once the owner applies it.
    pub async fn fork(&self, id: &str, from_step: &str, new_id: &str) -> Result<Delivery> {
        refuse_in_workflow("`Client::fork`", "fork from outside the workflow")?;
        self.known(id)?;
        let new_id = validate_id(new_id.to_owned())?;
        let Ok(before) = from_step.parse::<crate::StepPath>() else {
            return Err(Error::InvalidId {
                id: from_step.to_owned(),
                reason: "a fork's step is a step path, such as `3` or `2.1` (see `durable show`)",
            });
        };
        match &self.journal {
            Journal::Sqlite(j) => {
                let _ = before;
                j.command(
                    self.apply_timeout,
                    CommandKind::Fork,
                    id.to_owned(),
                    None,
                    Some((from_step.to_owned(), new_id)),
                    None,
                )
                .await
            }
            #[cfg(feature = "postgres")]
            Journal::Postgres(pg) => {
                use crate::journal::{ForkSpec, Forked};
                let spec = ForkSpec {
                    origin: id.to_owned(),
                    before,
                    new_id: new_id.clone(),
                    app_version: None,
                    at: now_ms(),
                };
                match pg.fork(spec).await? {
                    Forked::New { .. } => Ok(Delivery::Applied),
                    Forked::Exists { forked_from } if forked_from.as_deref() == Some(id) => {
                        Ok(Delivery::Applied)
                    }
                    Forked::Exists { .. } => Err(Error::IdTaken {
                        workflow_id: new_id,
                        origin: id.to_owned(),
                    }),
                    Forked::NoOrigin => Err(Error::NotFound {
                        workflow_id: id.to_owned(),
                    }),
                }
            }
        }
    }

    /// The workflow `id`, or [`Error::NotFound`] ([`Error::InvalidId`] for an id no
    /// workflow can have).
    fn known(&self, id: &str) -> Result<WorkflowView> {
        let id = validate_id(id.to_owned())?;
        self.workflow(&id)?.ok_or_else(|| Error::NotFound {
            workflow_id: id.to_owned(),
        })
    }
}

impl SqliteJournal {
    fn open(path: &Path) -> Result<SqliteJournal> {
        let view = JournalView::open(path)?;
        let real = std::fs::canonicalize(path).map_err(|e| {
            StoreError::new(path, StoreErrorKind::Io, format!("cannot resolve it: {e}"))
        })?;
        refuse_other_names(path)?;
        Ok(SqliteJournal {
            view,
            file: identity::file_id(&real),
            real,
            writer: Arc::default(),
        })
    }

    fn path(&self) -> &Path {
        self.view.path()
    }

    async fn gc(&self, cutoff: i64) -> Result<GcReport> {
        self.same_file()?;
        let mut report = GcReport::default();
        let mut after = i64::MIN;
        loop {
            let batch = self
                .on_writer(move |c| {
                    in_transaction(c, |c| {
                        retention::gc_batch(c, cutoff, after, retention::GC_BATCH)
                    })
                })
                .await?;
            report.workflows += batch.deleted;
            match batch.next {
                Some(next) => after = next,
                None => break,
            }
        }
        report.commands = self
            .on_writer(move |c| in_transaction(c, |c| retention::gc_commands(c, cutoff)))
            .await?;
        report.reclaimed = self
            .on_writer(|c| c.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0)))
            .await?
            == 2;
        if report.reclaimed {
            while self
                .on_writer(|c| in_transaction(c, retention::vacuum_step))
                .await?
                > 0
            {}
            // Copies what is in the WAL into the file, which shrinks, as far as the
            // runtime's readers allow (it checkpoints the rest itself).
            self.on_writer(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())))
                .await?;
        }
        Ok(report)
    }

    async fn vacuum(&self) -> Result<()> {
        self.same_file()?;
        let path = self.real.clone();
        let lock = take_lock(&path)?;
        let done = self
            .on_writer(|c| c.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;"))
            .await;
        drop(lock);
        done
    }

    /// Refuses a command if the journal file is no longer the one the client opened (a
    /// restore put another in its place): the command would go to the old one.
    fn same_file(&self) -> Result<()> {
        if self.file.is_some() && identity::file_id(&self.real) != self.file {
            return Err(StoreError::new(
                self.path(),
                StoreErrorKind::Io,
                "the journal file was replaced or removed since this client opened it; open a \
                 new Client (nothing was recorded)",
            )
            .into());
        }
        Ok(())
    }

    /// Records a command, wakes the owner, and waits for its outcome.
    async fn command(
        &self,
        apply_timeout: Duration,
        kind: CommandKind,
        id: String,
        topic: Option<&str>,
        fork: Option<(String, String)>,
        payload: Option<Vec<u8>>,
    ) -> Result<Delivery> {
        self.same_file()?;
        let path: PathBuf = self.real.clone();
        let topic = topic.map(str::to_owned);
        let workflow_id = id.clone();
        // The workflow a start asks for, for a mismatch's error.
        let requested = (kind == CommandKind::Start)
            .then(|| topic.clone())
            .flatten();
        let seq = self
            .on_writer(move |c| {
                let fork = fork.as_ref().map(|(f, n)| (f.as_str(), n.as_str()));
                commands::insert(
                    c,
                    kind,
                    &id,
                    topic.as_deref(),
                    fork,
                    payload.as_deref(),
                    now_ms(),
                )
            })
            .await?;
        wake::ring(&path);
        if !held_by_runtime(&path) {
            return Ok(Delivery::Recorded);
        }
        let deadline = tokio::time::Instant::now() + apply_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.on_writer(move |c| commands::outcome(c, seq)).await? {
                Some(Some(outcome)) => {
                    return match error_of(&workflow_id, &outcome, requested.as_deref()) {
                        None => Ok(Delivery::Applied),
                        Some(e) => Err(e),
                    };
                }
                Some(None) => {
                    return Err(StoreError::new(
                        &path,
                        StoreErrorKind::Invariant,
                        format!(
                            "command {seq} is gone from durable_commands: the journal was \
                             replaced or changed by hand while the client waited"
                        ),
                    )
                    .into());
                }
                None if tokio::time::Instant::now() >= deadline => {
                    return Ok(Delivery::Recorded);
                }
                None => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    /// Runs `f` on the client's read-write connection, on a blocking thread.
    async fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let path: PathBuf = self.real.clone();
        let writer = self.writer.clone();
        let run = move || -> Result<T> {
            let mut slot = lock(&writer);
            if slot.is_none() {
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = Connection::open_with_flags(&path, flags)
                    .and_then(|c| c.busy_timeout(Duration::from_secs(5)).map(|()| c))
                    .map_err(|e| sql_error(&path, e))?;
                *slot = Some(conn);
            }
            let conn = slot.as_ref().ok_or_else(|| {
                StoreError::new(&path, StoreErrorKind::Io, "the client's connection is gone")
            })?;
            f(conn).map_err(|e| sql_error(&path, e).into())
        };
        tokio::task::spawn_blocking(run).await.map_err(|e| {
            Error::from(StoreError::new(
                self.path(),
                StoreErrorKind::Io,
                format!("the client's journal task failed: {e}"),
            ))
        })?
    }
}
