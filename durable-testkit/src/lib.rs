//! Helpers for testing your own durable workflows.
//!
//! [`TempJournal`] is a journal in a temporary directory that is deleted when it is
//! dropped, with a [`runtime`](TempJournal::runtime) on it in one call. Opening a second
//! runtime on the same journal after dropping the first simulates a restart: the new
//! runtime resumes whatever the first left pending.
//!
//! ```
//! use durable_runtime::{step, workflow};
//! use durable_testkit::TempJournal;
//!
//! #[step]
//! async fn double(x: u64) -> u64 { x * 2 }
//!
//! #[workflow]
//! async fn twice(x: u64) -> u64 { double(double(x).await).await }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let journal = TempJournal::new()?;
//! let rt = journal.runtime().await?;
//! assert_eq!(rt.start_with_id("t", twice(5)).await?.result().await?, 20);
//!
//! let names: Vec<String> = rt.steps("t").await?.into_iter().map(|s| s.name).collect();
//! assert_eq!(names, ["double", "double"]);
//! # Ok(())
//! # }
//! ```
//!
//! Crash injection at every step, completion-order exploration and replay checks against
//! recorded journals are planned for this crate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use durable_runtime::{Durability, Error, Runtime};

/// A journal file in a fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempJournal {
    dir: tempfile::TempDir,
    path: PathBuf,
}

/// How long [`TempJournal::runtime`] waits for a dropped runtime to release the journal.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

impl TempJournal {
    /// Creates the directory; the journal itself is created by the first runtime.
    ///
    /// # Errors
    ///
    /// If the temporary directory cannot be created.
    pub fn new() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("journal.db");
        Ok(TempJournal { dir, path })
    }

    /// The journal file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary directory holding the journal.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Opens a runtime on the journal with [`Durability::Normal`] (tests do not need to
    /// survive power loss, and it is much faster), resuming pending workflows.
    ///
    /// A runtime that was just dropped releases the journal once its writer has
    /// committed what was queued; this waits for that (up to 10 seconds) instead of
    /// failing with [`Error::Locked`].
    ///
    /// # Errors
    ///
    /// What [`RuntimeBuilder::open`](durable_runtime::RuntimeBuilder::open) returns, or
    /// [`Error::Locked`] if another runtime still holds the journal after 10 seconds.
    pub async fn runtime(&self) -> durable_runtime::Result<Runtime> {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            match Runtime::builder(&self.path)
                .durability(Durability::Normal)
                .open()
                .await
            {
                Err(Error::Locked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other,
            }
        }
    }
}
