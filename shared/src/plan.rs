//! The sample plan: which dataset rows every step trains on, as a pure function.
//!
//! The global order is a per-epoch pseudo-random permutation of the rows keyed by
//! `(seed, epoch)` ([`Permutation`]), cut into `steps_per_epoch = ⌊N / G⌋` global batches (the
//! tail that does not fill a batch is dropped, as with the reference's `drop_last`). The global
//! batch of step `s` is a fixed list of `G` row indices; rank `r` of `W` trains the contiguous
//! positions `[r·G/W, (r+1)·G/W)` of it. Nothing is materialised, so resuming at step `s` costs
//! O(1) at any world size, and the union of rank slices never depends on `W`.

use crate::seed::Permutation;

/// Errors in plan arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The dataset has no rows.
    #[error("the dataset is empty")]
    Empty,
    /// Fewer rows than one global batch.
    #[error("the dataset has {rows} rows, fewer than one global batch of {batch}")]
    TooSmall {
        /// Rows.
        rows: u64,
        /// Global batch.
        batch: u64,
    },
    /// The world size does not divide the global batch.
    #[error("world size {world} does not divide the global batch {batch}")]
    Indivisible {
        /// World size.
        world: u64,
        /// Global batch.
        batch: u64,
    },
}

/// The sample plan of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    rows: u64,
    batch: u64,
    seed: u64,
}

impl Plan {
    /// Builds the plan for `rows` dataset rows and a global batch of `batch`.
    ///
    /// # Errors
    /// An empty dataset or one smaller than a batch.
    pub fn new(rows: u64, batch: u64, seed: u64) -> Result<Self, PlanError> {
        if rows == 0 {
            return Err(PlanError::Empty);
        }
        if batch == 0 || rows < batch {
            return Err(PlanError::TooSmall { rows, batch });
        }
        Ok(Self { rows, batch, seed })
    }

    /// Returns `⌊N / G⌋`.
    pub fn steps_per_epoch(&self) -> u64 {
        self.rows / self.batch
    }

    /// Returns the global batch size `G`.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Returns the epoch a step belongs to.
    pub fn epoch(&self, step: u64) -> u64 {
        step / self.steps_per_epoch()
    }

    /// Returns the row trained at `position` (`< G`) of the global batch of `step`.
    pub fn row(&self, step: u64, position: u64) -> u64 {
        let spe = self.steps_per_epoch();
        let (epoch, within) = (step / spe, step % spe);
        Permutation::new(self.rows, self.seed, epoch).at(within * self.batch + position)
    }

    /// Returns the `G` rows of the global batch of `step`, in position order.
    pub fn global_batch(&self, step: u64) -> Vec<u64> {
        let spe = self.steps_per_epoch();
        let perm = Permutation::new(self.rows, self.seed, step / spe);
        let base = (step % spe) * self.batch;
        (0..self.batch).map(|p| perm.at(base + p)).collect()
    }

    /// Returns the positions `[start, end)` of the global batch that `rank` of `world` trains.
    ///
    /// # Errors
    /// A world size that does not divide the global batch.
    pub fn rank_positions(&self, world: u64, rank: u64) -> Result<std::ops::Range<u64>, PlanError> {
        if world == 0 || !self.batch.is_multiple_of(world) {
            return Err(PlanError::Indivisible {
                world,
                batch: self.batch,
            });
        }
        let per = self.batch / world;
        Ok(rank * per..(rank + 1) * per)
    }

    /// True when `world` ranks split the global batch into slices of whole branch shards of
    /// `shard` rows (the world sizes a run can train at).
    pub fn splits(&self, world: u64, shard: u64) -> bool {
        world > 0 && self.batch.is_multiple_of(world) && (self.batch / world).is_multiple_of(shard)
    }

    /// Returns `(position, row)` for every sample `rank` of `world` trains at `step`.
    ///
    /// # Errors
    /// A world size that does not divide the global batch.
    pub fn rank_slice(
        &self,
        step: u64,
        world: u64,
        rank: u64,
    ) -> Result<Vec<(u64, u64)>, PlanError> {
        let spe = self.steps_per_epoch();
        let perm = Permutation::new(self.rows, self.seed, step / spe);
        let base = (step % spe) * self.batch;
        Ok(self
            .rank_positions(world, rank)?
            .map(|p| (p, perm.at(base + p)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn one_epoch_visits_every_kept_row_once_for_any_world_size() {
        let (rows, batch) = (1003u64, 16u64);
        let plan = Plan::new(rows, batch, 7).unwrap();
        let spe = plan.steps_per_epoch();
        assert_eq!(spe, 62);
        for world in [1u64, 2, 4, 8] {
            let mut seen = BTreeSet::new();
            for step in 0..spe {
                for rank in 0..world {
                    for (_, row) in plan.rank_slice(step, world, rank).unwrap() {
                        assert!(seen.insert(row), "world {world}: row {row} twice");
                    }
                }
            }
            assert_eq!(seen.len() as u64, spe * batch, "world {world}");
        }
    }

    #[test]
    fn union_of_rank_slices_does_not_depend_on_world_size() {
        let plan = Plan::new(500, 32, 3).unwrap();
        for step in [0u64, 5, 15, 16, 40] {
            let by_world: Vec<Vec<(u64, u64)>> = [1u64, 2, 4, 8]
                .iter()
                .map(|&w| {
                    (0..w)
                        .flat_map(|r| plan.rank_slice(step, w, r).unwrap())
                        .collect()
                })
                .collect();
            assert!(by_world.windows(2).all(|p| p[0] == p[1]), "step {step}");
            let rows: Vec<u64> = by_world[0].iter().map(|x| x.1).collect();
            assert_eq!(rows, plan.global_batch(step));
        }
    }

    #[test]
    fn resuming_continues_the_same_sequence() {
        let plan = Plan::new(300, 8, 11).unwrap();
        let full: Vec<u64> = (0..100).flat_map(|s| plan.global_batch(s)).collect();
        // A fresh plan (a restarted process) at step 37, at another world size.
        let resumed = Plan::new(300, 8, 11).unwrap();
        let mut tail = Vec::new();
        for s in 37..100 {
            for r in 0..4 {
                tail.extend(
                    resumed
                        .rank_slice(s, 4, r)
                        .unwrap()
                        .into_iter()
                        .map(|x| x.1),
                );
            }
        }
        assert_eq!(tail, full[37 * 8..]);
    }

    #[test]
    fn epochs_reshuffle_and_bad_shapes_are_errors() {
        let plan = Plan::new(64, 8, 0).unwrap();
        assert_ne!(plan.global_batch(0), plan.global_batch(8));
        assert_eq!(Plan::new(0, 8, 0).unwrap_err(), PlanError::Empty);
        assert_eq!(
            Plan::new(4, 8, 0).unwrap_err().to_string(),
            "the dataset has 4 rows, fewer than one global batch of 8"
        );
        assert_eq!(
            plan.rank_positions(3, 0).unwrap_err().to_string(),
            "world size 3 does not divide the global batch 8"
        );
    }
}
