//! A workflow's timeline as SVG: one row per branch path, a bar per step attempt from
//! its start to its end (as the journal recorded them), with retries, sleeps, waits
//! and errors marked. Shared by `durable timeline` and `durable ui`.

use std::fmt::Write as _;

use durable_runtime::{RecordedStatus, StepInfo, WorkflowView};
use serde_json::Value;

/// What a bar stands for: its CSS class, and the legend's words for it.
const KINDS: [(&str, &str); 7] = [
    ("step", "step"),
    ("retry", "failed attempt (retried)"),
    ("error", "panicked or returned Err"),
    ("wait", "waiting (recv, event)"),
    ("sleep", "sleeping"),
    ("child", "child workflow"),
    ("internal", "durable's own record"),
];

/// The colours of each kind, and of the workflow's own bar.
const STYLE: &str = "
.bar { stroke: #333; stroke-width: 0.5; }
.step { fill: #4c78a8; } .retry { fill: #f2b8b5; } .error { fill: #d62728; }
.wait { fill: #f58518; } .sleep { fill: #b279a2; } .child { fill: #54a24b; }
.internal { fill: #bab0ac; } .workflow { fill: #9ecae9; } .running { fill: url(#hatch); }
text { font-family: sans-serif; font-size: 11px; fill: #222; }
.axis { stroke: #ccc; stroke-width: 1; } .tick { fill: #666; font-size: 10px; }
.row { fill: #222; font-size: 11px; }
.restart { stroke: #2ca02c; stroke-width: 1.5; stroke-dasharray: 6 3; }
.replayed { opacity: 0.55; }
";

/// One bar.
struct Bar {
    row: String,
    start: i64,
    end: i64,
    class: &'static str,
    label: String,
    title: String,
    link: Option<String>,
    /// Ran before a restart (or in the run a fork came from): drawn faded.
    faded: bool,
}

/// The branch a step ran in: its path without its last position (`main` at the top).
fn branch(path: &str) -> String {
    match path.rsplit_once('.') {
        Some((parent, _)) => parent.to_owned(),
        None => "main".to_owned(),
    }
}

/// `text` escaped for XML and HTML.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The bars of workflow `w`'s steps. `child_link` makes the link to a child's page.
fn bars(
    w: &WorkflowView,
    steps: &[StepInfo],
    now_ms: i64,
    child_link: &dyn Fn(&str) -> String,
) -> Vec<Bar> {
    let mut bars = vec![Bar {
        row: "workflow".into(),
        start: w.created_at_ms,
        end: w.finished_at_ms.unwrap_or(now_ms),
        class: if w.status == RecordedStatus::Pending {
            "running"
        } else {
            "workflow"
        },
        label: format!("{} ({})", w.name, w.status),
        title: format!("{} {}: {}", w.name, w.id, w.status),
        link: None,
        faded: false,
    }];
    // The child a `durable::child_result` waits for is the one the last
    // `durable::start_child` before it started.
    let mut last_child: Option<String> = None;
    for s in steps {
        let path = s.path.to_string();
        let row = branch(&path);
        let internal = s.name.starts_with("durable::");
        // A step whose result is an `Err` returned an error (its retries are over).
        let returned_err = matches!(
            s.output::<Value>(),
            Ok(Value::Object(m)) if m.len() == 1 && m.contains_key("Err")
        );
        let base = if s.panicked || (returned_err && !internal) {
            "error"
        } else {
            match s.name.as_str() {
                "durable::sleep" => "sleep",
                "durable::recv" | "durable::get_event" => "wait",
                "durable::child" | "durable::start_child" | "durable::child_result" => "child",
                _ if internal => "internal",
                _ => "step",
            }
        };
        let mut times: Vec<(i64, i64)> = s
            .attempt_times()
            .iter()
            .map(|t| (t.started_at_ms, t.finished_at_ms))
            .collect();
        if times.is_empty() {
            times.push((s.started_at_ms, s.finished_at_ms));
        }
        // A sleep's record holds the time it wakes at: the bar runs until then.
        if base == "sleep"
            && let Ok(Value::Number(n)) = s.output::<Value>()
            && let Some(wake) = n.as_i64()
            && let Some(last) = times.last_mut()
            && wake > last.0
        {
            last.1 = wake;
        }
        // A child's id: what its start recorded, or the id made from the path.
        let child = (base == "child").then(|| match (s.name.as_str(), s.output::<Value>()) {
            ("durable::start_child", Ok(Value::String(id))) => {
                last_child = Some(id.clone());
                id
            }
            ("durable::child_result", _) => last_child
                .clone()
                .unwrap_or_else(|| format!("{}/{}", w.id, path)),
            _ => format!("{}/{}", w.id, path),
        });
        let n = times.len();
        for (i, (start, end)) in times.into_iter().enumerate() {
            let last = i + 1 == n;
            let class = if last { base } else { "retry" };
            let attempt = if n > 1 {
                format!(", attempt {} of {n}", i + 1)
            } else {
                String::new()
            };
            let what = match class {
                "retry" => "failed, retried".to_owned(),
                _ if s.panicked => "panicked".to_owned(),
                _ => match s.output::<Value>() {
                    Ok(v) => crate::preview(&v.to_string(), 120),
                    Err(_) => "binary value".to_owned(),
                },
            };
            let status = crate::step_status(Some(w), s);
            let origin = match status {
                "replayed" => "; ran before a restart, then replayed from the journal",
                "copied" => "; copied from the run this one is a fork of",
                _ => "",
            };
            bars.push(Bar {
                row: row.clone(),
                start,
                end: end.max(start),
                class,
                label: s.name.clone(),
                title: format!(
                    "step {path} {}{attempt}: {} ({}){origin}",
                    s.name,
                    crate::span(end - start),
                    what
                ),
                link: child.as_deref().map(child_link),
                faded: matches!(status, "replayed" | "copied"),
            });
        }
    }
    bars
}

/// Tick spacing for a span of `ms`: 1, 2 or 5 times a power of ten, about 8 ticks.
fn tick_step(ms: i64) -> i64 {
    let raw = (ms.max(1) as f64 / 8.0).max(1.0);
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    step as i64
}

/// The timeline of workflow `w` as a standalone SVG document. Times run from the
/// workflow's start to its end (or `now_ms`, while it runs).
pub(crate) fn svg(
    w: &WorkflowView,
    steps: &[StepInfo],
    now_ms: i64,
    child_link: &dyn Fn(&str) -> String,
) -> String {
    let bars = bars(w, steps, now_ms, child_link);
    // Rows in order of first appearance; bars that overlap in a row go on lanes.
    let mut rows: Vec<(String, Vec<i64>)> = Vec::new();
    let mut placed: Vec<(usize, usize)> = Vec::with_capacity(bars.len());
    // The workflow's own row, then its main branch, then the others as they come.
    rows.push(("workflow".to_owned(), Vec::new()));
    if bars.iter().any(|b| b.row == "main") {
        rows.push(("main".to_owned(), Vec::new()));
    }
    for b in &bars {
        let r = match rows.iter().position(|(name, _)| *name == b.row) {
            Some(r) => r,
            None => {
                rows.push((b.row.clone(), Vec::new()));
                rows.len() - 1
            }
        };
        let lanes = &mut rows[r].1;
        // A lane is free for a bar that starts when (or after) its last one ended:
        // steps one after another in the same millisecond share it.
        let lane = match lanes.iter().position(|free_at| *free_at <= b.start) {
            Some(l) => l,
            None => {
                lanes.push(i64::MIN);
                lanes.len() - 1
            }
        };
        lanes[lane] = b.end;
        placed.push((r, lane));
    }
    let start = bars
        .iter()
        .map(|b| b.start)
        .min()
        .unwrap_or(w.created_at_ms);
    let end = bars
        .iter()
        .map(|b| b.end)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let (left, width, lane_h, top) = (170.0, 820.0, 18.0, 58.0);
    let x = |t: i64| left + (t - start) as f64 / (end - start) as f64 * width;
    let mut row_top = Vec::with_capacity(rows.len());
    let mut y = top;
    for (_, lanes) in &rows {
        row_top.push(y);
        y += lanes.len().max(1) as f64 * lane_h + 6.0;
    }
    let height = y + 40.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="{height:.0}" viewBox="0 0 1000 {height:.0}" role="img" aria-label="timeline of workflow {id}">
<title>timeline of workflow {id}</title>
<style>{STYLE}</style>
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#9ecae9"/><line x1="0" y1="0" x2="0" y2="6" stroke="#4c78a8" stroke-width="2"/></pattern></defs>
<rect width="1000" height="{height:.0}" fill="#fff"/>
"##,
        id = esc(&w.id),
    );
    // The legend.
    let mut lx = 10.0;
    for (class, words) in KINDS {
        let _ = write!(
            out,
            r#"<rect class="bar {class}" x="{lx:.0}" y="8" width="12" height="12"/><text x="{:.0}" y="18">{words}</text>"#,
            lx + 16.0
        );
        lx += 28.0 + words.len() as f64 * 6.0;
    }
    if !w.replayed_at_ms.is_empty() {
        let _ = write!(
            out,
            r#"<line class="restart" x1="16" y1="25" x2="16" y2="37"/><text x="26" y="35">restarted from the journal (faded bars ran before a restart and were replayed after it)</text>"#
        );
    }
    out.push('\n');
    // The axis: a tick every `step` ms from the start.
    let step = tick_step(end - start);
    let mut t = 0;
    while start + t <= end {
        let tx = x(start + t);
        let _ = writeln!(
            out,
            r#"<line class="axis" x1="{tx:.1}" y1="{:.0}" x2="{tx:.1}" y2="{:.0}"/><text class="tick" x="{tx:.1}" y="{:.0}" text-anchor="middle">+{}</text>"#,
            top - 6.0,
            y,
            top - 10.0,
            crate::span(t)
        );
        t += step;
    }
    if w.status == RecordedStatus::Pending && now_ms > start && now_ms < end {
        let nx = x(now_ms);
        let _ = writeln!(
            out,
            r##"<line x1="{nx:.1}" y1="{:.0}" x2="{nx:.1}" y2="{y:.0}" stroke="#d62728" stroke-dasharray="4 3"/><text class="tick" x="{nx:.1}" y="{:.0}" text-anchor="middle">now</text>"##,
            top - 6.0,
            y + 12.0
        );
    }
    // Each restart: the steps left of it ran before, and were replayed from it.
    for r in w
        .replayed_at_ms
        .iter()
        .filter(|r| **r >= start && **r <= end)
    {
        let rx = x(*r);
        let _ = writeln!(
            out,
            r##"<g><title>restarted from the journal at {}: the steps recorded before were replayed, not run again</title><line class="restart" x1="{rx:.1}" y1="{:.0}" x2="{rx:.1}" y2="{y:.0}"/><text class="tick" x="{:.1}" y="{:.0}">restart</text></g>"##,
            crate::time(*r),
            top - 6.0,
            rx + 3.0,
            y + 12.0
        );
    }
    for ((name, _), ry) in rows.iter().zip(&row_top) {
        let _ = writeln!(
            out,
            r#"<text class="row" x="10" y="{:.0}">{}</text>"#,
            ry + 13.0,
            esc(name)
        );
    }
    for (b, (r, lane)) in bars.iter().zip(&placed) {
        let bx = x(b.start);
        let bw = (x(b.end) - bx).max(2.0);
        let by = row_top[*r] + *lane as f64 * lane_h;
        let mut bar = format!(
            r#"<g><title>{}</title><rect class="bar {}{}" x="{bx:.1}" y="{by:.1}" width="{bw:.1}" height="{:.0}"/>"#,
            esc(&b.title),
            b.class,
            if b.faded { " replayed" } else { "" },
            lane_h - 3.0
        );
        if bw > 40.0 {
            let _ = write!(
                bar,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                bx + 3.0,
                by + 11.5,
                esc(&crate::preview(&b.label, (bw / 6.5) as usize))
            );
        }
        bar.push_str("</g>");
        match &b.link {
            Some(href) => {
                let _ = writeln!(out, r#"<a href="{}">{bar}</a>"#, esc(href));
            }
            None => {
                let _ = writeln!(out, "{bar}");
            }
        }
    }
    let _ = writeln!(
        out,
        r#"<text class="tick" x="10" y="{:.0}">{} steps; started {}; {}</text>"#,
        height - 14.0,
        steps.len(),
        crate::time(w.created_at_ms),
        match w.finished_at_ms {
            Some(f) => format!("{} after {}", w.status, crate::span(f - w.created_at_ms)),
            None => "running".to_owned(),
        }
    );
    out.push_str("</svg>\n");
    out
}
