//! `Runtime::check_registry` catches two workflows with the same name, as a test run
//! before a deploy would, with the error `Runtime::open` gives.

use durable_runtime::{Error, Runtime, workflow};

#[workflow(name = "invoice")]
async fn invoice_v1() -> u32 {
    1
}

/// Copied from the one above and renamed, but its registered name left as it was.
#[workflow(name = "invoice")]
async fn invoice_v2() -> u32 {
    2
}

#[test]
fn two_workflows_with_one_name_are_caught_before_an_open() {
    let _ = (invoice_v1, invoice_v2);
    match Runtime::check_registry() {
        Err(Error::DuplicateWorkflowName { name }) => assert_eq!(name, "invoice"),
        other => panic!("expected DuplicateWorkflowName, got {other:?}"),
    }
}
