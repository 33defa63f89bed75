//! The store contract: the rules every [`Store`] keeps, as one suite of tests that runs
//! against each implementation.
//!
//! The docs of [`Store`] and `docs/journal.md` state the rules; each test below checks
//! one of them through the trait alone, on a fresh journal. A store joins by adding one
//! line at the end of this file, naming itself and how it opens a journal in a
//! directory:
//!
//! ```ignore
//! store_contract!(postgres, |dir: &Path| -> Arc<dyn Store> { Arc::new(open_postgres(dir)) },
//!     |dir: &Path| damage_postgres(dir));
//! ```
//!
//! The opener gets an empty directory per test, and the same directory again after
//! [`Store::close`], when it must open the same journal. Reads are called off the async
//! threads (`spawn_blocking`), as the runtime calls them. Writes apply in the order they
//! are made (the engine relies on it: a give-back follows the wait it undoes), so a
//! later write's answer serves as a barrier: once it is in, the earlier writes have been
//! applied (a parked wait is parked). The suite's own scratch records (the barrier's
//! patch marker, [`Journal::drain`]'s waits) name runs that were never created.
//!
//! A store also says how to damage every value its journal holds behind its back (the
//! third argument), so that the checksum rule is checked too: a damaged value is
//! refused, never returned.
//!
//! A rule a store does not keep yet is marked `#[ignore]` in the macro's list, with the
//! reason. Not covered here: transaction steps (their work is in one database's
//! flavour).

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{
    Ack, Created, Effect, Finish, Finished, NewMessage, NewWorkflow, RecordStatus, RecordedOutcome,
    RecordedStep, SideRecords, StepKey, StepRecord, Store, Wait, WaitFor, WaitRecord,
    WorkflowRecord,
};
#[allow(unused_imports)] // For the stores' lines at the end of the file.
use super::{Durability, JournalOptions, SqliteStore};
use crate::codec::{ByteBuf, Codec, Fingerprint, nested};
use crate::error::{CancelReason, FailureKind, StoreError, StoreErrorKind};
use crate::path::StepPath;

