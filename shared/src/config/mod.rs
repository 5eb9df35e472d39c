//! The run configuration: the reference's flat YAML (spec §9) plus our own sections.
//!
//! Every field of the reference `Config` is a top-level key with the reference default, so the
//! paper's YAML files load unchanged. What the reference lacks sits in named sections beside those
//! keys (`encoder`, `model_dims`, `train`, `data`). Unknown keys and wrong types are errors that
//! name the key and the file. `--set key=value` overrides apply before validation, and the
//! resolved config (overrides and sampling configs included) is what gets hashed.//!
//! # Layout
//! - [`sections`]: the value types and our sections (`encoder`, `train`, `cluster`, ...).
//! - `load`: YAML in (the one place YAML is parsed), `--set` overrides, path resolution.
//! - `limits`: the size and nesting bounds checked before the YAML parser sees any text.
//! - `validate`: the cross-field invariants, all reported at once.
//! - this file: [`Config`], its defaults, hashes and derived values.

mod limits;
mod load;
pub mod sections;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use limits::{MAX_CONFIG_BYTES, MAX_NESTING};
pub use load::{load_sampling_configs, resolve_relative};
pub use sections::*;

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
    /// The reference's per-device batch (per worker here; `-1`/`null` unset): gives
    /// `global_batch_size` when that is `-1`/`null`; otherwise the per-rank batch is derived
    /// from the world size.
    pub batch_size: Option<usize>,
    /// Global batch `G`.
    pub global_batch_size: usize,
    /// Peak learning rate, in (0, 1]; `None` derives it from `blr`.
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
    /// The top-level keys the file (and its overrides) set.
    pub keys: Vec<String>,
}

/// Reference keys that load and cannot take effect here, with the reason each is inert.
const INERT: [(&str, &str); 9] = [
    (
        "use_wandb",
        "no wandb logging: metrics go to <run>/metrics/*.jsonl and /metrics",
    ),
    ("wandb_project", "no wandb logging"),
    ("wandb_entity", "no wandb logging"),
    ("wandb_run_name", "no wandb logging"),
    ("wandb_tag", "no wandb logging"),
    ("wandb_resume", "no wandb logging"),
    (
        "hf_repo_id",
        "runs are not uploaded to the hub: checkpoints go to checkpoint.url",
    ),
    (
        "num_workers",
        "data loading is ours (prefetching readers per worker)",
    ),
    ("attn_dropout", "never applied, as in the reference"),
];

impl ResolvedConfig {
    /// Returns true when the file (or an override) set the top-level key `key`.
    pub fn sets(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    /// The reference keys this config sets to a value that cannot take effect here, each with
    /// the reason (`key (reason)`); null, false and zero values are inert everywhere and are not
    /// listed. `batch_size` is listed when `global_batch_size` is set beside it.
    pub fn inert_keys(&self) -> Vec<String> {
        let c = &self.config;
        let mut out = vec![];
        for (key, why) in INERT {
            let live = match key {
                "use_wandb" => c.use_wandb,
                "wandb_project" | "wandb_resume" => c.use_wandb,
                "wandb_entity" => c.wandb_entity.is_some(),
                "wandb_run_name" => c.use_wandb && c.wandb_run_name.is_some(),
                "wandb_tag" => c.wandb_tag.is_some(),
                "hf_repo_id" => c.hf_repo_id.is_some(),
                "num_workers" => c.num_workers > 0,
                _ => c.attn_dropout > 0.0,
            };
            if live && self.sets(key) {
                out.push(format!("{key} ({why})"));
            }
        }
        if self.sets("batch_size") && c.batch_size.is_some() && self.sets("global_batch_size") {
            out.push(format!(
                "batch_size (global_batch_size {} is set; each worker's share follows from the world size)",
                c.global_batch_size
            ));
        }
        out
    }

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
    /// may resume at another one), and the non-finite step policy (`train.skip_nonfinite`: it
    /// changes nothing in a run whose steps are finite), nor `resume` (where a run resumes
    /// from is not what it trains).
    pub fn training_hash(&self) -> ConfigHash {
        let mut c = self.clone();
        c.resume = None;
        c.cluster.workers = ClusterSection::default().workers;
        c.train.skip_nonfinite = TrainSection::default().skip_nonfinite;
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
                    "written by config {} but this config hashes to {}; resume with the same config (only cluster.workers, train.skip_nonfinite and resume may differ) or use a new run dir",
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
