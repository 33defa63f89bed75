//! A guard-rail error leaves the workflow's signature intact: the caller still gets a
//! `WorkflowCall`, so the clock read is the only error.
use durable_runtime::{WorkflowCall, workflow};

#[workflow]
async fn timed() -> u64 {
    std::time::Instant::now().elapsed().as_millis() as u64
}

fn main() {
    let _call: WorkflowCall<u64> = timed();
}