/// Runs every rule of the contract against one store: `$store` names the test module,
/// `$open` opens (or creates) the store's journal in a directory, and `$damage` changes
/// every value of the (closed) journal in a directory so that it no longer matches its
/// checksum.
macro_rules! store_contract {
    ($store:ident, $open:expr, $damage:expr) => {
        store_contract!(@rules $store, $open, $damage;
            create_is_idempotent,
            a_path_is_recorded_once,
            a_refused_record_has_no_effect,
            records_for_a_run_the_journal_lacks_are_refused,
            records_round_trip,
            steps_are_sorted_by_path,
            histories_read_each_run_as_steps_and_side_records_do,
            steps_after_reads_a_run_in_path_order_batches,
            finish_records_the_outcome_of_a_pending_run,
            finish_respects_a_committed_cancel,
            pending_workflows_lists_only_pending_runs,
            cancel_is_recursive_over_pending_descendants,
            resume_makes_a_stopped_run_and_its_cancelled_descendants_pending,
            a_waiting_message_is_taken_at_once,
            a_parked_wait_is_answered_by_the_commit_that_sends,
            a_recorded_wait_that_cannot_record_takes_nothing,
            a_wait_that_may_not_park_answers_none,
            a_parked_wait_whose_waiter_left_takes_nothing,
            an_event_answers_every_wait_until_replaced,
            a_parked_event_wait_wakes_when_the_event_is_set,
            a_send_effect_reaches_a_waiting_receiver,
            expire_records_none_unless_answered_first,
            give_back_puts_the_message_back_at_the_front,
            given_back_messages_keep_their_order,
            #[ignore = "not required: each given-back message goes first, and the engine \
                        gives back in the reverse of the order it took (docs/journal.md)"]
            given_back_messages_keep_their_order_given_back_as_taken,
            give_back_follows_a_wait_answered_at_once,
            a_recv_that_leaves_then_gives_back_keeps_no_message,
            messages_are_delivered_in_order,
            competing_waits_never_share_a_message,
            side_records_hold_start_records_and_patches,
            concurrent_writes_all_commit,
            concurrent_records_are_refused_each_on_its_own,
            concurrent_finishes_are_answered_each_on_its_own,
            concurrent_creates_are_answered_each_on_its_own,
            a_write_whose_ack_is_dropped_still_happens,
            close_commits_what_was_queued,
        );
    };
    (@rules $store:ident, $open:expr, $damage:expr; $($(#[$attr:meta])* $rule:ident,)*) => {
        mod $store {
            use super::*;
            $(
                $(#[$attr])*
                #[tokio::test]
                async fn $rule() {
                    super::$rule($open).await;
                }
            )*

            #[tokio::test]
            async fn damaged_values_are_refused() {
                super::damaged_values_are_refused($open, $damage).await;
            }
        }
    };
}

/// How a store damages every value of the closed journal in a directory.
type Damage = fn(&Path);

/// How a store opens its journal in a directory.
type Open = fn(&Path) -> Arc<dyn Store>;

/// How long a write may take to answer before its test fails (rather than hangs).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A store on a fresh journal in a directory of its own.
struct Journal {
    dir: tempfile::TempDir,
    open: Open,
    store: Arc<dyn Store>,
    /// The next path [`Journal::drain`] records a wait at.
    drained: AtomicU32,
}

impl Journal {
    fn new(open: Open) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = open(dir.path());
        Journal {
            dir,
            open,
            store,
            drained: AtomicU32::new(0),
        }
    }

    async fn create(&self, workflow: NewWorkflow) -> Created {
        ok(self.store.create_workflow(workflow)).await
    }

    async fn record_step(&self, step: StepRecord) {
        ok(self.store.record_step(step)).await;
    }

    async fn send(&self, message: NewMessage) {
        ok(self.store.send(message)).await;
    }

    async fn finish(&self, id: &str, outcome: Finished) -> bool {
        ok(self.store.finish_workflow(finish(id, outcome))).await
    }

    /// Cancels `id`; answers the ids cancelled, sorted.
    async fn cancel(&self, id: &str, reason: CancelReason) -> Vec<String> {
        let mut ids = ok(self.store.cancel(id.to_owned(), reason, 50)).await;
        ids.sort();
        ids
    }

    /// Resumes `id`; answers the ids resumed, sorted.
    async fn resume(&self, id: &str) -> Vec<String> {
        let mut ids = ok(self.store.resume(id.to_owned(), 60)).await;
        ids.sort();
        ids
    }

    // Reads.

    /// Runs a read off the async threads, as the runtime does.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .expect("a read panicked")
    }

    async fn steps(&self, workflow_id: &str) -> Vec<RecordedStep> {
        let id = workflow_id.to_owned();
        self.read(move |s| s.steps(&id)).await.expect("steps")
    }

    async fn find(&self, id: &str) -> Option<WorkflowRecord> {
        let id = id.to_owned();
        self.read(move |s| s.workflow(&id)).await.expect("workflow")
    }

    async fn workflow(&self, id: &str) -> WorkflowRecord {
        self.find(id)
            .await
            .unwrap_or_else(|| panic!("workflow {id} is not in the journal"))
    }

    async fn status(&self, id: &str) -> RecordStatus {
        self.workflow(id).await.status
    }

    /// The ids of the pending runs, sorted.
    async fn pending(&self) -> Vec<String> {
        let pending = self.read(|s| s.pending_workflows()).await;
        let mut ids: Vec<String> = pending
            .expect("pending_workflows")
            .into_iter()
            .map(|w| w.id)
            .collect();
        ids.sort();
        ids
    }

    async fn side_records(&self, workflow_id: &str) -> SideRecords {
        let id = workflow_id.to_owned();
        self.read(move |s| s.side_records(&id))
            .await
            .expect("side_records")
    }

    /// Returns once every write made before it has been applied (see the module docs).
    async fn barrier(&self) {
        self.create(workflow("barrier")).await;
        ok(self
            .store
            .record_patch(Arc::from("barrier"), at("1"), "barrier"))
        .await;
    }

    /// Takes every message queued for `destination` on `topic`, in the order the store
    /// hands them out, by recorded waits that do not park.
    async fn drain(&self, destination: &str, topic: &str) -> Vec<String> {
        self.create(workflow("drain")).await;
        let mut taken = Vec::new();
        loop {
            // No test queues this many: the waits are not taking what they answer.
            assert!(taken.len() <= 1_000, "recorded waits do not take messages");
            let n = self.drained.fetch_add(1, Ordering::Relaxed) + 1;
            let wait = Wait {
                park: false,
                ..take(recv(destination, topic), record("drain", &n.to_string()))
            };
            match ok(self.store.wait(wait)).await {
                Some(message) => taken.push(text(&message)),
                None => return taken,
            }
        }
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.read(|s| s.close()).await
    }

    /// Closes the store and opens the same journal again.
    async fn reopen(&mut self) {
        let _ = self.close().await;
        self.store = (self.open)(self.dir.path());
    }
}

// Answers.

/// The answer to a write; fails the test if none comes in time.
async fn answer<T>(ack: Ack<T>) -> Result<T, StoreError> {
    match tokio::time::timeout(ANSWER_WITHIN, ack).await {
        Ok(answer) => answer,
        Err(_) => panic!("the store did not answer a write within {ANSWER_WITHIN:?}"),
    }
}

/// The answer to a write that must succeed.
async fn ok<T>(ack: Ack<T>) -> T {
    answer(ack)
        .await
        .unwrap_or_else(|e| panic!("the write failed: {e}"))
}

/// The kind of error of a write that must fail.
async fn refused<T: Debug>(ack: Ack<T>) -> StoreErrorKind {
    match answer(ack).await {
        Ok(v) => panic!("the write answered {v:?} where it must fail"),
        Err(e) => e.kind(),
    }
}

/// Whether a write is still unanswered.
fn waiting<T>(ack: &mut Ack<T>) -> bool {
    ack.try_reply().is_none()
}

/// The answer of a wait, as the text it carries.
async fn said(ack: Ack<Option<Vec<u8>>>) -> Option<String> {
    ok(ack).await.map(|m| text(&m))
}

// Records.

/// A journal value holding `s`.
fn value(s: &str) -> Vec<u8> {
    Codec::default().encode(s).expect("a string encodes")
}

/// The text a journal value made by [`value`] holds.
fn text(bytes: &[u8]) -> String {
    Codec::decode(bytes).expect("a value made by `value`")
}

fn at(path: &str) -> StepPath {
    path.parse().expect("a step path")
}

fn paths(steps: &[RecordedStep]) -> Vec<String> {
    steps.iter().map(|s| s.path.to_string()).collect()
}

/// What a recorded wait answered, read as the engine replays it.
fn recorded_answer(step: &RecordedStep) -> Option<String> {
    let RecordedOutcome::Output(output) = &step.outcome else {
        panic!("step {} holds no answer: {:?}", step.path, step.outcome);
    };
    let answer: Option<ByteBuf> = Codec::decode(output).expect("a wait's record");
    answer.map(|inner| text(&nested(output, &inner.0)))
}

fn workflow(id: &str) -> NewWorkflow {
    NewWorkflow {
        id: Arc::from(id),
        name: "flow",
        input: value(id),
        app_version: None,
        created_at: 1_000,
        parent_id: None,
        deadline_at: None,
        queued: None,
    }
}

/// A child of `parent`, with the id the engine gives it.
fn child(parent: &str, position: u32) -> NewWorkflow {
    NewWorkflow {
        parent_id: Some(Arc::from(parent)),
        ..workflow(&format!("{parent}/{position}"))
    }
}

fn step(workflow_id: &str, path: &str, outcome: RecordedOutcome) -> StepRecord {
    StepRecord {
        workflow_id: Arc::from(workflow_id),
        path: at(path),
        name: "step",
        args: None,
        outcome,
        attempts: 1,
        started_at: 10,
        finished_at: 20,
        attempt_times: None,
        effect: Effect::None,
    }
}

fn output(workflow_id: &str, path: &str, v: &str) -> StepRecord {
    step(workflow_id, path, RecordedOutcome::Output(value(v)))
}

/// A step that sets event `key` of its workflow to `v`.
fn set_event(workflow_id: &str, path: &str, key: &str, v: &str) -> StepRecord {
    StepRecord {
        name: "durable::set_event",
        effect: Effect::SetEvent(Box::new((key.to_owned(), value(v)))),
        ..output(workflow_id, path, "()")
    }
}

/// A step that sends `m`.
fn send_effect(workflow_id: &str, path: &str, m: NewMessage) -> StepRecord {
    StepRecord {
        name: "durable::send",
        effect: Effect::Send(Box::new(m)),
        ..output(workflow_id, path, "()")
    }
}

fn finish(id: &str, outcome: Finished) -> Finish {
    Finish {
        id: Arc::from(id),
        outcome,
        at: 500,
    }
}

fn completed(v: &str) -> Finished {
    Finished::Completed(value(v))
}

fn panicked() -> Finished {
    Finished::Failed(FailureKind::StepPanicked, "step 2 panicked".to_owned())
}

fn message(destination: &str, topic: &str, payload: &str) -> NewMessage {
    NewMessage {
        destination: destination.to_owned(),
        topic: topic.to_owned(),
        payload: value(payload),
        sent_at: 100,
    }
}

fn recv(destination: &str, topic: &str) -> WaitFor {
    WaitFor::Message {
        destination: destination.to_owned(),
        topic: topic.to_owned(),
    }
}

fn event(workflow_id: &str, key: &str) -> WaitFor {
    WaitFor::Event {
        workflow_id: workflow_id.to_owned(),
        key: key.to_owned(),
    }
}

fn key(workflow_id: &str, path: &str) -> StepKey {
    StepKey {
        workflow_id: Arc::from(workflow_id),
        path: at(path),
        name: "durable::recv",
        args: None,
    }
}

fn record(workflow_id: &str, path: &str) -> WaitRecord {
    WaitRecord {
        key: key(workflow_id, path),
        started_at: 30,
        deadline_at: None,
    }
}

/// A recorded wait that parks, as `recv` and `get_event` make.
fn take(what: WaitFor, record: WaitRecord) -> Wait {
    Wait {
        what,
        record: Some(record),
        park: true,
    }
}

/// A wait that neither records nor parks.
fn peek(what: WaitFor) -> Wait {
    Wait {
        what,
        record: None,
        park: false,
    }
}

// The rules.

/// A second create of the same id answers the first run's record and changes nothing.
async fn create_is_idempotent(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("parent")).await;
    let first = NewWorkflow {
        name: "first",
        input: value("input"),
        deadline_at: Some(5_000),
        queued: None,
        ..child("parent", 1)
    };
    assert!(matches!(j.create(first).await, Created::New));
    let before = j.workflow("parent/1").await;
    assert_eq!(before.id, "parent/1");
    assert_eq!(before.name, "first");
    assert_eq!(before.status, RecordStatus::Pending);
    assert_eq!(before.input, value("input"));
    assert_eq!(before.parent_id.as_deref(), Some("parent"));
    assert_eq!(before.deadline_at, Some(5_000));
    assert!(before.output.is_none() && before.failure.is_none());
    assert!(before.cancelled.is_none() && before.damaged.is_none());

    let again = NewWorkflow {
        name: "second",
        input: value("other"),
        created_at: 2_000,
        parent_id: None,
        deadline_at: None,
        queued: None,
        ..workflow("parent/1")
    };
    let Created::Existing(existing) = j.create(again).await else {
        panic!("a second create of the same id must answer the existing run");
    };
    assert_eq!(format!("{existing:?}"), format!("{before:?}"));
    assert_eq!(
        format!("{:?}", j.workflow("parent/1").await),
        format!("{before:?}")
    );

    // A finished run is answered as it stands, and stays finished.
    assert!(j.finish("parent/1", completed("out")).await);
    let Created::Existing(existing) = j.create(child("parent", 1)).await else {
        panic!("a create of a finished run's id must answer the existing run");
    };
    assert_eq!(existing.status, RecordStatus::Completed);
    assert_eq!(existing.output, Some(value("out")));
    assert_eq!(existing.name, "first");
    assert_eq!(j.status("parent/1").await, RecordStatus::Completed);
    assert!(j.find("nobody").await.is_none());
}

/// A second record at a path fails (`Invariant`) and leaves the first unchanged; of two
/// records made together, the first made wins.
async fn a_path_is_recorded_once(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    j.record_step(output("w", "1", "first")).await;
    let again = StepRecord {
        name: "other",
        attempts: 5,
        ..step("w", "1", RecordedOutcome::Panicked("boom".to_owned()))
    };
    assert_eq!(
        refused(j.store.record_step(again)).await,
        StoreErrorKind::Invariant
    );
    assert_eq!(
        refused(j.store.record_step(output("w", "1", "third"))).await,
        StoreErrorKind::Invariant
    );

    let a = j.store.record_step(output("w", "2", "a"));
    let b = j.store.record_step(output("w", "2", "b"));
    ok(a).await;
    assert_eq!(refused(b).await, StoreErrorKind::Invariant);

    let steps = j.steps("w").await;
    assert_eq!(paths(&steps), ["1", "2"]);
    assert_eq!(steps[0].outcome, RecordedOutcome::Output(value("first")));
    assert_eq!((steps[0].name.as_str(), steps[0].attempts), ("step", 1));
    assert_eq!(steps[1].outcome, RecordedOutcome::Output(value("a")));
}

