//! `durable ui` in a real browser: headless Chromium loads the list page and a
//! workflow page (their DOM shows the workflows and the timeline's SVG), a screenshot
//! is taken and checked to be more than a blank page, and control requests are refused
//! without `--allow-control` and its token.
//!
//! Chromium comes from the machine's package manager (`.ci/run` installs it and sets
//! `DURABLE_REQUIRE_BROWSER=1`, which makes its absence a failure); elsewhere the
//! browser half is skipped with a message.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable_runtime::{Runtime, recv, start_child, step, workflow};

const DURABLE: &str = env!("CARGO_BIN_EXE_durable");

static FLAKY: AtomicU32 = AtomicU32::new(0);

#[step(retries = 2, backoff = 10ms)]
async fn ui_charge(cents: u64) -> Result<String, String> {
    if FLAKY.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err("card network busy".into());
    }
    Ok(format!("charged {cents}"))
}

#[step]
async fn ui_ship() -> String {
    "shipped".into()
}

#[workflow]
async fn ui_receipt() -> u32 {
    7
}

#[workflow]
async fn ui_order(cents: u64) -> Result<String, String> {
    let charged = ui_charge(cents).await?;
    let (_, shipped) = tokio::join!(ui_receipt_child(), ui_ship());
    Ok(format!("{charged}, {shipped}"))
}

async fn ui_receipt_child() -> u32 {
    match start_child(ui_receipt()).await {
        Ok(child) => child.result().await.unwrap_or(0),
        Err(_) => 0,
    }
}

#[workflow]
async fn ui_waits() -> u32 {
    recv::<u32>("go", None).await.ok().flatten().unwrap_or(0)
}

/// A journal with a finished order (a retried step, a child) and a waiting workflow.
fn journal(dir: &Path) -> PathBuf {
    let path = dir.join("journal.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(async {
            let rt = Runtime::open(&path).await.expect("open");
            rt.start_with_id("order-1", ui_order(1250))
                .await
                .expect("start")
                .result()
                .await
                .expect("order")
                .expect("ok");
            rt.start_with_id("waiting-1", ui_waits())
                .await
                .expect("start");
            // An id a URL would cut short if not encoded, and one an HTML page must
            // escape.
            rt.start_with_id("odd?id#1 <b>", ui_waits())
                .await
                .expect("start");
            rt.close().await.expect("close");
        });
    path
}

/// A `durable ui` process, and the address it listens on.
struct Ui {
    child: Child,
    base: String,
}

