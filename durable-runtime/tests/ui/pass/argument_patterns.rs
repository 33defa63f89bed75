//! Argument patterns survive the expansion, with and without retries.
#![allow(dead_code)]

use durable_runtime::{branch, step, workflow};

#[derive(Clone)]
struct Point {
    x: u32,
    y: u32,
}

#[step]
async fn sum_pair((a, b): (u32, u32), mut x: u32) -> u32 {
    x += a + b;
    x
}

#[step(retries = 3, backoff = 1ms, backoff_factor = 1.5, max_backoff = 1s)]
async fn sum_pair_retried(
    (a, b): (u32, u32),
    mut x: u32,
    Point { x: px, y: py }: Point,
) -> Result<u32, String> {
    x += a + b + px + py;
    Ok(x)
}

#[step(retries = 1)]
async fn ignores(_: u32, _unused: String) -> Result<(), ()> {
    Ok(())
}

#[branch]
async fn helper((a, b): (u32, u32), mut x: u32) -> u32 {
    x += 1;
    sum_pair((a, b), x).await
}

#[workflow]
async fn flow((a, b): (u32, u32), mut x: u32) -> u32 {
    x += helper((a, b), x).await;
    let point = Point { x: a, y: b };
    sum_pair_retried((a, b), x, point).await.unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Outside a workflow, steps and branches are plain calls.
    assert_eq!(rt.block_on(sum_pair((1, 2), 3)), 6);
    assert_eq!(
        rt.block_on(sum_pair_retried((1, 2), 3, Point { x: 4, y: 5 })),
        Ok(15)
    );
    assert_eq!(rt.block_on(ignores(0, String::new())), Ok(()));
    assert_eq!(rt.block_on(helper((1, 2), 3)), 7);
    let _call = flow((1, 2), 3);
}
