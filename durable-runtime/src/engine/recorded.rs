//! What earlier executions of a run recorded, read from the journal in batches, in
//! path order, as the run's code asks for it: a replay holds one batch (plus whatever
//! its concurrent branches have not claimed yet), not its whole history.

use std::collections::VecDeque;

use crate::error::StoreError;
use crate::journal::RecordedStep;
use crate::path::StepPath;

pub(crate) use crate::journal::REPLAY_BATCH;

/// Reads the recorded steps after a path (all if `None`), in path order, at most
/// [`REPLAY_BATCH`] of them.
pub(crate) type ReadAfter<'a> =
    dyn FnMut(Option<&StepPath>) -> Result<Vec<RecordedStep>, StoreError> + 'a;

/// A recorded step read by this execution: not claimed yet, or claimed out of order
/// (its path kept so that the window stays sorted for a binary search).
#[derive(Debug)]
enum Slot {
    Unclaimed(RecordedStep),
    Claimed(StepPath),
}

impl Slot {
    fn path(&self) -> &StepPath {
        match self {
            Slot::Unclaimed(s) => &s.path,
            Slot::Claimed(p) => p,
        }
    }

    fn unclaimed(&self) -> Option<&RecordedStep> {
        match self {
            Slot::Unclaimed(s) => Some(s),
            Slot::Claimed(_) => None,
        }
    }
}

/// The recorded steps of one run that this execution has read and not claimed yet,
/// and how far it has read.
///
/// Every claim of a path first reads up to that path (or to the end), so once a path
/// has been claimed, what this execution records there sorts at or before
/// `read_to`: a later batch (everything after `read_to`) never returns a record this
/// execution made, only what earlier executions did.
///
/// The steps read are kept in path order, as the store returns them; a claim in order
/// (the common case: sequential code) takes the first one. A claim out of order (a
/// concurrent branch ahead of another, or code after a record never claimed, such as
/// the steps of a `select` branch that lost) leaves its path in its place, and once
/// those marks are half the window they are swept out in one pass: each claim costs a
/// constant on average (removing from the middle of the window would move up to all
/// of it, and concurrent branches claim there at every step), and the window holds at
/// most twice what is unclaimed, plus a batch.
#[derive(Debug)]
pub(crate) struct Recorded {
    window: VecDeque<Slot>,
    /// How many slots of `window` are [`Slot::Claimed`].
    claimed: usize,
    /// The last path read, if any.
    read_to: Option<StepPath>,
    /// Whether every recorded step has been read.
    complete: bool,
}

impl Default for Recorded {
    /// A run with nothing recorded (just started): nothing to read.
    fn default() -> Self {
        Recorded::all(Vec::new())
    }
}

impl Recorded {
    /// Every step the run recorded, read already.
    pub(crate) fn all(steps: Vec<RecordedStep>) -> Self {
        Recorded::first(steps, usize::MAX)
    }

    /// The first batch of a run's steps, read with a limit of `limit`: fewer means
    /// there are no more.
    pub(crate) fn first(steps: Vec<RecordedStep>, limit: usize) -> Self {
        let mut r = Recorded {
            window: VecDeque::new(),
            claimed: 0,
            read_to: None,
            complete: false,
        };
        r.add(steps, limit);
        r
    }

    fn add(&mut self, mut batch: Vec<RecordedStep>, limit: usize) {
        self.complete = batch.len() < limit;
        // `all` may be given steps in any order; a store's batches are sorted already.
        if !batch.is_sorted_by(|a, b| a.path < b.path) {
            batch.sort_by(|a, b| a.path.cmp(&b.path));
            batch.dedup_by(|a, b| a.path == b.path);
        }
        if let Some(last) = batch.last() {
            self.read_to = Some(last.path.clone());
        }
        self.window.extend(batch.into_iter().map(Slot::Unclaimed));
    }

    /// The batch after what has been read, checked to be in path order after it: a
    /// store that answered out of order would make a replay skip records.
    fn next_batch(&self, read: &mut ReadAfter<'_>) -> Result<Vec<RecordedStep>, StoreError> {
        let batch = read(self.read_to.as_ref())?;
        if batch
            .first()
            .is_some_and(|s| Some(&s.path) <= self.read_to.as_ref())
            || !batch.is_sorted_by(|a, b| a.path < b.path)
        {
            return Err(out_of_order());
        }
        Ok(batch)
    }

    /// Reads batches until `path` is within what has been read, or everything has.
    fn read_through(
        &mut self,
        path: &StepPath,
        read: &mut ReadAfter<'_>,
    ) -> Result<(), StoreError> {
        while !self.complete && self.read_to.as_ref().is_none_or(|r| r < path) {
            let batch = self.next_batch(read)?;
            self.add(batch, REPLAY_BATCH);
        }
        Ok(())
    }

