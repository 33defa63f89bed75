//! The one-line error for `anyhow::Error`, `io::Error` and the like goes by their
//! spellings: an error type of one's own that serde records is accepted, whatever it
//! is called.

use durable_runtime::{step, workflow};

mod billing {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Error {
        pub code: u32,
    }

    pub type Result<T> = std::result::Result<T, Error>;
}

#[step]
async fn charge(cents: u64) -> Result<u64, billing::Error> {
    if cents == 0 {
        return Err(billing::Error { code: 1 });
    }
    Ok(cents)
}

#[workflow]
async fn pay(cents: u64) -> billing::Result<u64> {
    charge(cents).await
}

fn main() {
    let _ = pay(1);
}