/// A record refused for its path does not do its effect: it sends nothing and sets no
/// event.
async fn a_refused_record_has_no_effect(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    j.record_step(output("w", "1", "first")).await;
    let send = send_effect("w", "1", message("r", "t", "m"));
    assert_eq!(
        refused(j.store.record_step(send)).await,
        StoreErrorKind::Invariant
    );
    let set = set_event("w", "1", "k", "v");
    assert_eq!(
        refused(j.store.record_step(set)).await,
        StoreErrorKind::Invariant
    );
    assert_eq!(said(j.store.wait(peek(recv("r", "t")))).await, None);
    assert_eq!(said(j.store.wait(peek(event("w", "k")))).await, None);
    assert_eq!(
        j.steps("w").await[0].outcome,
        RecordedOutcome::Output(value("first"))
    );
}

/// Everything recorded for a run belongs to a workflow the journal holds: a record for
/// an id it lacks (the row deleted outside durable, or never created) is refused, and
/// neither writes anything nor takes a message.
async fn records_for_a_run_the_journal_lacks_are_refused(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    j.send(message("ghost", "t", "m")).await;
    let refusals = [
        refused(j.store.record_step(output("ghost", "1", "v"))).await,
        refused(j.store.record_step(set_event("ghost", "2", "k", "v"))).await,
        refused(j.store.record_started(key("ghost", "3"), 1)).await,
        refused(j.store.wait(take(recv("ghost", "t"), record("ghost", "4")))).await,
    ];
    assert_eq!(refusals, [StoreErrorKind::Invariant; 4]);
    // A patch marker is refused too, or reads back for nobody.
    let _ = answer(j.store.record_patch(Arc::from("ghost"), at("5"), "p")).await;
    j.barrier().await;
    assert!(j.steps("ghost").await.is_empty());
    let side = j.side_records("ghost").await;
    assert!(side.started.is_empty() && side.patches.is_empty());
    assert_eq!(said(j.store.wait(peek(event("ghost", "k")))).await, None);
    // The message is still there for the run once it exists.
    j.create(workflow("ghost")).await;
    assert_eq!(j.drain("ghost", "t").await, ["m"]);
    assert!(j.steps("w").await.is_empty());
}

/// Every field of a step record reads back as written: output bytes, panics and
/// interruptions, attempts, times and the argument fingerprint (`Some` of any 64 bits,
/// or `None`).
async fn records_round_trip(open: Open) {
    let cases = || {
        [
            StepRecord {
                name: "charge",
                args: Some(Fingerprint(u64::MAX)),
                attempts: 3,
                started_at: 1_700_000_000_000,
                finished_at: 1_700_000_000_250,
                ..output("w", "1", "receipt")
            },
            StepRecord {
                name: "raw",
                args: Some(Fingerprint(0)),
                ..step("w", "2", RecordedOutcome::Output(vec![2, 0, 0xff, 0x10, 0]))
            },
            StepRecord {
                name: "explode",
                args: None,
                attempts: u32::MAX,
                started_at: 0,
                finished_at: i64::MAX,
                ..step(
                    "w",
                    "3",
                    RecordedOutcome::Panicked("it went `boom` ✗".to_owned()),
                )
            },
            StepRecord {
                name: "ship",
                args: Some(Fingerprint(0x8000_0000_0000_0001)),
                attempts: 2,
                ..step(
                    "w",
                    "4.1",
                    RecordedOutcome::Interrupted("interrupted".to_owned()),
                )
            },
        ]
    };
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    for s in cases() {
        j.record_step(s).await;
    }
    let recorded = j.steps("w").await;
    assert_eq!(recorded.len(), 4);
    for (got, want) in recorded.iter().zip(cases()) {
        assert_eq!(got.path, want.path);
        assert_eq!(got.name, want.name);
        assert_eq!(got.args, want.args, "the fingerprint of step {}", want.path);
        assert_eq!(got.outcome, want.outcome);
        assert_eq!(got.attempts, want.attempts);
        assert_eq!(
            (got.started_at, got.finished_at),
            (want.started_at, want.finished_at)
        );
    }
}

/// `steps` answers one run's records sorted by path (as `StepPath` orders them, not as
/// text), and only that run's.
async fn steps_are_sorted_by_path(open: Open) {
    let j = Journal::new(open);
    for w in [workflow("w"), child("w", 1), workflow("w2")] {
        j.create(w).await;
    }
    for p in ["3", "2.10", "10", "1", "2.1", "2", "2.1.1", "2.9"] {
        j.record_step(output("w", p, p)).await;
    }
    j.record_step(output("w/1", "1", "child")).await;
    j.record_step(output("w2", "1", "other")).await;
    let steps = j.steps("w").await;
    assert_eq!(
        paths(&steps),
        ["1", "2", "2.1", "2.1.1", "2.9", "2.10", "3", "10"]
    );
    for s in &steps {
        assert_eq!(
            s.outcome,
            RecordedOutcome::Output(value(&s.path.to_string()))
        );
    }
    assert_eq!(paths(&j.steps("w/1").await), ["1"]);
    assert!(j.steps("nobody").await.is_empty());
}

/// `histories` answers, for each id in the order asked, what `steps` and `side_records`
/// answer for it: an unknown run's history is empty, and no run's records leak into
/// another's.
async fn histories_read_each_run_as_steps_and_side_records_do(open: Open) {
    let j = Journal::new(open);
    for w in [workflow("w"), child("w", 1), workflow("w2")] {
        j.create(w).await;
    }
    for p in ["2", "10", "1"] {
        j.record_step(output("w", p, p)).await;
    }
    j.record_step(output("w/1", "1", "child")).await;
    ok(j.store.record_started(key("w", "3"), 7)).await;
    ok(j.store.record_patch(Arc::from("w2"), at("1"), "fix")).await;
    let ids: Vec<Arc<str>> = ["w2", "nobody", "w", "w/1", "w"]
        .into_iter()
        .map(Arc::from)
        .collect();
    let asked = ids.clone();
    let histories = j
        .read(move |s| s.histories(&asked, usize::MAX))
        .await
        .expect("histories");
    assert_eq!(histories.len(), ids.len());
    let side = |r: &SideRecords| {
        (
            r.started
                .iter()
                .map(|s| (s.path.to_string(), s.wake_at))
                .collect::<Vec<_>>(),
            r.patches
                .iter()
                .map(|(p, n)| (p.to_string(), n.clone()))
                .collect::<Vec<_>>(),
        )
    };
    for (id, history) in ids.iter().zip(histories) {
        let (steps, records) = history.expect("the run's history");
        let expected = j.steps(id).await;
        assert_eq!(paths(&steps), paths(&expected), "{id}");
        for (got, want) in steps.iter().zip(&expected) {
            assert_eq!(got.outcome, want.outcome, "{id}");
            assert_eq!(got.name, want.name, "{id}");
        }
        assert_eq!(side(&records), side(&j.side_records(id).await), "{id}");
    }
}

/// `steps_after` answers the steps after a path, in path order, at most `limit`:
/// batches read one after the other give every step once, in order, whatever the
/// batch size; `histories` with a limit gives the first batch.
async fn steps_after_reads_a_run_in_path_order_batches(open: Open) {
    let j = Journal::new(open);
    for w in [workflow("w"), workflow("w2")] {
        j.create(w).await;
    }
    let mut all = Vec::new();
    for top in 1..=25u32 {
        all.push(top.to_string());
        if top % 4 == 0 {
            for below in [1, 9, 10, 11, 100] {
                all.push(format!("{top}.{below}"));
            }
        }
    }
    // Recorded in another order than path order.
    for p in all.iter().rev() {
        j.record_step(output("w", p, p)).await;
    }
    j.record_step(output("w2", "5", "other")).await;
    let whole = j.steps("w").await;
    assert_eq!(whole.len(), all.len());
    for limit in [1, 2, 7, 1000] {
        let mut read: Vec<StepPath> = Vec::new();
        loop {
            let after = read.last().cloned();
            let batch = j
                .read(move |s| s.steps_after("w", after.as_ref(), limit))
                .await
                .expect("steps_after");
            assert!(batch.len() <= limit);
            let done = batch.len() < limit;
            read.extend(batch.into_iter().map(|s| s.path));
            if done {
                break;
            }
        }
        let want: Vec<StepPath> = whole.iter().map(|s| s.path.clone()).collect();
        assert_eq!(read, want, "limit {limit}");
        let first = j
            .read(move |s| s.histories(&[Arc::from("w")], limit))
            .await
            .expect("histories");
        let (steps, _) = first.into_iter().next().expect("one").expect("history");
        assert_eq!(
            paths(&steps),
            paths(&whole[..limit.min(whole.len())]),
            "limit {limit}"
        );
    }
    let after_all = whole.last().map(|s| s.path.clone());
    let none = j
        .read(move |s| s.steps_after("w", after_all.as_ref(), 10))
        .await
        .expect("steps_after");
    assert!(none.is_empty());
}

