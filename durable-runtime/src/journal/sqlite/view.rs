//! [`JournalView`]: a read-only look at a journal that a runtime, in this process or
//! another, may be running.
//!
//! The view opens the file with `SQLITE_OPEN_READONLY` and never touches the lock file:
//! it is a WAL reader like any other, which does not hold the runtime up. It reads
//! through the same row functions as the runtime ([`rows`]), and decodes values with the
//! runtime's codec after checking their checksums.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::migrate::{MIGRATIONS, check_schema, newer_schema, schema_version};
use super::rows::{self, DAMAGED, OnDamage, WORKFLOW_COLUMN_COUNT};
use super::sql_error;
use crate::codec::{Codec, CodecError};
use crate::error::{
    CancelReason, Error, FailureKind, Location, Result, StoreError, StoreErrorKind, undecodable,
};
use crate::journal::listing::{ListPage, ListQuery};
use crate::journal::{RecordStatus, StepInfo, WorkflowRecord};
use crate::util::lock;

/// A read-only view of a journal: its workflow runs, their steps and events, and the
/// messages waiting to be received, read while a [`Runtime`](crate::Runtime) (in this
/// process or another) may be running it.
///
/// The view never takes the journal's lock (`<journal>.lock`, which it does not create
/// either), never resumes, migrates or writes anything, and does not keep a runtime from
/// opening the journal: it opens the file read-only, as one more SQLite reader beside
/// the runtime. Like any reader of a WAL database it needs the journal's `-wal` and
/// `-shm` files; if no runtime has the journal open they may be missing, and then the
/// view creates them (empty, with the journal's permissions), so it needs a directory it
/// can create them in.
///
/// Each read is one read transaction: what it returns is a snapshot of what had
/// committed when it began, and a workflow's steps are never read half written. Two
/// reads may see two snapshots. Reads block the calling thread for the time of a short
/// SQLite query; from async code, call them in `spawn_blocking` if that matters.
///
/// Recorded values are decoded on demand, with the type you ask for
/// ([`WorkflowView::input`], [`StepInfo::output`], ...), after their checksum is
/// checked: a damaged value is an error ([`Error::Corrupt`] for the values a workflow
/// recorded), never another value.
///
/// ```
/// use durable_runtime::{JournalView, RecordedStatus, Runtime, set_event, step, workflow};
///
/// #[step]
/// async fn greeting(name: String) -> String {
///     format!("hello {name}")
/// }
///
/// #[workflow]
/// async fn greet(name: String) -> String {
///     let text = greeting(name).await;
///     set_event("said", &text).await.expect("event");
///     text
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), durable_runtime::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("journal.db");
/// let rt = Runtime::open(&path).await?;
/// rt.start_with_id("greet-1", greet("Ada".into())).await?.result().await?;
///
/// // While `rt` holds the journal (a view from another process works the same way):
/// let view = JournalView::open(&path)?;
/// let run = view.workflow("greet-1")?.expect("recorded");
/// assert_eq!(run.status, RecordedStatus::Completed);
/// assert_eq!(run.input::<(String,)>()?.0, "Ada");
/// assert_eq!(run.output::<String>()?.as_deref(), Some("hello Ada"));
///
/// let steps = view.steps("greet-1")?;
/// assert_eq!(steps[0].name, "greeting");
/// assert_eq!(steps[0].output::<String>()?, "hello Ada");
///
/// let events = view.events("greet-1")?;
/// assert_eq!(events[0].key, "said");
/// assert_eq!(events[0].value::<String>()?, "hello Ada");
/// assert!(view.messages()?.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct JournalView {
    path: Arc<Path>,
    conn: Mutex<Connection>,
}