impl Ui {
    fn start(journal: &Path, extra: &[&str]) -> Ui {
        let mut child = Command::new(DURABLE)
            .arg("--journal")
            .arg(journal)
            .args(["ui", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("durable ui");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Ui { child, base }
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one HTTP request; answers the status code and the body.
fn http(base: &str, method: &str, path: &str, form: &str) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .expect("write");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (status, response)
}

#[test]
fn pages_show_the_workflows_and_control_needs_the_token() {
    let dir = tempfile::tempdir().expect("dir");
    let journal = journal(dir.path());
    let ui = Ui::start(&journal, &[]);

    let (status, list) = http(&ui.base, "GET", "/", "");
    assert_eq!(status, 200, "{list}");
    for text in [
        "order-1",
        "waiting-1",
        "order-1/",
        "pending: 2",
        "completed: 2",
    ] {
        assert!(list.contains(text), "no {text:?} in the list page:\n{list}");
    }
    let (status, page) = http(&ui.base, "GET", "/w/order-1", "");
    assert_eq!(status, 200);
    for text in [
        "<svg",
        "ui_charge",
        "failed attempt",
        "child workflow",
        "charged 1250",
    ] {
        assert!(
            page.contains(text),
            "no {text:?} in the workflow page:\n{page}"
        );
    }
    let (status, _) = http(&ui.base, "GET", "/w/nobody", "");
    assert_eq!(status, 404);
    // Odd ids: linked percent-encoded, and the link opens that workflow.
    let href = "/w/odd%3Fid%231%20%3Cb%3E";
    assert!(list.contains(href), "no {href} in the list page:\n{list}");
    assert!(list.contains("odd?id#1 &lt;b&gt;"), "{list}");
    let (status, odd) = http(&ui.base, "GET", href, "");
    assert_eq!(status, 200, "{odd}");
    assert!(
        odd.contains("odd?id#1 &lt;b&gt;") && odd.contains("ui_waits"),
        "{odd}"
    );
    assert!(!odd.contains("<b>"), "an id must not become markup");

    // Read-only: a control request is refused, and nothing is recorded.
    let (status, refused) = http(
        &ui.base,
        "POST",
        "/control",
        "action=cancel&id=waiting-1&token=x",
    );
    assert_eq!(status, 403, "{refused}");
    assert!(refused.contains("read-only"), "{refused}");
    drop(ui);

    // With --allow-control: a wrong token is refused, the right one is taken.
    let refused = Command::new(DURABLE)
        .arg("--journal")
        .arg(&journal)
        .args(["ui", "--allow-control"])
        .output()
        .expect("durable ui");
    assert_eq!(
        refused.status.code(),
        Some(2),
        "control without a token must not start"
    );
    let ui = Ui::start(&journal, &["--allow-control", "--token", "s3cret-token"]);
    let (status, _) = http(
        &ui.base,
        "POST",
        "/control",
        "action=cancel&id=waiting-1&token=guess",
    );
    assert_eq!(status, 403);
    let (status, taken) = http(
        &ui.base,
        "POST",
        "/control",
        "action=cancel&id=waiting-1&token=s3cret-token",
    );
    // No runtime holds the journal: the cancel is recorded for the next one.
    assert_eq!(status, 202, "{taken}");
    drop(ui);

    browser(&journal);
}

#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("dir");
    let journal = journal(dir.path());
    for args in [&["list"][..], &["show", "order-1"], &["--json", "list"]] {
        let mut child = Command::new(DURABLE)
            .arg("--journal")
            .arg(&journal)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("durable");
        // The reader goes away before the command writes (as `| head -0` does).
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The browser half: skipped where Chromium is missing, unless CI requires it.
fn browser(journal: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        assert!(
            std::env::var_os("DURABLE_REQUIRE_BROWSER").is_none(),
            "DURABLE_REQUIRE_BROWSER is set, and no chromium is installed"
        );
        eprintln!("skipped: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let ui = Ui::start(journal, &[]);
    let profile = tempfile::tempdir().expect("profile");
    let shots = tempfile::tempdir().expect("shots");
    let run = |args: &[&str]| {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .output()
            .expect("chromium");
        assert!(out.status.success(), "chromium {args:?} failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = run(&["--dump-dom", &format!("{}/", ui.base)]);
    for text in ["order-1", "waiting-1", "ui_order", "ui_waits"] {
        assert!(
            list.contains(text),
            "no {text:?} in the list page's DOM:\n{list}"
        );
    }
    let page = run(&["--dump-dom", &format!("{}/w/order-1", ui.base)]);
    for text in ["<svg", "<rect", "ui_charge", "ui_ship"] {
        assert!(
            page.contains(text),
            "no {text:?} in the workflow page's DOM:\n{page}"
        );
    }
    // A screenshot of the page, against one of a blank page taken the same way: a page
    // that drew its tables and timeline compresses to far more than a blank one.
    let shot = shots.path().join("order.png");
    let blank = shots.path().join("blank.png");
    run(&[
        &format!("--screenshot={}", shot.display()),
        &format!("{}/w/order-1", ui.base),
    ]);
    run(&[&format!("--screenshot={}", blank.display()), "about:blank"]);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(
        size(&shot) > 4 * size(&blank).max(1),
        "the screenshot looks blank: {} bytes, a blank page {} bytes",
        size(&shot),
        size(&blank)
    );
    let png = std::fs::read(&shot).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
}
