//! [`StepError`]: an error type the journal can record, for steps whose errors come
//! from `std::io`, HTTP clients or `anyhow`, which serde cannot record.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An error that a step (or a workflow) returns and the journal records: its message
/// and the messages of its causes.
///
/// A step's `Err` is recorded and replayed like its `Ok`, so it must be a serde type.
/// `std::io::Error`, `anyhow::Error` and most library errors are not; return
/// `Result<T, StepError>` instead, and `?` converts them. On replay the step returns
/// the same `StepError`, with the same message and causes.
///
/// ```
/// use durable_runtime::{StepError, step};
///
/// #[step]
/// async fn read_config(path: String) -> Result<String, StepError> {
///     // `?` records the io::Error's message (and its causes, if it has any).
///     let text = std::fs::read_to_string(&path)?;
///     Ok(text)
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = read_config("/no/such/file".into()).await.unwrap_err();
/// assert!(err.message().contains("No such file"));
/// # }
/// ```
///
/// `{}` shows the message; `{:#}` shows it with its causes, `outer: inner`, as
/// `anyhow` does. An `anyhow::Error` converts with its chain through the error it
/// dereferences to: `.map_err(|e| StepError::new(&*e))?`.
///
/// It is not a `std::error::Error` itself (that would stop `?` from converting every
/// `std::error::Error` into it, as with `anyhow::Error`); it converts into
/// `Box<dyn std::error::Error + Send + Sync>`, causes as sources, for code that wants
/// one (`anyhow::Error::from_boxed` takes that).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepError {
    message: String,
    causes: Vec<String>,
}

impl StepError {
    /// An error with `message` and no cause.
    pub fn msg(message: impl fmt::Display) -> Self {
        StepError {
            message: message.to_string(),
            causes: Vec::new(),
        }
    }

    /// The error `error`, with the messages of its `source()` chain as causes.
    pub fn new(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(e) = source {
            causes.push(e.to_string());
            source = e.source();
        }
        StepError {
            message: error.to_string(),
            causes,
        }
    }

    /// This error as the cause of a new one with `message`.
    #[must_use]
    pub fn context(self, message: impl fmt::Display) -> Self {
        let mut causes = Vec::with_capacity(self.causes.len() + 1);
        causes.push(self.message);
        causes.extend(self.causes);
        StepError {
            message: message.to_string(),
            causes,
        }
    }

    /// The error's own message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The messages of its causes, outermost first.
    pub fn causes(&self) -> impl Iterator<Item = &str> {
        self.causes.iter().map(String::as_str)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if f.alternate() {
            for c in &self.causes {
                write!(f, ": {c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.causes.is_empty() {
            f.write_str("\n\nCaused by:")?;
            for (i, c) in self.causes.iter().enumerate() {
                write!(f, "\n    {i}: {c}")?;
            }
        }
        Ok(())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(error: E) -> Self {
        StepError::new(&error)
    }
}

impl From<StepError> for Box<dyn std::error::Error + Send + Sync> {
    fn from(error: StepError) -> Self {
        Box::new(AsStdError::of(error))
    }
}

/// A [`StepError`] as a `std::error::Error`: each cause becomes the source of the one
/// before it.
#[derive(Debug)]
struct AsStdError {
    message: String,
    source: Option<Box<AsStdError>>,
}

impl AsStdError {
    fn of(error: StepError) -> Self {
        let source = error
            .causes
            .into_iter()
            .rev()
            .fold(None, |source, message| {
                Some(Box::new(AsStdError { message, source }))
            });
        AsStdError {
            message: error.message,
            source,
        }
    }
}

impl fmt::Display for AsStdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AsStdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot load the price list")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn keeps_the_chain_and_gives_it_back() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "prices.csv is missing");
        let e = StepError::from(Outer(io)).context("checkout failed");
        assert_eq!(e.to_string(), "checkout failed");
        assert_eq!(
            format!("{e:#}"),
            "checkout failed: cannot load the price list: prices.csv is missing"
        );
        let boxed: Box<dyn std::error::Error + Send + Sync> = e.into();
        let mut chain = vec![boxed.to_string()];
        let mut source = boxed.source();
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        assert_eq!(
            chain,
            [
                "checkout failed",
                "cannot load the price list",
                "prices.csv is missing"
            ]
        );
    }
}