impl JournalView {
    /// Opens a view of the journal at `path`, which must exist and be at the schema
    /// version of this build of durable.
    ///
    /// # Errors
    ///
    /// [`Error::Store`], saying what to do, if there is no file at `path`, if it is not
    /// a journal ([`StoreErrorKind::NotAJournal`]), if a newer durable wrote it
    /// ([`StoreErrorKind::NewerSchema`]), or if it is a journal of an older schema: a
    /// view does not upgrade a journal; open it once with
    /// [`Runtime::open`](crate::Runtime::open), which does.
    pub fn open(path: impl AsRef<Path>) -> Result<JournalView> {
        let path = path.as_ref();
        super::open::refuse_directory(path)?;
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::new(
                    path,
                    StoreErrorKind::Io,
                    "there is no journal at this path: a view or a client reads an existing \
                     journal (Runtime::open creates one)",
                )
                .into());
            }
            Err(e) => {
                return Err(StoreError::new(path, StoreErrorKind::Io, e.to_string()).into());
            }
        }
        // Not a URI, so the path is taken as it is; read-only, so nothing is written
        // (SQLite still maps the `-shm` index that every WAL reader shares).
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let sql = |e| Error::from(sql_error(path, e));
        let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
        // A read-only connection cannot checkpoint; say so, so that closing it does not
        // even try.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(sql)?;
        let view = JournalView {
            path: Arc::from(path),
            conn: Mutex::new(conn),
        };
        view.snapshot(|c| check_schema(c, path))?;
        Ok(view)
    }

    /// The journal's path, as given to [`open`](JournalView::open).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole journal looking for damage, and reports it per workflow where it
    /// can: SQLite's full `integrity_check` (every page, every index against its rows),
    /// every recorded value against its checksum, every step against its workflow.
    /// Empty when nothing is damaged. It reads every page, so it takes time in
    /// proportion to the journal's size; it changes nothing.
    ///
    /// ```no_run
    /// # fn main() -> durable_runtime::Result<()> {
    /// let view = durable_runtime::JournalView::open("journal.db")?;
    /// for damage in view.check()? {
    ///     eprintln!("damaged: {damage}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn check(&self) -> Result<Vec<crate::Damage>> {
        // Not through `snapshot`: a journal too damaged to read its schema version is
        // what this is for.
        Ok(super::integrity::check(&lock(&self.conn)))
    }

    /// Every workflow run, finished or not, oldest first.
    pub fn workflows(&self) -> Result<Vec<WorkflowView>> {
        self.read(|c| rows::select_workflows(c, VIEW_COLUMNS, "", [], workflow_view))
    }

    /// The workflow run `id`, if the journal has it.
    pub fn workflow(&self, id: &str) -> Result<Option<WorkflowView>> {
        self.read(|c| workflow_on(c, id))
    }

    /// The recorded steps of workflow `id`, ordered by path (what a replay would return
    /// without running their bodies; see [`Runtime::steps`](crate::Runtime::steps)).
    /// Empty if the workflow is unknown or recorded none.
    pub fn steps(&self, id: &str) -> Result<Vec<StepInfo>> {
        self.read(|c| {
            let steps = rows::step_rows(c, id, None, usize::MAX, OnDamage::Mark)?;
            Ok(steps
                .into_iter()
                .map(|s| StepInfo::new(id, s.step, s.intact))
                .collect())
        })
    }

    /// The messages waiting to be received ([`Runtime::send`](crate::Runtime::send) and
    /// [`send`](crate::send) put them there, [`recv`](crate::recv) takes them), for every
    /// destination, in the order `recv` takes them.
    pub fn messages(&self) -> Result<Vec<MessageView>> {
        self.read(|c| {
            Ok(rows::messages(c)?
                .into_iter()
                .map(|m| {
                    MessageView::new(
                        &self.path,
                        m.seq,
                        m.destination,
                        m.topic,
                        m.sent_at,
                        m.payload,
                        m.intact,
                    )
                })
                .collect())
        })
    }

    /// The events workflow `id` set ([`set_event`](crate::set_event)), by key; each holds
    /// its latest value. Empty if the workflow is unknown or set none.
    pub fn events(&self, id: &str) -> Result<Vec<EventView>> {
        self.read(|c| {
            Ok(rows::events(c, id)?
                .into_iter()
                .map(|e| EventView::new(id, e.key, e.set_at, e.value, e.intact))
                .collect())
        })
    }

    /// A page of the workflow runs that match `query`, in its order. See
    /// [`ListQuery`] for the filters, and [`ListPage::next`] for the next page.
    ///
    /// ```
    /// # use durable_runtime::{JournalView, ListQuery, RecordedStatus, Runtime, workflow};
    /// #[workflow]
    /// async fn listed_double(n: u32) -> u32 {
    ///     n * 2
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("journal.db");
    /// let rt = Runtime::open(&path).await?;
    /// for n in 0..5 {
    ///     rt.start_with_id(format!("double-{n}"), listed_double(n)).await?.result().await?;
    /// }
    /// let view = JournalView::open(&path)?;
    /// let query = ListQuery::new().status(RecordedStatus::Completed).limit(2);
    /// let first = view.list(&query)?;
    /// assert_eq!(first.workflows[0].id, "double-4"); // newest first
    /// let second = view.list(&query.clone().after(first.next.unwrap()))?;
    /// assert_eq!(second.workflows[0].id, "double-2");
    /// # Ok(())
    /// # }
    /// ```
    pub fn list(&self, query: &ListQuery) -> Result<ListPage> {
        self.read(|c| list(c, query))
    }

    /// How many workflow runs are in each status, in the order of [`RecordedStatus`]
    /// (a status no run is in is counted 0).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the journal cannot be read.
    pub fn counts(&self) -> Result<Vec<(RecordedStatus, u64)>> {
        let counted: Vec<(String, i64)> = self.read(|c| {
            c.prepare_cached("SELECT status, count(*) FROM durable_workflows GROUP BY status")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })?;
        Ok(status_counts(&counted))
    }

    /// Runs the queries of `f` in one read transaction; see [`snapshot`](Self::snapshot).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        self.snapshot(|c| f(c).map_err(|e| sql_error(&self.path, e).into()))
    }

    /// Runs `f` in one read transaction (a snapshot), after checking that the journal
    /// is still at this build's schema version (a newer runtime may have upgraded it
    /// since the view was opened).
    fn snapshot<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let path = &*self.path;
        let sql = |e| Error::from(sql_error(path, e));
        let conn = lock(&self.conn);
        // `BEGIN DEFERRED`: the snapshot is taken by the first read, the version check.
        let tx = conn.unchecked_transaction().map_err(sql)?;
        let version = schema_version(&tx, path)?;
        if version != MIGRATIONS.len() {
            return Err(wrong_version(path, version));
        }
        let out = f(&tx)?;
        tx.commit().map_err(sql)?;
        Ok(out)
    }
}

