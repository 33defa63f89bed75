//! A TCP proxy in front of the test server that loses what a test asks it to: the
//! answer to a `COMMIT`, or a writer's next statements, which it delivers late.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Passes everything on.
pub const PASS: u8 = 0;
/// Passes the next `COMMIT` sent as a simple query (as `Transaction::commit` sends it)
/// on, and cuts the client off before the server's answer reaches it: the transaction
/// committed, and the client cannot know.
pub const COMMIT_THEN_CUT: u8 = 1;
/// Cuts the client off at the next `COMMIT` without passing it on: the transaction
/// never commits, and the client cannot know that either.
pub const CUT_BEFORE_COMMIT: u8 = 2;
/// Cuts the client off at the next `COMMIT`, and passes it on a moment later (a packet
/// late on the network): the client must not decide before the server's session is
/// over.
pub const CUT_THEN_LATE_COMMIT: u8 = 3;
/// Cuts a journal writer's connection (`durable writer`) off at the next statements
/// it sends, and passes them on a moment later.
pub const CUT_WRITER_THEN_LATE: u8 = 4;
/// Passes a journal writer's next statements on, and cuts the writer off before the
/// server's answer reaches it: they committed (if they could), and the writer cannot
/// know.
pub const WRITER_THEN_CUT: u8 = 5;

const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

/// A proxy in front of `server` (a URL): answers the server's URL through the proxy,
/// and the switch that arms it (one of the constants here; it goes back to [`PASS`]
/// once it did its cut).
pub async fn proxy(server: &str) -> (String, Arc<AtomicU8>) {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority).to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxied = server.replacen(
        &host_port,
        &listener.local_addr().expect("addr").to_string(),
        1,
    );
    let mode = Arc::new(AtomicU8::new(PASS));
    let switch = mode.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&host_port).await else {
                continue;
            };
            tokio::spawn(pipe(client, server, mode.clone()));
        }
    });
    (proxied, switch)
}

/// A runtime on the PostgreSQL test journal `journal`, connected through a new
/// [`proxy`] (with a 30 s lease, so that nothing is taken over during a test), and the
/// proxy's switch.
pub async fn open_through_proxy(
    journal: &super::Journal,
) -> (durable_runtime::Runtime, Arc<AtomicU8>) {
    let super::Journal::Postgres { server, schema, .. } = journal else {
        unreachable!("a PostgreSQL journal")
    };
    let (proxied, switch) = proxy(server).await;
    let sep = if proxied.contains('?') { '&' } else { '?' };
    let rt = durable_runtime::Runtime::builder(format!("{proxied}{sep}schema={schema}"))
        .lease(Duration::from_secs(30))
        .open()
        .await
        .expect("open through the proxy");
    (rt, switch)
}

async fn pipe(client: tokio::net::TcpStream, server: tokio::net::TcpStream, mode: Arc<AtomicU8>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let mut writer = None;
    let mut chunks = 0u64;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        chunks += 1;
        // The startup message names the connection.
        let is_writer = *writer.get_or_insert_with(|| {
            chunk
                .windows(b"durable writer".len())
                .any(|w| w == b"durable writer")
        });
        // What is kept of the chunks before (a `COMMIT` split between two chunks) is
        // looked at again only with this one: a `COMMIT` that ended before it was
        // passed on before the switch was armed.
        let before = seen.len();
        seen.extend_from_slice(chunk);
        let armed = mode.load(Ordering::SeqCst);
        let cut = match armed {
            COMMIT_THEN_CUT | CUT_BEFORE_COMMIT | CUT_THEN_LATE_COMMIT => seen
                .windows(COMMIT.len())
                .enumerate()
                .any(|(at, w)| w == COMMIT && at + COMMIT.len() > before),
            // Not its startup message: statements.
            CUT_WRITER_THEN_LATE | WRITER_THEN_CUT => is_writer && chunks > 1,
            _ => false,
        };
        if cut
            && mode
                .compare_exchange(armed, PASS, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            // Nothing more reaches the client.
            down.abort();
            if matches!(armed, COMMIT_THEN_CUT | WRITER_THEN_CUT) {
                let _ = to_server.write_all(chunk).await;
                // The server commits, and answers into the void.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            drop(from_client);
            if matches!(armed, CUT_THEN_LATE_COMMIT | CUT_WRITER_THEN_LATE) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = to_server.write_all(chunk).await;
            }
            // The server's session lives on a while (as across a network cut), idle
            // in its transaction if the commit never came.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        let keep = seen.len().saturating_sub(COMMIT.len());
        seen.drain(..keep);
        if to_server.write_all(chunk).await.is_err() {
            break;
        }
    }
}
