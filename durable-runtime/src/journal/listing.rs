//! Listing workflow runs: [`ListQuery`] (filters, order, page size, cursor) and the
//! [`ListPage`] it answers.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::sqlite::view::{RecordedStatus, WorkflowView};

/// Which runs come first in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Order {
    /// The most recently started first (the default).
    #[default]
    NewestFirst,
    /// The first started first.
    OldestFirst,
}

/// What to list: every filter set must match. Build it with its methods:
///
/// ```
/// use durable_runtime::{ListQuery, Order, RecordedStatus};
///
/// let failed_today = ListQuery::new()
///     .status(RecordedStatus::Failed)
///     .name("checkout")
///     .started_after(std::time::SystemTime::now() - std::time::Duration::from_secs(86_400))
///     .order(Order::OldestFirst)
///     .limit(50);
/// # let _ = failed_today;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub(crate) status: Option<RecordedStatus>,
    pub(crate) name: Option<String>,
    pub(crate) started_after_ms: Option<i64>,
    pub(crate) started_before_ms: Option<i64>,
    pub(crate) parent: Option<String>,
    pub(crate) order: Order,
    pub(crate) limit: usize,
    pub(crate) after: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery::new()
    }
}

/// The page size of a query that sets none.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The largest page: a larger limit is taken as this.
pub const MAX_LIST_LIMIT: usize = 10_000;

impl ListQuery {
    /// Every run, newest first, [`DEFAULT_LIST_LIMIT`] per page.
    pub fn new() -> ListQuery {
        ListQuery {
            status: None,
            name: None,
            started_after_ms: None,
            started_before_ms: None,
            parent: None,
            order: Order::NewestFirst,
            limit: DEFAULT_LIST_LIMIT,
            after: None,
        }
    }

    /// Only runs in `status`.
    pub fn status(mut self, status: RecordedStatus) -> ListQuery {
        self.status = Some(status);
        self
    }

    /// Only runs of the workflow named `name` (its `#[workflow]` function's name, or
    /// its `name = "..."`).
    pub fn name(mut self, name: impl Into<String>) -> ListQuery {
        self.name = Some(name.into());
        self
    }

    /// Only runs started at or after `at`.
    pub fn started_after(mut self, at: SystemTime) -> ListQuery {
        self.started_after_ms = Some(ms(at));
        self
    }

    /// Only runs started before `at`.
    pub fn started_before(mut self, at: SystemTime) -> ListQuery {
        self.started_before_ms = Some(ms(at));
        self
    }

    /// Only the children of workflow `parent` ([`start_child`](crate::start_child)).
    pub fn parent(mut self, parent: impl Into<String>) -> ListQuery {
        self.parent = Some(parent.into());
        self
    }

    /// Which runs come first.
    pub fn order(mut self, order: Order) -> ListQuery {
        self.order = order;
        self
    }

    /// At most `limit` runs per page (1 to [`MAX_LIST_LIMIT`]; 0 is taken as 1).
    pub fn limit(mut self, limit: usize) -> ListQuery {
        self.limit = limit.clamp(1, MAX_LIST_LIMIT);
        self
    }

    /// The page after the one that answered `cursor` ([`ListPage::next`]), with the
    /// same filters and order.
    pub fn after(mut self, cursor: Cursor) -> ListQuery {
        self.after = Some(cursor);
        self
    }
}

impl Order {
    /// How a listing in this order compares a run with its cursor, and sorts runs.
    pub(crate) fn sql(self) -> (&'static str, &'static str) {
        match self {
            Order::NewestFirst => ("<", "DESC"),
            Order::OldestFirst => (">", "ASC"),
        }
    }
}

impl ListQuery {
    /// How many runs a listing reads: one more than a page, to know whether another
    /// page follows.
    pub(crate) fn fetch(&self) -> i64 {
        let limit = self.limit.clamp(1, MAX_LIST_LIMIT);
        i64::try_from(limit + 1).unwrap_or(i64::MAX)
    }
}

impl ListPage {
    /// The page `query` answers from `rows` (each with its run number), read with
    /// [`ListQuery::fetch`]'s limit.
    pub(crate) fn of(mut rows: Vec<(i64, WorkflowView)>, query: &ListQuery) -> ListPage {
        let limit = query.limit.clamp(1, MAX_LIST_LIMIT);
        let next = (rows.len() > limit).then(|| {
            rows.truncate(limit);
            Cursor(rows.last().map_or(0, |(run, _)| *run))
        });
        ListPage {
            workflows: rows.into_iter().map(|(_, w)| w).collect(),
            next,
        }
    }
}

/// Milliseconds since the epoch of `at` (negative before it, saturating).
fn ms(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    }
}

/// Where a listing stopped: pass it to [`ListQuery::after`] for the next page. Its text
/// form (`Display`, `FromStr`) is for command lines and URLs; it stays valid while new
/// runs start, and a page never repeats or skips a run that existed when the first
/// page was read (runs are listed by the journal's run number, which only grows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor(pub(crate) i64);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A text that is not a [`Cursor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a listing cursor: pass the `next` cursor a listing printed (such as `r1234`)"
)]
pub struct ParseCursorError(String);

impl FromStr for Cursor {
    type Err = ParseCursorError;

    fn from_str(s: &str) -> Result<Cursor, ParseCursorError> {
        s.strip_prefix('r')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .filter(|n| n.len() == 1 || !n.starts_with('0'))
            .and_then(|n| n.parse::<i64>().ok())
            .map(Cursor)
            .ok_or_else(|| ParseCursorError(s.to_owned()))
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListPage {
    /// The runs, in the query's order.
    pub workflows: Vec<WorkflowView>,
    /// The cursor of the next page; `None` if this is the last.
    pub next: Option<Cursor>,
}

impl RecordedStatus {
    /// The status as the journal writes it: `pending`, `completed`, `failed` or
    /// `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordedStatus::Pending => "pending",
            RecordedStatus::Completed => "completed",
            RecordedStatus::Failed => "failed",
            RecordedStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RecordedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not a [`RecordedStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a workflow status: use pending, completed, failed or cancelled")]
pub struct ParseStatusError(String);

impl FromStr for RecordedStatus {
    type Err = ParseStatusError;

    fn from_str(s: &str) -> Result<RecordedStatus, ParseStatusError> {
        match s {
            "pending" => Ok(RecordedStatus::Pending),
            "completed" => Ok(RecordedStatus::Completed),
            "failed" => Ok(RecordedStatus::Failed),
            "cancelled" => Ok(RecordedStatus::Cancelled),
            _ => Err(ParseStatusError(s.to_owned())),
        }
    }
}
