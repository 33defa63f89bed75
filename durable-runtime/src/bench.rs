//! Entry points for durable-runtime's own micro-benchmarks (`benches/hot_paths.rs`),
//! which can only reach public items. Not API: hidden from the docs, and free to
//! change in any release.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Durability;
use crate::codec::{self, Codec};
use crate::engine::context::WorkflowCtx;
use crate::engine::scope::{self, Branch};
use crate::error::Error;
use crate::journal::{
    Ack, Effect, JournalOptions, NewWorkflow, RecordedOutcome, RecordedStep, SqliteStore,
    StepRecord, Store,
};
use crate::path::StepPath;

/// A journal opened at `synchronous=OFF`, with one workflow run created in it.
#[derive(Debug)]
pub struct Journal {
    store: Arc<dyn Store>,
    id: Arc<str>,
    next: u32,
}

/// A checkpoint handed to the writer, not yet acknowledged.
#[derive(Debug)]
pub struct Pending {
    ack: Ack,
}

impl Pending {
    /// Blocks until the checkpoint has committed. Like a step, it first stays awake for
    /// as long as the store suggests ([`Ack::spin`]), then sleeps.
    ///
    /// # Errors
    ///
    /// The store's error, if the write failed.
    pub fn wait(mut self) -> Result<(), Error> {
        let start = Instant::now();
        while start.elapsed() < self.ack.spin() {
            match self.ack.try_reply() {
                None => std::thread::yield_now(),
                Some(r) => return r.map_err(Error::from),
            }
        }
        self.ack.blocking_wait().map_err(Error::from)
    }
}

impl Journal {
    /// Opens (creating) the journal at `path` and creates the workflow run `bench`.
    ///
    /// # Errors
    ///
    /// Any error opening the journal or creating the run.
    pub fn open(path: &Path) -> Result<Journal, Error> {
        let options = JournalOptions {
            durability: Durability::Off,
            ..JournalOptions::default()
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path, &options)?);
        let id: Arc<str> = Arc::from("bench");
        let created = store.create_workflow(NewWorkflow {
            id: id.clone(),
            name: "bench",
            input: Vec::new(),
            app_version: None,
            created_at: 0,
            parent_id: None,
            deadline_at: None,
            queued: None,
        });
        created.blocking_wait()?;
        Ok(Journal { store, id, next: 0 })
    }

    /// Hands the writer the next step's checkpoint (a 4-byte output), as a step does
    /// when its body returns; does not wait for the commit.
    pub fn checkpoint(&mut self) -> Pending {
        self.next += 1;
        let ack = self.store.record_step(StepRecord {
            args: None,
            workflow_id: self.id.clone(),
            path: StepPath::child(&[], self.next),
            name: "bench",
            outcome: RecordedOutcome::Output(vec![1, 2, 3, 4]),
            attempts: 1,
            started_at: 0,
            finished_at: 0,
            attempt_times: None,
            effect: Effect::None,
        });
        Pending { ack }
    }

    /// A replay of `steps` recorded steps in this journal's run (nothing is read from
    /// the file: the records are made here, as a load from the journal returns them).
    pub fn replay(&self, steps: u32) -> Replay {
        let output = Codec::default().encode(&0u64).unwrap_or_default();
        let recorded: Vec<RecordedStep> = (1..=steps)
            .map(|i| RecordedStep {
                args: None,
                path: StepPath::child(&[], i),
                name: "bench".to_owned(),
                outcome: RecordedOutcome::Output(output.clone()),
                attempts: 1,
                started_at: 0,
                finished_at: 0,
                attempt_times: None,
            })
            .collect();
        let ctx = Arc::new(WorkflowCtx::new(
            self.id.clone(),
            self.store.clone(),
            None,
            Codec::default(),
        ));
        ctx.load(recorded, crate::journal::SideRecords::default());
        Replay {
            root: Branch::root(ctx),
            steps,
        }
    }
}

/// One workflow execution's view of its recorded steps, before any is claimed.
#[derive(Debug)]
pub struct Replay {
    root: Arc<Branch>,
    steps: u32,
}

impl Replay {
    /// Claims every recorded position in order, as the steps of a replayed workflow
    /// body do, takes each record and decodes its output; returns the sum of outputs.
    pub fn run(self) -> u64 {
        scope::enter(Some(&self.root), || {
            let mut total = 0u64;
            for _ in 0..self.steps {
                let Some(claim) = scope::claim() else { break };
                if let Ok(Some(rec)) = claim.ctx.take_recorded(&claim.path)
                    && let RecordedOutcome::Output(bytes) = rec.outcome
                {
                    total += Codec::decode::<u64>(&bytes).unwrap_or_default();
                }
            }
            total
        })
    }

    /// Claims `n` step ids in a branch at depth `depth` below the workflow body, as `n`
    /// step calls there do; returns the last path's length.
    pub fn claim(&self, depth: usize, n: u32) -> usize {
        scope::enter(Some(&self.root), || {
            let mut branches = vec![self.root.clone()];
            for _ in 0..depth {
                let Some(c) = scope::claim() else { break };
                branches.push(Branch::child_of(c));
            }
            let innermost = branches.last().cloned();
            scope::enter(innermost.as_ref(), || {
                let mut len = 0;
                for _ in 0..n {
                    len = scope::claim().map_or(0, |c| c.path.positions().len());
                }
                len
            })
        })
    }
}

/// Encodes `value`, checks that it decodes back, and returns the decoded copy: what a
/// step does with its output before checkpointing it.
///
/// # Errors
///
/// The codec's error, for a value that does not round-trip.
pub fn encode_checked<T: Serialize + DeserializeOwned>(
    codec: Codec,
    value: &T,
) -> Result<(T, Vec<u8>), Error> {
    codec::encode_checked(codec, value).map_err(|reason| Error::Encode {
        what: "a benchmark value".to_owned(),
        reason,
    })
}

/// The fingerprint a step called with the arguments `each` adds would record: what a
/// step pays, when called in a workflow, to have its arguments checked on replay.
pub fn args_fingerprint(each: impl Fn(&mut crate::codec::fingerprint::Args)) -> Option<u64> {
    crate::codec::fingerprint::of_args(each).map(crate::codec::Fingerprint::as_u64)
}
