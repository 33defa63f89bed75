//! The driver shared by the `deploy-*` fixture programs of `tests/deploy.rs`: each is one
//! build of the same workflow (`fulfil`), with its recorded types as that build has
//! them. A test fixture, not an example to copy.
//!
//! ```text
//! deploy-v1 start  --journal PATH --codec cbor|bincode   # leaves `o-1` pending
//! deploy-vN finish --journal PATH                         # resumes it, prints the outcome
//! ```
//!
//! `start` runs the workflow until it waits for message `go`, then exits at once, as a
//! crash would (no close). `finish` opens the journal (resuming `o-1`), sends `go` and
//! prints `RESULT <output>` or `ERROR <error>`.

use std::process::ExitCode;
use std::time::Duration;

use durable_runtime::{Codec, Error, Runtime, WorkflowCall};

/// The id of the workflow the fixtures share.
pub const ID: &str = "o-1";

/// Runs the command line of one fixture build; `start` makes the workflow's call (only
/// the first build starts it).
pub fn main(start: Option<fn() -> WorkflowCall<String>>) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(journal) = arg("--journal") else {
        eprintln!(
            "usage: {} start|finish --journal PATH [--codec cbor|bincode]",
            args[0]
        );
        return ExitCode::from(2);
    };
    let codec = match arg("--codec").as_deref() {
        Some("bincode") => Codec::Bincode,
        _ => Codec::Cbor,
    };
    let tokio = match tokio::runtime::Runtime::new() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio.block_on(async {
        let rt = Runtime::builder(&journal).codec(codec).open().await?;
        match (args.get(1).map(String::as_str), start) {
            (Some("start"), Some(start)) => {
                rt.start_with_id(ID, start()).await?;
                // Pending until `go`: wait for the workflow to say it waits.
                let ready: Option<bool> =
                    rt.get_event(ID, "waiting", Duration::from_secs(30)).await?;
                println!("STARTED {}", ready.unwrap_or_default());
                // Gone, as a crash would be: the journal keeps the run pending.
                std::process::exit(0);
            }
            (Some("finish"), _) => {
                rt.send(ID, "go", &true).await?;
                let result = rt.handle::<String>(ID).await?.result().await;
                rt.close().await?;
                Ok::<_, Error>(result)
            }
            _ => Err(Error::NotInWorkflow {
                operation: "this command",
                hint: "use `start` (first build) or `finish`",
            }),
        }
    });
    match outcome {
        Ok(Ok(output)) => println!("RESULT {output}"),
        Ok(Err(e)) => println!("ERROR {e}"),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