/// Finishing a pending run answers `true` and stores its outcome; finishing a run that
/// is not pending (or not there) answers `false` and changes nothing.
async fn finish_records_the_outcome_of_a_pending_run(open: Open) {
    let j = Journal::new(open);
    for id in ["a", "b"] {
        j.create(workflow(id)).await;
    }
    assert!(j.finish("a", completed("out")).await);
    let a = j.workflow("a").await;
    assert_eq!(a.status, RecordStatus::Completed);
    assert_eq!(a.output, Some(value("out")));
    assert!(a.failure.is_none() && a.cancelled.is_none());

    assert!(j.finish("b", panicked()).await);
    let b = j.workflow("b").await;
    assert_eq!(b.status, RecordStatus::Failed);
    assert_eq!(
        b.failure,
        Some((FailureKind::StepPanicked, "step 2 panicked".to_owned()))
    );
    assert!(b.output.is_none() && b.cancelled.is_none());

    assert!(!j.finish("a", panicked()).await);
    assert!(!j.finish("b", completed("late")).await);
    assert_eq!(format!("{:?}", j.workflow("a").await), format!("{a:?}"));
    assert_eq!(format!("{:?}", j.workflow("b").await), format!("{b:?}"));

    assert!(!j.finish("nobody", completed("x")).await);
    assert!(j.find("nobody").await.is_none());
}

/// A cancellation that committed first wins: the finish answers `false` and the run
/// stays cancelled, with its reason.
async fn finish_respects_a_committed_cancel(open: Open) {
    let j = Journal::new(open);
    for id in ["a", "b", "c"] {
        j.create(workflow(id)).await;
    }
    let cancelled = j.cancel("a", CancelReason::Requested).await;
    assert_eq!(cancelled, ["a"]);
    assert!(!j.finish("a", completed("out")).await);
    let a = j.workflow("a").await;
    assert_eq!(a.status, RecordStatus::Cancelled);
    assert_eq!(a.cancelled, Some(CancelReason::Requested));
    assert!(a.output.is_none() && a.failure.is_none());

    // Made together: the one made first wins.
    let cancel = j
        .store
        .cancel("b".to_owned(), CancelReason::DeadlineExceeded, 50);
    let finished = j.store.finish_workflow(finish("b", panicked()));
    assert_eq!(ok(cancel).await, ["b"]);
    assert!(!ok(finished).await);
    let b = j.workflow("b").await;
    assert_eq!(b.status, RecordStatus::Cancelled);
    assert_eq!(b.cancelled, Some(CancelReason::DeadlineExceeded));
    assert!(b.failure.is_none());

    let finished = j.store.finish_workflow(finish("c", completed("out")));
    let cancel = j.store.cancel("c".to_owned(), CancelReason::Requested, 50);
    assert!(ok(finished).await);
    assert!(ok(cancel).await.is_empty());
    assert_eq!(j.status("c").await, RecordStatus::Completed);
}

/// `pending_workflows` lists the pending runs, and only them.
async fn pending_workflows_lists_only_pending_runs(open: Open) {
    let j = Journal::new(open);
    assert!(j.pending().await.is_empty());
    for w in [
        workflow("p"),
        child("p", 1),
        workflow("done"),
        workflow("failed"),
        workflow("stopped"),
    ] {
        j.create(w).await;
    }
    j.finish("done", completed("out")).await;
    j.finish("failed", panicked()).await;
    j.cancel("stopped", CancelReason::Requested).await;
    assert_eq!(j.pending().await, ["p", "p/1"]);
    let pending = j.read(|s| s.pending_workflows()).await.expect("pending");
    assert!(pending.iter().all(|w| w.status == RecordStatus::Pending));
    j.resume("stopped").await;
    assert_eq!(j.pending().await, ["p", "p/1", "stopped"]);
}

/// A cancel cancels the run and its pending descendants (children and their children,
/// found through `parent_id`), with its reason, and answers exactly the ids it
/// cancelled; finished runs and runs outside the tree stay as they are.
async fn cancel_is_recursive_over_pending_descendants(open: Open) {
    let j = Journal::new(open);
    for w in [
        workflow("root"),
        child("root", 1),
        child("root/1", 1),
        child("root", 2),
        child("root/2", 1),
        child("root", 3),
        // Not descendants, though their ids look alike.
        workflow("root/9"),
        workflow("root2"),
        workflow("rooted"),
    ] {
        j.create(w).await;
    }
    j.finish("root/2", completed("done")).await;
    j.finish("root/3", panicked()).await;

    let ids = j.cancel("root", CancelReason::Requested).await;
    assert_eq!(ids, ["root", "root/1", "root/1/1", "root/2/1"]);
    for id in &ids {
        let w = j.workflow(id).await;
        assert_eq!(w.status, RecordStatus::Cancelled, "{id}");
        assert_eq!(w.cancelled, Some(CancelReason::Requested), "{id}");
    }
    let done = j.workflow("root/2").await;
    assert_eq!(done.status, RecordStatus::Completed);
    assert_eq!(done.output, Some(value("done")));
    assert_eq!(j.status("root/3").await, RecordStatus::Failed);
    assert_eq!(j.pending().await, ["root/9", "root2", "rooted"]);

    // Nothing left to cancel.
    let none = j.cancel("root", CancelReason::Requested).await;
    assert!(none.is_empty());
    let none = j.cancel("root/3", CancelReason::Requested).await;
    assert!(none.is_empty());
    let none = j.cancel("nobody", CancelReason::Requested).await;
    assert!(none.is_empty());
    assert_eq!(j.status("root/3").await, RecordStatus::Failed);

    let ids = j.cancel("rooted", CancelReason::DeadlineExceeded).await;
    assert_eq!(ids, ["rooted"]);
    let w = j.workflow("rooted").await;
    assert_eq!(w.cancelled, Some(CancelReason::DeadlineExceeded));
}

/// A resume makes a cancelled or failed run and its cancelled descendants pending again,
/// drops their recorded panics and interruptions (with the interrupted steps' start
/// records) and their deadlines, keeps their outputs, and answers the ids it resumed.
/// Anything else (a pending or completed run, a failed descendant) stays as it is.
async fn resume_makes_a_stopped_run_and_its_cancelled_descendants_pending(open: Open) {
    let j = Journal::new(open);
    for w in [
        NewWorkflow {
            deadline_at: Some(9_000),
            queued: None,
            ..workflow("root")
        },
        NewWorkflow {
            deadline_at: Some(9_000),
            queued: None,
            ..child("root", 1)
        },
        child("root/1", 1),
        child("root", 2),
        child("root", 3),
        workflow("f"),
    ] {
        j.create(w).await;
    }
    let boom = || RecordedOutcome::Panicked("boom".to_owned());
    let cut = || RecordedOutcome::Interrupted("interrupted".to_owned());
    for s in [
        output("root", "1", "a"),
        step("root", "2", boom()),
        output("root/1", "1", "b"),
        step("root/1", "2", cut()),
        output("f", "1", "c"),
        step("f", "2.1", boom()),
        step("f", "3", cut()),
    ] {
        j.record_step(s).await;
    }
    // Start records: of the interrupted steps, and of one still running at the cancel.
    for (w, p) in [("root/1", "2"), ("root/1", "3"), ("f", "3")] {
        ok(j.store.record_started(key(w, p), 5)).await;
    }
    j.finish("root/2", completed("done")).await;
    j.finish("root/3", panicked()).await;
    j.finish("f", panicked()).await;
    j.cancel("root", CancelReason::DeadlineExceeded).await;

    let ids = j.resume("root").await;
    assert_eq!(ids, ["root", "root/1", "root/1/1"]);
    for id in &ids {
        let w = j.workflow(id).await;
        assert_eq!(w.status, RecordStatus::Pending, "{id}");
        assert!(w.cancelled.is_none() && w.failure.is_none(), "{id}");
        assert!(w.output.is_none(), "{id}");
        assert_eq!(w.deadline_at, None, "{id}");
    }
    let root = j.steps("root").await;
    assert_eq!(paths(&root), ["1"]);
    assert_eq!(root[0].outcome, RecordedOutcome::Output(value("a")));
    let kid = j.steps("root/1").await;
    assert_eq!(paths(&kid), ["1"]);
    assert_eq!(kid[0].outcome, RecordedOutcome::Output(value("b")));
    let started = j.side_records("root/1").await.started;
    let started: Vec<String> = started.iter().map(|s| s.path.to_string()).collect();
    assert_eq!(started, ["3"]);
    // Not cancelled: a completed child and a child that failed on its own.
    assert_eq!(j.workflow("root/2").await.output, Some(value("done")));
    assert_eq!(j.status("root/3").await, RecordStatus::Failed);

    // A failed run.
    assert_eq!(j.resume("f").await, ["f"]);
    let f = j.workflow("f").await;
    assert_eq!(f.status, RecordStatus::Pending);
    assert!(f.failure.is_none());
    assert_eq!(paths(&j.steps("f").await), ["1"]);
    assert!(j.side_records("f").await.started.is_empty());

    // Nothing to resume: pending, completed, unknown.
    for id in ["root", "root/2", "nobody"] {
        assert!(j.resume(id).await.is_empty(), "{id}");
    }
    assert_eq!(j.status("root/2").await, RecordStatus::Completed);
    assert_eq!(paths(&j.steps("root").await), ["1"]);
}

