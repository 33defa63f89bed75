//! Async closures, nested async blocks and `tokio::join!` inside a workflow body are
//! rewritten into branches and still type-check; the workflow runs end to end.

use durable_runtime::{Runtime, step, workflow};

#[step]
async fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[workflow]
async fn fan_out(n: u32) -> u32 {
    let double = async |x: u32| add(x, x).await;
    let typed = async move |x: u32| -> u32 { add(x, 1).await };
    let nested = async {
        let inner = async { add(1, 1).await }.await;
        add(inner, n).await
    };
    let (a, b, c, d) = tokio::join!(double(n), typed(n), nested, async move {
        let (x, y) = tokio::join!(add(n, 1), async { add(n, 2).await });
        x + y
    });
    let futures: Vec<_> = (0..n).map(|i| add(i, 1)).collect();
    let sum: u32 = futures::future::join_all(futures).await.into_iter().sum();
    a + b + c + d + sum
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let runtime = Runtime::open(dir.path().join("journal.db")).await?;
        let handle = runtime.start_with_id("fan-out", fan_out(3)).await?;
        // 6 + 4 + 5 + (4 + 5) + (1 + 2 + 3)
        assert_eq!(handle.result().await?, 30);
        Ok(())
    })
}
