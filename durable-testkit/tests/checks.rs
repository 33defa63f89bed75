//! The testkit's checks catch what they promise to catch: a store that acknowledges
//! checkpoints before they are durable, and workflows whose steps depend on anything
//! but their input and step outputs.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durable_runtime::{step, workflow};
use durable_testkit::{ExploreFailure, crash_at_every_step, explore_completion_orders};

#[step]
async fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[workflow]
async fn sum_to(n: u64) -> u64 {
    let mut total = 0;
    for i in 1..=n {
        total = add(total, i).await;
    }
    total
}

#[test]
fn a_correct_store_passes_the_crash_check() {
    let report = crash_at_every_step(|| sum_to(4))
        .run()
        .expect("crash check");
    assert_eq!(report.scenarios(), 2 * 4 + 2, "{report}");
    for s in report.steps() {
        // Each body ran once in the uninterrupted run, and ran before and after a crash
        // only when the crash came before its checkpoint committed: one scenario.
        assert_eq!((s.reference, s.reran), (1, 1), "{report}");
    }
}

#[test]
fn a_store_that_acknowledges_before_it_is_durable_is_caught() {
    let failure = crash_at_every_step(|| sum_to(4))
        .with_store_that_acks_before_durable()
        .run()
        .expect_err("the broken store must fail the crash check");
    let report = failure.to_string();
    println!("{report}");
    // The crash right after step 1's acknowledgement finds its record still in the
    // broken store's buffer: lost, so recovery runs the step again.
    assert!(
        report.contains(
            "crash after step 1's checkpoint committed: step 1 (`add`) ran again after recovery, \
             although the store had acknowledged its checkpoint as durable before the crash"
        ),
        "{report}"
    );
    assert!(!failure.problems().is_empty());
}

// ---------------------------------------------------------------------------------------
// Nondeterministic workflows, each caught by the completion-order exploration.

#[step]
async fn on_even() -> u8 {
    0
}

#[step]
async fn on_odd() -> u8 {
    1
}

#[step]
async fn about(key: String) -> String {
    key
}

#[step]
async fn stamp(key: String) -> String {
    key
}

/// Expects a divergence at `path` between steps `a` and `b` (either way round).
fn assert_caught(failure: &ExploreFailure, path: &str, a: &str, b: &str) {
    let report = failure.to_string();
    println!("{report}");
    let (at, x, y) = failure
        .divergence()
        .expect("a divergence, not a failed run");
    assert_eq!(at, path, "{report}");
    let mut names = [x, y];
    names.sort();
    let mut expected = [Some(a), Some(b)];
    expected.sort();
    assert_eq!(names, expected, "{report}");
    assert!(report.contains("reproduce: .seed("), "{report}");
    assert!(report.contains("<-- first difference"), "{report}");
}