/// Workflow run `id` (see [`JournalView::workflow`]), read through `c` (the view's, or
/// the runtime's reader).
pub(crate) fn workflow_on(c: &Connection, id: &str) -> rusqlite::Result<Option<WorkflowView>> {
    let found = rows::select_workflows(c, VIEW_COLUMNS, "WHERE id = ?1", [id], workflow_view)?;
    let found = found.into_iter().next();
    if let Some(w) = &found {
        rows::same_workflow(id, &w.id, &format!("workflow {id}"))?;
    }
    Ok(found)
}

/// A page of the workflow runs that match `query` (see [`JournalView::list`]), read
/// through `c` (the view's, or the runtime's reader).
pub(crate) fn list(c: &Connection, query: &ListQuery) -> rusqlite::Result<ListPage> {
    let (before, order) = query.order.sql();
    let tail = format!(
        "WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR name = ?2)
           AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4)
           AND (?5 IS NULL OR parent_id = ?5) AND (?6 IS NULL OR run {before} ?6)
         ORDER BY run {order} LIMIT ?7"
    );
    let rows = rows::select_workflows_by(
        c,
        LIST_COLUMNS,
        &tail,
        rusqlite::params![
            query.status.map(RecordedStatus::as_str),
            query.name,
            query.started_after_ms,
            query.started_before_ms,
            query.parent,
            query.after.map(|c| c.0),
            query.fetch(),
        ],
        |r, w| {
            Ok((
                r.get::<_, i64>(WORKFLOW_COLUMN_COUNT + 5)?,
                workflow_view(r, w)?,
            ))
        },
    )?;
    Ok(ListPage::of(rows, query))
}