/// A message queued before a recorded wait is answered at once and taken: the next
/// wait does not get it. (A wait without a record takes nothing.)
async fn a_waiting_message_is_taken_at_once(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    j.send(message("w", "t", "m")).await;
    assert_eq!(
        said(j.store.wait(peek(recv("w", "t")))).await.as_deref(),
        Some("m")
    );
    let record = WaitRecord {
        key: StepKey {
            args: Some(Fingerprint(7)),
            ..key("w", "1")
        },
        started_at: 77,
        deadline_at: Some(1_000_000),
    };
    assert_eq!(
        said(j.store.wait(take(recv("w", "t"), record)))
            .await
            .as_deref(),
        Some("m")
    );
    let steps = j.steps("w").await;
    assert_eq!(paths(&steps), ["1"]);
    assert_eq!(recorded_answer(&steps[0]).as_deref(), Some("m"));
    assert_eq!(steps[0].name, "durable::recv");
    assert_eq!(steps[0].args, Some(Fingerprint(7)));
    assert_eq!(steps[0].started_at, 77);
    assert_eq!(said(j.store.wait(peek(recv("w", "t")))).await, None);
    // Answered at once: no deadline to keep.
    assert!(j.side_records("w").await.started.is_empty());
}

/// A parked wait is answered in the commit that sends its message (after the send's
/// own answer, without another commit), and records the answer as its step.
async fn a_parked_wait_is_answered_by_the_commit_that_sends(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    let mut wait = j.store.wait(take(recv("w", "t"), record("w", "1")));
    // Messages elsewhere do not answer it.
    j.send(message("w", "other", "no")).await;
    j.send(message("w2", "t", "no")).await;
    j.barrier().await;
    assert!(waiting(&mut wait), "a wait with nothing to take must park");
    assert!(j.steps("w").await.is_empty());

    let commits = j.store.commits();
    j.send(message("w", "t", "m")).await;
    assert_eq!(said(wait).await.as_deref(), Some("m"));
    assert_eq!(
        j.store.commits() - commits,
        1,
        "the wait must be answered in the send's commit"
    );
    let steps = j.steps("w").await;
    assert_eq!(paths(&steps), ["1"]);
    assert_eq!(recorded_answer(&steps[0]).as_deref(), Some("m"));
    assert!(j.drain("w", "t").await.is_empty());
    assert_eq!(j.drain("w", "other").await, ["no"]);
}

/// A recorded wait whose path is taken fails (`Invariant`) and takes nothing.
async fn a_recorded_wait_that_cannot_record_takes_nothing(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    j.record_step(output("w", "1", "first")).await;
    j.send(message("w", "t", "m")).await;
    assert_eq!(
        refused(j.store.wait(take(recv("w", "t"), record("w", "1")))).await,
        StoreErrorKind::Invariant
    );
    assert_eq!(j.drain("w", "t").await, ["m"]);
    let steps = j.steps("w").await;
    assert_eq!(steps[0].outcome, RecordedOutcome::Output(value("first")));
}

/// A wait that may not park answers `None` when nothing is there, and is gone: what
/// comes later stays for later waits.
async fn a_wait_that_may_not_park_answers_none(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    assert_eq!(said(j.store.wait(peek(recv("w", "t")))).await, None);
    assert_eq!(said(j.store.wait(peek(event("w", "k")))).await, None);
    let recorded = Wait {
        park: false,
        ..take(recv("w", "t"), record("w", "1"))
    };
    assert_eq!(said(j.store.wait(recorded)).await, None);
    j.send(message("w", "t", "m")).await;
    assert_eq!(j.drain("w", "t").await, ["m"]);
}

/// A parked wait whose waiter dropped its answer takes nothing: the message stays for
/// a later wait, and nothing is recorded.
async fn a_parked_wait_whose_waiter_left_takes_nothing(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    let wait = j.store.wait(take(recv("w", "t"), record("w", "1")));
    j.barrier().await;
    drop(wait);
    j.send(message("w", "t", "m")).await;
    j.barrier().await;
    assert!(j.steps("w").await.is_empty());
    assert_eq!(j.drain("w", "t").await, ["m"]);
}

/// An event set by a step record answers every wait for it (it is not taken), until
/// it is set again; a recorded wait records the value it saw.
async fn an_event_answers_every_wait_until_replaced(open: Open) {
    let j = Journal::new(open);
    for id in ["w", "r"] {
        j.create(workflow(id)).await;
    }
    j.record_step(set_event("w", "1", "k", "v1")).await;
    for _ in 0..2 {
        assert_eq!(
            said(j.store.wait(peek(event("w", "k")))).await.as_deref(),
            Some("v1")
        );
    }
    assert_eq!(said(j.store.wait(peek(event("w", "other")))).await, None);
    assert_eq!(said(j.store.wait(peek(event("r", "k")))).await, None);
    j.record_step(set_event("w", "2", "k", "v2")).await;
    let mut get = record("r", "1");
    get.key.name = "durable::get_event";
    assert_eq!(
        said(j.store.wait(take(event("w", "k"), get)))
            .await
            .as_deref(),
        Some("v2")
    );
    let steps = j.steps("r").await;
    assert_eq!(recorded_answer(&steps[0]).as_deref(), Some("v2"));
    assert_eq!(
        said(j.store.wait(peek(event("w", "k")))).await.as_deref(),
        Some("v2")
    );
    assert_eq!(paths(&j.steps("w").await), ["1", "2"]);
}

/// Waits parked for an event, recorded or not, are all answered in the commit that
/// sets it.
async fn a_parked_event_wait_wakes_when_the_event_is_set(open: Open) {
    let j = Journal::new(open);
    for id in ["w", "r"] {
        j.create(workflow(id)).await;
    }
    let mut recorded = j.store.wait(take(event("w", "k"), record("r", "1")));
    let mut outside = j.store.wait(Wait {
        what: event("w", "k"),
        record: None,
        park: true,
    });
    j.record_step(set_event("w", "1", "other", "no")).await;
    j.barrier().await;
    assert!(waiting(&mut recorded) && waiting(&mut outside));

    let commits = j.store.commits();
    j.record_step(set_event("w", "2", "k", "v")).await;
    assert_eq!(said(recorded).await.as_deref(), Some("v"));
    assert_eq!(said(outside).await.as_deref(), Some("v"));
    assert_eq!(j.store.commits() - commits, 1);
    assert_eq!(
        recorded_answer(&j.steps("r").await[0]).as_deref(),
        Some("v")
    );
}

/// A step record that sends a message delivers it with the record: to a parked wait
/// at once, or to a later one.
async fn a_send_effect_reaches_a_waiting_receiver(open: Open) {
    let j = Journal::new(open);
    for id in ["s", "r"] {
        j.create(workflow(id)).await;
    }
    let mut wait = j.store.wait(take(recv("r", "t"), record("r", "1")));
    j.barrier().await;
    assert!(waiting(&mut wait));
    j.record_step(send_effect("s", "1", message("r", "t", "m1")))
        .await;
    assert_eq!(said(wait).await.as_deref(), Some("m1"));
    j.record_step(send_effect("s", "2", message("r", "t", "m2")))
        .await;
    assert_eq!(
        said(j.store.wait(take(recv("r", "t"), record("r", "2"))))
            .await
            .as_deref(),
        Some("m2")
    );
    let sent = j.steps("s").await;
    assert_eq!(paths(&sent), ["1", "2"]);
    assert_eq!(sent[0].name, "durable::send");
    let got: Vec<_> = j.steps("r").await.iter().map(recorded_answer).collect();
    assert_eq!(got, [Some("m1".to_owned()), Some("m2".to_owned())]);
}

