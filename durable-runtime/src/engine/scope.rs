//! The ambient workflow scope and step-id claims.
//!
//! A workflow's future installs its scope (a [`Branch`]) in a thread-local for the
//! duration of each of its polls. A step reads it when it is *called* and claims the
//! next position synchronously, so ids follow program order, not poll order. Branches
//! (`async` blocks and async closures in a workflow body, `#[branch]` helpers) claim a
//! position from their parent when they are created and number their own steps below it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use crate::engine::context::WorkflowCtx;
use crate::path::StepPath;
use crate::state::States;

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

/// Where the code running on this thread stands.
#[derive(Debug, Clone, Default)]
pub(crate) enum Scope {
    /// Outside any workflow (or inside a step body): steps are plain calls.
    #[default]
    Outside,
    /// In a workflow body or one of its branches: steps claim positions here.
    Branch(Arc<Branch>),
    /// In a future that a workflow body passed to `tokio::spawn` without making it a
    /// branch: it runs outside the body's sequence, so a step called here could not be
    /// given a position that replays, and is refused.
    Detached(Arc<WorkflowCtx>),
}

impl Scope {
    /// The workflow this scope belongs to, if any.
    fn ctx(&self) -> Option<&Arc<WorkflowCtx>> {
        match self {
            Scope::Outside => None,
            Scope::Branch(b) => Some(&b.ctx),
            Scope::Detached(ctx) => Some(ctx),
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Scope> = const { RefCell::new(Scope::Outside) };
    static STEP: RefCell<Option<StepContext>> = const { RefCell::new(None) };
    /// The app state of the runtime whose step body is running on this thread: kept
    /// for a step called from that body (a plain call), which has no context of its own.
    static STATES: RefCell<Option<Arc<States>>> = const { RefCell::new(None) };
}

/// Which step is running: available inside a step body through [`step_context`].
#[derive(Clone)]
pub struct StepContext {
    workflow_id: Arc<str>,
    path: StepPath,
    attempt: u32,
    /// Filled by [`step_context`] from the thread's state: the slot a poll sets holds
    /// `None`, so a poll clones the state map once, into `STATES`.
    states: Option<Arc<States>>,
}

impl std::fmt::Debug for StepContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("workflow_id", &self.workflow_id)
            .field("path", &self.path)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

// Which step, which attempt: the state is the runtime's, the same for all its steps.
impl PartialEq for StepContext {
    fn eq(&self, other: &Self) -> bool {
        (&self.workflow_id, &self.path, self.attempt)
            == (&other.workflow_id, &other.path, other.attempt)
    }
}

impl Eq for StepContext {}

impl std::hash::Hash for StepContext {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.workflow_id, &self.path, self.attempt).hash(state);
    }
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

    /// Which attempt of the step this is: 1 for the first, 2 for the first retry of a
    /// `#[step(retries = ..)]`, and so on. Counted in this execution of the run: a step
    /// body run again after a crash (its earlier attempts were not recorded) starts at
    /// 1 again.
    ///
    /// ```
    /// use durable_runtime::{step, step_context};
    ///
    /// #[step(retries = 2)]
    /// async fn charge_with_retries(cents: u64) -> Result<u64, String> {
    ///     let attempt = step_context().map_or(1, |s| s.attempt());
    ///     if attempt > 1 {
    ///         // e.g. look up whether the failed attempt's charge went through
    ///     }
    ///     Ok(cents)
    /// }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A key that is the same for every attempt and every re-execution of this step in
    /// this workflow (`<workflow id>/<path>`): pass it to external APIs that deduplicate
    /// requests, so a step body that runs again after a crash does not repeat its effect.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.workflow_id, self.path)
    }

    /// The app state of type `T` that the runtime was given with
    /// [`RuntimeBuilder::state`](crate::RuntimeBuilder::state): what a `#[state]`
    /// parameter receives, for code that finds the step context on its own (a helper
    /// the body calls).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use durable_runtime::{Runtime, step, step_context, workflow};
    ///
    /// struct Mailer { from: String }
    ///
    /// #[step]
    /// async fn send_receipt(email: String) -> Result<String, String> {
    ///     let ctx = step_context().ok_or("called outside a workflow")?;
    ///     let mailer = ctx.state::<Mailer>().map_err(|e| e.to_string())?;
    ///     Ok(format!("{} -> {email}", mailer.from))
    /// }
    ///
    /// #[workflow]
    /// async fn receipt(email: String) -> Result<String, String> {
    ///     send_receipt(email).await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), durable_runtime::Error> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let rt = Runtime::builder(dir.path().join("journal.db"))
    ///     .state(Arc::new(Mailer { from: "shop@example.com".into() }))
    ///     .open()
    ///     .await?;
    /// let sent = rt.start(receipt("ann@example.com".into())).await?.result().await?;
    /// assert_eq!(sent.as_deref(), Ok("shop@example.com -> ann@example.com"));
    /// # rt.close().await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::MissingState`](crate::Error::MissingState), naming `T`, if the runtime
    /// was not given a `T`.
    pub fn state<T: ?Sized + Send + Sync + 'static>(&self) -> crate::Result<Arc<T>> {
        let states = self.states.as_ref();
        states.and_then(|s| s.get::<T>()).ok_or_else(|| {
            crate::state::missing(
                &self.workflow_id,
                &self.path.to_string(),
                std::any::type_name::<T>(),
            )
        })
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
    let mut step = STEP.with(|s| s.borrow().clone())?;
    step.states = current_states();
    Some(step)
}

