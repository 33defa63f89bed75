//! [`Runtime::health`]: what a service's health check reports about its runtime.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::journal::blocking;
use crate::util::{lock, now_ms};

use super::Runtime;

/// How long [`Runtime::health`] waits for the journal's answer before it reports the
/// journal unreachable.
pub(crate) const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`Runtime::health`] found: whether the runtime can do its work, and how much
/// work waits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Whether the journal answered a read just now.
    pub journal_reachable: bool,
    /// Whether the journal's writer, which commits every checkpoint, is running.
    pub writer_alive: bool,
    /// Whether the runtime is closing (or closed): it takes no new work, and a load
    /// balancer should stop sending it any.
    pub closing: bool,
    /// Workflows pending in the journal, of every runtime that shares it. `None` if
    /// the journal could not be read.
    pub pending: Option<u64>,
    /// Workflows this runtime runs now, with their bodies in memory.
    pub running: usize,
    /// Workflows of this runtime waiting with their bodies dropped from memory (see
    /// [`RuntimeBuilder::evict_parked_after`](crate::RuntimeBuilder::evict_parked_after)).
    pub dormant: usize,
    /// How long ago the oldest pending workflow was started. `None` if none is
    /// pending, or if the journal could not be read.
    pub oldest_pending: Option<Duration>,
    /// Why the journal could not be read, in words for a log or a health page.
    pub problem: Option<String>,
}

impl Health {
    /// Whether the runtime can take work: the journal answers, its writer runs, and
    /// the runtime is not closing. What a readiness check (`/healthz`) answers.
    pub fn is_ready(&self) -> bool {
        self.journal_reachable && self.writer_alive && !self.closing
    }
}

impl Runtime {
    /// Checks the journal and reports what a health endpoint needs: one read of the
    /// journal (the pending count and the oldest pending workflow, from an index), and
    /// what this runtime holds in memory. Never fails, and answers within about 3
    /// seconds: a journal that cannot be read, or does not answer in that time (a lock
    /// held on its table, a server gone quiet), or a SQLite file deleted or replaced
    /// under the runtime, is reported in [`Health::problem`] as not reachable.
    ///
    /// ```
    /// use durable_runtime::Runtime;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// let health = rt.health().await;
    /// assert!(health.is_ready());
    /// assert_eq!(health.pending, Some(0));
    ///
    /// rt.close().await?;
    /// assert!(!rt.health().await.is_ready()); // closed: not ready
    /// # Ok(())
    /// # }
    /// ```
    pub async fn health(&self) -> Health {
        let inner = &self.inner;
        let closing = inner.closing.load(Ordering::Acquire);
        let (running, dormant) = {
            let runs = lock(&inner.running);
            let live = runs.values().filter(|r| r.live().is_some()).count();
            (live, runs.len() - live)
        };
        let writer_alive = inner.store.writer_alive();
        let store = inner.store.clone();
        let read = blocking(self.path(), move || store.pending_summary());
        let (summary, problem) = match tokio::time::timeout(HEALTH_READ_TIMEOUT, read).await {
            Ok(Ok(Ok(summary))) => (Some(summary), None),
            Ok(Ok(Err(e))) => (None, Some(e.to_string())),
            Ok(Err(e)) => (None, Some(e.to_string())),
            // A lock held on the table, a server that stopped answering: a health
            // check must answer anyway.
            Err(_) => (
                None,
                Some(format!(
                    "the journal did not answer a read within {} s",
                    HEALTH_READ_TIMEOUT.as_secs()
                )),
            ),
        };
        let now = now_ms();
        Health {
            journal_reachable: summary.is_some(),
            writer_alive,
            closing,
            pending: summary.map(|(pending, _)| pending),
            running,
            dormant,
            oldest_pending: summary.and_then(|(_, oldest)| oldest).map(|at| {
                Duration::from_millis(u64::try_from(now.saturating_sub(at)).unwrap_or(0))
            }),
            problem,
        }
    }
}
