//! The runtime's spans, as a subscriber sees them: names, fields and nesting for a
//! workflow with concurrent steps, a retried step, a child and a wait, then a replay
//! after a restart. The subscriber is a small one of this test's own that records every
//! span (its fields, its parent, what it follows from) and every event.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use durable_runtime::{Queue, Runtime, enqueue, recv, start_child, step, step_context, workflow};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

// ---------------------------------------------------------------------------------------
// The recording subscriber.

#[derive(Debug, Clone, Default)]
struct SpanRec {
    id: u64,
    name: &'static str,
    target: String,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
    follows: Vec<u64>,
}

#[derive(Debug, Clone)]
struct EventRec {
    level: tracing::Level,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Capture {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, SpanRec>>,
    metadata: Mutex<HashMap<u64, &'static Metadata<'static>>>,
    events: Mutex<Vec<EventRec>>,
}

thread_local! {
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

fn current() -> Option<u64> {
    ENTERED.with(|e| e.borrow().last().copied())
}

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("durable_runtime") || metadata.target() == "user_code"
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let parent = if attrs.is_root() {
            None
        } else if let Some(p) = attrs.parent() {
            Some(p.into_u64())
        } else {
            current()
        };
        let mut rec = SpanRec {
            id,
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            parent,
            ..SpanRec::default()
        };
        attrs.record(&mut Fields(&mut rec.fields));
        self.spans.lock().expect("spans").insert(id, rec);
        self.metadata
            .lock()
            .expect("metadata")
            .insert(id, attrs.metadata());
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(rec) = self.spans.lock().expect("spans").get_mut(&span.into_u64()) {
            values.record(&mut Fields(&mut rec.fields));
        }
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        if let Some(rec) = self.spans.lock().expect("spans").get_mut(&span.into_u64()) {
            rec.follows.push(follows.into_u64());
        }
    }

    fn event(&self, event: &Event<'_>) {
        let parent = if event.is_root() {
            None
        } else if let Some(p) = event.parent() {
            Some(p.into_u64())
        } else {
            current()
        };
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().expect("events").push(EventRec {
            level: *event.metadata().level(),
            parent,
            fields,
        });
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    /// What `Span::current()` returns: the runtime links a workflow's span to it.
    fn current_span(&self) -> tracing_core::span::Current {
        match current().and_then(|id| Some((id, *self.metadata.lock().ok()?.get(&id)?))) {
            Some((id, metadata)) => tracing_core::span::Current::new(Id::from_u64(id), metadata),
            None => tracing_core::span::Current::none(),
        }
    }

    fn exit(&self, span: &Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(i) = e.iter().rposition(|s| *s == span.into_u64()) {
                e.remove(i);
            }
        });
    }
}

/// The subscriber every test of this binary records into (one for the process: the
/// runtime's tasks run on tokio's worker threads).
fn capture() -> Arc<Capture> {
    static CAPTURE: OnceLock<Arc<Capture>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Arc::new(Capture::default());
            tracing::subscriber::set_global_default(Shared(capture.clone()))
                .expect("the only subscriber");
            capture
        })
        .clone()
}

/// `Capture` behind an `Arc`, as the global subscriber.
struct Shared(Arc<Capture>);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &Attributes<'_>) -> Id {
        self.0.new_span(a)
    }
    fn record(&self, s: &Id, v: &Record<'_>) {
        self.0.record(s, v);
    }
    fn record_follows_from(&self, s: &Id, f: &Id) {
        self.0.record_follows_from(s, f);
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e);
    }
    fn enter(&self, s: &Id) {
        self.0.enter(s);
    }
    fn exit(&self, s: &Id) {
        self.0.exit(s);
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.0.current_span()
    }
}

