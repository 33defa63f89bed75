//! The example workflows under `durable-testkit`: a crash on both sides of every
//! checkpoint, many completion orders, and replays of recorded journals.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::seal;
use durable_examples::{CONFIG, Config, checkout, demo_order, worker_order};
use durable_testkit::{Verdict, crash_at_every_step, explore_completion_orders, replay_check};

/// Step bodies here "work" for a millisecond, and print nothing.
fn quick_steps() {
    let _ = CONFIG.set(Config {
        verbose: false,
        log: None,
        step_delay: Duration::from_millis(1),
        crash_in: None,
    });
}

/// Orders covering every branch of `checkout`: the demo's (three lines, all in stock),
/// one wanting an out-of-stock item (refund and release), one with a bad quantity
/// (fails in `validate_order`), and a one-line order.
fn orders() -> Vec<durable_examples::Order> {
    vec![
        demo_order(),
        worker_order(5),
        worker_order(7),
        worker_order(3),
    ]
}

#[test]
fn checkout_survives_a_crash_on_both_sides_of_every_checkpoint() {
    quick_steps();
    for order in orders() {
        let id = order.id.clone();
        let report = crash_at_every_step(|| checkout(order.clone()))
            .run()
            .unwrap_or_else(|e| panic!("order {id}: {e}"));
        println!("order {id}:\n{report}");
        // Every recorded step contributes two crash points, plus two for the outcome.
        assert_eq!(report.scenarios(), 2 * report.steps().len() + 2, "{report}");
    }
}

/// The same check with the journal in PostgreSQL: each crash drops the runtime's
/// connection, and the recovering runtime takes the checkout over at its open.
#[test]
fn checkout_survives_a_crash_on_both_sides_of_every_checkpoint_on_postgres() {
    quick_steps();
    for order in orders() {
        let id = order.id.clone();
        let report = crash_at_every_step(|| checkout(order.clone()))
            .on_postgres()
            .run()
            .unwrap_or_else(|e| panic!("order {id} on PostgreSQL: {e}"));
        println!("order {id} on PostgreSQL:\n{report}");
        assert_eq!(report.scenarios(), 2 * report.steps().len() + 2, "{report}");
    }
}

#[test]
fn checkout_records_the_same_steps_in_every_completion_order() {
    quick_steps();
    for order in [demo_order(), worker_order(5)] {
        let report = explore_completion_orders(|| checkout(order.clone()))
            .schedules(24)
            .run()
            .unwrap_or_else(|e| panic!("order {}: {e}", order.id));
        println!("{report}");
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Set to re-record the journal fixtures (after a deliberate change to the examples).
const RECORD: &str = "DURABLE_RECORD_FIXTURES";

/// Records `checkout.db`: four orders that finished (shipped, refunded, rejected,
/// shipped) and one left pending by a crash after its reservations committed.
fn record_checkout_fixture(path: &Path) {
    use durable_runtime::testkit::{CrashPoint, Probe, StepAt};
    let _ = std::fs::remove_file(path);
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    tokio.block_on(async {
        let rt = durable_runtime::Runtime::open(path).await.expect("open");
        for order in orders() {
            let h = rt
                .start_with_id(order.id.clone(), checkout(order))
                .await
                .expect("start");
            h.result()
                .await
                .expect("finished")
                .map(drop)
                .unwrap_or_default();
        }
    });
    drop(tokio);
    drop(common::wait_unlocked(path));
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let order = worker_order(9);
    let probe = std::sync::Arc::new(Probe::new().crash_at(CrashPoint::BeforeCommit(StepAt {
        workflow_id: order.id.clone(),
        path: "4".parse().expect("path"),
    })));
    tokio.block_on(async {
        let rt = durable_runtime::Runtime::builder(path)
            .probe(probe.clone())
            .open()
            .await
            .expect("open");
        let _pending = rt
            .start_with_id(order.id.clone(), checkout(order))
            .await
            .expect("start");
        probe.crashed().await;
    });
    tokio.shutdown_background();
    seal(path);
}

#[test]
fn a_journal_recorded_by_the_current_checkout_replays() {
    quick_steps();
    let path = fixture("checkout.db");
    if std::env::var_os(RECORD).is_some() {
        record_checkout_fixture(&path);
    }
    let report = replay_check(&path).expect("today's checkout replays its own journal");
    println!("{report}");
    assert_eq!(report.workflows().len(), 5, "{report}");
    assert!(
        matches!(
            report.verdict("order-42"),
            Some(Verdict::Ok { replayed: 7 })
        ),
        "{report}"
    );
    // The pending order replays up to the step it would run next.
    match report.verdict("order-9") {
        Some(Verdict::Pending {
            next: Some((path, name)),
            ..
        }) => assert_eq!((path.to_string(), name.as_str()), ("4".to_owned(), "ship")),
        other => panic!("order-9 should be pending before `ship`: {other:?}\n{report}"),
    }
}

#[test]
fn a_journal_recorded_by_older_checkout_code_reports_the_exact_divergence() {
    // `checkout-v0.db` was recorded by the checkout of `tests/checkout_v0.rs`, which ran
    // a `fraud_check` step before shipping. Today's code ships at that path.
    let path = fixture("checkout-v0.db");
    let failure = replay_check(&path).expect_err("the changed code must diverge");
    let text = failure.to_string();
    println!("{text}");
    match failure.report().verdict("order-1") {
        Some(Verdict::Diverged {
            path,
            recorded,
            requested,
            ..
        }) => assert_eq!(
            (path.to_string(), recorded.as_deref(), requested.as_deref()),
            ("4".to_owned(), Some("fraud_check"), Some("ship"))
        ),
        other => panic!("order-1 should diverge at step 4: {other:?}\n{text}"),
    }
    assert!(
        text.contains("DIVERGED at step 4: recorded `fraud_check`, the code asks for `ship`"),
        "{text}"
    );
}
