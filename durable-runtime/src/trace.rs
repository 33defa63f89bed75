//! The spans the runtime opens, in one place, so that their names and fields stay
//! what the README's "Tracing" section documents. Every span, and every event the
//! README lists, has the target `durable_runtime`; the runtime's other events have
//! their module's (`durable_runtime::runtime::registry`, ...), under the same prefix.
//!
//! | span | fields |
//! |---|---|
//! | `workflow` | `id`, `workflow` (its name), `journal`, `outcome` |
//! | `step` | `path`, `step` (its name), `replayed`, `attempt`, `duration_ms`, `input`, `output` |
//! | `sleep` | `path`, `replayed`, `duration_ms` |
//! | `recv` | `path`, `replayed`, `topic` |
//! | `start_child` | `path`, `replayed`, `child_name`, `child_id` |
//!
//! No field is called `name`: JSON formatters write the span's own name under that
//! key, and a second `name` would hide one of the two.
//!
//! Spans are made with `tracing`'s macros, which evaluate nothing when no subscriber
//! wants them: a runtime without one pays a load and a compare per step.

use std::path::Path;

use tracing::Span;
use tracing::field::Empty;

use crate::path::StepPath;

/// An `info` span of the runtime's, with OpenTelemetry's `otel.name` (the span's name
/// as a trace shows it) and `otel.kind` when the `opentelemetry` feature is on. What
/// comes in brackets goes before the name (`[parent: None,]` for a root).
macro_rules! otel_span {
    ([$($head:tt)*] $name:literal, $otel_name:expr, $($fields:tt)*) => {{
        #[cfg(feature = "opentelemetry")]
        let span = tracing::info_span!(
            target: "durable_runtime",
            $($head)*
            $name,
            otel.name = %$otel_name,
            otel.kind = "internal",
            otel.status_code = tracing::field::Empty,
            $($fields)*
        );
        #[cfg(not(feature = "opentelemetry"))]
        let span = tracing::info_span!(target: "durable_runtime", $($head)* $name, $($fields)*);
        span
    }};
}

/// The target of every span and documented event.
pub(crate) const TARGET: &str = "durable_runtime";

/// Up to how many characters of a value `input` and `output` keep.
pub(crate) const VALUE_LIMIT: usize = 1024;

/// The span of one execution of workflow `id`: a root, linked (`follows_from`) to the
/// span that was current where it was made (the request that started it, the parent
/// workflow that started or enqueued it).
pub(crate) fn workflow(id: &str, name: &str, journal: &Path) -> Span {
    let span = otel_span!(
        [parent: None,] "workflow",
        format_args!("workflow {name}"),
        id = %id,
        workflow = name,
        journal = %journal.display(),
        outcome = Empty,
    );
    let caller = Span::current();
    if !span.is_disabled() && !caller.is_disabled() {
        span.follows_from(&caller);
    }
    span
}

/// Records how an execution ended on its span: `completed`, `failed`, `cancelled`,
/// `dormant` (its body dropped while it waits), `closed` (left pending by a closing
/// runtime: a deploy, not an error) or `stopped` (left pending by a divergence, a
/// missing state, an error of the journal).
pub(crate) fn outcome(span: &Span, outcome: &'static str) {
    span.record("outcome", outcome);
    #[cfg(feature = "opentelemetry")]
    if outcome == "failed" || outcome == "stopped" {
        span.record("otel.status_code", "error");
    }
}

/// The span of a step call at `path`, made when the step is called (so a step spawned
/// or raced keeps its workflow as parent) and entered on each poll.
pub(crate) fn step(path: &StepPath, name: &'static str, replayed: bool) -> Span {
    otel_span!(
        [] "step",
        format_args!("step {name}"),
        path = %path,
        step = name,
        replayed,
        attempt = Empty,
        duration_ms = Empty,
        input = Empty,
        output = Empty,
    )
}

/// Marks a span as failed, for OpenTelemetry's status.
pub(crate) fn failed(span: &Span) {
    #[cfg(feature = "opentelemetry")]
    span.record("otel.status_code", "error");
    #[cfg(not(feature = "opentelemetry"))]
    let _ = span;
}

/// The span of a durable sleep.
pub(crate) fn sleep(path: &StepPath, replayed: bool, duration_ms: u64) -> Span {
    otel_span!(
        [] "sleep",
        "sleep",
        path = %path,
        replayed,
        duration_ms,
    )
}

/// The span of a `recv` on `topic`.
pub(crate) fn recv(path: &StepPath, replayed: bool, topic: &str) -> Span {
    otel_span!(
        [] "recv",
        format_args!("recv {topic}"),
        path = %path,
        replayed,
        topic,
    )
}

/// The span of a child's start.
pub(crate) fn start_child(path: &StepPath, replayed: bool, child_name: &str) -> Span {
    otel_span!(
        [] "start_child",
        format_args!("start_child {child_name}"),
        path = %path,
        replayed,
        child_name,
        child_id = Empty,
    )
}