impl Capture {
    fn spans(&self) -> Vec<SpanRec> {
        let mut all: Vec<SpanRec> = self
            .spans
            .lock()
            .expect("spans")
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// The `workflow` spans of run `id`, oldest first.
    fn workflows(&self, id: &str) -> Vec<SpanRec> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == "workflow" && s.fields.get("id").map(String::as_str) == Some(id))
            .collect()
    }

    fn children(&self, parent: u64) -> Vec<SpanRec> {
        self.spans()
            .into_iter()
            .filter(|s| s.parent == Some(parent))
            .collect()
    }

    fn events_in(&self, span: u64) -> Vec<EventRec> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e.parent == Some(span))
            .cloned()
            .collect()
    }
}

fn field<'a>(span: &'a SpanRec, name: &str) -> Option<&'a str> {
    span.fields.get(name).map(String::as_str)
}

// ---------------------------------------------------------------------------------------
// The workflows.

#[step]
async fn ts_part(n: u32) -> u32 {
    tracing::info!(target: "user_code", n, "inside the body");
    tokio::time::sleep(Duration::from_millis(5)).await;
    n * 10
}

#[step(retries = 2, backoff = 1ms)]
async fn ts_flaky(n: u32) -> Result<u32, String> {
    match step_context().map_or(1, |c| c.attempt()) {
        1 => Err("the gateway timed out".into()),
        _ => Ok(n + 1),
    }
}

#[workflow]
async fn ts_child(n: u32) -> u32 {
    ts_part(n).await
}

