//! `durable ui`: a local web view of a journal. Server-rendered HTML and SVG (no
//! JavaScript, nothing fetched from elsewhere), read-only unless started with
//! `--allow-control` and a token, which a control request must carry.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use durable_runtime::{Client, Delivery, ListQuery, RecordedStatus, StepInfo, WorkflowView};
use serde_json::Value;

use crate::timeline::{esc, svg};

/// A workflow id as a URL path (`/w/...`): every byte but unreserved characters and
/// `/` percent-encoded, so `?`, `#`, `%` and the rest stay part of the id.
pub(crate) fn workflow_href(id: &str) -> String {
    let mut out = String::from("/w/");
    out.push_str(&encode(id, b"/"));
    out
}

/// `text` percent-encoded, keeping unreserved characters and those in `keep`.
fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What every request reads.
struct App {
    client: Client,
    /// The token control requests must carry; `None`: read-only.
    token: Option<String>,
}

type Shared = Arc<App>;

/// Serves the UI on `bind` until the process ends. Prints the address it listens on
/// (useful with port 0) once it does.
pub(crate) async fn serve(
    client: Client,
    bind: SocketAddr,
    token: Option<String>,
) -> Result<(), String> {
    let app = Arc::new(App { client, token });
    let control = app.token.is_some();
    let router = Router::new()
        .route("/", get(list_page))
        .route("/w/{*id}", get(workflow_page))
        .route("/control", post(control_request))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let at = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address listened on: {e}"))?;
    println!(
        "durable ui: listening on http://{at}/ ({})",
        if control {
            "control allowed with the token"
        } else {
            "read-only"
        }
    );
    axum::serve(listener, router)
        .await
        .map_err(|e| format!("the server stopped: {e}"))
}

/// Runs a read of the journal on a blocking thread.
async fn read<T: Send + 'static>(
    app: &Shared,
    f: impl FnOnce(&Client) -> durable_runtime::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let app = app.clone();
    match tokio::task::spawn_blocking(move || f(&app.client)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(page_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        )),
        Err(e) => Err(page_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        )),
    }
}

fn page_error(status: StatusCode, message: &str) -> Response {
    let body = page(
        "error",
        None,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/\">all workflows</a></p>",
            status,
            esc(message)
        ),
    );
    (status, Html(body)).into_response()
}

