//! App state for steps (`RuntimeBuilder::state`, `#[state]` parameters): a step takes
//! an injected pool; a replayed step never touches it; a runtime without it stops the
//! step before its body with the documented error, and the workflow runs on once a
//! runtime has it. On both journals.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Journal, on_both_journals};
use durable_runtime::{Error, Runtime, recv, step, step_context, workflow};

/// A connection pool, as a service would hold one: connections checked out and back
/// in, and a count of checkouts (every touch of the pool).
struct Pool {
    name: &'static str,
    idle: Mutex<Vec<u32>>,
    checkouts: AtomicUsize,
}

impl Pool {
    fn new(name: &'static str) -> Arc<Pool> {
        Arc::new(Pool {
            name,
            idle: Mutex::new(vec![1, 2, 3]),
            checkouts: AtomicUsize::new(0),
        })
    }

    /// Runs `query` on a connection of the pool.
    fn query(&self, query: &str) -> String {
        self.checkouts.fetch_add(1, Ordering::SeqCst);
        let conn = self.idle.lock().expect("pool").pop().unwrap_or(0);
        let answer = format!("{}#{conn}: {query}", self.name);
        self.idle.lock().expect("pool").push(conn);
        answer
    }
}

/// Configuration, taken as an `Arc`.
struct Config {
    greeting: String,
}

#[step]
async fn as_lookup(#[state] pool: &Pool, id: u32) -> String {
    pool.query(&format!("select name from users where id = {id}"))
}

#[step]
async fn as_greet(#[state] config: Arc<Config>, #[state] pool: &Pool, name: String) -> String {
    let stored = pool.query("insert into greetings");
    format!("{} {name} ({stored})", config.greeting)
}

/// Looks a user up, waits for `go`, greets them: the wait splits the run across two
/// runtimes.
#[workflow]
async fn as_welcome(id: u32) -> (String, String) {
    let name = as_lookup(id).await;
    let _ = recv::<u32>("go", None).await;
    let greeting = as_greet(name.clone()).await;
    (name, greeting)
}

async fn a_step_takes_an_injected_pool_and_a_replay_never_touches_it(journal: Journal) {
    let first = Pool::new("first");
    let rt = Runtime::builder(journal.path())
        .state(first.clone())
        .state(Arc::new(Config {
            greeting: "hello".into(),
        }))
        .open()
        .await
        .expect("open");
    rt.start_with_id("w", as_welcome(7)).await.expect("start");
    while rt.steps("w").await.expect("steps").is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(first.checkouts.load(Ordering::SeqCst), 1);
    rt.close().await.expect("close");

    // The next runtime has another pool: the lookup is replayed from the journal
    // (the first pool's answer), and only the greeting touches the new pool.
    let second = Pool::new("second");
    let rt = Runtime::builder(journal.path())
        .state(second.clone())
        .state(Arc::new(Config {
            greeting: "welcome".into(),
        }))
        .open()
        .await
        .expect("reopen");
    rt.send("w", "go", &1u32).await.expect("send");
    let (name, greeting) = rt
        .handle::<(String, String)>("w")
        .await
        .expect("handle")
        .result()
        .await
        .expect("result");
    assert_eq!(name, "first#3: select name from users where id = 7");
    assert_eq!(
        greeting,
        format!("welcome {name} (second#3: insert into greetings)")
    );
    assert_eq!(first.checkouts.load(Ordering::SeqCst), 1);
    assert_eq!(second.checkouts.load(Ordering::SeqCst), 1);
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_step_takes_an_injected_pool_and_a_replay_never_touches_it
);

static GREETED: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn as_counted_greet(#[state] config: &Config, name: String) -> String {
    GREETED.fetch_add(1, Ordering::SeqCst);
    format!("{} {name}", config.greeting)
}

#[workflow]
async fn as_unconfigured(name: String) -> String {
    as_counted_greet(name).await
}