/// Concurrent steps, a retried step, a child, a wait, a last step.
#[workflow]
async fn ts_parent() -> u32 {
    let (a, b) = tokio::join!(ts_part(1), ts_part(2));
    let c = ts_flaky(a + b).await.unwrap_or(0);
    let child = match start_child(ts_child(4)).await {
        Ok(child) => child.result().await.unwrap_or(0),
        Err(_) => 0,
    };
    let go = recv::<u32>("go", None).await.ok().flatten().unwrap_or(0);
    ts_part(c + child + go).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_name_and_nest_workflows_steps_retries_children_and_replays() {
    let capture = capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.db");

    // The first runtime runs up to the wait, and closes.
    let rt = Runtime::builder(&path)
        .trace_values(true)
        .open()
        .await
        .expect("open");
    rt.start_with_id("tp", ts_parent()).await.expect("start");
    while !rt
        .steps("tp")
        .await
        .expect("steps")
        .iter()
        .any(|s| s.name == "durable::start_child")
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    rt.close().await.expect("close");

    // The second replays the first's steps and runs the last.
    let rt = Runtime::builder(&path)
        .trace_values(true)
        .open()
        .await
        .expect("reopen");
    rt.send("tp", "go", &1000u32).await.expect("send");
    let out = rt
        .handle::<u32>("tp")
        .await
        .expect("handle")
        .result()
        .await
        .expect("result");
    assert_eq!(out, (31 + 40 + 1000) * 10);
    rt.close().await.expect("close");

    // Two executions, each its own root span, with how it ended.
    let runs = capture.workflows("tp");
    assert_eq!(runs.len(), 2, "{runs:#?}");
    for run in &runs {
        assert_eq!(run.target, "durable_runtime");
        assert_eq!(run.parent, None, "a workflow span is a root");
        assert_eq!(field(run, "workflow"), Some("ts_parent"));
        assert!(field(run, "journal").is_some_and(|j| j.ends_with("journal.db")));
    }
    assert_eq!(field(&runs[0], "outcome"), Some("closed"));
    assert_eq!(field(&runs[1], "outcome"), Some("completed"));

    // The first execution: its steps and primitives, each a child of the workflow.
    let first = capture.children(runs[0].id);
    let names: Vec<(&str, Option<&str>, Option<&str>)> = first
        .iter()
        .map(|s| (s.name, field(s, "path"), field(s, "replayed")))
        .collect();
    assert_eq!(
        names,
        [
            ("step", Some("1"), Some("false")),
            ("step", Some("2"), Some("false")),
            ("step", Some("3"), Some("false")),
            ("start_child", Some("4"), Some("false")),
            ("recv", Some("6"), Some("false")),
        ],
        "{first:#?}"
    );
    // The two concurrent steps: made before either finished, each with its duration.
    for s in &first[..2] {
        assert_eq!(field(s, "step"), Some("ts_part"));
        assert_eq!(field(s, "attempt"), Some("1"));
        assert!(field(s, "duration_ms").is_some(), "{s:?}");
        // The body's own events nest under the step's span.
        let inside = capture.events_in(s.id);
        assert!(
            inside
                .iter()
                .any(|e| field_of(e, "message") == Some("inside the body")),
            "{inside:?}"
        );
    }
    assert_eq!(field(&first[0], "input"), Some("(1)"));
    assert_eq!(field(&first[0], "output"), Some("10"));
    // The retried step: its last attempt, and one retry event in its span.
    let flaky = &first[2];
    assert_eq!(field(flaky, "step"), Some("ts_flaky"));
    assert_eq!(field(flaky, "attempt"), Some("2"));
    let retries: Vec<_> = capture
        .events_in(flaky.id)
        .into_iter()
        .filter(|e| field_of(e, "message") == Some("step attempt failed; retrying"))
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].level, tracing::Level::WARN);
    assert_eq!(field_of(&retries[0], "attempt"), Some("1"));
    assert_eq!(field_of(&retries[0], "retries_left"), Some("2"));
    assert_eq!(field_of(&retries[0], "delay_ms"), Some("1"));
    // The child: its start's span, and the child's own workflow span linked to it.
    let start = &first[3];
    assert_eq!(field(start, "child_name"), Some("ts_child"));
    let child_id = field(start, "child_id").expect("the child's id");
    let child_runs = capture.workflows(child_id);
    assert_eq!(child_runs.len(), 1, "{child_runs:#?}");
    assert_eq!(child_runs[0].parent, None);
    assert_eq!(
        child_runs[0].follows,
        [start.id],
        "linked to its parent's start"
    );
    assert_eq!(field(&child_runs[0], "outcome"), Some("completed"));
    let child_steps = capture.children(child_runs[0].id);
    assert_eq!(child_steps.len(), 1);
    assert_eq!(field(&child_steps[0], "step"), Some("ts_part"));
    // The wait.
    assert_eq!(field(&first[4], "topic"), Some("go"));

    // With the `opentelemetry` feature, each span carries OpenTelemetry's name and
    // kind (tracing-opentelemetry reads them).
    #[cfg(feature = "opentelemetry")]
    {
        assert_eq!(field(&runs[0], "otel.name"), Some("workflow ts_parent"));
        assert_eq!(field(&runs[0], "otel.kind"), Some("internal"));
        // Closed by a deploy is not an error.
        assert_eq!(field(&runs[0], "otel.status_code"), None);
        assert_eq!(field(&runs[1], "otel.status_code"), None);
        assert_eq!(field(&first[0], "otel.name"), Some("step ts_part"));
        assert_eq!(field(&first[3], "otel.name"), Some("start_child ts_child"));
        assert_eq!(field(&first[4], "otel.name"), Some("recv go"));
    }
    #[cfg(not(feature = "opentelemetry"))]
    assert_eq!(field(&runs[0], "otel.name"), None);

    // The second execution: the same positions, replayed; then the last step runs.
    let second = capture.children(runs[1].id);
    let names: Vec<(&str, Option<&str>, Option<&str>)> = second
        .iter()
        .map(|s| (s.name, field(s, "path"), field(s, "replayed")))
        .collect();
    assert_eq!(
        names,
        [
            ("step", Some("1"), Some("true")),
            ("step", Some("2"), Some("true")),
            ("step", Some("3"), Some("true")),
            ("start_child", Some("4"), Some("true")),
            ("recv", Some("6"), Some("false")),
            ("step", Some("7"), Some("false")),
        ],
        "{second:#?}"
    );
    // A replayed step ran no attempt here, and its body's events are not repeated.
    assert_eq!(field(&second[0], "attempt"), None);
    assert_eq!(field(&second[0], "output"), Some("10"));
    assert!(capture.events_in(second[0].id).is_empty());
    assert_eq!(field(&second[5], "attempt"), Some("1"));
    assert_eq!(field(&second[5], "input"), Some("(1071)"));
}

