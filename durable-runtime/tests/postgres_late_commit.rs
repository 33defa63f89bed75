//! The journal writer's connection cut as it sends a batch, and the batch delivered to
//! the server a moment later (a packet late on the network): the writer must not settle
//! the batch (did it commit?) before the old session is over, or the late batch commits
//! after the writer ran it again, and a message is sent twice.
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Journal;
use common::proxy::{CUT_WRITER_THEN_LATE, PASS, proxy};
use durable_runtime::Runtime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_late_on_the_network_does_not_commit_twice() {
    let journal = Journal::postgres();
    let Journal::Postgres { server, schema, .. } = &journal else {
        unreachable!()
    };
    let (proxied, switch) = proxy(server).await;
    let sep = if proxied.contains('?') { '&' } else { '?' };
    let rt = Runtime::builder(format!("{proxied}{sep}schema={schema}"))
        .lease(Duration::from_secs(30))
        .open()
        .await
        .expect("open");
    switch.store(CUT_WRITER_THEN_LATE, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(30), rt.send("later", "late", &1u32))
        .await
        .expect("the send did not finish within 30 s")
        .expect("send");
    assert_eq!(
        switch.load(Ordering::SeqCst),
        PASS,
        "the writer was not cut"
    );
    // Past the moment the late batch reaches the server.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let messages = journal.strings(
        "SELECT count(*)::text FROM durable_messages WHERE destination = 'later'",
        &[],
    );
    assert_eq!(messages, ["1"], "the message was sent twice (or never)");
    rt.close().await.expect("close");
}
