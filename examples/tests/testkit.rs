//! The example workflows under `durable-testkit`: a crash on both sides of every
//! checkpoint, many completion orders, and replays of recorded journals.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