/// The error for a journal at schema `version`, which this build cannot view.
fn wrong_version(path: &Path, version: usize) -> Error {
    let current = MIGRATIONS.len();
    if version == 0 {
        StoreError::new(
            path,
            StoreErrorKind::NotAJournal,
            "this SQLite database has none of durable's tables: it is not a durable journal",
        )
        .into()
    } else if version > current {
        newer_schema(path, version)
    } else {
        StoreError::new(
            path,
            StoreErrorKind::Io,
            format!(
                "the journal is at schema version {version}, older than this build of durable \
                 ({current}), and a view or a client does not upgrade a journal: open it once \
                 with Runtime::open (which upgrades it), then look again"
            ),
        )
        .into()
    }
}

/// The columns a view reads after [`WORKFLOW_COLUMNS`](rows::WORKFLOW_COLUMNS), from
/// index [`WORKFLOW_COLUMN_COUNT`].
const VIEW_COLUMNS: &str = ", created_at, updated_at, app_version, forked_from, replays";

/// [`VIEW_COLUMNS`] and the run number, for a listing's cursor.
const LIST_COLUMNS: &str = ", created_at, updated_at, app_version, forked_from, replays, run";

/// A workflow row with the view's columns, as a [`WorkflowView`].
fn workflow_view(r: &rusqlite::Row<'_>, w: WorkflowRecord) -> rusqlite::Result<WorkflowView> {
    let (input_intact, output_intact) = rows::workflow_values_intact(r, &w)?;
    let mut view = WorkflowView::from_record(
        w,
        r.get(WORKFLOW_COLUMN_COUNT)?,
        r.get(WORKFLOW_COLUMN_COUNT + 1)?,
        r.get(WORKFLOW_COLUMN_COUNT + 2)?,
        r.get(WORKFLOW_COLUMN_COUNT + 3)?,
        r.get(WORKFLOW_COLUMN_COUNT + 4)?,
    );
    view.input_intact = input_intact;
    view.output_intact = output_intact;
    Ok(view)
}

/// Where a workflow run stands in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordedStatus {
    /// Not finished: running in the runtime that holds the journal, or waiting for the
    /// next [`Runtime::open`](crate::Runtime::open) to resume it.
    Pending,
    /// The workflow function returned; its output is recorded.
    Completed,
    /// Failed for good; the failure is recorded ([`Error::Failed`]).
    Failed,
    /// Cancelled; the cancellation is recorded ([`Error::Cancelled`]).
    Cancelled,
}

impl From<RecordStatus> for RecordedStatus {
    fn from(status: RecordStatus) -> Self {
        match status {
            RecordStatus::Pending => RecordedStatus::Pending,
            RecordStatus::Completed => RecordedStatus::Completed,
            RecordStatus::Failed => RecordedStatus::Failed,
            RecordStatus::Cancelled => RecordedStatus::Cancelled,
        }
    }
}