/// Outside the workflow body, where `#[workflow]`'s guard rails cannot see it: this test
/// needs the mistake they reject.
fn wall_clock_nanos() -> u32 {
    // Give the clock time to move between runs.
    std::thread::sleep(Duration::from_micros(50));
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

#[workflow]
async fn branches_on_the_clock() -> u8 {
    // Wrong: the wall clock is not recorded, so a replay may take the other branch.
    let nanos = wall_clock_nanos();
    if (nanos / 1_000).is_multiple_of(2) {
        on_even().await
    } else {
        on_odd().await
    }
}

#[test]
fn branching_on_the_wall_clock_is_caught() {
    let failure = explore_completion_orders(branches_on_the_clock)
        .schedules(64)
        .run()
        .expect_err("branching on the clock must be caught");
    assert_caught(&failure, "1", "on_even", "on_odd");
}

#[workflow]
async fn iterates_a_hash_map() -> Vec<String> {
    // Wrong: a `HashMap`'s iteration order differs between processes and maps.
    let map: HashMap<&str, u8> = [("alpha", 1), ("beta", 2), ("gamma", 3), ("delta", 4)]
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for key in map.keys() {
        // The first key decides which step comes first.
        if out.is_empty() && key.len() == 5 {
            out.push(stamp((*key).to_owned()).await);
        } else {
            out.push(about((*key).to_owned()).await);
        }
    }
    out
}

#[test]
fn branching_on_hash_map_order_is_caught() {
    let failure = explore_completion_orders(iterates_a_hash_map)
        .schedules(64)
        .run()
        .expect_err("HashMap order must be caught");
    // Caught where the runs first differ: which step comes first (`stamp` or `about` at
    // 1), or the key a later `about` was given.
    let report = failure.to_string();
    println!("{report}");
    let (at, a, b) = failure.divergence().expect("a divergence");
    let steps = [a, b].map(|s| s.map(|s| s.split(' ').next().unwrap_or_default()));
    assert!(
        (at == "1" && steps.contains(&Some("about")) && steps.contains(&Some("stamp")))
            || report.contains("records a step with different arguments"),
        "{report}"
    );
    assert!(report.contains("HashMap"), "{report}");
}

#[workflow]
async fn flips_a_coin() -> u8 {
    // Wrong: an unrecorded random number.
    let coin = RandomState::new().hash_one(0u8) % 2;
    if coin == 0 {
        on_even().await
    } else {
        on_odd().await
    }
}

#[test]
fn branching_on_an_unrecorded_random_number_is_caught() {
    let failure = explore_completion_orders(flips_a_coin)
        .schedules(64)
        .run()
        .expect_err("an unrecorded random number must be caught");
    assert_caught(&failure, "1", "on_even", "on_odd");
}

#[step]
async fn fetch_a() -> u8 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    1
}

#[step]
async fn fetch_b() -> u8 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    2
}

#[workflow]
async fn races_two_steps() -> u8 {
    // Both ids are claimed here (1 and 2), so both steps replay the same way; what is
    // wrong is branching on which of them finished first.
    let a = fetch_a();
    let b = fetch_b();
    tokio::pin!(a, b);
    let (first, other) = tokio::select! {
        biased;
        v = &mut a => (v, b.await),
        v = &mut b => (v, a.await),
    };
    if first == 1 {
        on_even().await + other
    } else {
        on_odd().await + other
    }
}

#[test]
fn branching_on_which_concurrent_step_finished_first_is_caught() {
    let failure = explore_completion_orders(races_two_steps)
        .schedules(64)
        .run()
        .expect_err("branching on completion order must be caught");
    assert_caught(&failure, "3", "on_even", "on_odd");
}

#[step]
async fn charge_item(sku: String, cents: u64) -> u64 {
    sku.len() as u64 + cents
}

#[workflow]
async fn charges_each_entry() -> u64 {
    // Wrong: one step per entry, in the map's iteration order. Every step has the same
    // name, so only the arguments tell the runs apart: a replay in another process
    // would hand `sku-1`'s recorded result to whichever entry comes first there.
    let cart: HashMap<String, u64> = (1..=6).map(|i| (format!("sku-{i}"), i * 100)).collect();
    let mut total = 0;
    for (sku, cents) in &cart {
        total += charge_item(sku.clone(), *cents).await;
    }
    total
}

#[test]
fn a_step_per_hash_map_entry_is_caught_by_its_arguments() {
    let failure = explore_completion_orders(charges_each_entry)
        .schedules(64)
        .run()
        .expect_err("HashMap order in arguments must be caught");
    let report = failure.to_string();
    println!("{report}");
    assert!(
        report.contains("records a step with different arguments depending on the schedule"),
        "{report}"
    );
    assert!(report.contains("`charge_item (args "), "{report}");
    assert!(report.contains("HashMap or HashSet order"), "{report}");
}

#[step]
async fn quote(n: u64) -> u64 {
    n
}

