//! Step paths: the deterministic identity of a step inside one workflow run.

use std::fmt;
use std::str::FromStr;

/// Where a step sits in its workflow: `3` is the third step of the workflow body,
/// `4.2` the second step of the branch that took position 4.
///
/// Positions are claimed when a step (or a branch: an `async` block, async closure or
/// `#[branch]` helper in a workflow body) is *called*, in program order, so a path does
/// not depend on which concurrent step finishes first. Positions start at 1.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepPath(Box<[u32]>);

impl StepPath {
    pub(crate) fn child(parent: &[u32], position: u32) -> Self {
        let mut v = Vec::with_capacity(parent.len() + 1);
        v.extend_from_slice(parent);
        v.push(position);
        StepPath(v.into_boxed_slice())
    }

    /// The positions from the workflow body down to the step.
    pub fn positions(&self) -> &[u32] {
        &self.0
    }
}

impl fmt::Display for StepPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StepPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StepPath({self})")
    }
}

/// The error returned when a string is not a step path such as `4.2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a step path (expected positive integers joined by `.`, such as `4.2`)")]
pub struct ParsePathError(String);

impl FromStr for StepPath {
    type Err = ParsePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePathError(s.to_owned());
        if s.is_empty() {
            return Err(err());
        }
        s.split('.')
            .map(|p| match p.parse::<u32>() {
                // `+1` and `01` parse as integers but are not how we write paths.
                Ok(n) if n > 0 && !p.starts_with(['+', '0']) => Ok(n),
                _ => Err(err()),
            })
            .collect::<Result<Vec<u32>, _>>()
            .map(|v| StepPath(v.into_boxed_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let p = StepPath::child(&[4], 2);
        assert_eq!(p.to_string(), "4.2");
        assert_eq!("4.2".parse::<StepPath>(), Ok(p));
        assert_eq!(
            "7".parse::<StepPath>().map(|p| p.to_string()),
            Ok("7".into())
        );
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "0",
            "1.0",
            "a",
            "1..2",
            "+1",
            "01",
            "4294967296",
        ] {
            assert!(bad.parse::<StepPath>().is_err(), "{bad:?} parsed");
        }
    }
}
