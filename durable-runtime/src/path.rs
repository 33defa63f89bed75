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

    /// The path as the journal stores it (schema 6): positions joined by `.`, a
    /// position under 10 as its digit, a larger one as its decimal digits after a
    /// letter that says how many there are (`b` for two, up to `j` for ten), so
    /// `3.b12.c105` is `3.12.105`. Byte order of these keys is path order (a branch
    /// before what is below it, `9` before `b10`), so the journal returns a run's steps
    /// in path order from its primary key, with no sort; paths of small positions read
    /// as they always did.
    pub(crate) fn to_key(&self) -> String {
        let mut key = String::with_capacity(self.0.len() * 2);
        for (i, &p) in self.0.iter().enumerate() {
            if i > 0 {
                key.push('.');
            }
            let digits = p.to_string();
            if digits.len() > 1 {
                // At most ten digits: `j` at most.
                key.push(char::from(b'a' + digits.len() as u8 - 1));
            }
            key.push_str(&digits);
        }
        key
    }

    /// Reads a key written by [`to_key`](Self::to_key): `None` for anything that
    /// `to_key` cannot have written (so each path has exactly one key).
    pub(crate) fn from_key(key: &str) -> Option<StepPath> {
        if key.is_empty() {
            return None;
        }
        key.split('.')
            .map(|part| {
                let bytes = part.as_bytes();
                let digits = match bytes {
                    [b'1'..=b'9'] => part,
                    [len @ b'b'..=b'j', first, ..]
                        if *first != b'0' && bytes.len() == usize::from(len - b'a') + 2 =>
                    {
                        &part[1..]
                    }
                    _ => return None,
                };
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse::<u32>().ok()
            })
            .collect::<Option<Vec<u32>>>()
            .map(|v| StepPath(v.into_boxed_slice()))
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
    fn keys_read_as_paths_of_small_positions_and_say_the_length_of_large_ones() {
        for (path, key) in [
            (vec![3], "3"),
            (vec![4, 2], "4.2"),
            (vec![10], "b10"),
            (vec![3, 12, 105], "3.b12.c105"),
            (vec![u32::MAX], "j4294967295"),
        ] {
            let p = StepPath(path.into_boxed_slice());
            assert_eq!(p.to_key(), key);
            assert_eq!(StepPath::from_key(key), Some(p));
        }
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "0",
            "10",
            "b1",
            "b100",
            "b01",
            "c0105",
            "a1",
            "k10000000000",
            "j4294967296",
            "bxy",
            "1..2",
            "+1",
            " 1",
            "b1x",
        ] {
            assert_eq!(StepPath::from_key(bad), None, "{bad:?} read as a key");
        }
    }

    proptest::proptest! {
        /// Keys sort, byte by byte, as their paths do, and read back as them.
        #[test]
        fn keys_sort_as_paths_and_round_trip(
            a in proptest::collection::vec(path_position(), 1..6),
            shared in 0..6usize,
            tail in proptest::collection::vec(path_position(), 0..4),
        ) {
            // `b` shares a prefix of `a` (all of it, some or none), then goes its way.
            let mut b = a[..shared.min(a.len())].to_vec();
            b.extend(tail);
            proptest::prop_assume!(!b.is_empty());
            let (a, b) = (StepPath(a.into_boxed_slice()), StepPath(b.into_boxed_slice()));
            let (ka, kb) = (a.to_key(), b.to_key());
            proptest::prop_assert_eq!(ka.as_bytes().cmp(kb.as_bytes()), a.cmp(&b));
            proptest::prop_assert_eq!(StepPath::from_key(&ka), Some(a));
        }
    }

    /// Positions of every length, small ones most often (as in real paths).
    fn path_position() -> impl proptest::strategy::Strategy<Value = u32> {
        use proptest::prelude::*;
        prop_oneof![
            1..10u32,
            1..200u32,
            1..u32::MAX,
            Just(u32::MAX),
            Just(9),
            Just(10)
        ]
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
