//! Fixtures: a temporary journal, a runtime on it, and recorded steps as plain data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_runtime::testkit::Probe;
use durable_runtime::{Durability, Error, Fingerprint, Runtime};

/// A journal file in a fresh temporary directory, removed on drop.
///
/// ```
/// use durable_runtime::{step, workflow};
/// use durable_testkit::TempJournal;
///
/// #[step]
/// async fn double(x: u64) -> u64 { x * 2 }
///
/// #[workflow]
/// async fn twice(x: u64) -> u64 { double(double(x).await).await }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (journal, rt) = TempJournal::with_runtime().await?;
/// assert_eq!(rt.start_with_id("t", twice(5)).await?.result().await?, 20);
///
/// // Recorded steps as plain data: (path, name) pairs, and each output decoded.
/// let steps = durable_testkit::recorded_steps(&rt, "t").await?;
/// assert_eq!(steps, [("1".to_owned(), "double".to_owned()), ("2".to_owned(), "double".to_owned())]);
/// let outputs: Vec<u64> = rt.steps("t").await?.iter().map(|s| s.output()).collect::<Result<_, _>>()?;
/// assert_eq!(outputs, [10, 20]);
///
/// // A restart: a new runtime on the same file resumes what the old one left pending.
/// drop(rt);
/// let rt = journal.runtime().await?;
/// assert!(rt.recovered().is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TempJournal {
    dir: tempfile::TempDir,
    /// The journal file, or the PostgreSQL URL (with its schema).
    path: PathBuf,
    /// On PostgreSQL: the server and the schema, dropped with the journal.
    #[cfg(feature = "postgres")]
    postgres: Option<(String, String)>,
}

/// How long opening waits for a dropped runtime to release the journal.
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
        Ok(TempJournal {
            dir,
            path,
            #[cfg(feature = "postgres")]
            postgres: None,
        })
    }

    /// A journal in a schema of its own in the test server
    /// ([`postgres::database_url`](crate::postgres::database_url)), dropped with it.
    /// [`path`](Self::path) is its URL.
    ///
    /// # Errors
    ///
    /// If the temporary directory cannot be created.
    #[cfg(feature = "postgres")]
    pub fn postgres() -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = tempfile::tempdir()?;
        let server = crate::postgres::database_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "durable_temp_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let sep = if server.contains('?') { '&' } else { '?' };
        let path = PathBuf::from(format!("{server}{sep}schema={schema}"));
        Ok(TempJournal {
            dir,
            path,
            postgres: Some((server, schema)),
        })
    }

    /// A new temporary journal and a runtime on it, in one call.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the directory or the journal cannot be created.
    pub async fn with_runtime() -> durable_runtime::Result<(TempJournal, Runtime)> {
        let journal = TempJournal::new().map_err(|e| {
            Error::Store(durable_runtime::testkit::io_error(
                Path::new("<temporary directory>"),
                &e,
            ))
        })?;
        let rt = journal.runtime().await?;
        Ok((journal, rt))
    }

    /// The journal file's path (on PostgreSQL, its URL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary directory holding the journal.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Opens a runtime on the journal with [`Durability::Off`] (a test's journal need not
    /// survive power loss; a process crash it survives at any setting), resuming pending
    /// workflows.
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
        open(&self.path, None).await
    }
}

#[cfg(feature = "postgres")]
impl Drop for TempJournal {
    fn drop(&mut self) {
        let Some((server, schema)) = self.postgres.take() else {
            return;
        };
        // Best effort, on a runtime of its own: a schema left behind costs only space
        // in a test server.
        let _ = on_fresh_runtime(false, async move {
            let (client, connection) =
                tokio_postgres::connect(&server, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
        });
    }
}

/// How long a runtime of a test on PostgreSQL may be out of touch before another takes
/// its workflows over: short, since tests "crash" runtimes on purpose.
#[cfg(feature = "postgres")]
const TEST_LEASE: Duration = Duration::from_millis(500);

/// Opens a runtime on `path`, waiting for a dropped one to release it.
pub(crate) async fn open(
    path: &Path,
    probe: Option<Arc<Probe>>,
) -> durable_runtime::Result<Runtime> {
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    loop {
        let mut builder = Runtime::builder(path).durability(Durability::Off);
        #[cfg(feature = "postgres")]
        {
            builder = builder.lease(TEST_LEASE);
        }
        if let Some(probe) = &probe {
            builder = builder.probe(probe.clone());
        }
        match builder.open().await {
            Err(Error::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            other => return other,
        }
    }
}

/// The recorded steps of workflow `id` as `(path, name)` pairs, in path order: plain
/// data to compare with `assert_eq!`. For outputs, use
/// [`StepInfo::output`](durable_runtime::StepInfo::output) on [`Runtime::steps`].
///
/// # Errors
///
/// If the journal cannot be read.
pub async fn recorded_steps(
    rt: &Runtime,
    id: &str,
) -> durable_runtime::Result<Vec<(String, String)>> {
    Ok(rt
        .steps(id)
        .await?
        .into_iter()
        .map(|s| (s.path.to_string(), s.name))
        .collect())
}

/// Runs `fut` to completion on a tokio runtime of its own, in a thread of its own, and
/// then drops the runtime without letting its tasks run any further: to the journal, a
/// process that stopped where it was.
pub(crate) fn on_fresh_runtime<T: Send>(
    multi_thread: bool,
    fut: impl std::future::Future<Output = T> + Send,
) -> T {
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let mut builder = if multi_thread {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            } else {
                tokio::runtime::Builder::new_current_thread()
            };
            let rt = builder
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("durable-testkit: cannot start a tokio runtime: {e}"));
            let out = rt.block_on(fut);
            rt.shutdown_background();
            out
        });
        worker
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
    })
}