/// `expire` of a parked wait records `None` unless the wait was answered first, and
/// answers what it recorded; an expired wait takes nothing afterwards. A parked wait
/// with a deadline keeps it in a start record.
async fn expire_records_none_unless_answered_first(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    let deadline = |p: &str| WaitRecord {
        deadline_at: Some(9_000),
        ..record("w", p)
    };

    // Not answered: `None` is recorded.
    let mut wait = j.store.wait(take(recv("w", "t"), deadline("1")));
    j.barrier().await;
    let started = j.side_records("w").await.started;
    assert_eq!(started.len(), 1);
    assert_eq!(
        (started[0].path.to_string(), started[0].wake_at),
        ("1".to_owned(), Some(9_000))
    );
    assert_eq!(ok(j.store.expire(deadline("1"))).await, None);
    assert_eq!(recorded_answer(&j.steps("w").await[0]), None);
    j.send(message("w", "t", "m1")).await;
    j.barrier().await;
    match wait.try_reply() {
        None => {}
        Some(Err(e)) if e.kind() == StoreErrorKind::Closed => {}
        Some(other) => panic!("an expired wait is no longer parked, yet answered {other:?}"),
    }
    assert_eq!(j.drain("w", "t").await, ["m1"]);
    assert_eq!(recorded_answer(&j.steps("w").await[0]), None);

    // Answered before the expiry: that answer stands.
    let wait = j.store.wait(take(recv("w", "t"), deadline("2")));
    j.barrier().await;
    j.send(message("w", "t", "m2")).await;
    assert_eq!(
        said(j.store.expire(deadline("2"))).await.as_deref(),
        Some("m2")
    );
    assert_eq!(said(wait).await.as_deref(), Some("m2"));
    assert_eq!(
        recorded_answer(&j.steps("w").await[1]).as_deref(),
        Some("m2")
    );
    assert!(j.drain("w", "t").await.is_empty());

    // Expired before the send: the message stays.
    let wait = j.store.wait(take(recv("w", "t"), deadline("3")));
    j.barrier().await;
    let expired = j.store.expire(deadline("3"));
    let sent = j.store.send(message("w", "t", "m3"));
    assert_eq!(ok(expired).await, None);
    ok(sent).await;
    drop(wait);
    assert_eq!(j.drain("w", "t").await, ["m3"]);
    assert_eq!(recorded_answer(&j.steps("w").await[2]), None);

    // A send and the expiry at once: either answer, never both or neither. (Made
    // together, they may share a batch, where the expiry can apply first.)
    let wait = j.store.wait(take(recv("w", "t"), deadline("4")));
    j.barrier().await;
    let sent = j.store.send(message("w", "t", "m4"));
    let expired = j.store.expire(deadline("4"));
    ok(sent).await;
    let expired = said(expired).await;
    drop(wait);
    let steps = j.steps("w").await;
    assert_eq!(paths(&steps), ["1", "2", "3", "4"]);
    assert_eq!(recorded_answer(&steps[3]), expired);
    let left = j.drain("w", "t").await;
    match expired.as_deref() {
        Some(m) => assert_eq!((m, left.len()), ("m4", 0)),
        None => assert_eq!(left, ["m4"]),
    }
}

/// A give-back of a recv that took a message deletes its record and puts the message
/// back at the front of its queue, before messages sent after it. A record that holds
/// no message (a timeout), or none at all, gives back nothing.
async fn give_back_puts_the_message_back_at_the_front(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    j.send(message("w", "t", "m1")).await;
    j.send(message("w", "t", "m2")).await;
    let took = j.store.wait(take(recv("w", "t"), record("w", "1")));
    assert_eq!(said(took).await.as_deref(), Some("m1"));
    j.send(message("w", "t", "m3")).await;
    ok(j.store.give_back(key("w", "1"), "t".to_owned())).await;
    assert!(j.steps("w").await.is_empty());
    assert_eq!(j.drain("w", "t").await, ["m1", "m2", "m3"]);

    // Nothing to give back: a timeout, a path never recorded.
    let wait = j.store.wait(take(recv("w", "t"), record("w", "2")));
    j.barrier().await;
    assert_eq!(ok(j.store.expire(record("w", "2"))).await, None);
    drop(wait);
    ok(j.store.give_back(key("w", "2"), "t".to_owned())).await;
    ok(j.store.give_back(key("w", "3"), "t".to_owned())).await;
    let steps = j.steps("w").await;
    assert_eq!(paths(&steps), ["2"]);
    assert_eq!(recorded_answer(&steps[0]), None);
    assert!(j.drain("w", "t").await.is_empty());
}

/// Several messages given back keep the order they were sent in, when given back in
/// the reverse of the order they were taken (as a select's losers drop).
async fn given_back_messages_keep_their_order(open: Open) {
    give_back_two(open, ["2", "1"]).await;
}

/// Several messages given back keep the order they were sent in, when given back in the
/// order they were taken.
async fn given_back_messages_keep_their_order_given_back_as_taken(open: Open) {
    give_back_two(open, ["1", "2"]).await;
}

/// Two recvs take `a` and `b` (at 1 and 2), then give them back in `order`: `c` stays
/// last, and `a` and `b` come back in the order they were sent.
async fn give_back_two(open: Open, order: [&str; 2]) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    for m in ["a", "b", "c"] {
        j.send(message("w", "t", m)).await;
    }
    for p in ["1", "2"] {
        ok(j.store.wait(take(recv("w", "t"), record("w", p)))).await;
    }
    for p in order {
        ok(j.store.give_back(key("w", p), "t".to_owned())).await;
    }
    assert!(j.steps("w").await.is_empty());
    assert_eq!(
        j.drain("w", "t").await,
        ["a", "b", "c"],
        "given back at {order:?}"
    );
}

/// A give-back made right after a wait, before its answer came, gives back what the
/// wait took.
async fn give_back_follows_a_wait_answered_at_once(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    j.send(message("w", "t", "m")).await;
    let wait = j.store.wait(take(recv("w", "t"), record("w", "1")));
    let back = j.store.give_back(key("w", "1"), "t".to_owned());
    ok(back).await;
    assert_eq!(said(wait).await.as_deref(), Some("m"));
    assert!(j.steps("w").await.is_empty());
    assert_eq!(j.drain("w", "t").await, ["m"]);
}

/// A recv that leaves (drops its wait's answer) and then gives back keeps no message,
/// whenever the send comes: before the wait is dropped (the wait took it, the give-back
/// returns it), between the drop and the give-back, or after both (nobody waits, the
/// message stays queued). The engine gives back in this order (`Undelivered`).
async fn a_recv_that_leaves_then_gives_back_keeps_no_message(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    for (round, send_at) in ["before", "between", "after"].into_iter().enumerate() {
        let at = format!("{}", round + 1);
        let wait = j.store.wait(take(recv("w", "t"), record("w", &at)));
        j.barrier().await;
        let mut sent = None;
        if send_at == "before" {
            // Not awaited: it may or may not answer the wait before the drop.
            sent = Some(j.store.send(message("w", "t", "m")));
        }
        drop(wait);
        if send_at == "between" {
            sent = Some(j.store.send(message("w", "t", "m")));
        }
        let back = j.store.give_back(key("w", &at), "t".to_owned());
        if send_at == "after" {
            sent = Some(j.store.send(message("w", "t", "m")));
        }
        ok(back).await;
        if let Some(sent) = sent {
            ok(sent).await;
        }
        assert!(
            j.steps("w").await.is_empty(),
            "send {send_at}: the recv that left keeps no record"
        );
        assert_eq!(
            j.drain("w", "t").await,
            ["m"],
            "send {send_at}: the message stays for the next recv"
        );
    }
}

/// The messages of one destination and topic are delivered in the order they were
/// sent; other destinations and topics have queues of their own.
async fn messages_are_delivered_in_order(open: Open) {
    let j = Journal::new(open);
    let mut sends = Vec::new();
    for i in 1..=5 {
        sends.push(j.store.send(message("w", "t", &format!("t{i}"))));
        sends.push(j.store.send(message("w", "u", &format!("u{i}"))));
        sends.push(j.store.send(message("v", "t", &format!("v{i}"))));
    }
    for s in sends {
        ok(s).await;
    }
    assert_eq!(j.drain("w", "t").await, ["t1", "t2", "t3", "t4", "t5"]);
    assert_eq!(j.drain("v", "t").await, ["v1", "v2", "v3", "v4", "v5"]);
    assert_eq!(j.drain("w", "u").await, ["u1", "u2", "u3", "u4", "u5"]);
}