/// Runs a step body's poll: outside any workflow scope (a step called from a step body
/// is a plain call), with [`step_context`] set to `step`.
pub(crate) fn in_step_body<R>(
    step: Option<(&Arc<str>, &StepPath, u32, &Arc<States>)>,
    f: impl FnOnce() -> R,
) -> R {
    // A plain call keeps the state of the step body that called it.
    let states = step.map(|(.., states)| states.clone());
    let ctx = step.map(|(id, path, attempt, _)| StepContext {
        workflow_id: id.clone(),
        path: path.clone(),
        attempt,
        states: None,
    });
    let prev = STEP.with(|s| s.replace(ctx));
    let prev_states = states.map(|s| STATES.with(|c| c.replace(Some(s))));
    struct RestoreStep(Option<StepContext>, Option<Option<Arc<States>>>);
    impl Drop for RestoreStep {
        fn drop(&mut self) {
            let prev = self.0.take();
            let _ = STEP.try_with(|s| *s.borrow_mut() = prev);
            if let Some(states) = self.1.take() {
                let _ = STATES.try_with(|s| *s.borrow_mut() = states);
            }
        }
    }
    let _restore = RestoreStep(prev, prev_states);
    enter(None, f)
}

/// The app state of the step body running on this thread, if any.
pub(crate) fn current_states() -> Option<Arc<States>> {
    STATES.with(|s| s.borrow().clone())
}

/// The value of a `#[state] x: &T` or `#[state] x: Arc<T>` parameter, when the step's
/// body starts (called by the code `#[step]` generates). In a workflow, the runtime
/// checked before the body ran that its state has every type the step takes. A step
/// called from a step body (a plain call) was not checked: if its type is missing, the
/// unwind carries [`MissingState`] to the step body that called it, which stops its
/// workflow with [`Error::MissingState`](crate::Error::MissingState) (nothing
/// recorded; it stays pending) instead of recording a panic.
///
/// # Panics
///
/// When the step is called where no runtime's state is visible: outside a workflow, or
/// in a task spawned from a step body. A programming error; the message says what to
/// do instead.
#[doc(hidden)]
pub fn injected<T: ?Sized + Send + Sync + 'static>(step: &'static str) -> Arc<T> {
    let type_name = std::any::type_name::<T>();
    match current_states() {
        Some(states) => match states.get::<T>() {
            Some(value) => value,
            None => std::panic::panic_any(MissingState { step, type_name }),
        },
        None => panic!(
            "step `{step}` takes app state of type `{type_name}`, but it was called where no \
             runtime's state is visible: outside a workflow, or in a task spawned from a step \
             body (state is not carried into spawned tasks); call it from a workflow or a step \
             body, or take the state in the step and pass the value to what you spawn"
        ),
    }
}

/// The unwind of a plain step call whose state type the runtime lacks (see
/// [`injected`]): caught by the step body that called it.
#[derive(Debug)]
pub(crate) struct MissingState {
    pub(crate) step: &'static str,
    pub(crate) type_name: &'static str,
}

/// Restores the previous scope when dropped, so a panic inside a poll does not leave a
/// stale scope behind on the thread.
struct Restore(Scope);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = std::mem::take(&mut self.0);
        // `try_with`: during thread teardown the slot may already be gone; then there is
        // nothing left to restore.
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = prev);
    }
}

/// Runs `f` with `scope` as the current scope (`None`: outside any workflow).
pub(crate) fn enter<R>(scope: Option<&Arc<Branch>>, f: impl FnOnce() -> R) -> R {
    enter_scope(
        scope.map_or(Scope::Outside, |b| Scope::Branch(b.clone())),
        f,
    )
}