/// A workflow run, as [`JournalView`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkflowView {
    /// The workflow id.
    pub id: String,
    /// The workflow's name (its `#[workflow]` function's, or `name = "..."`).
    pub name: String,
    /// Where it stands.
    pub status: RecordedStatus,
    /// The workflow that started this one as its child ([`start_child`](crate::start_child)).
    pub parent_id: Option<String>,
    /// The workflow this one is a fork of ([`Runtime::fork`](crate::Runtime::fork)).
    pub forked_from: Option<String>,
    /// The application version of the runtime that started it
    /// ([`RuntimeBuilder::app_version`](crate::RuntimeBuilder::app_version)).
    pub app_version: Option<String>,
    /// When it was started, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// When it completed, failed or was cancelled, in milliseconds since the Unix epoch;
    /// `None` while it is pending.
    pub finished_at_ms: Option<i64>,
    /// When a runtime started the run again from the journal (at an open after the
    /// process that ran it stopped, at a takeover, at a resume), in milliseconds since
    /// the Unix epoch, oldest first: each time, the steps recorded before were replayed
    /// (their recorded results returned) rather than run. Empty for a run that ran in
    /// one go, and in journals from before schema 16 (PostgreSQL schema 8).
    pub replayed_at_ms: Vec<i64>,
    /// When it is cancelled if it has not finished
    /// ([`WorkflowCall::timeout`](crate::WorkflowCall::timeout)), in milliseconds since
    /// the Unix epoch.
    pub deadline_at_ms: Option<i64>,
    /// What kind of failure a failed run recorded.
    pub failure_kind: Option<FailureKind>,
    /// The message a failed run recorded (a panic's, for instance).
    pub failure_message: Option<String>,
    /// Why a cancelled run was cancelled.
    pub cancel_reason: Option<CancelReason>,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    input_intact: bool,
    output_intact: bool,
}

impl WorkflowView {
    /// The view of `w`, with the columns a view reads beside the record's; its values
    /// are intact unless `w` says it is damaged.
    pub(crate) fn from_record(
        w: WorkflowRecord,
        created_at_ms: i64,
        updated_at_ms: i64,
        app_version: Option<String>,
        forked_from: Option<String>,
        replays: Option<String>,
    ) -> WorkflowView {
        let damaged = w.damaged.as_ref().map(|(at, _)| at.clone());
        let status = RecordedStatus::from(w.status);
        let (failure_kind, failure_message) =
            w.failure.map_or((None, None), |(k, m)| (Some(k), Some(m)));
        WorkflowView {
            created_at_ms,
            finished_at_ms: (status != RecordedStatus::Pending).then_some(updated_at_ms),
            app_version,
            forked_from,
            replayed_at_ms: replays
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .filter_map(|t| t.trim().parse().ok())
                .collect(),
            deadline_at_ms: w.deadline_at,
            cancel_reason: w.cancelled,
            failure_kind,
            failure_message,
            parent_id: w.parent_id,
            status,
            name: w.name,
            id: w.id,
            input: w.input,
            output: w.output,
            input_intact: !matches!(damaged, Some(Location::Input)),
            output_intact: !matches!(damaged, Some(Location::Output)),
        }
    }

    /// Decodes the workflow's recorded input as `T`: the tuple of its arguments, such as
    /// `(Order,)` for a workflow of one argument, or `()` for none.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the value is damaged (it fails its checksum, or is not a
    /// value durable wrote), [`Error::Incompatible`] if it is a value of another type.
    pub fn input<T: Serialize + DeserializeOwned>(&self) -> Result<T> {
        decode(&self.id, Location::Input, &self.input, self.input_intact)
    }

    /// Decodes the workflow's recorded output as `T` (its return type): `None` unless
    /// it completed.
    ///
    /// # Errors
    ///
    /// As [`input`](WorkflowView::input).
    pub fn output<T: Serialize + DeserializeOwned>(&self) -> Result<Option<T>> {
        match &self.output {
            Some(bytes) => decode(&self.id, Location::Output, bytes, self.output_intact).map(Some),
            None => Ok(None),
        }
    }
}