/// A whole page around `body`; `refresh` reloads it every so many seconds.
pub(crate) fn page(title: &str, refresh: Option<u32>, body: &str) -> String {
    let refresh = refresh
        .map(|s| format!(r#"<meta http-equiv="refresh" content="{s}">"#))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}<title>{} · durable</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ text-align: left; padding: 3px 10px; border-bottom: 1px solid #ddd; font-size: 13px; vertical-align: top; }}
th {{ background: #f3f3f3; }}
code, pre {{ font-size: 12px; }} pre {{ background: #f7f7f7; padding: 6px; max-width: 100em; overflow-x: auto; }}
.pending {{ color: #1f77b4; }} .completed {{ color: #2ca02c; }} .failed {{ color: #d62728; }} .cancelled {{ color: #7f7f7f; }}
.counts a {{ margin-right: 1.2em; }} form {{ display: inline; }}
</style></head><body>
{body}
</body></html>
"#,
        esc(title)
    )
}

/// The list page's filters.
#[derive(Debug, serde::Deserialize)]
struct Filters {
    status: Option<String>,
    name: Option<String>,
    parent: Option<String>,
    after: Option<String>,
}

async fn list_page(State(app): State<Shared>, Query(f): Query<Filters>) -> Response {
    let mut query = ListQuery::new().limit(100);
    let status = match f.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match s.parse::<RecordedStatus>() {
            Ok(s) => Some(s),
            Err(e) => return page_error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        None => None,
    };
    if let Some(s) = status {
        query = query.status(s);
    }
    let name = f.name.clone().filter(|n| !n.is_empty());
    if let Some(n) = &name {
        query = query.name(n.clone());
    }
    let parent = f.parent.clone().filter(|p| !p.is_empty());
    if let Some(p) = &parent {
        query = query.parent(p.clone());
    }
    if let Some(c) = f.after.as_deref().filter(|c| !c.is_empty()) {
        match c.parse() {
            Ok(c) => query = query.after(c),
            Err(e) => return page_error(StatusCode::BAD_REQUEST, &format!("{e}")),
        }
    }
    let read = read(&app, move |c| Ok((c.counts()?, c.list(&query)?))).await;
    let (counts, page_of) = match read {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut body = String::from("<h1>Workflows</h1>\n<p class=\"counts\">");
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let _ = write!(body, r#"<a href="/">all: {total}</a>"#);
    for (s, n) in &counts {
        let _ = write!(body, r#"<a class="{s}" href="/?status={s}">{s}: {n}</a>"#);
    }
    body.push_str("</p>\n");
    let _ = write!(
        body,
        r#"<form method="get" action="/">name <input name="name" value="{}"> parent <input name="parent" value="{}"> <select name="status"><option value="">any status</option>{}</select> <button>filter</button></form>"#,
        esc(name.as_deref().unwrap_or("")),
        esc(parent.as_deref().unwrap_or("")),
        ["pending", "completed", "failed", "cancelled"]
            .iter()
            .map(|s| format!(
                r#"<option{}>{s}</option>"#,
                if status.map(|x| x.as_str()) == Some(s) {
                    " selected"
                } else {
                    ""
                }
            ))
            .collect::<String>()
    );
    body.push_str(
        "<table><tr><th>id</th><th>name</th><th>status</th><th>started</th><th>duration</th><th>parent</th></tr>\n",
    );
    for w in &page_of.workflows {
        let _ = writeln!(
            body,
            r#"<tr><td><a href="{}">{}</a></td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&workflow_href(&w.id)),
            esc(&w.id),
            esc(&w.name),
            w.status,
            w.status,
            crate::time(w.created_at_ms),
            w.finished_at_ms.map_or_else(
                || "running".to_owned(),
                |f| crate::span(f - w.created_at_ms)
            ),
            w.parent_id
                .as_deref()
                .map(|p| format!(r#"<a href="{}">{}</a>"#, esc(&workflow_href(p)), esc(p)))
                .unwrap_or_default()
        );
    }
    body.push_str("</table>\n");
    if let Some(next) = page_of.next {
        let mut more = format!("/?after={next}");
        if let Some(s) = status {
            let _ = write!(more, "&status={s}");
        }
        if let Some(n) = &name {
            let _ = write!(more, "&name={}", encode(n, b""));
        }
        if let Some(p) = &parent {
            let _ = write!(more, "&parent={}", encode(p, b""));
        }
        let _ = write!(body, r#"<p><a href="{}">next page</a></p>"#, esc(&more));
    }
    Html(page("workflows", Some(5), &body)).into_response()
}

/// The workflow page's body: its record, timeline, steps, children and events, and
/// the controls if `control`. Shared with `durable timeline -o FILE.html`.
pub(crate) fn workflow_body(
    w: &WorkflowView,
    steps: &[StepInfo],
    children: &[WorkflowView],
    events: &[(String, String)],
    now_ms: i64,
    control: bool,
) -> String {
    let mut body = format!(
        r#"<p><a href="/">all workflows</a></p><h1>{} <small class="{}">{}</small></h1>"#,
        esc(&w.id),
        w.status,
        w.status
    );
    body.push_str("<table>");
    let mut row = |k: &str, v: String| {
        let _ = write!(body, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    row("name", esc(&w.name));
    if let Some(p) = &w.parent_id {
        row(
            "parent",
            format!(r#"<a href="{}">{}</a>"#, esc(&workflow_href(p)), esc(p)),
        );
    }
    if let Some(f) = &w.forked_from {
        row(
            "forked from",
            format!(r#"<a href="{}">{}</a>"#, esc(&workflow_href(f)), esc(f)),
        );
    }
    row("started", crate::time(w.created_at_ms));
    if let Some(f) = w.finished_at_ms {
        row(
            "finished",
            format!(
                "{} (after {})",
                crate::time(f),
                crate::span(f - w.created_at_ms)
            ),
        );
    }
    if let Some(m) = &w.failure_message {
        row("failure", format!("<pre>{}</pre>", esc(m)));
    }
    if let Some(r) = &w.cancel_reason {
        row("cancelled", esc(&r.to_string()));
    }
    row(
        "input",
        format!("<pre>{}</pre>", esc(&pretty(w.input::<Value>()))),
    );
    match w.output::<Value>() {
        Ok(Some(v)) => row("output", format!("<pre>{}</pre>", esc(&pretty(Ok(v))))),
        Ok(None) => {}
        Err(e) => row("output", esc(&crate::value_text(Err(e)))),
    }
    body.push_str("</table>\n");
    if control {
        let id = esc(&w.id);
        let _ = write!(
            body,
            r#"<p>{}</p>"#,
            ["cancel", "resume"]
                .iter()
                .map(|a| format!(
                    r#"<form method="post" action="/control"><input type="hidden" name="action" value="{a}"><input type="hidden" name="id" value="{id}"><input type="password" name="token" placeholder="token" size="10"> <button>{a}</button></form> "#
                ))
                .collect::<String>()
        );
    }
    body.push_str("<h2>Timeline</h2>\n");
    body.push_str(&svg(w, steps, now_ms, &workflow_href));
    body.push_str("<h2>Steps</h2>\n<table><tr><th>path</th><th>name</th><th>kind</th><th>status</th><th>attempts</th><th>started</th><th>duration</th><th>output</th></tr>\n");
    for s in steps {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&s.path.to_string()),
            esc(&s.name),
            crate::kind(s),
            crate::step_status(Some(w), s),
            s.attempts,
            crate::time(s.started_at_ms),
            crate::span(s.finished_at_ms - s.started_at_ms),
            if s.panicked {
                String::new()
            } else {
                esc(&crate::preview(
                    &crate::value_text(s.output::<Value>()),
                    120,
                ))
            }
        );
    }
    body.push_str("</table>\n");
    if !children.is_empty() {
        body.push_str(
            "<h2>Children</h2>\n<table><tr><th>id</th><th>name</th><th>status</th></tr>\n",
        );
        for c in children {
            let _ = writeln!(
                body,
                r#"<tr><td><a href="{}">{}</a></td><td>{}</td><td class="{}">{}</td></tr>"#,
                esc(&workflow_href(&c.id)),
                esc(&c.id),
                esc(&c.name),
                c.status,
                c.status
            );
        }
        body.push_str("</table>\n");
    }
    if !events.is_empty() {
        body.push_str("<h2>Events</h2>\n<table><tr><th>key</th><th>value</th></tr>\n");
        for (k, v) in events {
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td><code>{}</code></td></tr>",
                esc(k),
                esc(v)
            );
        }
        body.push_str("</table>\n");
    }
    body
}

/// A recorded value as indented JSON, or why it is not shown.
fn pretty(v: durable_runtime::Result<Value>) -> String {
    match v {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(e) => crate::value_text(Err(e)),
    }
}

/// Everything the workflow page shows of `id`: `None` if there is no such workflow.
pub(crate) type Shown = (
    WorkflowView,
    Vec<StepInfo>,
    Vec<WorkflowView>,
    Vec<(String, String)>,
);

/// Reads what the workflow page shows of `id`.
pub(crate) fn gather(client: &Client, id: &str) -> durable_runtime::Result<Option<Shown>> {
    let Some(w) = client.workflow(id)? else {
        return Ok(None);
    };
    let steps = client.steps(id)?;
    let children = client
        .list(
            &ListQuery::new()
                .parent(id)
                .order(durable_runtime::Order::OldestFirst)
                .limit(1000),
        )?
        .workflows;
    let events = client
        .events(id)?
        .iter()
        .map(|e| (e.key.clone(), crate::value_text(e.value::<Value>())))
        .collect();
    Ok(Some((w, steps, children, events)))
}

async fn workflow_page(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let wanted = id.clone();
    let shown = match read(&app, move |c| gather(c, &wanted)).await {
        Ok(shown) => shown,
        Err(response) => return response,
    };
    let Some((w, steps, children, events)) = shown else {
        return page_error(
            StatusCode::NOT_FOUND,
            &format!("no workflow {id} in the journal"),
        );
    };
    let now = crate::now_ms();
    let refresh = (w.status == RecordedStatus::Pending).then_some(2);
    let body = workflow_body(&w, &steps, &children, &events, now, app.token.is_some());
    Html(page(&w.id, refresh, &body)).into_response()
}

/// A control request: `action` (cancel or resume) of workflow `id`.
#[derive(Debug, serde::Deserialize)]
struct Control {
    action: String,
    id: String,
    #[serde(default)]
    token: String,
}

async fn control_request(State(app): State<Shared>, Form(c): Form<Control>) -> Response {
    let Some(token) = &app.token else {
        return page_error(
            StatusCode::FORBIDDEN,
            "this view is read-only: start it with `durable ui --allow-control --token TOKEN` to cancel or resume from it",
        );
    };
    if !same(token.as_bytes(), c.token.as_bytes()) {
        return page_error(StatusCode::FORBIDDEN, "wrong token: nothing was done");
    }
    let delivery = match c.action.as_str() {
        "cancel" => app.client.cancel(&c.id).await,
        "resume" => app.client.resume(&c.id).await,
        other => {
            return page_error(
                StatusCode::BAD_REQUEST,
                &format!("unknown action {other:?}: use cancel or resume"),
            );
        }
    };
    match delivery {
        Ok(Delivery::Applied) => {
            let to = workflow_href(&c.id);
            (StatusCode::SEE_OTHER, [(axum::http::header::LOCATION, to)]).into_response()
        }
        Ok(_) => page_error(
            StatusCode::ACCEPTED,
            "recorded in the journal; no runtime applied it yet (the next one to open the journal does)",
        ),
        Err(e @ durable_runtime::Error::NotFound { .. }) => {
            page_error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => page_error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