fn field_of<'a>(event: &'a EventRec, name: &str) -> Option<&'a str> {
    event.fields.get(name).map(String::as_str)
}

#[step]
async fn ts_secret(card: String) -> String {
    format!("charged {card}")
}

#[workflow]
async fn ts_values_off() -> String {
    ts_secret("4242 4242 4242 4242".into()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_stay_off_spans_unless_asked_for() {
    let capture = capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::open(dir.path().join("journal.db"))
        .await
        .expect("open");
    rt.start_with_id("off", ts_values_off())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    rt.close().await.expect("close");
    let run = &capture.workflows("off")[0];
    let steps = capture.children(run.id);
    assert_eq!(steps.len(), 1);
    assert_eq!(field(&steps[0], "step"), Some("ts_secret"));
    assert_eq!(field(&steps[0], "input"), None);
    assert_eq!(field(&steps[0], "output"), None);
}

#[step]
async fn ts_panics(n: u32) -> u32 {
    assert!(n > 0, "the step's own bug");
    n
}

#[workflow]
async fn ts_panicking() -> u32 {
    ts_panics(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_step_fails_its_span_and_its_workflow() {
    let capture = capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::open(dir.path().join("journal.db"))
        .await
        .expect("open");
    let failed = rt
        .start_with_id("panics", ts_panicking())
        .await
        .expect("start")
        .result()
        .await;
    assert!(failed.is_err());
    rt.close().await.expect("close");
    let run = &capture.workflows("panics")[0];
    assert_eq!(field(run, "outcome"), Some("failed"));
    let steps = capture.children(run.id);
    assert_eq!(steps.len(), 1);
    assert!(field(&steps[0], "duration_ms").is_some());
    let errors = capture.events_in(steps[0].id);
    assert!(
        errors.iter().any(|e| e.level == tracing::Level::ERROR
            && field_of(e, "message").is_some_and(|m| m.contains("the step's own bug"))),
        "{errors:?}"
    );
    #[cfg(feature = "opentelemetry")]
    {
        assert_eq!(field(run, "otel.status_code"), Some("error"));
        assert_eq!(field(&steps[0], "otel.status_code"), Some("error"));
    }
}

#[workflow]
async fn ts_enqueuer() -> u32 {
    let queue = Queue::new("ts_queue").concurrency(1);
    match enqueue(&queue, ts_child(7)).await {
        Ok(child) => child.result().await.unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_workflow_follows_from_the_workflow_that_enqueued_it() {
    let capture = capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder(dir.path().join("journal.db"))
        .queue(Queue::new("ts_queue").concurrency(1))
        .open()
        .await
        .expect("open");
    let out = rt
        .start_with_id("enq", ts_enqueuer())
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    assert_eq!(out, 70);
    rt.close().await.expect("close");
    let parent = &capture.workflows("enq")[0];
    let queued: Vec<SpanRec> = capture
        .spans()
        .into_iter()
        .filter(|s| {
            s.name == "workflow"
                && field(s, "workflow") == Some("ts_child")
                && field(s, "id").is_some_and(|id| id.starts_with("enq/"))
        })
        .collect();
    assert_eq!(queued.len(), 1, "{queued:#?}");
    assert_eq!(queued[0].parent, None);
    assert_eq!(
        queued[0].follows,
        [parent.id],
        "linked to the workflow that enqueued it"
    );
}
