//! The checkpoint manifest: what a committed checkpoint holds and how to verify it.
//!
//! A checkpoint is a folder `checkpoints/step-<step:09>/` of shards plus `manifest.json`, which
//! the coordinator writes last, after every shard's sha256 and size are known. A checkpoint
//! exists if and only if its manifest does; `latest` (beside `checkpoints/`) names the newest
//! committed step and moves only after the manifest is durable.
//!
//! The training state is one flat f32 vector in a fixed order (parameters, EMA, then the
//! optimiser moments), indexed by [`TensorEntry`]; rank `r` of `W` writes elements
//! `[r·N/W, (r+1)·N/W)`, so shards can be read back at any world size.

use serde::{Deserialize, Serialize};

/// Current manifest format.
pub const FORMAT: u32 = 1;

/// One named tensor of the flat state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// `params/<flax name>`, `ema/<flax name>`, `opt_mu/<flax name>` or `opt_nu/<flax name>`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// First element in the flat state.
    pub offset: u64,
}

impl TensorEntry {
    /// Returns the number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64
    }
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the checkpoint folder.
    pub file: String,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// First flat element it holds.
    pub start: u64,
    /// Elements it holds.
    pub len: u64,
}

/// A committed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The last step whose update the state includes.
    pub step: u64,
    /// The data cursor: the next step to train (the plan is a pure function of the step).
    pub next_step: u64,
    /// Optimiser steps taken (the schedule's and the moments' counter).
    pub optimizer_count: u64,
    /// Hash of the resolved config.
    pub config_hash: String,
    /// The resolved config, canonical YAML.
    pub config_yaml: String,
    /// World size that wrote the shards.
    pub world_size: u32,
    /// Elements in the flat state.
    pub numel: u64,
    /// Tensor index over the flat state.
    pub tensors: Vec<TensorEntry>,
    /// Shards, in rank order.
    pub shards: Vec<ShardEntry>,
    /// Random state: every draw is keyed by (seed, step, sample), so the seed and the step are
    /// the whole generator state.
    pub seed: u64,
    /// Metrics of the step.
    pub metrics: serde_json::Value,
    /// Evaluation results attached later (none yet).
    #[serde(default)]
    pub eval: serde_json::Value,
}

/// Returns the folder name of a step's checkpoint.
pub fn step_dir(step: u64) -> String {
    format!("step-{step:09}")
}

/// Returns the shard file name of `rank` of `world`.
pub fn shard_file(rank: u32, world: u32) -> String {
    format!("shard-{rank:05}-of-{world:05}.safetensors")
}

/// Returns the flat range `[start, end)` that `rank` of `world` holds in a state of `n`.
pub fn shard_range(n: u64, rank: u64, world: u64) -> (u64, u64) {
    (rank * n / world, (rank + 1) * n / world)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_tile_the_state() {
        for (n, w) in [(10u64, 3u64), (7, 4), (100, 1)] {
            let mut next = 0;
            for r in 0..w {
                let (a, b) = shard_range(n, r, w);
                assert_eq!(a, next);
                next = b;
            }
            assert_eq!(next, n);
        }
        assert_eq!(step_dir(1200), "step-000001200");
        assert_eq!(shard_file(0, 4), "shard-00000-of-00004.safetensors");
    }
}
