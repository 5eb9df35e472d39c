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
    /// The reference's checkpoint cadence (`save_freq`, in epochs) when
    /// `checkpoint.interval_steps` does not set ours.
    pub saves: Cadence,
    /// The reference's evaluation cadence (`eval_freq`, in epochs) when `online_eval` is on
    /// and the `eval` section schedules nothing itself.
    pub evals: Cadence,
}

/// When an epoch-based frequency of the reference falls, in steps (spec §6.5, §7). Counts are
/// 1-based committed steps: "after step count `s`".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cadence {
    /// Never.
    Never,
    /// After every this many steps.
    Steps(u64),
    /// At the end of epoch `e` (1-based) when `e mod freq = 0` (Python's float `%`, as the
    /// reference computes it: `freq` 1.5 falls after epochs 3, 6, ...).
    Epochs {
        /// The frequency in epochs, `>= 1`.
        freq: f64,
        /// Steps per epoch.
        steps_per_epoch: u64,
    },
}

impl Cadence {
    /// The reference's `save_freq`: `>= 1` at the end of every `save_freq`-th epoch; in
    /// `(0, 1)` inside epochs whenever the progress since the last save reaches `save_freq`
    /// epochs, which for whole steps is every `⌈save_freq · steps_per_epoch⌉` steps; 0 never.
    pub fn saves(save_freq: f64, steps_per_epoch: u64) -> Self {
        if save_freq >= 1.0 {
            Self::Epochs {
                freq: save_freq,
                steps_per_epoch,
            }
        } else if save_freq > 0.0 {
            let x = save_freq * steps_per_epoch as f64;
            // A product that is a whole number up to round-off is that number.
            let k = if (x - x.round()).abs() < 1e-9 {
                x.round()
            } else {
                x.ceil()
            };
            Self::Steps((k as u64).max(1))
        } else {
            Self::Never
        }
    }

    /// The reference's `eval_freq`: at the end of every `eval_freq`-th epoch when `>= 1`;
    /// a fractional value (or 0) disables evaluation, as in the reference.
    pub fn evals(eval_freq: f64, steps_per_epoch: u64) -> Self {
        if eval_freq >= 1.0 {
            Self::Epochs {
                freq: eval_freq,
                steps_per_epoch,
            }
        } else {
            Self::Never
        }
    }

    /// Returns true when the cadence falls after `step` (the step's 1-based count).
    pub fn falls_after(&self, step: Step) -> bool {
        let s = step.count();
        match *self {
            Self::Never => false,
            Self::Steps(k) => step.ends_interval(k),
            Self::Epochs {
                freq,
                steps_per_epoch,
            } => {
                steps_per_epoch > 0
                    && s.is_multiple_of(steps_per_epoch)
                    && ((s / steps_per_epoch) as f64 % freq) == 0.0
            }
        }
    }
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
        let saves = if c.checkpoint.interval_steps > 0 {
            Cadence::Never
        } else {
            Cadence::saves(c.save_freq, steps_per_epoch)
        };
        let evals = if !c.online_eval || c.eval.every_checkpoints > 0 || c.eval.at_end {
            Cadence::Never
        } else {
            Cadence::evals(c.eval_freq, steps_per_epoch)
        };
        let facts = Self {
            saves,
            evals,
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

    fn falls(c: Cadence, upto: u64) -> Vec<u64> {
        (0..upto)
            .map(Step)
            .filter(|s| c.falls_after(*s))
            .map(Step::count)
            .collect()
    }

    #[test]
    fn reference_frequencies_become_step_cadences() {
        // save_freq >= 1: ends of every save_freq-th epoch (10 steps per epoch).
        assert_eq!(falls(Cadence::saves(1.0, 10), 35), [10, 20, 30]);
        assert_eq!(falls(Cadence::saves(2.0, 10), 65), [20, 40, 60]);
        // Python's float %: 1.5 falls after epochs 3 and 6.
        assert_eq!(falls(Cadence::saves(1.5, 10), 65), [30, 60]);
        // Fractional: inside epochs, every ceil(freq * steps_per_epoch) steps.
        assert_eq!(falls(Cadence::saves(0.5, 10), 25), [5, 10, 15, 20, 25]);
        assert_eq!(falls(Cadence::saves(0.25, 10), 10), [3, 6, 9]);
        assert_eq!(falls(Cadence::saves(0.1, 10), 3), [1, 2, 3]);
        assert_eq!(Cadence::saves(0.0, 10), Cadence::Never);
        // eval_freq: fractional disables, as in the reference.
        assert_eq!(falls(Cadence::evals(1.0, 4), 9), [4, 8]);
        assert_eq!(Cadence::evals(0.5, 4), Cadence::Never);
        assert_eq!(Cadence::evals(0.0, 4), Cadence::Never);
    }

    #[test]
    fn our_sections_take_precedence_over_the_reference_frequencies() {
        let mut c = Config {
            global_batch_size: 10,
            save_freq: 1.0,
            eval_freq: 1.0,
            ..Config::default()
        };
        c.train.branch_shard_size = 10;
        let f = RunFacts::derive(&c, 100).unwrap();
        assert_eq!(f.saves, Cadence::saves(1.0, 10));
        assert_eq!(f.evals, Cadence::evals(1.0, 10));
        c.checkpoint.interval_steps = 3;
        c.eval.every_checkpoints = 2;
        let f = RunFacts::derive(&c, 100).unwrap();
        assert_eq!((f.saves, f.evals), (Cadence::Never, Cadence::Never));
        c.checkpoint.interval_steps = 0;
        c.eval.every_checkpoints = 0;
        c.online_eval = false;
        let f = RunFacts::derive(&c, 100).unwrap();
        assert_eq!(
            (f.saves, f.evals),
            (Cadence::saves(1.0, 10), Cadence::Never)
        );
    }
}