    /// Takes the unclaimed record at `path`, if one has been read.
    fn take_read(&mut self, path: &StepPath) -> Option<RecordedStep> {
        let i = self.window.binary_search_by(|s| s.path().cmp(path)).ok()?;
        self.window[i].unclaimed()?;
        let taken = if i == 0 {
            let taken = self.window.pop_front();
            while matches!(self.window.front(), Some(Slot::Claimed(_))) {
                self.window.pop_front();
                self.claimed -= 1;
            }
            taken
        } else {
            let mark = Slot::Claimed(self.window[i].path().clone());
            let taken = std::mem::replace(&mut self.window[i], mark);
            self.claimed += 1;
            if self.claimed * 2 > self.window.len() {
                self.window.retain(|s| s.unclaimed().is_some());
                self.claimed = 0;
            }
            Some(taken)
        };
        match taken {
            Some(Slot::Unclaimed(step)) => Some(step),
            _ => None,
        }
    }

    /// Takes the record at `path`, if an earlier execution made one; each is handed out
    /// once.
    pub(crate) fn take(
        &mut self,
        path: &StepPath,
        read: &mut ReadAfter<'_>,
    ) -> Result<Option<RecordedStep>, StoreError> {
        if let Some(s) = self.take_read(path) {
            return Ok(Some(s));
        }
        self.read_through(path, read)?;
        Ok(self.take_read(path))
    }

    /// Whether an earlier execution recorded anything not yet claimed at position `at`
    /// of `branch` or a later one, or below one.
    pub(crate) fn any_from(
        &mut self,
        branch: &[u32],
        at: u32,
        read: &mut ReadAfter<'_>,
    ) -> Result<bool, StoreError> {
        let from = StepPath::child(branch, at);
        let within = |p: &StepPath| {
            let p = p.positions();
            p.len() > branch.len() && p.starts_with(branch) && p[branch.len()] >= at
        };
        self.read_through(&from, read)?;
        // What sorts from `from` to the end of the branch is exactly what is `within`.
        // The first such record read is unclaimed, or is `read_to` (claimed or not:
        // nothing in the branch at or after `at` can have been claimed before `at`).
        let start = self.window.partition_point(|s| *s.path() < from);
        let first_unclaimed = self.window.range(start..).find_map(Slot::unclaimed);
        Ok(first_unclaimed.is_some_and(|s| within(&s.path))
            || self
                .read_to
                .as_ref()
                .is_some_and(|r| *r >= from && within(r)))
    }

    /// The first record (by path) not claimed, skipping those `skip` says to; reads the
    /// rest of the history if it has to, without keeping it.
    pub(crate) fn first_unclaimed(
        &mut self,
        skip: impl Fn(&StepPath) -> bool,
        read: &mut ReadAfter<'_>,
    ) -> Result<Option<(StepPath, String)>, StoreError> {
        let found = |s: &RecordedStep| (!skip(&s.path)).then(|| (s.path.clone(), s.name.clone()));
        // Everything read sorts before everything not read yet.
        if let Some(first) = self
            .window
            .iter()
            .filter_map(Slot::unclaimed)
            .find_map(found)
        {
            return Ok(Some(first));
        }
        while !self.complete {
            let batch = self.next_batch(read)?;
            self.complete = batch.len() < REPLAY_BATCH;
            if let Some(first) = batch.iter().find_map(found) {
                return Ok(Some(first));
            }
            if let Some(last) = batch.last() {
                self.read_to = Some(last.path.clone());
            }
        }
        Ok(None)
    }

    /// How many records (and marks of claimed ones, if any) the window holds.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.window.len()
    }

    /// How many records have been read and not claimed.
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn len(&self) -> usize {
        self.window.len() - self.claimed
    }
}