fn enter_scope<R>(scope: Scope, f: impl FnOnce() -> R) -> R {
    let prev = CURRENT.with(|c| c.replace(scope));
    let _restore = Restore(prev);
    f()
}

/// The workflow whose body (or a branch of it, or a future it spawned) is running on
/// this thread, if any; `None` inside a step body.
pub(crate) fn current_workflow() -> Option<Arc<WorkflowCtx>> {
    CURRENT.with(|c| c.borrow().ctx().cloned())
}

/// For an operation that found no position to claim: whether it runs in a future a
/// workflow spawned without making it a branch (see [`Scope::Detached`]). If so, that
/// workflow stops with `Error::Unrecorded` naming `operation`, and the operation must
/// not run; otherwise it was called outside any workflow, as a plain call.
pub(crate) fn refuse_if_detached(operation: impl FnOnce() -> String) -> bool {
    let detached = CURRENT.with(|c| match &*c.borrow() {
        Scope::Detached(ctx) => Some(ctx.clone()),
        _ => None,
    });
    match detached {
        Some(ctx) => {
            ctx.fail(crate::error::spawned_unrecorded(&ctx.id, operation()));
            true
        }
        None => false,
    }
}

/// A claimed step position: the workflow it belongs to and its path.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) ctx: Arc<WorkflowCtx>,
    pub(crate) path: StepPath,
}

/// Claims the next position in the current scope, or `None` outside any workflow.
pub(crate) fn claim() -> Option<Claim> {
    CURRENT.with(|c| match &*c.borrow() {
        Scope::Branch(b) => Some(Claim {
            ctx: b.ctx.clone(),
            path: b.claim(),
        }),
        _ => None,
    })
}

/// The position the next claim in the current scope would take, without claiming it
/// (for `patched`, which must not shift the positions of what follows). `None` outside
/// any workflow.
pub(crate) fn next_position() -> Option<(Arc<WorkflowCtx>, StepPath)> {
    CURRENT.with(|c| match &*c.borrow() {
        Scope::Branch(b) => {
            let next = StepPath::child(&b.path, b.next.load(Ordering::Relaxed) + 1);
            Some((b.ctx.clone(), next))
        }
        _ => None,
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
        scope: Scope,
        #[pin]
        fut: F,
    }

    impl<F> PinnedDrop for Branched<F> {
        fn drop(this: Pin<&mut Self>) {
            // A branch that lost a durable select: on replay it is dropped without being
            // polled, so what it recorded the first time is never asked for. That is
            // the select's recorded choice, not a divergence.
            if let Scope::Branch(b) = &this.scope
                && dropping_losers()
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
/// Inside a future a workflow spawned without making it a branch, it stays there, and
/// its steps are refused like any other there.
pub fn branch<T, F: Future<Output = T>>(fut: F) -> Branched<F> {
    let scope = CURRENT.with(|c| match &*c.borrow() {
        Scope::Branch(b) => Scope::Branch(Branch::child_of(Claim {
            ctx: b.ctx.clone(),
            path: b.claim(),
        })),
        other => other.clone(),
    });
    Branched { scope, fut }
}

/// Wraps a workflow body in its root scope.
pub(crate) fn root<F: Future>(scope: Arc<Branch>, fut: F) -> Branched<F> {
    Branched {
        scope: Scope::Branch(scope),
        fut,
    }
}

impl<F: Future> Future for Branched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        enter_scope(this.scope.clone(), || this.fut.poll(cx))
    }
}

pin_project_lite::pin_project! {
    /// A future a workflow body passed to `tokio::spawn` (or another spawn), which runs
    /// outside the body's own polls. If it is not a branch (an `async` block of the
    /// body, a `#[branch]` helper) and calls a step, the step is refused: it would run
    /// unrecorded.
    ///
    /// Created by the code `#[workflow]` and `#[branch]` generate around the futures
    /// they see spawned; not constructed by hand.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Spawned<F> {
        ctx: Option<Arc<WorkflowCtx>>,
        // Counted in its run until dropped: a run with a spawned future alive does
        // not go dormant (the future would outlive the body, see `WorkflowCtx::busy`).
        live: Option<crate::engine::context::Busy>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Spawned<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.ctx {
            Some(ctx) => enter_scope(Scope::Detached(ctx.clone()), || this.fut.poll(cx)),
            None => this.fut.poll(cx),
        }
    }
}

/// What `#[workflow]` makes of the argument of a spawn call:
/// `(&&SpawnArg::new(arg)).__durable_spawn()` is, by autoref specialization (the first
/// impl that applies, in this order, wins):
///
/// 1. a boxed `dyn Future` ([`SpawnBoxed`]): the same boxed `dyn Future`, around a
///    [`Spawned`] (an object-safe spawner takes exactly that type);
/// 2. any other future ([`SpawnFuture`]): a [`Spawned`] around it;
/// 3. anything else ([`SpawnOther`]): `arg` itself (`std::thread::spawn`'s closure).
///
/// The argument stays one expression, so its temporaries live as long as they did.
///
/// It holds the argument in a mutex, not a cell: the references to it are temporaries of
/// the statement, which may hold an `.await` (`tokio::spawn(f).await`), and must be
/// `Send` for the workflow's future to be.
pub struct SpawnArg<T>(std::sync::Mutex<Option<T>>);

impl<T> std::fmt::Debug for SpawnArg<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawnArg")
    }
}

