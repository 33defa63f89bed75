//! [`Runtime::fork`]: a new run that starts from another's recorded steps.

use std::sync::Arc;

use super::Runtime;
use super::registry::{Inner, refuse_in_workflow, validate_id};
use crate::error::{Error, Result};
use crate::journal::{ForkSpec, Forked, blocking};
use crate::path::StepPath;
use crate::util::now_ms;

impl Runtime {
    /// Starts workflow `new_id` as a fork of workflow `id`: a new run of the same
    /// workflow with the same input, which starts with copies of the results `id`
    /// recorded for its steps before `from_step` (every step whose path sorts before
    /// it, in its branches too), replays those, and runs the rest with the code this
    /// program has now. Use it to go on from a step after a fix, or to try again from
    /// a point without running what came before.
    ///
    /// The fork is recorded with its origin ([`WorkflowView::forked_from`](crate::WorkflowView::forked_from)).
    /// It is exactly-once like any start: forking again under the same `new_id` does
    /// nothing more, and its handle ([`Runtime::handle`]) follows the one run. What the
    /// copied steps did outside the journal is not done again.
    ///
    /// - A step whose record is a panic or an interruption is not copied: it runs
    ///   again, as in a [`resume`](Runtime::resume).
    /// - Events set before the fork point are copied with the values they had then;
    ///   one the origin set again later is not (its earlier value is gone), and the
    ///   fork sets it when it gets there.
    /// - Children started by copied steps stay the origin's, and
    ///   [`gc`](Runtime::gc) keeps them while the fork is pending.
    /// - A fork is not queued, even if its origin was: it runs at once.
    ///
    /// ```
    /// # use durable_runtime::{Runtime, step, workflow};
    /// # use std::sync::atomic::{AtomicU32, Ordering};
    /// static CHARGES: AtomicU32 = AtomicU32::new(0);
    ///
    /// #[step]
    /// async fn fork_charge() -> u32 {
    ///     CHARGES.fetch_add(1, Ordering::SeqCst) + 1
    /// }
    ///
    /// #[step]
    /// async fn fork_ship(charge: u32) -> String {
    ///     format!("shipped after charge {charge}")
    /// }
    ///
    /// #[workflow]
    /// async fn fork_order() -> String {
    ///     let charge = fork_charge().await;
    ///     fork_ship(charge).await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::open(dir.path().join("journal.db")).await?;
    /// rt.start_with_id("order-1", fork_order()).await?.result().await?;
    /// // Again from step 2 (the shipping), reusing the recorded charge.
    /// rt.fork("order-1", "2", "order-1-again").await?;
    /// let again = rt.handle::<String>("order-1-again").await?.result().await?;
    /// assert_eq!(again, "shipped after charge 1");
    /// assert_eq!(CHARGES.load(Ordering::SeqCst), 1, "the charge ran once");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if the journal has no workflow `id`, [`Error::UnknownWorkflow`]
    /// if its workflow is not linked into this program, [`Error::InvalidId`] for a
    /// malformed `new_id` or a `from_step` that is not a step path (`3`, `2.1`),
    /// [`Error::IdTaken`] if `new_id` is taken by a workflow that is not a fork of
    /// `id`, [`Error::Store`] if a copied record is damaged (nothing is made) or the
    /// journal cannot be written, [`Error::Unrecorded`] in a workflow body.
    pub async fn fork(&self, id: &str, from_step: &str, new_id: &str) -> Result<()> {
        refuse_in_workflow(
            "`Runtime::fork`",
            "fork from outside the workflow, or start a child with `start_child`",
        )?;
        self.inner.open()?;
        self.inner.fork(id, from_step, new_id).await
    }
}

impl Inner {
    /// [`Runtime::fork`], as a client's command applies it too.
    pub(super) async fn fork(
        self: &Arc<Self>,
        id: &str,
        from_step: &str,
        new_id: &str,
    ) -> Result<()> {
        let new_id = validate_id(new_id.to_owned())?;
        let before: StepPath = from_step.parse().map_err(|_| Error::InvalidId {
            id: from_step.to_owned(),
            reason: "a fork's step is a step path, such as `3` or `2.1` (see `durable show`)",
        })?;
        let origin = self.record(id).await?.ok_or_else(|| Error::NotFound {
            workflow_id: id.to_owned(),
        })?;
        if !self.registry.contains_key(origin.name.as_str()) {
            return Err(Error::UnknownWorkflow {
                workflow_id: origin.id,
                name: origin.name,
            });
        }
        let spec = ForkSpec {
            origin: id.to_owned(),
            before,
            new_id: new_id.clone(),
            app_version: self.app_version.clone(),
            at: now_ms(),
        };
        let store = self.store.clone();
        let forked = blocking(self.store.path(), move || store.fork(spec)).await??;
        match forked {
            Forked::NoOrigin => Err(Error::NotFound {
                workflow_id: id.to_owned(),
            }),
            Forked::Exists { forked_from } if forked_from.as_deref() == Some(id) => Ok(()),
            Forked::Exists { .. } => Err(Error::IdTaken {
                workflow_id: new_id,
                origin: id.to_owned(),
            }),
            Forked::New { steps } => {
                tracing::info!(workflow = %new_id, origin = %id, steps, "forked workflow");
                if let Some(record) = self.record(&new_id).await? {
                    self.launch_recorded(record);
                }
                Ok(())
            }
        }
    }
}
