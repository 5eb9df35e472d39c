//! The facts of a run derived from its config and its dataset's size, computed in one place:
//! the sample plan, steps per epoch, total steps, the learning-rate schedule, and which world
//! sizes can train it. Step vocabulary: [`crate::ids`].

use crate::config::Config;
use crate::ids::Step;
use crate::plan::{Plan, PlanError};
use crate::schedule::Schedule;

/// Why a config cannot run on its data or at its world size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The dataset cannot fill the plan.
    #[error("global_batch_size {batch}: {source}")]
    Plan {
        /// The global batch.
        batch: usize,
        /// What the plan refused.
        #[source]
        source: PlanError,
    },
    /// The world size cannot split the batch into whole branch shards.
    #[error(
        "{world} workers cannot split global_batch_size {batch} into whole branch shards of {shard} (train.branch_shard_size)"
    )]
    World {
        /// Workers asked for.
        world: usize,
        /// The global batch.
        batch: usize,
        /// The branch shard size.
        shard: usize,
    },
}

/// What a run is, derived once from its config and the number of training rows.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// Which rows each step trains.
    pub plan: Plan,
    /// Steps in one pass over the data (`⌊rows / global_batch_size⌋`).
    pub steps_per_epoch: u64,
    /// Steps of the whole run: `train.max_steps`, else `epochs · steps_per_epoch`.
    pub total_steps: u64,
    /// Learning rate by optimiser update.
    pub schedule: Schedule,
    /// Steps per optimiser update (`grad_accum_steps`).
    pub grad_accum: u64,
    /// Rows per branch coin (a rank's slice holds whole shards).
    pub branch_shard: u64,
    /// Training workers the run starts with (`cluster.workers`).
    pub world_size: usize,
    /// Tokens in one global batch.
    pub tokens_per_step: u64,
}

impl RunFacts {
    /// Derives the facts of `c` over a dataset of `rows` rows.
    ///
    /// # Errors
    /// A dataset smaller than a global batch, or a world size that does not split it.
    pub fn derive(c: &Config, rows: u64) -> Result<Self, RunError> {
        let batch = c.global_batch_size as u64;
        let plan = Plan::new(rows, batch, c.seed).map_err(|source| RunError::Plan {
            batch: c.global_batch_size,
            source,
        })?;
        let steps_per_epoch = plan.steps_per_epoch();
        let total_steps = c.train.max_steps.unwrap_or(steps_per_epoch * c.epochs);
        let facts = Self {
            schedule: Schedule::from_config(c, steps_per_epoch, total_steps),
            plan,
            steps_per_epoch,
            total_steps,
            grad_accum: c.grad_accum_steps as u64,
            branch_shard: c.train.branch_shard_size as u64,
            world_size: c.cluster.workers,
            tokens_per_step: batch * c.max_length as u64,
        };
        if !facts.splits(facts.world_size) {
            return Err(RunError::World {
                world: facts.world_size,
                batch: c.global_batch_size,
                shard: c.train.branch_shard_size,
            });
        }
        Ok(facts)
    }

    /// Returns the learning rate of step `step` (that of its optimiser update).
    pub fn lr(&self, step: Step) -> f64 {
        self.schedule.lr(step.update(self.grad_accum))
    }

    /// Returns true when `world` ranks split the global batch into whole branch shards.
    pub fn splits(&self, world: usize) -> bool {
        self.plan.splits(world as u64, self.branch_shard)
    }

    /// Returns the largest world size not above `n` that can train the run.
    pub fn valid_world(&self, n: usize) -> Option<usize> {
        (1..=n).rev().find(|&w| self.splits(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_come_from_the_config_and_the_row_count() {
        let c = Config {
            global_batch_size: 24,
            epochs: 3,
            ..Config::default()
        };
        let mut c = c;
        c.train.branch_shard_size = 4;
        let f = RunFacts::derive(&c, 100).unwrap();
        assert_eq!((f.steps_per_epoch, f.total_steps), (4, 12));
        assert_eq!(f.tokens_per_step, 24 * 128);
        assert_eq!(f.valid_world(5), Some(3));
        assert!(f.splits(6) && !f.splits(4));
        c.cluster.workers = 4;
        assert_eq!(
            RunFacts::derive(&c, 100).unwrap_err().to_string(),
            "4 workers cannot split global_batch_size 24 into whole branch shards of 4 (train.branch_shard_size)"
        );
        assert_eq!(
            RunFacts::derive(&c, 10).unwrap_err().to_string(),
            "global_batch_size 24: the dataset has 10 rows, fewer than one global batch of 24"
        );
    }
}
