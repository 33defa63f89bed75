//! A client opened by a relative path keeps writing to that journal after the process
//! changes its working directory (alone in its test binary: it changes the process's
//! directory).

use durable_runtime::{Client, Delivery, Runtime, recv, workflow};

#[workflow]
async fn cd_gate() -> u32 {
    recv::<u32>("go", None).await.ok().flatten().unwrap_or(0)
}

#[test]
fn a_client_follows_its_journal_across_a_change_of_directory() {
    let dir = tempfile::tempdir().expect("dir");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("other");
    std::env::set_current_dir(dir.path()).expect("cd");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(async {
            let rt = Runtime::open("j.db").await.expect("open");
            rt.start_with_id("w", cd_gate()).await.expect("start");
            let client = Client::open("j.db").expect("client");
            // A journal of the same name where the process goes next.
            std::env::set_current_dir(&other).expect("cd");
            drop(Runtime::open("j.db").await.expect("decoy"));
            assert_eq!(
                client.send("w", "go", &9u32).await.expect("send"),
                Delivery::Applied
            );
            assert_eq!(
                rt.handle::<u32>("w")
                    .await
                    .expect("h")
                    .result()
                    .await
                    .expect("r"),
                9
            );
            assert!(
                Client::open("j.db")
                    .expect("decoy")
                    .messages()
                    .expect("read")
                    .is_empty()
            );
            rt.close().await.expect("close");
        });
}
