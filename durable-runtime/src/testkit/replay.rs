//! The replay check: every workflow a journal records, re-run against this program's
//! code without running any step body.

use std::future::{Future, poll_fn};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Durability;
use crate::engine::context::WorkflowCtx;
use crate::engine::drive::run_body;
use crate::engine::workflow::{ErasedWorkflow, registry};
use crate::error::{Error, Result, StoreError};
use crate::journal::{JournalOptions, RecordStatus, SqliteStore, Store, WorkflowRecord, blocking};
use crate::testkit::{Replayed, Verdict};

/// How long a replay check waits without the workflow making progress before it
/// concludes that the code waits for a step the journal does not record.
const REPLAY_QUIET: std::time::Duration = std::time::Duration::from_millis(50);
/// How long a replay check waits for a workflow that waits for something else.
const REPLAY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Re-runs every workflow the journal at `path` records against this program's code,
/// without running any step body. The journal should be a copy: opening it migrates it.
pub(crate) async fn replay_journal(path: &Path) -> Result<Vec<Replayed>> {
    let registry = registry()?;
    let owned = path.to_owned();
    let (store, workflows) = blocking(path, move || {
        let options = JournalOptions {
            durability: Durability::Off,
            ..JournalOptions::default()
        };
        let sqlite = SqliteStore::open(&owned, &options)?;
        let workflows = sqlite.workflows()?;
        let store: Arc<dyn Store> = Arc::new(sqlite);
        Ok::<_, Error>((store, workflows))
    })
    .await??;
    let mut out = Vec::with_capacity(workflows.len());
    for record in workflows {
        let verdict = match (record.damage(), registry.get(record.name.as_str())) {
            (Some(e), _) => Verdict::Error(e),
            (None, None) => Verdict::Error(Error::UnknownWorkflow {
                workflow_id: record.id.clone(),
                name: record.name.clone(),
            }),
            (None, Some(def)) => replay_one(&store, *def, &record)
                .await
                .unwrap_or_else(Verdict::Error),
        };
        out.push(Replayed {
            workflow_id: record.id,
            name: record.name,
            status: record.status.as_str(),
            verdict,
        });
    }
    Ok(out)
}

async fn replay_one(
    store: &Arc<dyn Store>,
    def: &'static dyn ErasedWorkflow,
    record: &WorkflowRecord,
) -> Result<Verdict> {
    let id: Arc<str> = Arc::from(record.id.as_str());
    let (recorded, side) = {
        let (reader, id) = (store.clone(), id.clone());
        blocking(store.path(), move || {
            Ok::<_, StoreError>((reader.steps(&id)?, reader.side_records(&id)?))
        })
        .await??
    };
    let total = recorded.len();
    let ctx = Arc::new(WorkflowCtx::replay_only(id, store.clone(), recorded, side));
    let polls = AtomicU64::new(0);
    let mut run = std::pin::pin!(run_body(&ctx, def, &record.input, None));
    let mut counted = std::pin::pin!(poll_fn(|cx| {
        polls.fetch_add(1, Ordering::Relaxed);
        run.as_mut().poll(cx)
    }));
    let started = std::time::Instant::now();
    let result = loop {
        let before = polls.load(Ordering::Relaxed);
        if let Ok(result) = tokio::time::timeout(REPLAY_QUIET, counted.as_mut()).await {
            break Some(result);
        }
        // Only the poll that started the wait and the one `timeout` makes when its
        // timer fires: nothing woke the workflow in between.
        let idle = polls.load(Ordering::Relaxed) - before <= 2;
        if (idle && !ctx.unrecorded().is_empty()) || started.elapsed() > REPLAY_LIMIT {
            break None;
        }
    };
    let replayed = total - ctx.unclaimed();
    let finished = record.status != RecordStatus::Pending;
    Ok(match result {
        Some(Ok(_)) => match ctx.first_unclaimed()? {
            Some((path, recorded)) => Verdict::Diverged {
                path,
                recorded: Some(recorded),
                requested: None,
                arguments: None,
            },
            None => Verdict::Ok { replayed },
        },
        Some(Err(Error::Divergence {
            path,
            recorded,
            requested,
            arguments,
            ..
        })) => Verdict::Diverged {
            path,
            recorded: Some(recorded),
            requested,
            arguments,
        },
        Some(Err(Error::Failed { .. })) if record.status == RecordStatus::Failed => {
            Verdict::Ok { replayed }
        }
        Some(Err(e)) => Verdict::Error(e),
        None => match ctx.unrecorded().into_iter().next() {
            Some((path, name)) if finished => Verdict::Diverged {
                path,
                recorded: None,
                requested: Some(name.to_owned()),
                arguments: None,
            },
            Some((path, name)) => Verdict::Pending {
                replayed,
                next: Some((path, name.to_owned())),
            },
            None => Verdict::Stuck { replayed },
        },
    })
}
