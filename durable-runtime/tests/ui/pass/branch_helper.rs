//! A `#[branch]` helper called from a workflow numbers its steps below its own position.

use durable_runtime::{Runtime, branch, step, workflow};

#[step]
async fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[branch]
async fn add_twice(x: u32) -> u32 {
    let once = add(x, 1).await;
    add(once, 1).await
}

#[workflow]
async fn flow(x: u32) -> u32 {
    let (a, b) = tokio::join!(add_twice(x), add_twice(x + 10));
    a + b
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let runtime = Runtime::open(dir.path().join("journal.db")).await?;
        let handle = runtime.start_with_id("branch", flow(1)).await?;
        assert_eq!(handle.result().await?, 3 + 13);
        let mut paths: Vec<String> = runtime
            .steps("branch")
            .await?
            .into_iter()
            .map(|s| s.path.to_string())
            .collect();
        paths.sort();
        assert_eq!(paths, ["1.1", "1.2", "2.1", "2.2"]);
        Ok(())
    })
}
