//! The run configuration: the reference's flat YAML (spec §9) plus our own sections.
//!
//! Every field of the reference `Config` is a top-level key with the reference default, so the
//! paper's YAML files load unchanged. What the reference lacks sits in named sections beside those
//! keys (`encoder`, `model_dims`, `train`, `data`). Unknown keys and wrong types are errors that
//! name the key and the file. `--set key=value` overrides apply before validation, and the
//! resolved config (overrides and sampling configs included) is what gets hashed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

/// Errors from loading, overriding or validating a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Io {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `--set` for overrides).
        path: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// One or more cross-field invariants do not hold.
    #[error("{path}: invalid config: {}", .problems.join("; "))]
    Invalid {
        /// The file.
        path: String,
        /// Every violation found.
        problems: Vec<String>,
    },
}

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
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            max_steps: None,
            branch_shard_size: 16,
            micro_batch_size: None,
            final_samples: 4,
            final_sample_steps: 32,
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

/// The resolved run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    // ---- Dataset (spec §3) ----
    /// Training data: a local path or an object-store URL.
    pub data_path: Option<String>,
    /// Evaluation data.
    pub eval_data_path: Option<String>,
    /// Sequence length `S`.
    pub max_length: usize,
    /// Longest condition prefix; `None` is no limit.
    pub max_input_length: Option<usize>,
    /// Padding token.
    pub pad_token: PadToken,
    /// A `tokenizer.json` path; `None` uses the bundled T5 tokenizer.
    pub tokenizer_name: Option<String>,

    // ---- Encoder (spec §2) ----
    /// Name of the frozen encoder (only `t5-small` shapes are built in).
    pub encoder_model_name: String,
    /// HF `T5EncoderModel` safetensors file; `None` uses a seeded random initialisation.
    pub encoder_checkpoint: Option<String>,
    /// Latent normalisation mean.
    pub latent_mean: f64,
    /// Latent normalisation std.
    pub latent_std: f64,

    // ---- Model (spec §1) ----
    /// `ELF-B`, `ELF-M`, `ELF-L` or `ELF-T` (our tiny CPU preset).
    pub model: String,
    /// Text bottleneck width `b`.
    pub bottleneck_dim: usize,
    /// Time prefix tokens.
    pub num_time_tokens: usize,
    /// SC-CFG prefix tokens.
    pub num_self_cond_cfg_tokens: usize,
    /// Decoder-mode tokens.
    pub num_model_mode_tokens: usize,
    /// Accepted and never applied, as in the reference.
    pub attn_dropout: f64,
    /// Dropout after attention and inside SwiGLU of the middle half of the blocks.
    pub proj_dropout: f64,

    // ---- Denoiser objective (spec §4.2) ----
    /// Logit-normal mean of `t`.
    pub denoiser_p_mean: f64,
    /// Logit-normal std of `t`.
    pub denoiser_p_std: f64,
    /// Noise scale `s_n`.
    pub denoiser_noise_scale: f64,
    /// Floor of `1 - t` in the velocity.
    pub t_eps: f64,
    /// Training time distribution.
    pub time_schedule: TimeSchedule,

    // ---- Decoder objective (spec §4.8) ----
    /// Probability of the CE branch per branch shard.
    pub decoder_prob: f64,
    /// Noise scale `s_d`.
    pub decoder_noise_scale: f64,
    /// Logit-normal mean of the per-token mix `λ`.
    pub decoder_p_mean: f64,
    /// Logit-normal std of `λ`.
    pub decoder_p_std: f64,

    // ---- Conditioning / CFG (spec §4.3, §4.6) ----
    /// Probability of dropping the condition of a sample.
    pub label_drop_prob: f64,
    /// Probability of self-conditioning a sample.
    pub self_cond_prob: f64,
    /// Smallest SC-CFG scale drawn in training.
    pub self_cond_cfg_min: f64,
    /// Largest SC-CFG scale drawn in training.
    pub self_cond_cfg_max: f64,

    // ---- Training (spec §3.5, §4.10) ----
    /// Epochs over the training set.
    pub epochs: u64,
    /// Warmup in epochs, used when `warmup_steps < 0`.
    pub warmup_epochs: Option<f64>,
    /// Warmup in steps; negative falls back to `warmup_epochs`.
    pub warmup_steps: i64,
    /// Accepted for compatibility; the per-rank batch is derived from the world size.
    pub batch_size: Option<usize>,
    /// Global batch `G`.
    pub global_batch_size: usize,
    /// Peak learning rate; `None` or <= 0 derives it from `blr`.
    pub lr: Option<f64>,
    /// Base learning rate per 256 samples.
    pub blr: f64,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// Schedule after warmup.
    pub lr_schedule: LrSchedule,
    /// AdamW decoupled weight decay (ignored by Muon, as in the reference).
    pub weight_decay: f64,
    /// Muon or AdamW.
    pub optimizer: OptimizerKind,
    /// AdamW beta1.
    pub adam_b1: f64,
    /// AdamW beta2.
    pub adam_b2: f64,
    /// Global batches per optimiser step (optax `MultiSteps`).
    pub grad_accum_steps: usize,

    // ---- EMA (spec §4.11) ----
    /// EMA decay per optimiser step.
    pub ema_decay1: f64,

    // ---- Sampling (spec §5) ----
    /// Sampling YAML, resolved relative to the config file; loaded into `sampling_configs`
    /// (and cleared) when the config is resolved.
    pub sampling_configs_path: Option<String>,
    /// The sampling sweep (loaded from `sampling_configs_path` when set).
    pub sampling_configs: Vec<SamplingConfig>,
    /// Samples generated per evaluation.
    pub num_samples: usize,

    // ---- Evaluation (spec §6) ----
    /// Computes generative perplexity after sampling.
    pub online_eval: bool,
    /// Scorer for generative perplexity.
    pub eval_ppl_model: String,
    /// Scorer batch.
    pub eval_ppl_batch_size: usize,
    /// Scorer context.
    pub eval_ppl_max_length: usize,

    // ---- Logging & checkpointing ----
    /// Steps per logged metrics window.
    pub log_freq: u64,
    /// Epochs between evaluations (fractional disables, as in the reference).
    pub eval_freq: f64,
    /// Epochs between checkpoints (may be fractional).
    pub save_freq: f64,

    // ---- Output ----
    /// Output folder.
    pub output_dir: String,
    /// Accepted for compatibility; not used.
    pub hf_repo_id: Option<String>,
    /// Checkpoint to resume from.
    pub resume: Option<String>,

    // ---- Wandb (accepted for compatibility; not used) ----
    /// Not used.
    pub use_wandb: bool,
    /// Not used.
    pub wandb_project: String,
    /// Not used.
    pub wandb_entity: Option<String>,
    /// Not used.
    pub wandb_run_name: Option<String>,
    /// Not used.
    pub wandb_tag: Option<String>,
    /// Not used.
    pub wandb_resume: String,

    // ---- Misc ----
    /// The root seed of every random draw.
    pub seed: u64,
    /// Accepted for compatibility; data loading is ours.
    pub num_workers: usize,

    // ---- Our sections ----
    /// Shape of the frozen encoder.
    pub encoder: EncoderDims,
    /// Explicit network dimensions (overrides the `model` preset).
    pub model_dims: Option<ModelDims>,
    /// Training-loop settings.
    pub train: TrainSection,
    /// Cluster settings.
    pub cluster: ClusterSection,
    /// Checkpoint settings.
    pub checkpoint: CheckpointSection,
    /// Evaluation jobs.
    pub eval: EvalSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_path: None,
            eval_data_path: None,
            max_length: 128,
            max_input_length: None,
            pad_token: PadToken::Pad,
            tokenizer_name: None,
            encoder_model_name: "t5-small".into(),
            encoder_checkpoint: None,
            latent_mean: 0.0,
            latent_std: 1.0,
            model: "ELF-B".into(),
            bottleneck_dim: 128,
            num_time_tokens: 4,
            num_self_cond_cfg_tokens: 4,
            num_model_mode_tokens: 4,
            attn_dropout: 0.0,
            proj_dropout: 0.0,
            denoiser_p_mean: 0.8,
            denoiser_p_std: 0.8,
            denoiser_noise_scale: 1.0,
            t_eps: 0.05,
            time_schedule: TimeSchedule::LogitNormal,
            decoder_prob: 0.5,
            decoder_noise_scale: 1.0,
            decoder_p_mean: 0.8,
            decoder_p_std: 0.8,
            label_drop_prob: 0.0,
            self_cond_prob: 0.5,
            self_cond_cfg_min: 0.5,
            self_cond_cfg_max: 5.0,
            epochs: 200,
            warmup_epochs: None,
            warmup_steps: 5000,
            batch_size: None,
            global_batch_size: 512,
            lr: None,
            blr: 5e-5,
            min_lr: 0.0,
            lr_schedule: LrSchedule::Constant,
            weight_decay: 0.0,
            optimizer: OptimizerKind::Muon,
            adam_b1: 0.9,
            adam_b2: 0.95,
            grad_accum_steps: 1,
            ema_decay1: 0.9999,
            sampling_configs_path: None,
            sampling_configs: vec![SamplingConfig::default()],
            num_samples: 100,
            online_eval: true,
            eval_ppl_model: "gpt2-large".into(),
            eval_ppl_batch_size: 64,
            eval_ppl_max_length: 1024,
            log_freq: 100,
            eval_freq: 10.0,
            save_freq: 100.0,
            output_dir: "./output_dir".into(),
            hf_repo_id: None,
            resume: None,
            use_wandb: false,
            wandb_project: "ELF".into(),
            wandb_entity: None,
            wandb_run_name: None,
            wandb_tag: None,
            wandb_resume: "allow".into(),
            seed: 0,
            num_workers: 0,
            encoder: EncoderDims::default(),
            model_dims: None,
            train: TrainSection::default(),
            cluster: ClusterSection::default(),
            checkpoint: CheckpointSection::default(),
            eval: EvalSection::default(),
        }
    }
}

