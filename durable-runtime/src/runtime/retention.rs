//! Retention: [`Runtime::gc`] and the builder's
//! [`retain_finished`](super::RuntimeBuilder::retain_finished).

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Runtime;
use super::registry::{Inner, refuse_in_workflow};
use crate::error::Result;
use crate::journal::retention::GcReport;
use crate::journal::{Store, blocking};
use crate::util::now_ms;

/// The time `older_than` before now, in ms since the epoch (saturating).
pub(crate) fn cutoff(older_than: Duration) -> i64 {
    now_ms().saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes the runs of `store` that finished before `cutoff_ms` (and the commands
/// applied before it), batch by batch, then gives the space back.
pub(crate) async fn collect(store: &Arc<dyn Store>, cutoff_ms: i64) -> Result<GcReport> {
    let path: &Path = store.path();
    let mut report = GcReport::default();
    let mut after = i64::MIN;
    loop {
        let s = store.clone();
        let batch = blocking(path, move || s.gc_batch(cutoff_ms, after)).await??;
        report.workflows += batch.deleted;
        match batch.next {
            Some(next) => after = next,
            None => break,
        }
        // One batch at a time: the runtime's own writes go between them.
        tokio::task::yield_now().await;
    }
    let s = store.clone();
    report.commands = blocking(path, move || s.gc_commands(cutoff_ms)).await??;
    let s = store.clone();
    report.reclaimed = blocking(path, move || s.reclaims()).await??;
    if report.reclaimed {
        loop {
            let s = store.clone();
            if blocking(path, move || s.vacuum_step()).await?? <= 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if report.workflows > 0 {
        tracing::info!(
            journal = %path.display(),
            workflows = report.workflows,
            commands = report.commands,
            "deleted finished workflows"
        );
    }
    Ok(report)
}

impl Runtime {
    /// A page of the workflow runs in the journal that match `query`: every run, not
    /// only this runtime's, newest first unless the query says otherwise. See
    /// [`ListQuery`](crate::ListQuery) for the filters and
    /// [`ListPage::next`](crate::ListPage::next) for the next page.
    ///
    /// ```
    /// # use durable_runtime::{ListQuery, RecordedStatus, Runtime, workflow};
    /// #[workflow]
    /// async fn listed_square(n: u32) -> u32 {
    ///     n * n
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// for n in 0..3 {
    ///     rt.start_with_id(format!("sq-{n}"), listed_square(n)).await?.result().await?;
    /// }
    /// let page = rt.list(&ListQuery::new().status(RecordedStatus::Completed)).await?;
    /// let ids: Vec<_> = page.workflows.iter().map(|w| w.id.as_str()).collect();
    /// assert_eq!(ids, ["sq-2", "sq-1", "sq-0"]);
    /// assert!(page.next.is_none());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the journal cannot be read.
    pub async fn list(&self, query: &crate::ListQuery) -> Result<crate::ListPage> {
        let store = self.inner.store.clone();
        let query = query.clone();
        Ok(blocking(self.path(), move || store.list(&query)).await??)
    }

    /// Deletes the workflow runs that finished (completed, failed or were cancelled)
    /// more than `older_than` ago, with everything recorded for them: steps, events,
    /// start records, patches, and messages sent to them and never received. Applied
    /// [`Client`](crate::Client) commands older than that go too. Never deleted:
    ///
    /// - a pending run, or one with a pending child;
    /// - a child whose parent is pending, failed or cancelled (a resume of the parent
    ///   reads the child's outcome); it goes once its parent is completed or deleted;
    /// - a run, or a child of a run, that a pending fork was made from (the fork's
    ///   copied steps may name it).
    ///
    /// It works in short batches (500 runs), each its own transaction, so the
    /// runtime's workflows keep running meanwhile. On SQLite the freed pages then go
    /// back to the file system (the file shrinks at the next checkpoint), for journals
    /// made with incremental vacuum; see [`GcReport::reclaimed`].
    ///
    /// A deleted run is gone: its handle's `result` and [`Runtime::handle`] answer
    /// [`Error::NotFound`](crate::Error::NotFound), and starting a workflow with its id
    /// starts a new run. See [`RuntimeBuilder::retain_finished`](super::RuntimeBuilder::retain_finished)
    /// to do this periodically.
    ///
    /// ```
    /// # use durable_runtime::{Runtime, workflow};
    /// # use std::time::Duration;
    /// #[workflow]
    /// async fn gc_doubled(n: u32) -> u32 {
    ///     n * 2
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// rt.start_with_id("old", gc_doubled(2)).await?.result().await?;
    /// let report = rt.gc(Duration::ZERO).await?;
    /// assert_eq!(report.workflows, 1);
    /// assert!(rt.handle::<u32>("old").await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) if the journal cannot be written (the
    /// batches done so far stay done), [`Error::Unrecorded`](crate::Error::Unrecorded)
    /// in a workflow body.
    pub async fn gc(&self, older_than: Duration) -> Result<GcReport> {
        refuse_in_workflow(
            "`Runtime::gc`",
            "delete old runs from outside the workflows, or with `retain_finished`",
        )?;
        self.inner.open()?;
        collect(&self.inner.store, cutoff(older_than)).await
    }
}

/// How often a runtime built with `retain_finished(keep)` collects: a tenth of
/// `keep`, between a second and an hour.
fn period(keep: Duration) -> Duration {
    (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Collects the runs that finished more than `keep` ago, now and every [`period`],
/// until the runtime closes or is dropped.
pub(super) async fn retain_loop(inner: Weak<Inner>, keep: Duration) {
    loop {
        {
            let Some(inner) = inner.upgrade() else { return };
            if inner.closing.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            if let Err(e) = collect(&inner.store, cutoff(keep)).await {
                tracing::warn!(error = %e, "could not delete finished workflows; trying again later");
            }
        }
        tokio::time::sleep(period(keep)).await;
    }
}