async fn a_missing_registration_stops_the_step_before_its_body(journal: Journal) {
    let before = GREETED.load(Ordering::SeqCst);
    // A runtime given a pool, but not the configuration the step takes.
    let rt = Runtime::builder(journal.path())
        .state(Pool::new("p"))
        .open()
        .await
        .expect("open");
    let handle = rt
        .start_with_id("m", as_unconfigured("ann".into()))
        .await
        .expect("start");
    let error = handle.result().await.expect_err("no state");
    match &error {
        Error::MissingState {
            workflow_id,
            step,
            type_name,
        } => {
            assert_eq!(workflow_id, "m");
            assert_eq!(step, "as_counted_greet");
            assert!(type_name.ends_with("::Config"), "{type_name}");
        }
        other => panic!("expected MissingState, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("app_state::Config")
            && message.contains(".state(Arc::new(")
            && message.contains("stays pending"),
        "{message}"
    );
    assert_eq!(GREETED.load(Ordering::SeqCst), before, "the body never ran");
    assert!(
        rt.steps("m").await.expect("steps").is_empty(),
        "nothing recorded"
    );
    rt.close().await.expect("close");

    // Given the state, the next runtime runs it from where it stopped.
    let rt = Runtime::builder(journal.path())
        .state(Arc::new(Config {
            greeting: "hi".into(),
        }))
        .open()
        .await
        .expect("reopen");
    let out = rt
        .handle::<String>("m")
        .await
        .expect("handle")
        .result()
        .await
        .expect("result");
    assert_eq!(out, "hi ann");
    assert_eq!(GREETED.load(Ordering::SeqCst), before + 1);
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_missing_registration_stops_the_step_before_its_body,
    serial
);

#[tokio::test]
async fn a_type_registered_twice_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = Runtime::builder(dir.path().join("j.db"))
        .state(Pool::new("a"))
        .state(Arc::new(Config {
            greeting: "x".into(),
        }))
        .state(Pool::new("b"))
        .open()
        .await
        .expect_err("twice");
    match error {
        Error::StateTwice { type_name } => assert!(type_name.ends_with("::Pool")),
        other => panic!("expected StateTwice, got {other:?}"),
    }
    assert!(!dir.path().join("j.db").exists(), "nothing opened");
}

/// A helper step the retried step's body calls: a plain call, which takes the state
/// of the step that called it.
#[step]
async fn as_helper(#[state] pool: Arc<Pool>) -> String {
    pool.query("helper")
}

#[step(retries = 2, backoff = 1ms)]
async fn as_flaky(#[state] pool: &Pool, fail_first: u32) -> Result<String, String> {
    let attempt = step_context().map_or(0, |c| c.attempt());
    let through_context = step_context()
        .expect("in a step")
        .state::<Pool>()
        .expect("registered");
    assert!(std::ptr::eq(pool, &*through_context));
    if attempt <= fail_first {
        pool.query("failed attempt");
        return Err(format!("attempt {attempt} failed"));
    }
    Ok(format!("{} / {}", pool.query("ok"), as_helper().await))
}

#[workflow]
async fn as_retried() -> Result<String, String> {
    as_flaky(2).await
}

#[tokio::test]
async fn each_attempt_of_a_retried_step_and_its_plain_calls_take_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = Pool::new("r");
    let rt = Runtime::builder(dir.path().join("j.db"))
        .state(pool.clone())
        .open()
        .await
        .expect("open");
    let out = rt
        .start(as_retried())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    assert_eq!(out.as_deref(), Ok("r#3: ok / r#3: helper"));
    // Two failed attempts, the good one, its helper.
    assert_eq!(pool.checkouts.load(Ordering::SeqCst), 4);
    // The step's context reports a missing type by name.
    rt.close().await.expect("close");
}

#[step]
async fn as_context_only() -> Result<String, String> {
    let ctx = step_context().ok_or("outside")?;
    ctx.state::<Config>()
        .map(|c| c.greeting.clone())
        .map_err(|e| e.to_string())
}