fn out_of_order() -> StoreError {
    StoreError::new(
        std::path::Path::new(""),
        crate::error::StoreErrorKind::Invariant,
        "the journal returned recorded steps out of path order",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RecordedOutcome;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn step(path: &[u32]) -> RecordedStep {
        RecordedStep {
            path: StepPath::from_key(
                &path
                    .iter()
                    .map(|p| StepPath::child(&[], *p).to_key())
                    .collect::<Vec<_>>()
                    .join("."),
            )
            .expect("path"),
            name: format!("s{path:?}"),
            args: None,
            outcome: RecordedOutcome::Output(Vec::new()),
            attempts: 1,
            started_at: 0,
            finished_at: 0,
            attempt_times: None,
        }
    }

    /// A journal of `paths`, read in batches as a store does; counts its reads.
    struct Journal {
        paths: BTreeSet<Vec<u32>>,
        reads: usize,
    }

    impl Journal {
        fn read(&mut self, after: Option<&StepPath>) -> Result<Vec<RecordedStep>, StoreError> {
            self.reads += 1;
            Ok(self
                .paths
                .iter()
                .map(|p| step(p))
                .filter(|s| after.is_none_or(|a| s.path > *a))
                .take(REPLAY_BATCH)
                .collect())
        }
    }

    fn paths() -> impl Strategy<Value = BTreeSet<Vec<u32>>> {
        // Some shallow, many-position runs and some deep, narrow ones.
        prop_oneof![
            proptest::collection::btree_set(proptest::collection::vec(1..3000u32, 1..2), 0..3000),
            proptest::collection::btree_set(proptest::collection::vec(1..6u32, 1..5), 0..600),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Claims in any order (recorded paths and others) get exactly what a map of
        /// the whole history would give, and what is left is the same.
        #[test]
        fn claims_in_any_order_match_the_whole_history(
            recorded in paths(),
            asked in proptest::collection::vec((any::<proptest::sample::Index>(), 1..4000u32, any::<bool>()), 0..400),
            first_batch in any::<bool>(),
        ) {
            let mut journal = Journal { paths: recorded.clone(), reads: 0 };
            let mut model: BTreeMap<StepPath, RecordedStep> =
                recorded.iter().map(|p| (step(p).path, step(p))).collect();
            let list: Vec<_> = recorded.iter().cloned().collect();
            let mut window = if first_batch {
                let batch = journal.read(None).expect("read");
                Recorded::first(batch, REPLAY_BATCH)
            } else {
                Recorded::first(Vec::new(), 0)
            };
            let mut read = |after: Option<&StepPath>| journal.read(after);
            for (index, other, pick_recorded) in asked {
                let path = if pick_recorded && !list.is_empty() {
                    let picked: &Vec<u32> = index.get(&list);
                    step(picked).path
                } else {
                    step(&[other]).path
                };
                let got = window.take(&path, &mut read).expect("take");
                let want = model.remove(&path);
                prop_assert_eq!(got.map(|s| s.path), want.map(|s| s.path));
            }
            let left = window.first_unclaimed(|_| false, &mut read).expect("first");
            prop_assert_eq!(left.map(|l| l.0), model.keys().next().cloned());
        }
    }

    /// A sequential replay of a long history holds one batch at a time, and reads each
    /// step once.
    #[test]
    fn a_sequential_replay_holds_one_batch() {
        let n = 10 * REPLAY_BATCH as u32 + 7;
        let mut journal = Journal {
            paths: (1..=n).map(|p| vec![p]).collect(),
            reads: 0,
        };
        let mut window = Recorded::first(Vec::new(), 0);
        let mut most = 0;
        let mut read = |after: Option<&StepPath>| journal.read(after);
        for p in 1..=n {
            let got = window.take(&step(&[p]).path, &mut read).expect("take");
            assert!(got.is_some(), "step {p}");
            most = most.max(window.len());
        }
        assert!(
            window
                .take(&step(&[n + 1]).path, &mut read)
                .expect("take")
                .is_none()
        );
        assert!(most < REPLAY_BATCH, "held {most}");
        assert_eq!(journal.reads, 11);
    }

    /// A record never claimed (the steps of a `select` branch that lost) does not make
    /// the window grow with the history: what the code after it claims is swept out,
    /// and a long replay holds at most about two batches.
    #[test]
    fn a_record_never_claimed_does_not_make_the_window_grow() {
        let n = 5 * REPLAY_BATCH as u32;
        let mut paths: BTreeSet<Vec<u32>> = (2..=n).map(|p| vec![p]).collect();
        paths.insert(vec![1, 1]);
        let mut journal = Journal { paths, reads: 0 };
        let mut window = Recorded::first(Vec::new(), 0);
        let mut most = 0;
        let mut read = |after: Option<&StepPath>| journal.read(after);
        for p in 2..=n {
            let got = window.take(&step(&[p]).path, &mut read).expect("take");
            assert!(got.is_some(), "step {p}");
            most = most.max(window.held());
        }
        // Bounded by the batch, not by the history (5 batches).
        assert!(most <= 2 * REPLAY_BATCH, "held {most}");
        assert!(window.held() <= 2 * REPLAY_BATCH);
        let left = window.first_unclaimed(|_| false, &mut read).expect("first");
        assert_eq!(left.map(|l| l.0), Some(step(&[1, 1]).path));
    }

    /// `any_from` sees a record at or after a position of a branch, or below one, and
    /// nothing before it or in another branch.
    #[test]
    fn any_from_looks_at_the_rest_of_one_branch() {
        let recorded: BTreeSet<Vec<u32>> =
            [vec![1], vec![2, 1], vec![2, 5], vec![2, 5, 3], vec![4]].into();
        for (branch, at, want) in [
            (&[][..], 1, true),
            (&[][..], 4, true),
            (&[][..], 5, false),
            (&[2][..], 1, true),
            (&[2][..], 2, true),
            (&[2][..], 6, false),
            (&[2, 5][..], 3, true),
            (&[2, 5][..], 4, false),
            (&[3][..], 1, false),
        ] {
            let mut journal = Journal {
                paths: recorded.clone(),
                reads: 0,
            };
            let mut window = Recorded::first(Vec::new(), 0);
            let got = window
                .any_from(branch, at, &mut |after| journal.read(after))
                .expect("read");
            assert_eq!(got, want, "{branch:?} from {at}");
        }
    }
}