impl<T> SpawnArg<T> {
    /// Holds `value` until the spawn call takes it.
    pub fn new(value: T) -> Self {
        SpawnArg(std::sync::Mutex::new(Some(value)))
    }

    fn take(&self) -> T {
        match crate::util::lock(&self.0).take() {
            Some(value) => value,
            // Each `SpawnArg` is made and taken once, in one expression.
            None => unreachable!("a spawn argument taken twice"),
        }
    }

    fn spawned(&self) -> Spawned<T> {
        let ctx = current_workflow();
        Spawned {
            live: ctx.as_ref().and_then(|c| c.busy()),
            ctx,
            fut: self.take(),
        }
    }
}

/// See [`SpawnArg`]: a boxed `dyn Future`, wrapped and boxed again.
pub trait SpawnBoxed {
    /// What the spawn call gets.
    type Output;
    /// Takes the argument.
    fn __durable_spawn(&self) -> Self::Output;
}

impl<'a, T: 'a> SpawnBoxed for &SpawnArg<Pin<Box<dyn Future<Output = T> + Send + 'a>>> {
    type Output = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
    fn __durable_spawn(&self) -> Self::Output {
        Box::pin(self.spawned())
    }
}

impl<'a, T: 'a> SpawnBoxed for &SpawnArg<Pin<Box<dyn Future<Output = T> + 'a>>> {
    type Output = Pin<Box<dyn Future<Output = T> + 'a>>;
    fn __durable_spawn(&self) -> Self::Output {
        Box::pin(self.spawned())
    }
}

impl<'a, T: 'a> SpawnBoxed for &SpawnArg<Pin<Box<dyn Future<Output = T> + Send + Sync + 'a>>> {
    type Output = Pin<Box<dyn Future<Output = T> + Send + Sync + 'a>>;
    fn __durable_spawn(&self) -> Self::Output {
        Box::pin(self.spawned())
    }
}

impl<'a, T: 'a> SpawnBoxed for &SpawnArg<Pin<Box<dyn Future<Output = T> + Sync + 'a>>> {
    type Output = Pin<Box<dyn Future<Output = T> + Sync + 'a>>;
    fn __durable_spawn(&self) -> Self::Output {
        Box::pin(self.spawned())
    }
}

/// See [`SpawnArg`]: a future, wrapped.
pub trait SpawnFuture {
    /// What the spawn call gets.
    type Output;
    /// Takes the argument.
    fn __durable_spawn(&self) -> Self::Output;
}

impl<F: Future> SpawnFuture for &&SpawnArg<F> {
    type Output = Spawned<F>;
    fn __durable_spawn(&self) -> Spawned<F> {
        self.spawned()
    }
}

/// See [`SpawnArg`]: anything else, as it is.
pub trait SpawnOther {
    /// What the spawn call gets.
    type Output;
    /// Takes the argument.
    fn __durable_spawn(&self) -> Self::Output;
}

impl<T> SpawnOther for SpawnArg<T> {
    type Output = T;
    fn __durable_spawn(&self) -> T {
        self.take()
    }
}

thread_local! {
    static DROPPING_LOSERS: Cell<bool> = const { Cell::new(false) };
}

/// Whether the futures being dropped now are the losers of a durable select: a `recv`
/// among them gives back a message it took but never delivered, even one an earlier
/// execution recorded.
pub(crate) fn dropping_losers() -> bool {
    DROPPING_LOSERS.with(Cell::get)
}

/// Runs `drop` (which drops the losing branches) with [`dropping_losers`] set.
pub(crate) fn drop_losers(drop: impl FnOnce()) {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = DROPPING_LOSERS.try_with(|d| d.set(self.0));
        }
    }
    let _reset = Reset(DROPPING_LOSERS.with(|d| d.replace(true)));
    drop();
}
