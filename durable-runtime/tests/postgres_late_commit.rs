//! The journal writer's connection cut as it sends a batch:
//! - and the batch delivered to the server a moment later (a packet late on the
//!   network): the writer must not settle the batch (did it commit?) before the old
//!   session is over, or the late batch commits after the writer ran it again, and a
//!   message is sent twice;
//! - before the batch began (as the writer prepares statements for it): the writer
//!   must not take the batch for committed;
//! - after the server committed it, the answer lost: the writer must learn from the
//!   journal that it did, and neither write it again nor fail it.
#![cfg(all(feature = "postgres", feature = "testkit"))]

mod common;

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::Journal;
use common::proxy::{CUT_WRITER_THEN_LATE, PASS, WRITER_THEN_CUT, open_through_proxy};
use durable_runtime::{step, workflow};

/// Sends one message through a proxy that cuts the writer off at the next statements
/// it sends and delivers them late, and checks it was sent once. `warm`: the writer
/// sent a message before, so that what is cut is the batch itself; otherwise it is the
/// statements the writer prepares for its first message, before the batch begins.
async fn send_cut_off(warm: bool) {
    let journal = Journal::postgres();
    let (rt, switch) = open_through_proxy(&journal).await;
    if warm {
        rt.send("earlier", "late", &0u32).await.expect("send");
    }
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
    // Past the moment the late statements reach the server.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let messages = journal.strings(
        "SELECT count(*)::text FROM durable_messages WHERE destination = 'later'",
        &[],
    );
    assert_eq!(messages, ["1"], "the message was sent twice (or never)");
    rt.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_late_on_the_network_does_not_commit_twice() {
    send_cut_off(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_before_its_batch_began_is_made() {
    // The try that was cut never reached its fence: the journal's last batch number is
    // an earlier one, and the write is made again (it was taken for committed before).
    send_cut_off(false).await;
}

/// The proxy's switch, for the step that arms it.
static SWITCH: OnceLock<Arc<AtomicU8>> = OnceLock::new();
static LONE_RUNS: AtomicU32 = AtomicU32::new(0);

/// Arms the proxy as it returns: the next statement the writer sends is this step's
/// record, alone in its batch (the workflow waits for it).
#[step]
async fn arm_then_return(x: u64) -> Result<u64, String> {
    LONE_RUNS.fetch_add(1, Ordering::SeqCst);
    if let Some(switch) = SWITCH.get() {
        switch.store(WRITER_THEN_CUT, Ordering::SeqCst);
    }
    Ok(x * 3)
}

#[workflow]
async fn lone_record(x: u64) -> Result<u64, String> {
    let y = arm_then_return(x).await?;
    Ok(y + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_record_whose_answer_was_lost_is_settled_from_the_journal() {
    let journal = Journal::postgres();
    let (rt, switch) = open_through_proxy(&journal).await;
    assert!(SWITCH.set(switch.clone()).is_ok(), "one test arms it");
    let handle = rt
        .start_with_id("lone", lone_record(7))
        .await
        .expect("start");
    let result = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .expect("the workflow did not finish within 30 s");
    assert_eq!(result.expect("the workflow failed"), Ok(22));
    assert_eq!(
        switch.load(Ordering::SeqCst),
        PASS,
        "the writer was not cut"
    );
    assert_eq!(LONE_RUNS.load(Ordering::SeqCst), 1, "the step ran again");
    let steps = journal.strings(
        "SELECT count(*)::text FROM durable_steps s JOIN durable_workflows w ON w.run = s.run
         WHERE w.id = 'lone'",
        &[],
    );
    assert_eq!(steps, ["1"]);
    rt.close().await.expect("close");
}