/// Decodes a recorded value of workflow `id` as `T`, unless it failed its checksum.
fn decode<T: Serialize + DeserializeOwned>(
    id: &str,
    location: Location,
    bytes: &[u8],
    intact: bool,
) -> Result<T> {
    if !intact {
        return Err(Error::Corrupt {
            workflow_id: id.to_owned(),
            location,
            reason: CodecError::malformed(DAMAGED),
        });
    }
    Codec::decode(bytes).map_err(|reason| undecodable::<T>(id, location, reason))
}

/// The number of runs of each status, in the order pending, completed, failed,
/// cancelled, from the `(status, count)` rows of a journal's `GROUP BY status`.
pub(crate) fn status_counts(counted: &[(String, i64)]) -> Vec<(RecordedStatus, u64)> {
    [
        RecordedStatus::Pending,
        RecordedStatus::Completed,
        RecordedStatus::Failed,
        RecordedStatus::Cancelled,
    ]
    .into_iter()
    .map(|status| {
        let n = counted
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
        (status, n)
    })
    .collect()
}

/// A message waiting to be received, as [`JournalView::messages`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageView {
    /// The workflow it is for.
    pub destination: String,
    /// Its topic.
    pub topic: String,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
    journal: Arc<Path>,
    seq: i64,
    payload: Vec<u8>,
    intact: bool,
}

impl MessageView {
    /// A message as a journal's row holds it (`intact`: it matches its checksum).
    pub(crate) fn new(
        journal: &Arc<Path>,
        seq: i64,
        destination: String,
        topic: String,
        sent_at_ms: i64,
        payload: Vec<u8>,
        intact: bool,
    ) -> MessageView {
        MessageView {
            destination,
            topic,
            sent_at_ms,
            journal: journal.clone(),
            seq,
            payload,
            intact,
        }
    }

    /// Decodes the message as `T` (the type it was sent as).
    ///
    /// # Errors
    ///
    /// [`Error::Store`] ([`StoreErrorKind::Invariant`]) if the message is damaged (it
    /// fails its checksum, or is not a value durable wrote) or does not decode as `T`.
    /// (Not [`Error::Corrupt`] or [`Error::Incompatible`]: those name a workflow's
    /// recorded value, which a message is not until a workflow receives it.)
    pub fn value<T: Serialize + DeserializeOwned>(&self) -> Result<T> {
        let what = || {
            format!(
                "message {} for workflow {} on topic `{}`",
                self.seq, self.destination, self.topic
            )
        };
        let refuse = |message: String| {
            Error::from(StoreError::new(
                &*self.journal,
                StoreErrorKind::Invariant,
                message,
            ))
        };
        if !self.intact {
            return Err(refuse(format!(
                "{} does not match its checksum: the journal is damaged",
                what()
            )));
        }
        Codec::decode(&self.payload).map_err(|reason| {
            refuse(format!(
                "{} does not decode as `{}`: {reason}",
                what(),
                crate::codec::type_name::<T>()
            ))
        })
    }
}

/// An event a workflow set, as [`JournalView::events`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventView {
    /// The event's key.
    pub key: String,
    /// When its value was last set, in milliseconds since the Unix epoch.
    pub set_at_ms: i64,
    workflow_id: String,
    value: Vec<u8>,
    intact: bool,
}

impl EventView {
    /// An event of workflow `workflow_id` as a journal's row holds it (`intact`: it
    /// matches its checksum).
    pub(crate) fn new(
        workflow_id: &str,
        key: String,
        set_at_ms: i64,
        value: Vec<u8>,
        intact: bool,
    ) -> EventView {
        EventView {
            key,
            set_at_ms,
            workflow_id: workflow_id.to_owned(),
            value,
            intact,
        }
    }

    /// Decodes the event's value as `T` (the type it was set as).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the value is damaged (it fails its checksum, or is not a
    /// value durable wrote), [`Error::Incompatible`] if it is a value of another type.
    pub fn value<T: Serialize + DeserializeOwned>(&self) -> Result<T> {
        let location = Location::Event {
            key: self.key.clone(),
        };
        decode(&self.workflow_id, location, &self.value, self.intact)
    }
}