#[workflow]
async fn follows_up_in_completion_order() -> Vec<u64> {
    use futures::StreamExt;
    // Wrong: each follow-up is called (and takes its position) when an earlier step
    // finishes, so which follow-up sits at position 4 depends on completion order.
    let mut pending = futures::stream::FuturesUnordered::new();
    for n in 1..=3 {
        pending.push(quote(n));
    }
    let mut out = Vec::new();
    while let Some(v) = pending.next().await {
        out.push(v);
        if v < 10 {
            pending.push(quote(v * 10));
        }
    }
    out.sort_unstable();
    out
}

#[test]
fn result_driven_futures_unordered_pushes_are_caught() {
    let failure = explore_completion_orders(follows_up_in_completion_order)
        .schedules(64)
        .run()
        .expect_err("pushes in completion order must be caught");
    let report = failure.to_string();
    println!("{report}");
    let (at, a, b) = failure.divergence().expect("a divergence");
    assert!(["4", "5", "6"].contains(&at), "{report}");
    assert!(
        a.is_some_and(|a| a.starts_with("quote (args "))
            && b.is_some_and(|b| b.starts_with("quote (args ")),
        "{report}"
    );
}

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[step]
async fn next_ticket() -> u64 {
    // Wrong in a test: a value from outside (a counter standing in for a clock or an
    // id service) that differs between runs.
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[workflow]
async fn takes_a_ticket() -> u64 {
    next_ticket().await
}

#[test]
fn a_step_whose_output_differs_between_runs_is_reported_as_such() {
    let failure = explore_completion_orders(takes_a_ticket)
        .schedules(4)
        .run()
        .expect_err("outputs are compared");
    let report = failure.to_string();
    println!("{report}");
    assert!(
        report.contains("records a step with a different output depending on the schedule"),
        "{report}"
    );
    assert!(
        report.contains("make it deterministic in this test"),
        "{report}"
    );
}

#[test]
fn a_deterministic_workflow_passes_exploration() {
    let report = explore_completion_orders(|| sum_to(3))
        .schedules(8)
        .seed(7)
        .run()
        .expect("deterministic");
    assert_eq!((report.steps(), report.base_seed()), (3, 7));
}

#[workflow]
async fn helper_child(n: u64) -> u64 {
    add(n, 1).await
}

#[workflow]
async fn with_primitives(n: u64) -> u64 {
    durable_runtime::sleep(Duration::from_millis(1)).await;
    let child = helper_child(n).await.unwrap_or(0);
    // A race with a fixed outcome (a step against a long sleep): the checks compare
    // fresh runs, so a test must not let timing pick the winner.
    let timer = durable_runtime::sleep(Duration::from_secs(3600));
    match durable_runtime::select(add(child, 10), timer).await {
        durable_runtime::Either::Left(v) => v,
        durable_runtime::Either::Right(()) => 0,
    }
}

#[test]
fn workflows_using_primitives_pass_the_crash_and_order_checks() {
    let report = crash_at_every_step(|| with_primitives(1))
        .run()
        .expect("crash check");
    assert!(report.scenarios() >= 8, "{report:?}");
    explore_completion_orders(|| with_primitives(1))
        .schedules(8)
        .run()
        .expect("completion orders");
}

#[step]
async fn new_way(n: u64) -> u64 {
    n + 100
}

#[step]
async fn old_way(n: u64) -> u64 {
    n
}

#[workflow]
async fn patched_wf(n: u64) -> u64 {
    if durable_runtime::patched("new").await {
        new_way(n).await
    } else {
        old_way(n).await
    }
}

#[tokio::test]
async fn the_replay_check_knows_a_run_that_took_a_patch() {
    let (journal, rt) = durable_testkit::TempJournal::with_runtime()
        .await
        .expect("journal");
    let v = rt
        .start_with_id("p-1", patched_wf(1))
        .await
        .expect("start")
        .result()
        .await
        .expect("result");
    assert_eq!(v, 101);
    drop(rt);
    let report = durable_testkit::replay_check(journal.path());
    assert!(report.is_ok(), "{report:?}");
}
