//! The ambient workflow scope and step-id claims.
//!
//! A workflow's future installs its scope (a [`Branch`]) in a thread-local for the
//! duration of each of its polls. A step reads it when it is *called* and claims the
//! next position synchronously, so ids follow program order, not poll order. Branches
//! (`async` blocks and async closures in a workflow body, `#[branch]` helpers) claim a
//! position from their parent when they are created and number their own steps below it.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use crate::context::WorkflowCtx;
use crate::path::StepPath;

/// One sequence of step positions: the workflow body or one branch inside it.
#[derive(Debug)]
pub(crate) struct Branch {
    ctx: Arc<WorkflowCtx>,
    path: Box<[u32]>,
    next: AtomicU32,
}

impl Branch {
    pub(crate) fn root(ctx: Arc<WorkflowCtx>) -> Arc<Branch> {
        Arc::new(Branch {
            ctx,
            path: Box::new([]),
            next: AtomicU32::new(0),
        })
    }

    /// The branch that took position `claim`: its steps are numbered below it.
    pub(crate) fn child_of(Claim { ctx, path }: Claim) -> Arc<Branch> {
        Arc::new(Branch {
            ctx,
            path: path.positions().into(),
            next: AtomicU32::new(0),
        })
    }

    fn claim(&self) -> StepPath {
        // Claims happen inside this branch's own polls, on one thread at a time; the
        // atomic is only there so the branch can move between tokio worker threads.
        let position = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        StepPath::child(&self.path, position)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Branch>>> = const { RefCell::new(None) };
    static STEP: RefCell<Option<StepContext>> = const { RefCell::new(None) };
}

/// Which step is running: available inside a step body through [`step_context`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StepContext {
    workflow_id: Arc<str>,
    path: StepPath,
}

impl StepContext {
    /// The id of the workflow the step belongs to.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The step's path in that workflow.
    pub fn path(&self) -> &StepPath {
        &self.path
    }

    /// A key that is the same for every attempt and every re-execution of this step in
    /// this workflow (`<workflow id>/<path>`): pass it to external APIs that deduplicate
    /// requests, so a step body that runs again after a crash does not repeat its effect.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.workflow_id, self.path)
    }
}

/// The step whose body is running on this thread, or `None` outside a step body (and
/// for a step called outside any workflow).
///
/// Set while the step body is being polled, so it is available in the body itself and
/// in what the body awaits directly, not in tasks the body spawns.
///
/// ```
/// use durable_runtime::{step, step_context};
///
/// #[step]
/// async fn send_receipt(email: String) -> Result<(), String> {
///     let key = step_context().map(|s| s.idempotency_key());
///     // mailer.send(&email, key).await
///     # let _ = (email, key);
///     Ok(())
/// }
/// ```
pub fn step_context() -> Option<StepContext> {
    STEP.with(|s| s.borrow().clone())
}

/// Runs a step body's poll: outside any workflow scope (a step called from a step body
/// is a plain call), with [`step_context`] set to `step`.
pub(crate) fn in_step_body<R>(step: Option<(&Arc<str>, &StepPath)>, f: impl FnOnce() -> R) -> R {
    let ctx = step.map(|(id, path)| StepContext {
        workflow_id: id.clone(),
        path: path.clone(),
    });
    let prev = STEP.with(|s| s.replace(ctx));
    struct RestoreStep(Option<StepContext>);
    impl Drop for RestoreStep {
        fn drop(&mut self) {
            let prev = self.0.take();
            let _ = STEP.try_with(|s| *s.borrow_mut() = prev);
        }
    }
    let _restore = RestoreStep(prev);
    enter(None, f)
}

/// Restores the previous scope when dropped, so a panic inside a poll does not leave a
/// stale scope behind on the thread.
struct Restore(Option<Arc<Branch>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        // `try_with`: during thread teardown the slot may already be gone; then there is
        // nothing left to restore.
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = prev);
    }
}

/// Runs `f` with `scope` as the current scope (`None`: outside any workflow).
pub(crate) fn enter<R>(scope: Option<&Arc<Branch>>, f: impl FnOnce() -> R) -> R {
    let prev = CURRENT.with(|c| c.replace(scope.cloned()));
    let _restore = Restore(prev);
    f()
}

/// A claimed step position: the workflow it belongs to and its path.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) ctx: Arc<WorkflowCtx>,
    pub(crate) path: StepPath,
}

/// Claims the next position in the current scope, or `None` outside any workflow.
pub(crate) fn claim() -> Option<Claim> {
    CURRENT.with(|c| {
        c.borrow().as_ref().map(|b| Claim {
            ctx: b.ctx.clone(),
            path: b.claim(),
        })
    })
}

/// The position the next claim in the current scope would take, without claiming it
/// (for `patched`, which must not shift the positions of what follows). `None` outside
/// any workflow.
pub(crate) fn next_position() -> Option<(Arc<WorkflowCtx>, StepPath)> {
    CURRENT.with(|c| {
        let current = c.borrow();
        let b = current.as_ref()?;
        let next = StepPath::child(&b.path, b.next.load(Ordering::Relaxed) + 1);
        Some((b.ctx.clone(), next))
    })
}

pin_project_lite::pin_project! {
    /// A future that numbers the steps it calls in a sequence of its own.
    ///
    /// Created by the code `#[workflow]` and `#[branch]` generate; not constructed by
    /// hand.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Branched<F> {
        scope: Option<Arc<Branch>>,
        #[pin]
        fut: F,
    }

    impl<F> PinnedDrop for Branched<F> {
        fn drop(this: Pin<&mut Self>) {
            // A branch that lost a durable select: on replay it is dropped without being
            // polled, so what it recorded the first time is never asked for. That is
            // the select's recorded choice, not a divergence.
            if let Some(b) = &this.scope
                && crate::select::dropping_losers()
            {
                b.ctx.abandon(&b.path);
            }
        }
    }
}

/// Claims a position in the current scope now, and returns `fut` wrapped so that the
/// steps it calls are numbered below that position.
///
/// Outside any workflow the branch has no scope, and the steps inside it are plain calls.
pub fn branch<T, F: Future<Output = T>>(fut: F) -> Branched<F> {
    Branched {
        scope: claim().map(Branch::child_of),
        fut,
    }
}

/// Wraps a workflow body in its root scope.
pub(crate) fn root<F: Future>(scope: Arc<Branch>, fut: F) -> Branched<F> {
    Branched {
        scope: Some(scope),
        fut,
    }
}

impl<F: Future> Future for Branched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        enter(this.scope.as_ref(), || this.fut.poll(cx))
    }
}
