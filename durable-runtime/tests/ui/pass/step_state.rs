//! `#[state]` parameters: taken as `&T` or `Arc<T>`, in any position, with argument
//! patterns beside them; callers pass only the other arguments.

use std::sync::Arc;

use durable_runtime::{Runtime, step, workflow};

struct Db {
    rows: Vec<u32>,
}

struct Settings {
    factor: u32,
}

#[step]
async fn total(#[state] db: &Db, extra: u32) -> u32 {
    db.rows.iter().sum::<u32>() + extra
}

#[step(retries = 1)]
async fn scaled(n: u32, #[state] settings: Arc<Settings>, (a, b): (u32, u32)) -> Result<u32, String> {
    Ok(n * settings.factor + a + b)
}

/// A generic step takes state of a concrete type, or a trait object.
#[step]
async fn counted<T: serde::Serialize + Send + 'static>(#[state] db: &Db, items: Vec<T>) -> u32 {
    u32::try_from(items.len()).unwrap_or(u32::MAX) + db.rows.len() as u32
}

#[workflow]
async fn flow(extra: u32) -> Result<u32, String> {
    let n = total(extra).await;
    let n = n + counted(vec!["a", "b"]).await;
    scaled(n, (1, 2)).await
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let runtime = Runtime::builder(dir.path().join("journal.db"))
            .state(Arc::new(Db { rows: vec![1, 2, 3] }))
            .state(Arc::new(Settings { factor: 10 }))
            .open()
            .await?;
        let handle = runtime.start_with_id("state", flow(4)).await?;
        assert_eq!(handle.result().await?, Ok(153));
        runtime.close().await?;
        Ok(())
    })
}