/// A config together with where it came from and its canonical hash.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// The validated config.
    pub config: Config,
    /// The file it was read from (or `<inline>`).
    pub source: String,
    /// The folder relative paths in the config are resolved against.
    pub base_dir: PathBuf,
}

impl ResolvedConfig {
    /// Resolves a path or URL from the config: URLs pass through; relative paths are tried
    /// against the config's folder, then the working directory (as given when in neither).
    pub fn resolve(&self, p: &str) -> String {
        if p.contains("://") {
            return p.to_string();
        }
        resolve_relative(&self.base_dir, p)
            .map_or_else(|| p.to_string(), |x| x.display().to_string())
    }
}

impl fmt::Display for ConfigHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sha256 of the canonical JSON serialisation of a resolved config, hex encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigHash(pub String);

impl Config {
    /// Reads, overrides, resolves and validates a config file.
    ///
    /// # Errors
    /// Names the file and the key for unreadable files, malformed YAML, unknown keys, wrong types,
    /// bad overrides, a missing sampling file and every violated invariant.
    pub fn load(path: &Path, overrides: &[String]) -> Result<ResolvedConfig, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source_err| ConfigError::Io {
            path: source.clone(),
            source: source_err,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_yaml(&text, &source, &base_dir, overrides)
    }

    /// Parses a config from YAML text; `source` names it in errors, `base_dir` anchors
    /// relative paths.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_yaml(
        text: &str,
        source: &str,
        base_dir: &Path,
        overrides: &[String],
    ) -> Result<ResolvedConfig, ConfigError> {
        let mut value = parse_yaml(text, source)?;
        if value.is_null() {
            value = Value::Mapping(Default::default());
        }
        for ov in overrides {
            apply_override(&mut value, ov)?;
        }
        let mut config: Config = from_value(value, source)?;
        if let Some(p) = config.sampling_configs_path.clone() {
            let file = resolve_relative(base_dir, &p).ok_or_else(|| ConfigError::Parse {
                path: source.to_string(),
                message: format!(
                    "sampling_configs_path: {p} not found relative to {} or the working directory",
                    base_dir.display()
                ),
            })?;
            config.sampling_configs = load_sampling_configs(&file)?;
            // The resolved config is self-contained: it is shipped to workers as bytes.
            config.sampling_configs_path = None;
        }
        // Paths relative to the config's folder become absolute, so the resolved config means
        // the same thing wherever it is read (workers, a resumed coordinator, `config check`).
        for p in [
            &mut config.data_path,
            &mut config.eval_data_path,
            &mut config.encoder_checkpoint,
            &mut config.tokenizer_name,
            &mut config.eval.gpt2,
        ]
        .into_iter()
        .flatten()
        {
            // As `resolve` does: beside the config, else from the working directory. A path
            // left relative would be resolved again by every reader of the resolved config
            // (workers run elsewhere), and hash differently there.
            if !p.contains("://") && Path::new(p.as_str()).is_relative() {
                let beside = base_dir.join(p.as_str());
                if let Ok(abs) = beside
                    .canonicalize()
                    .or_else(|_| Path::new(p.as_str()).canonicalize())
                {
                    *p = abs.display().to_string();
                }
            }
        }
        config.validate(source)?;
        Ok(ResolvedConfig {
            config,
            source: source.to_string(),
            base_dir: base_dir.to_path_buf(),
        })
    }

    /// Checks the cross-field invariants and returns every violation at once.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each problem.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        if self.max_length == 0 {
            p.push("max_length must be >= 1".to_string());
        }
        if let Some(m) = self.max_input_length
            && m >= self.max_length
        {
            p.push(format!(
                "max_input_length ({m}) must be smaller than max_length ({})",
                self.max_length
            ));
        }
        if self.latent_std <= 0.0 {
            p.push("latent_std must be > 0".into());
        }
        if self.model_dims.is_none()
            && !["ELF-B", "ELF-M", "ELF-L", "ELF-T"].contains(&self.model.as_str())
        {
            p.push(format!(
                "model: unknown preset {:?} (expected ELF-B, ELF-M, ELF-L or ELF-T, or give model_dims)",
                self.model
            ));
        }
        if let Some(d) = &self.model_dims {
            if d.heads == 0 || d.hidden % d.heads != 0 {
                p.push(format!(
                    "model_dims: heads ({}) must divide hidden ({})",
                    d.heads, d.hidden
                ));
            } else if (d.hidden / d.heads) % 2 != 0 {
                p.push("model_dims: head dim must be even for RoPE".into());
            }
        }
        let e = &self.encoder;
        if e.num_heads == 0 || e.d_model == 0 || e.num_layers == 0 {
            p.push("encoder: d_model, num_heads and num_layers must be >= 1".into());
        }
        for (name, v) in [
            ("decoder_prob", self.decoder_prob),
            ("label_drop_prob", self.label_drop_prob),
            ("self_cond_prob", self.self_cond_prob),
        ] {
            if !(0.0..=1.0).contains(&v) {
                p.push(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if self.self_cond_cfg_min < 0.0 || self.self_cond_cfg_max < self.self_cond_cfg_min {
            p.push("self_cond_cfg_min must be >= 0 and <= self_cond_cfg_max".into());
        }
        if self.global_batch_size == 0 {
            p.push("global_batch_size must be >= 1".into());
        }
        if self.grad_accum_steps == 0 {
            p.push("grad_accum_steps must be >= 1".into());
        }
        if self.train.branch_shard_size == 0
            || !self
                .global_batch_size
                .is_multiple_of(self.train.branch_shard_size)
        {
            p.push(format!(
                "train.branch_shard_size ({}) must divide global_batch_size ({})",
                self.train.branch_shard_size, self.global_batch_size
            ));
        }
        if self.cluster.workers == 0
            || self.cluster.bucket_mib == 0
            || self.cluster.heartbeat_ms == 0
        {
            p.push(
                "cluster.workers, cluster.bucket_mib and cluster.heartbeat_ms must be >= 1".into(),
            );
        }
        if self.cluster.heartbeat_timeout_ms <= self.cluster.heartbeat_ms {
            p.push("cluster.heartbeat_timeout_ms must exceed cluster.heartbeat_ms".into());
        }
        if !self
            .checkpoint
            .interval_steps
            .is_multiple_of(self.grad_accum_steps.max(1) as u64)
        {
            p.push(format!(
                "checkpoint.interval_steps ({}) must be a multiple of grad_accum_steps ({}): saves happen on optimiser steps",
                self.checkpoint.interval_steps, self.grad_accum_steps
            ));
        }
        if self.checkpoint.keep_last == 0 {
            p.push("checkpoint.keep_last must be >= 1".into());
        }
        if self.train.micro_batch_size == Some(0) {
            p.push("train.micro_batch_size must be >= 1".into());
        }
        if !(0.0..1.0).contains(&self.ema_decay1) {
            p.push(format!(
                "ema_decay1 must be in [0, 1), got {}",
                self.ema_decay1
            ));
        }
        if self.t_eps <= 0.0 {
            p.push("t_eps must be > 0".into());
        }
        if self.sampling_configs.is_empty() {
            p.push("sampling_configs must not be empty".into());
        }
        for (i, s) in self.sampling_configs.iter().enumerate() {
            if s.num_sampling_steps.is_empty() || s.num_sampling_steps.contains(&0) {
                p.push(format!(
                    "sampling_configs[{i}].num_sampling_steps must be non-empty and >= 1"
                ));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: source.to_string(),
                problems: p,
            })
        }
    }

    /// Returns the canonical YAML of the resolved config (what workers receive).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a config always serialises")
    }

    /// Returns the sha256 of the canonical JSON of the resolved config.
    pub fn hash(&self) -> ConfigHash {
        let json = serde_json::to_vec(self).expect("a config always serialises");
        ConfigHash(hex::encode(Sha256::digest(&json)))
    }

    /// Returns the sha256 of what determines the trained model: the resolved config with the
    /// world size left out (`cluster.workers`: any world size trains the same model, so a run
    /// may resume at another one).
    pub fn training_hash(&self) -> ConfigHash {
        let mut c = self.clone();
        c.cluster.workers = ClusterSection::default().workers;
        c.hash()
    }

    /// Checks that a checkpoint written with the config `theirs` (canonical YAML, from its
    /// manifest in `dir`) can be resumed with this one.
    ///
    /// # Errors
    /// A manifest config that does not parse, or one that trains another model.
    pub fn check_resumable(&self, theirs: &str, dir: &str) -> Result<(), ConfigError> {
        let source = format!("{dir} (manifest config)");
        let other = Self::from_yaml(theirs, &source, Path::new("."), &[])?.config;
        let (a, b) = (other.training_hash(), self.training_hash());
        if a != b {
            return Err(ConfigError::Invalid {
                path: dir.to_string(),
                problems: vec![format!(
                    "written by config {} but this config hashes to {}; resume with the same config (only cluster.workers may differ) or use a new run dir",
                    other.hash(),
                    self.hash()
                )],
            });
        }
        Ok(())
    }

    /// Returns the peak learning rate: `lr` when set and positive, else `blr · G · k / 256`.
    pub fn peak_lr(&self) -> f64 {
        match self.lr {
            Some(lr) if lr > 0.0 => lr,
            _ => self.blr * self.global_batch_size as f64 * self.grad_accum_steps as f64 / 256.0,
        }
    }

    /// Returns the pad id: 0 for `pad`, 1 (EOS) for `eos`.
    pub fn pad_id(&self) -> u32 {
        match self.pad_token {
            PadToken::Pad => 0,
            PadToken::Eos => 1,
        }
    }
}

