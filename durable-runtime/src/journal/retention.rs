//! Retention: what deleting finished runs answers (see `Runtime::gc`, `Client::gc`).

/// One batch of a garbage collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GcBatch {
    /// Workflow runs deleted.
    pub(crate) deleted: u64,
    /// The last run number looked at: the next batch starts after it. `None` when no
    /// run is left to look at.
    pub(crate) next: Option<i64>,
}

/// What a garbage collection did ([`Runtime::gc`](crate::Runtime::gc),
/// [`Client::gc`](crate::Client::gc)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GcReport {
    /// Workflow runs deleted, with everything recorded for them.
    pub workflows: u64,
    /// Applied client commands deleted.
    pub commands: u64,
    /// Whether the freed space went back to the file system: on SQLite, for journals
    /// made with incremental vacuum (every journal created since schema 13; an older
    /// one is converted by `Client::vacuum`, or `durable vacuum`, while no runtime
    /// holds it). PostgreSQL reclaims space with its own vacuum.
    pub reclaimed: bool,
}