/// The name recorded for a durable select, which the comparisons below treat apart.
const SELECT: &str = "durable::select";

/// What a run recorded at one path, for comparing runs: the step's name (a durable
/// select's also says which branch won: two runs whose selects chose differently may go
/// on differently, and that is not a determinism bug, since the winner is recorded), the
/// fingerprint of its arguments, and the fingerprint of its output's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) name: String,
    args: Option<Fingerprint>,
    output: Option<Fingerprint>,
}

impl Recorded {
    /// Whether `other` is the same call: same step, same arguments.
    fn same_call(&self, other: &Recorded) -> bool {
        self.name == other.name && self.args == other.args
    }

    /// The step as a cell of a comparison: its name, with what differs from `other`'s
    /// when the names agree.
    pub(crate) fn describe(&self, other: Option<&Recorded>) -> String {
        let short = |f: Option<Fingerprint>| {
            f.map_or_else(|| "none".to_owned(), |f| f.to_string()[..8].to_owned())
        };
        match other {
            Some(o) if o.name == self.name && o.args != self.args => {
                format!("{} (args {})", self.name, short(self.args))
            }
            Some(o) if o.name == self.name && o.output != self.output => {
                format!("{} (output {})", self.name, short(self.output))
            }
            _ => self.name.clone(),
        }
    }
}

/// What to compare at each path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compare {
    /// The step and its arguments.
    Calls,
    /// The step, its arguments and its output.
    CallsAndOutputs,
}

/// The primitives that record what differs on every fresh run by design (a time, random
/// bits): their outputs are not compared.
const FRESH_EVERY_RUN: [&str; 4] = [
    "durable::sleep",
    "durable::now",
    "durable::random",
    "durable::uuid",
];

/// A run's recorded steps by path, for comparing runs.
pub(crate) fn step_map(
    steps: Vec<durable_runtime::StepInfo>,
) -> std::collections::BTreeMap<durable_runtime::StepPath, Recorded> {
    steps
        .into_iter()
        .map(|s| {
            let args = s.arguments_fingerprint();
            let output = s
                .output_fingerprint()
                .filter(|_| !FRESH_EVERY_RUN.contains(&s.name.as_str()));
            let name = match s.output::<u32>() {
                Ok(winner) if s.name == SELECT => format!("{SELECT} (won by branch {winner})"),
                _ => s.name,
            };
            (s.path, Recorded { name, args, output })
        })
        .collect()
}

/// The first path at which two runs' recorded steps disagree, if any.
///
/// Both runs must record the same step, with the same arguments (and, for
/// [`Compare::CallsAndOutputs`], the same output), at every path they both record, up
/// to the first durable select whose winners differ (after it they may legitimately
/// take other paths). A path recorded by one run only is a difference too, unless it
/// lies in a position a select raced (before the select, in the same branch): whether a
/// losing branch recorded before the select returned depends on timing.
pub(crate) fn first_difference<'a>(
    a: &'a std::collections::BTreeMap<durable_runtime::StepPath, Recorded>,
    b: &'a std::collections::BTreeMap<durable_runtime::StepPath, Recorded>,
    compare: Compare,
) -> Option<&'a durable_runtime::StepPath> {
    let is_select = |r: &Recorded| r.name.starts_with(SELECT);
    let selects: Vec<&[u32]> = a
        .iter()
        .chain(b.iter())
        .filter(|(_, r)| is_select(r))
        .map(|(p, _)| p.positions())
        .collect();
    // Under a position that a select's branches claimed: same branch as the select,
    // an earlier position.
    let raced = |p: &[u32]| {
        selects.iter().any(|s| {
            let depth = s.len();
            p.len() >= depth && p[..depth - 1] == s[..depth - 1] && p[depth - 1] < s[depth - 1]
        })
    };
    let mut paths: Vec<&durable_runtime::StepPath> = a.keys().chain(b.keys()).collect();
    paths.sort();
    paths.dedup();
    let cutoff = paths
        .iter()
        .copied()
        .find(|p| match (a.get(*p), b.get(*p)) {
            (Some(x), Some(y)) => x.name != y.name && is_select(x) && is_select(y),
            _ => false,
        });
    paths
        .into_iter()
        .filter(|p| cutoff.is_none_or(|c| *p < c))
        .find(|p| match (a.get(*p), b.get(*p)) {
            (Some(x), Some(y)) => match compare {
                Compare::Calls => !x.same_call(y),
                Compare::CallsAndOutputs => x != y,
            },
            _ => !raced(p.positions()),
        })
}
