//! For `tests/shop.rs`: the `shop` service as a child process, and a small HTTP/1.1
//! client over `std::net::TcpStream` (one request per connection, `Connection: close`),
//! enough for JSON requests and answers.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `shop` process; SIGKILLed if dropped while it runs.
pub(crate) struct Shop {
    child: Option<Child>,
    /// The port it listens on (from its `listening on` line).
    pub(crate) port: u16,
    /// Its stderr (the log), a file of its own.
    pub(crate) log: PathBuf,
}

/// Numbers the log files of the processes a test starts.
static STARTED: AtomicUsize = AtomicUsize::new(0);

impl Shop {
    /// Starts `shop --journal journal --listen 127.0.0.1:0 ARGS...`, logging to a file
    /// in `dir`, and waits for its `listening on` line.
    pub(crate) fn start(journal: &str, dir: &Path, args: &[&str]) -> Shop {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("shop-{n}.log"));
        let stderr = File::create(&log).expect("the log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
            .args(["--journal", journal, "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the shop");
        let stdout = child.stdout.take().expect("its stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the port, then keeps the pipe drained.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("listening on http://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.parse::<SocketAddr>().map(|a| a.port()));
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(port)) => port,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the shop did not say where it listens ({other:?}); its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Shop {
            child: Some(child),
            port,
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, and wait for it to be gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Whether it has exited: its status if so.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for it to exit (a hang guard); SIGKILLs it after that.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        None
    }

    /// Its log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    /// The body as JSON (`Null` if it is not JSON).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header, by name (any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request to `127.0.0.1:port`. `Err` for anything short of a whole answer: a
/// connection refused or reset, a server killed halfway through.
pub(crate) fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let (stream, rest) = begin(port, method, path, headers, body, usize::MAX)?;
    SlowRequest { stream, rest }.finish()
}

/// A request sent up to its first `sent` bytes of body: in flight until
/// [`finish`](SlowRequest::finish) sends the rest.
pub(crate) struct SlowRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowRequest {
    pub(crate) fn start(
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        sent: usize,
    ) -> std::io::Result<SlowRequest> {
        let (stream, rest) = begin(port, "POST", path, headers, Some(body), sent)?;
        Ok(SlowRequest { stream, rest })
    }

    /// Sends the rest, and reads the answer.
    pub(crate) fn finish(mut self) -> std::io::Result<Reply> {
        self.stream.write_all(&self.rest)?;
        let mut raw = Vec::new();
        self.stream.read_to_end(&mut raw)?;
        parse(&raw).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "not a whole HTTP answer: {:?}",
                    String::from_utf8_lossy(&raw)
                ),
            )
        })
    }
}

/// Connects, sends the head and the first `sent` bytes of the body; the stream and
/// what is left to send.
fn begin(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    sent: usize,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default().as_bytes();
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let split = sent.min(body.len());
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body[..split])?;
    stream.flush()?;
    Ok((stream, body[split..].to_vec()))
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let payload = &raw[split + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(payload)?
    } else if let Some(length) = find("content-length") {
        let length: usize = length.parse().ok()?;
        payload.get(..length)?.to_vec()
    } else {
        payload.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn dechunk(mut payload: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = payload.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&payload[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        payload = &payload[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(payload.get(..size)?);
        payload = payload.get(size + 2..)?;
    }
}
