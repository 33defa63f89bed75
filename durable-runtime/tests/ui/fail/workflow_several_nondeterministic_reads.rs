//! Every offending read in a body is reported in one build, in closures, `async`
//! blocks and `tokio::join!` arguments too, next to a signature error.
use std::time::{Instant, SystemTime};

use durable_runtime::workflow;

mod rand {
    pub fn random<T: Default>() -> T {
        T::default()
    }
}

#[workflow]
async fn noisy(label: &str) -> u64 {
    let elapsed = || Instant::now().elapsed().as_millis() as u64;
    let (a, b) = tokio::join!(async { rand::random::<u64>() }, async {
        SystemTime::now().elapsed().unwrap().as_secs()
    });
    label.len() as u64 + elapsed() + a + b
}

fn main() {}