#[workflow]
async fn as_asks_context() -> Result<String, String> {
    as_context_only().await
}

#[tokio::test]
async fn the_step_context_names_a_missing_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::open(dir.path().join("j.db")).await.expect("open");
    let out = rt
        .start(as_asks_context())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    let message = out.expect_err("no config");
    assert!(
        message.contains("step 1 takes app state of type `app_state::Config`"),
        "{message}"
    );
    rt.close().await.expect("close");
}

#[tokio::test]
#[should_panic(expected = "called where no runtime's state is visible: outside a workflow")]
async fn a_step_with_state_called_outside_a_workflow_says_why_it_cannot_run() {
    let _ = as_lookup(1).await;
}

/// A step a step body calls (a plain call), taking state the runtime lacks: nothing was
/// checked before the outer body ran, and the workflow still stays pending, unrecorded,
/// rather than failing with a panic.
#[step]
async fn as_inner(#[state] config: &Config) -> String {
    config.greeting.clone()
}

static OUTER_RAN: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn as_outer(#[state] pool: &Pool) -> String {
    OUTER_RAN.fetch_add(1, Ordering::SeqCst);
    format!("{} / {}", pool.query("outer"), as_inner().await)
}

#[workflow]
async fn as_nested() -> String {
    as_outer().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_call_missing_its_state_leaves_the_workflow_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let rt = Runtime::builder(&path)
        .state(Pool::new("n"))
        .open()
        .await
        .expect("open");
    let error = rt
        .start_with_id("nested", as_nested())
        .await
        .expect("start")
        .result()
        .await
        .expect_err("no config");
    match &error {
        Error::MissingState {
            step, type_name, ..
        } => {
            assert_eq!(step, "as_inner");
            assert!(type_name.ends_with("::Config"), "{type_name}");
        }
        other => panic!("expected MissingState, got {other:?}"),
    }
    assert!(
        rt.steps("nested").await.expect("steps").is_empty(),
        "nothing recorded"
    );
    let view = rt
        .workflow("nested")
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(view.status, durable_runtime::RecordedStatus::Pending);
    rt.close().await.expect("close");

    let rt = Runtime::builder(&path)
        .state(Pool::new("m"))
        .state(Arc::new(Config {
            greeting: "hey".into(),
        }))
        .open()
        .await
        .expect("reopen");
    let out = rt
        .handle::<String>("nested")
        .await
        .expect("handle")
        .result()
        .await
        .expect("result");
    assert_eq!(out, "m#3: outer / hey");
    // The outer body ran once per execution: it is at least once, as after a crash.
    assert_eq!(OUTER_RAN.load(Ordering::SeqCst), 2);
    rt.close().await.expect("close");
}

/// A client behind a trait, so a test can register a fake.
trait Gateway: Send + Sync {
    fn charge(&self, cents: u64) -> String;
}

struct FakeGateway;

impl Gateway for FakeGateway {
    fn charge(&self, cents: u64) -> String {
        format!("fake charge of {cents}")
    }
}

#[step]
async fn as_charge(#[state] gateway: &dyn Gateway, cents: u64) -> String {
    gateway.charge(cents)
}

#[step]
async fn as_charge_again(#[state] gateway: Arc<dyn Gateway>, cents: u64) -> String {
    gateway.charge(cents + 1)
}

#[workflow]
async fn as_pay(cents: u64) -> (String, String) {
    (as_charge(cents).await, as_charge_again(cents).await)
}

#[tokio::test]
async fn state_can_be_a_trait_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder(dir.path().join("j.db"))
        .state::<dyn Gateway>(Arc::new(FakeGateway))
        .open()
        .await
        .expect("open");
    let out = rt
        .start(as_pay(500))
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    assert_eq!(
        out,
        (
            "fake charge of 500".to_owned(),
            "fake charge of 501".to_owned()
        )
    );
    rt.close().await.expect("close");
}