/// Two waits never get the same message: with one message for two parked waits, one
/// is answered and the other keeps waiting; many waits and sends made at once each
/// get a message of their own.
async fn competing_waits_never_share_a_message(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    let mut first = j.store.wait(take(recv("w", "t"), record("w", "1")));
    let mut second = j.store.wait(take(recv("w", "t"), record("w", "2")));
    j.barrier().await;
    j.send(message("w", "t", "m1")).await;
    let (got, first_answered) = tokio::time::timeout(ANSWER_WITHIN, async {
        tokio::select! {
            got = &mut first => (got, true),
            got = &mut second => (got, false),
        }
    })
    .await
    .expect("one wait must be answered");
    let mut other = if first_answered { second } else { first };
    assert_eq!(
        got.expect("answer").map(|m| text(&m)).as_deref(),
        Some("m1")
    );
    j.barrier().await;
    assert!(waiting(&mut other), "one message answers one wait");
    j.send(message("w", "t", "m2")).await;
    assert_eq!(said(other).await.as_deref(), Some("m2"));
    let mut got: Vec<_> = j.steps("w").await.iter().map(recorded_answer).collect();
    got.sort();
    assert_eq!(got, [Some("m1".to_owned()), Some("m2".to_owned())]);

    // Waits and sends interleaved, all made before any answer.
    j.create(workflow("x")).await;
    let mut waits = Vec::new();
    let mut sends = Vec::new();
    for i in 1..=20 {
        waits.push(
            j.store
                .wait(take(recv("x", "t"), record("x", &i.to_string()))),
        );
        sends.push(j.store.send(message("x", "t", &format!("m{i:02}"))));
    }
    for s in sends {
        ok(s).await;
    }
    let mut got = Vec::new();
    for w in waits {
        got.push(said(w).await.expect("every wait gets a message"));
    }
    got.sort();
    let want: Vec<String> = (1..=20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(got, want);
    assert!(j.drain("x", "t").await.is_empty());
    assert_eq!(j.steps("x").await.len(), 20);
}

/// Start records and patch markers show in `side_records`, each once; a parked wait
/// with a deadline leaves a start record holding it, one without a deadline or
/// answered at once leaves none.
async fn side_records_hold_start_records_and_patches(open: Open) {
    let j = Journal::new(open);
    for w in [workflow("w"), child("w", 9)] {
        j.create(w).await;
    }
    let charge = StepKey {
        name: "charge",
        ..key("w", "3")
    };
    ok(j.store.record_started(charge.clone(), 40)).await;
    ok(j.store.record_started(charge, 41)).await;
    let w: Arc<str> = Arc::from("w");
    for (p, name) in [("4", "p1"), ("4", "p2"), ("2.1", "p1"), ("4", "p1")] {
        ok(j.store.record_patch(w.clone(), at(p), name)).await;
    }
    let with_deadline = WaitRecord {
        deadline_at: Some(9_000),
        ..record("w", "5")
    };
    let _parked = j.store.wait(take(recv("w", "t"), with_deadline));
    let _parked_for_ever = j.store.wait(take(recv("w", "u"), record("w", "6")));
    j.send(message("w", "v", "m")).await;
    let answered = WaitRecord {
        deadline_at: Some(9_000),
        ..record("w", "7")
    };
    ok(j.store.wait(take(recv("w", "v"), answered))).await;
    // Another run's.
    ok(j.store.record_started(key("w/9", "1"), 40)).await;
    ok(j.store.record_patch(Arc::from("w/9"), at("1"), "p1")).await;
    j.barrier().await;

    let side = j.side_records("w").await;
    let mut started: Vec<_> = side
        .started
        .iter()
        .map(|s| (s.path.clone(), s.wake_at))
        .collect();
    started.sort();
    assert_eq!(started, [(at("3"), None), (at("5"), Some(9_000))]);
    let mut patches = side.patches;
    patches.sort();
    let want = [("2.1", "p1"), ("4", "p1"), ("4", "p2")].map(|(p, n)| (at(p), n.to_owned()));
    assert_eq!(patches, want);
    let other = j.side_records("w/9").await;
    assert_eq!(other.started.len(), 1);
    assert_eq!(other.patches, [(at("1"), "p1".to_owned())]);
    assert!(j.side_records("nobody").await.patches.is_empty());
}

/// Many writes made before any is awaited all succeed and are all there, sharing
/// commits.
async fn concurrent_writes_all_commit(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    let commits = j.store.commits();
    let acks: Vec<_> = (1..=200)
        .map(|i| {
            j.store
                .record_step(output("w", &i.to_string(), &i.to_string()))
        })
        .collect();
    for result in futures::future::join_all(acks.into_iter().map(answer)).await {
        result.expect("a concurrent record");
    }
    let commits = j.store.commits() - commits;
    assert!(
        (1..200).contains(&commits),
        "200 concurrent records took {commits} commits"
    );
    let steps = j.steps("w").await;
    let want: Vec<String> = (1..=200).map(|i: u32| i.to_string()).collect();
    assert_eq!(paths(&steps), want);
    for s in &steps {
        assert_eq!(
            s.outcome,
            RecordedOutcome::Output(value(&s.path.to_string()))
        );
    }

    // Writes of every kind at once.
    let mut creates = Vec::new();
    let mut records = Vec::new();
    let mut sends = Vec::new();
    for i in 0..50 {
        let id = format!("c{i:02}");
        creates.push(j.store.create_workflow(workflow(&id)));
        records.push(j.store.record_step(output(&id, "1", "x")));
        sends.push(j.store.send(message("w", "t", &id)));
    }
    for c in creates {
        assert!(matches!(ok(c).await, Created::New));
    }
    for r in records {
        ok(r).await;
    }
    for s in sends {
        ok(s).await;
    }
    assert_eq!(j.pending().await.len(), 51);
    let want: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    assert_eq!(j.drain("w", "t").await, want);
    assert_eq!(paths(&j.steps("c49").await), ["1"]);
}

/// Records made before any is awaited, some of which must be refused (a path twice,
/// a run the journal lacks, a path recorded before), are answered each on its own: the
/// refused ones fail, the others commit, and the first of a path recorded twice wins.
async fn concurrent_records_are_refused_each_on_its_own(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("w")).await;
    ok(j.store.record_step(output("w", "1", "before"))).await;
    // Interleaved with creates: a record after its workflow's create in the same batch
    // must see it.
    let mut acks = Vec::new();
    let mut creates = Vec::new();
    for round in 0..10 {
        let id = format!("n{round}");
        creates.push(j.store.create_workflow(workflow(&id)));
        acks.push(("mine", round, j.store.record_step(output(&id, "1", "a"))));
        acks.push(("twice", round, j.store.record_step(output(&id, "1", "b"))));
        acks.push((
            "unknown",
            round,
            j.store
                .record_step(output(&format!("nobody{round}"), "1", "x")),
        ));
        acks.push((
            "recorded",
            round,
            j.store.record_step(output("w", "1", "again")),
        ));
        acks.push((
            "fresh",
            round,
            j.store
                .record_step(output("w", &(round + 2).to_string(), "y")),
        ));
    }
    for c in creates {
        assert!(matches!(ok(c).await, Created::New));
    }
    for (what, round, ack) in acks {
        let answer = answer(ack).await;
        match what {
            "mine" | "fresh" => {
                answer.unwrap_or_else(|e| panic!("{what} {round} was refused: {e}"));
            }
            // A path recorded twice, a run the journal lacks.
            _ => assert_eq!(
                answer.expect_err(what).kind(),
                StoreErrorKind::Invariant,
                "{what} {round}"
            ),
        }
    }
    for round in 0..10 {
        let steps = j.steps(&format!("n{round}")).await;
        assert_eq!(paths(&steps), ["1"]);
        assert_eq!(steps[0].outcome, RecordedOutcome::Output(value("a")));
    }
    let w = j.steps("w").await;
    assert_eq!(w[0].outcome, RecordedOutcome::Output(value("before")));
    assert_eq!(w.len(), 11);
}

/// Outcomes made before any is awaited are answered each on its own: the first of a
/// workflow's wins, a cancelled or unknown workflow's is refused, and a workflow
/// created in the same batch gets its outcome.
async fn concurrent_finishes_are_answered_each_on_its_own(open: Open) {
    let j = Journal::new(open);
    for id in ["a", "b", "c"] {
        j.create(workflow(id)).await;
    }
    let cancelled = j.store.cancel("c".to_owned(), CancelReason::Requested, 50);
    let acks = vec![
        (
            "a",
            true,
            j.store.finish_workflow(finish("a", completed("first"))),
        ),
        (
            "a",
            false,
            j.store.finish_workflow(finish("a", completed("second"))),
        ),
        ("b", true, j.store.finish_workflow(finish("b", panicked()))),
        (
            "c",
            false,
            j.store.finish_workflow(finish("c", completed("late"))),
        ),
        (
            "nobody",
            false,
            j.store.finish_workflow(finish("nobody", completed("x"))),
        ),
    ];
    let created = j.store.create_workflow(workflow("d"));
    let d = j.store.finish_workflow(finish("d", completed("d")));
    ok(cancelled).await;
    for (id, want, ack) in acks {
        assert_eq!(ok(ack).await, want, "the outcome of {id}");
    }
    assert!(matches!(ok(created).await, Created::New));
    assert!(ok(d).await, "the outcome of d, created in the same batch");
    let a = j.workflow("a").await;
    assert_eq!(a.output, Some(value("first")));
    assert_eq!(j.workflow("b").await.status, RecordStatus::Failed);
    assert_eq!(j.workflow("c").await.status, RecordStatus::Cancelled);
    assert_eq!(j.workflow("d").await.output, Some(value("d")));
    assert!(j.find("nobody").await.is_none());
}