/// Parses YAML into a value, naming the source in the error.
fn parse_yaml(text: &str, source: &str) -> Result<Value, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
        path: source.to_string(),
        message: e.to_string(),
    })
}

/// The only place YAML becomes a typed value.
fn from_value<T: serde::de::DeserializeOwned>(
    value: Value,
    source: &str,
) -> Result<T, ConfigError> {
    // Through JSON text, because serde_yaml_ng's `Value` deserializer does not report key paths.
    let text = serde_json::to_string(&value).map_err(|e| ConfigError::Parse {
        path: source.to_string(),
        message: e.to_string(),
    })?;
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let key = e.path().to_string();
        // Drop serde_json's "at line 1 column N": positions in the JSON re-encoding mean nothing.
        let inner = e.inner().to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        let message = if key == "." {
            inner
        } else {
            format!("{key}: {inner}")
        };
        ConfigError::Parse {
            path: source.to_string(),
            message,
        }
    })
}

/// Applies one `key=value` override; dotted keys reach into sections (`train.max_steps=10`).
fn apply_override(root: &mut Value, ov: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Parse {
        path: "--set".into(),
        message,
    };
    let (key, raw) = ov
        .split_once('=')
        .ok_or_else(|| err(format!("{ov:?}: expected key=value")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(err(format!("{ov:?}: empty key")));
    }
    let raw = raw.trim();
    let value: Value = if raw.eq_ignore_ascii_case("none") {
        Value::Null
    } else {
        serde_yaml_ng::from_str(raw).map_err(|e| err(format!("{key}: {e}")))?
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let map = match cur {
            Value::Mapping(m) => m,
            Value::Null => {
                *cur = Value::Mapping(Default::default());
                match cur {
                    Value::Mapping(m) => m,
                    _ => unreachable!(),
                }
            }
            _ => {
                return Err(err(format!(
                    "{key}: {} is not a section",
                    parts[..i].join(".")
                )));
            }
        };
        let k = Value::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        cur = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

/// Resolves `p` against the config's folder first, then the working directory; `None` when it
/// exists in neither.
pub fn resolve_relative(base_dir: &Path, p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    let beside = base_dir.join(path);
    if beside.exists() {
        return Some(beside);
    }
    path.exists().then(|| path.to_path_buf())
}

/// Loads a sampling YAML: a list of entries (or a mapping with a `sampling_configs` list).
///
/// # Errors
/// Names the file and the bad key.
pub fn load_sampling_configs(path: &Path) -> Result<Vec<SamplingConfig>, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        path: source.clone(),
        source: e,
    })?;
    let mut value = parse_yaml(&text, &source)?;
    if let Value::Mapping(m) = &mut value
        && let Some(list) = m.remove("sampling_configs")
    {
        value = list;
    }
    from_value(value, &source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ResolvedConfig, ConfigError> {
        Config::from_yaml(text, "test.yaml", Path::new("."), &[])
    }

    #[test]
    fn empty_yaml_gives_reference_defaults() {
        let c = parse("").unwrap().config;
        assert_eq!(c, Config::default());
        assert_eq!(c.max_length, 128);
        assert!((c.peak_lr() - 5e-5 * 2.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_key_is_an_error_naming_key_and_file() {
        let e = parse("max_lenght: 12\n").unwrap_err().to_string();
        assert!(e.contains("test.yaml"), "{e}");
        assert!(e.contains("max_lenght"), "{e}");
    }

    #[test]
    fn wrong_type_is_an_error_naming_key() {
        let e = parse("max_length: twelve\n").unwrap_err().to_string();
        assert!(e.contains("max_length"), "{e}");
        let e = parse("train:\n  max_steps: x\n").unwrap_err().to_string();
        assert!(e.contains("max_steps"), "{e}");
    }

    #[test]
    fn overrides_apply_and_reach_sections() {
        let r = Config::from_yaml(
            "max_length: 64\n",
            "t.yaml",
            Path::new("."),
            &[
                "max_length=32".into(),
                "train.max_steps=7".into(),
                "lr=none".into(),
            ],
        )
        .unwrap();
        assert_eq!(r.config.max_length, 32);
        assert_eq!(r.config.train.max_steps, Some(7));
        let e = Config::from_yaml("", "t.yaml", Path::new("."), &["nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn invariants_are_all_reported() {
        let e = parse("max_length: 8\nmax_input_length: 9\ndecoder_prob: 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_input_length") && e.contains("decoder_prob"),
            "{e}"
        );
    }

    #[test]
    fn hash_changes_with_content_and_round_trips() {
        let a = parse("seed: 1\n").unwrap().config;
        let b = parse("seed: 2\n").unwrap().config;
        assert_ne!(a.hash(), b.hash());
        let again = parse(&a.to_yaml()).unwrap().config;
        assert_eq!(again, a);
        assert_eq!(again.hash(), a.hash());
    }

    #[test]
    fn peak_lr_follows_reference_rule() {
        let c = parse("blr: 0.001\nglobal_batch_size: 512\n")
            .unwrap()
            .config;
        assert!((c.peak_lr() - 0.002).abs() < 1e-12);
    }

    #[test]
    fn a_checkpoint_resumes_at_any_world_size_but_not_with_another_model() {
        let base = parse(
            "seed: 1
",
        )
        .unwrap()
        .config;
        let wider = Config::from_yaml(
            "seed: 1
",
            "t",
            Path::new("."),
            &["cluster.workers=4".into()],
        )
        .unwrap()
        .config;
        assert_ne!(
            base.hash(),
            wider.hash(),
            "the world size is part of the hashed config"
        );
        assert_eq!(base.training_hash(), wider.training_hash());
        wider
            .check_resumable(&base.to_yaml(), "ckpt/step-000000003")
            .unwrap();
        let other = parse(
            "seed: 2
",
        )
        .unwrap()
        .config;
        let e = other
            .check_resumable(&base.to_yaml(), "ckpt/step-000000003")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ckpt/step-000000003: invalid config: written by config")
                && e.contains(&base.hash().0),
            "{e}"
        );
    }
}
