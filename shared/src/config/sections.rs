//! The value types of a config and the sections the reference lacks.

use serde::{Deserialize, Serialize};

/// Which token pads sequences (spec §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadToken {
    /// Pad with id 0; padding is excluded from the loss.
    Pad,
    /// Pad with EOS (id 1); padding after the target is part of the loss.
    Eos,
}

/// The distribution of training times (spec §4.2) and of sampling grids (spec §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSchedule {
    /// `t = sigmoid(N(p_mean, p_std²))`.
    LogitNormal,
    /// `t ~ U(0, 1)` in training, `t_i = i / N` in sampling.
    Uniform,
}

/// Learning-rate schedule after warmup (spec §4.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Constant peak learning rate.
    Constant,
    /// Cosine decay from the peak to `min_lr`.
    Cosine,
}

/// The optimiser (spec §4.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Muon for 2-D parameters, Nesterov Adam for the rest (optax 0.2.5 `contrib.muon`).
    Muon,
    /// AdamW on every parameter.
    Adamw,
}

/// The ODE or SDE sampler (spec §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingMethod {
    /// Euler steps of the flow ODE.
    Ode,
    /// Euler steps with churn `sde_gamma`.
    Sde,
}

/// One entry of a sampling YAML (spec §5.7), with the reference's key names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// ODE or SDE.
    pub sampling_method: SamplingMethod,
    /// Numbers of network evaluations to sweep.
    pub num_sampling_steps: Vec<usize>,
    /// Label-CFG scales to sweep (conditional tasks only).
    pub cfgs: Vec<f64>,
    /// SC-CFG scales fed to the prefix tokens.
    pub self_cond_cfg_scales: Vec<f64>,
    /// The time grid.
    pub time_schedule: TimeSchedule,
    /// Per-step churn of the SDE sampler; 0 is the ODE.
    pub sde_gamma: f64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            sampling_method: SamplingMethod::Ode,
            num_sampling_steps: vec![50],
            cfgs: vec![1.0],
            self_cond_cfg_scales: vec![1.0],
            time_schedule: TimeSchedule::LogitNormal,
            sde_gamma: 0.0,
        }
    }
}

/// The shape of the frozen T5 encoder (spec §2.1). Defaults are t5-small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderDims {
    /// Rows of the embedding table (32128 for t5-small).
    pub vocab_size: usize,
    /// Latent width `E`.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Inner width of the ReLU feed-forward.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Relative-position buckets.
    pub relative_attention_num_buckets: usize,
    /// Largest distance the buckets resolve.
    pub relative_attention_max_distance: usize,
    /// Seed of the random initialisation used when no `encoder_checkpoint` is given.
    pub init_seed: u64,
}

impl Default for EncoderDims {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            num_heads: 8,
            d_ff: 2048,
            num_layers: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            init_seed: 0,
        }
    }
}

/// Explicit network dimensions; overrides the `model` preset when present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDims {
    /// Width `H`.
    pub hidden: usize,
    /// Depth `D`.
    pub depth: usize,
    /// Attention heads `n_h`.
    pub heads: usize,
    /// SwiGLU ratio before the 2/3 rule.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

/// Our training-loop settings that the reference does not have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Stops after this many optimiser steps (overrides `epochs` when set).
    pub max_steps: Option<u64>,
    /// Samples per branch coin (the reference's per-device batch); must divide the global batch.
    pub branch_shard_size: usize,
    /// Largest number of samples one forward pass holds; larger slices accumulate gradients.
    pub micro_batch_size: Option<usize>,
    /// Samples printed at the end of `elf train`.
    pub final_samples: usize,
    /// Sampling steps used for the final samples.
    pub final_sample_steps: usize,
    /// How many steps with a non-finite loss or gradient norm may be skipped (no update, the
    /// batch dropped) before the run fails; 0 (the default) fails the run at the first one.
    #[serde(default)]
    pub skip_nonfinite: u32,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            max_steps: None,
            branch_shard_size: 16,
            micro_batch_size: None,
            final_samples: 4,
            final_sample_steps: 32,
            skip_nonfinite: 0,
        }
    }
}

/// How the cluster runs: quorum size, liveness and collective settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Training workers the coordinator waits for before the first step (`--workers` overrides).
    pub workers: usize,
    /// Interval between worker heartbeats.
    pub heartbeat_ms: u64,
    /// A worker silent for this long is evicted.
    pub heartbeat_timeout_ms: u64,
    /// A collective that makes no progress for this long fails (never a hang).
    pub collective_timeout_ms: u64,
    /// All-reduce bucket size in MiB.
    pub bucket_mib: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            workers: 1,
            heartbeat_ms: 500,
            heartbeat_timeout_ms: 5000,
            collective_timeout_ms: 30_000,
            bucket_mib: 4,
        }
    }
}

/// Checkpoints on object storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps (0: only the final step, when `save_final`).
    pub interval_steps: u64,
    /// Committed checkpoints kept (the one `latest` names is never deleted).
    pub keep_last: usize,
    /// Where checkpoints go (`file://`, `s3://`, `gs://`, `az://`, `memory://` or a path);
    /// default `<run dir>/checkpoints`.
    pub url: Option<String>,
    /// Save after the last step.
    pub save_final: bool,
    /// Upload attempts per shard.
    pub upload_retries: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            interval_steps: 0,
            keep_last: 3,
            url: None,
            save_final: true,
            upload_retries: 3,
        }
    }
}

/// Evaluation jobs the coordinator schedules on committed checkpoints (spec §6; our section:
/// the reference evaluates inside its training loop every `eval_freq` epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate every this many committed checkpoints (0: never).
    pub every_checkpoints: u64,
    /// Evaluate the final checkpoint of the run.
    pub at_end: bool,
    /// With no `--role eval` worker registered, rank 0 of the training workers runs the job
    /// between two steps (the others wait); when false such jobs wait for an eval worker.
    pub on_training_workers: bool,
    /// Samples (unconditional) or eval rows (conditional); default `num_samples`.
    pub num_samples: Option<usize>,
    /// GPT-2 folder (config.json, model.safetensors, tokenizer.json) for generative perplexity;
    /// default `eval_ppl_model` when that names a folder; without one, perplexity is skipped.
    pub gpt2: Option<String>,
    /// Samples per generation batch; default `global_batch_size`.
    pub batch: Option<usize>,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            every_checkpoints: 0,
            at_end: false,
            on_training_workers: true,
            num_samples: None,
            gpt2: None,
            batch: None,
        }
    }
}