/// Creates made before any is awaited are answered each on its own: a new id is
/// made once (the second create of it in the batch finds the first's workflow), and an
/// id the journal has finds that workflow.
async fn concurrent_creates_are_answered_each_on_its_own(open: Open) {
    let j = Journal::new(open);
    j.create(workflow("x")).await;
    let acks = vec![
        ("y", true, j.store.create_workflow(workflow("y"))),
        ("y", false, j.store.create_workflow(workflow("y"))),
        ("x", false, j.store.create_workflow(workflow("x"))),
        ("z", true, j.store.create_workflow(workflow("z"))),
    ];
    for (id, new, ack) in acks {
        match ok(ack).await {
            Created::New => assert!(new, "{id} was made twice"),
            Created::Existing(w) => {
                assert!(!new, "{id} existed before its first create");
                assert_eq!(&*w.id, id);
                assert_eq!(w.status, RecordStatus::Pending);
            }
            Created::Duplicate(w) => panic!("{id} has no deduplication id: {w:?}"),
        }
    }
    assert_eq!(j.pending().await.len(), 3);
}

/// A write happens whether or not anyone waits for its answer.
async fn a_write_whose_ack_is_dropped_still_happens(open: Open) {
    let j = Journal::new(open);
    drop(j.store.create_workflow(workflow("w")));
    drop(j.store.record_step(output("w", "1", "x")));
    drop(j.store.send(message("w", "t", "m")));
    drop(j.store.cancel("w".to_owned(), CancelReason::Requested, 50));
    j.barrier().await;
    assert_eq!(j.status("w").await, RecordStatus::Cancelled);
    assert_eq!(paths(&j.steps("w").await), ["1"]);
    assert_eq!(j.drain("w", "t").await, ["m"]);
}

/// `close` commits what was queued (those writes answer `Ok`), and leaves parked waits
/// unanswered (`Closed`); later writes answer `Closed` and later reads fail with
/// `Closed`. The journal opens again with everything committed.
async fn close_commits_what_was_queued(open: Open) {
    let mut j = Journal::new(open);
    j.create(workflow("w")).await;
    let parked = j.store.wait(take(recv("w", "never"), record("w", "1000")));
    // The writes and the close back to back, so that the close finds them queued.
    let store = j.store.clone();
    let (records, sent) = tokio::task::spawn_blocking(move || {
        let records: Vec<_> = (1..=100)
            .map(|i| store.record_step(output("w", &i.to_string(), "x")))
            .collect();
        let sent = store.send(message("w", "t", "m"));
        store.close().expect("close");
        (records, sent)
    })
    .await
    .expect("close");
    for r in records {
        ok(r).await;
    }
    ok(sent).await;
    assert_eq!(
        answer(parked).await.map_err(|e| e.kind()),
        Err(StoreErrorKind::Closed)
    );

    let closed = StoreErrorKind::Closed;
    assert_eq!(
        refused(j.store.record_step(output("w", "101", "late"))).await,
        closed
    );
    assert_eq!(
        refused(j.store.create_workflow(workflow("late"))).await,
        closed
    );
    assert_eq!(
        refused(j.store.finish_workflow(finish("w", completed("late")))).await,
        closed
    );
    assert_eq!(
        refused(j.store.send(message("w", "t", "late"))).await,
        closed
    );
    assert_eq!(refused(j.store.wait(peek(recv("w", "t")))).await, closed);
    assert_eq!(
        refused(j.store.cancel("w".to_owned(), CancelReason::Requested, 50)).await,
        closed
    );
    let kind = |r: Result<(), StoreError>| r.map_err(|e| e.kind());
    assert_eq!(kind(j.read(|s| s.steps("w").map(drop)).await), Err(closed));
    assert_eq!(
        kind(j.read(|s| s.workflow("w").map(drop)).await),
        Err(closed)
    );
    assert_eq!(
        kind(j.read(|s| s.pending_workflows().map(drop)).await),
        Err(closed)
    );
    assert_eq!(
        kind(j.read(|s| s.side_records("w").map(drop)).await),
        Err(closed)
    );

    j.reopen().await;
    let steps = j.steps("w").await;
    assert_eq!(steps.len(), 100);
    assert_eq!(j.status("w").await, RecordStatus::Pending);
    assert!(j.find("late").await.is_none());
    assert_eq!(j.drain("w", "t").await, ["m"]);
}

// The stores. A new store adds its line here.

/// A value that fails its checksum is refused, never returned: the steps of its run
/// cannot be read, its run is marked damaged (the runtime then refuses it), and a wait
/// for a damaged message or event fails rather than answering.
async fn damaged_values_are_refused(open: Open, damage: Damage) {
    let mut j = Journal::new(open);
    j.create(workflow("w")).await;
    j.record_step(output("w", "1", "out")).await;
    j.record_step(set_event("w", "2", "status", "set")).await;
    j.send(message("w", "t", "m")).await;
    let sleep = StepKey {
        name: "durable::sleep",
        ..key("w", "4")
    };
    let deadline = WaitRecord {
        deadline_at: Some(9_000),
        ..record("w", "5")
    };
    // Parked (with its start record) for as long as the test holds it.
    let _parked = j.store.wait(take(recv("w", "never"), deadline));
    ok(j.store.record_started(sleep, 40)).await;
    // A patch marker of another run, so that each side record is refused on its own.
    j.create(workflow("v")).await;
    ok(j.store.record_patch(Arc::from("v"), at("6"), "p1")).await;
    j.barrier().await;
    assert_eq!(j.side_records("w").await.started.len(), 2);
    let healthy = j.read(|s| s.check()).await.expect("check");
    assert!(
        healthy.is_empty(),
        "a healthy journal has damage: {healthy:?}"
    );
    let _ = j.close().await;
    damage(j.dir.path());
    j.store = (j.open)(j.dir.path());

    // A check finds every damaged value, and names its workflow.
    let found = j.read(|s| s.check()).await.expect("check");
    for what in [
        "input",
        "step 1",
        "event",
        "message",
        "start record of step 5",
    ] {
        assert!(
            found
                .iter()
                .any(|d| d.workflow_id.as_deref() == Some("w") && d.what.contains(what)),
            "the check does not report the damaged {what} of w: {found:?}"
        );
    }

    let steps = j.read(|s| s.steps("w")).await;
    assert!(steps.is_err(), "damaged steps were read: {steps:?}");
    assert!(
        found
            .iter()
            .any(|d| d.workflow_id.as_deref() == Some("v") && d.what.contains("patch marker p1!")),
        "the check does not report the damaged patch marker of v: {found:?}"
    );
    let side = j.read(|s| s.side_records("w")).await;
    assert!(side.is_err(), "damaged start records were read: {side:?}");
    let side = j.read(|s| s.side_records("v")).await;
    assert!(side.is_err(), "damaged patch markers were read: {side:?}");
    assert!(
        j.workflow("w").await.damaged.is_some(),
        "the run is not marked damaged"
    );
    let pending = j.read(|s| s.pending_workflows()).await.expect("pending");
    assert!(
        pending.iter().all(|w| w.id != "w" || w.damaged.is_some()),
        "the pending run is not marked damaged"
    );
    let message = answer(j.store.wait(take(recv("w", "t"), record("w", "3")))).await;
    assert!(
        message.is_err(),
        "a damaged message was handed out: {message:?}"
    );
    let event = answer(j.store.wait(peek(event("w", "status")))).await;
    assert!(event.is_err(), "a damaged event was handed out: {event:?}");
}

store_contract!(
    sqlite,
    |dir: &Path| -> Arc<dyn Store> {
        let options = JournalOptions {
            durability: Durability::Off,
            ..JournalOptions::default()
        };
        Arc::new(SqliteStore::open(&dir.join("j.db"), &options).expect("open the SQLite journal"))
    },
    |dir: &Path| crate::journal::sqlite::damage_every_value(&dir.join("j.db"))
);

#[cfg(feature = "postgres")]
store_contract!(
    postgres,
    |dir: &Path| -> Arc<dyn Store> {
        let config = crate::journal::postgres::testing::config_for(dir);
        Arc::new(
            crate::journal::postgres::PgStore::open(&config, &JournalOptions::default())
                .expect("open the PostgreSQL journal"),
        )
    },
    |dir: &Path| crate::journal::postgres::testing::damage_every_value(dir)
);
