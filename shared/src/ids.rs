//! Identities and counters that cross process boundaries, and the step vocabulary.
//!
//! # Steps
//! A **step** is one global batch. Step `s` (0-based) trains global batch `s` of the sample
//! plan, split over the ranks of the quorum that runs it. With `grad_accum_steps = k`, an
//! optimiser update runs on every step `s` with `(s + 1) % k == 0`, and the learning rate of
//! step `s` is that of update `⌊s / k⌋`; on the other steps the summed gradient accumulates.
//!
//! "The state after step `s`" has trained `s + 1` global batches ([`Step::count`]); a
//! checkpoint named `step-s` holds it, and a run resumed from it trains step `s + 1` next
//! ([`Step::next`]). A run of `total` steps trains steps `0..total`. Saves, evaluations and
//! the end of a run are counted in steps done ([`Step::count`]), so "every 4 steps" saves
//! after steps 3, 7, 11, ... and the run ends once `count == total`. A worker reports the
//! last step it applied (`after`); the step it trains next is `after.next()`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The index of a global step (see the module doc for the vocabulary).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Step(pub u64);

impl Step {
    /// Returns the step after this one.
    pub fn next(self) -> Step {
        Step(self.0 + 1)
    }

    /// Returns the number of global batches trained once this step is applied (`s + 1`).
    pub fn count(self) -> u64 {
        self.0 + 1
    }

    /// Returns the step before this one (`None` for step 0).
    pub fn previous(self) -> Option<Step> {
        self.0.checked_sub(1).map(Step)
    }

    /// Returns true when `every > 0` and this step completes a multiple of `every` steps
    /// (steps `every - 1`, `2·every - 1`, ...).
    pub fn ends_interval(self, every: u64) -> bool {
        every > 0 && self.count().is_multiple_of(every)
    }

    /// Returns the optimiser update this step belongs to with `grad_accum` steps per update.
    pub fn update(self, grad_accum: u64) -> u64 {
        self.0 / grad_accum.max(1)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The stable identity of a worker process (a pod name, or `host-pid`); never its rank.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    /// Returns the id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for WorkerId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for WorkerId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl PartialEq<&str> for WorkerId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<str> for WorkerId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// A membership generation: increases whenever the set of training workers changes. A ring
/// (and every report) belongs to one quorum.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct QuorumId(pub u64);

impl QuorumId {
    /// Returns the next generation.
    pub fn next(self) -> QuorumId {
        QuorumId(self.0 + 1)
    }
}

impl fmt::Display for QuorumId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_arithmetic_is_written_once() {
        assert_eq!(Step(3).count(), 4);
        assert_eq!(Step(3).next(), Step(4));
        assert_eq!(Step(0).previous(), None);
        // Every 4 steps: after steps 3, 7, 11.
        let saves: Vec<u64> = (0..12).filter(|&s| Step(s).ends_interval(4)).collect();
        assert_eq!(saves, [3, 7, 11]);
        assert!(!Step(3).ends_interval(0));
        // Two steps per optimiser update: steps 0 and 1 are update 0.
        assert_eq!(
            (Step(0).update(2), Step(1).update(2), Step(2).update(2)),
            (0, 0, 1)
        );
    }
}
