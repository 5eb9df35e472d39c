//! The cross-field invariants and value ranges of a config, every violation reported at once.
//! (Every number is already finite: the loader refuses NaN and infinities by key path.)

use super::{Config, ConfigError};

/// The range a float must lie in, as it reads in a message.
#[derive(Clone, Copy)]
enum Range {
    /// `>= 0`.
    NonNeg,
    /// `> 0`.
    Pos,
    /// `[0, 1]`.
    Unit,
    /// `[0, 1)`.
    UnitOpen,
    /// `(0, 1]`.
    PosUnit,
}

impl Range {
    fn holds(self, v: f64) -> bool {
        v.is_finite()
            && match self {
                Self::NonNeg => v >= 0.0,
                Self::Pos => v > 0.0,
                Self::Unit => (0.0..=1.0).contains(&v),
                Self::UnitOpen => (0.0..1.0).contains(&v),
                Self::PosUnit => v > 0.0 && v <= 1.0,
            }
    }

    fn text(self) -> &'static str {
        match self {
            Self::NonNeg => ">= 0",
            Self::Pos => "> 0",
            Self::Unit => "in [0, 1]",
            Self::UnitOpen => "in [0, 1)",
            Self::PosUnit => "in (0, 1]",
        }
    }
}

/// Records a violation when `v` is outside `range`.
fn need(p: &mut Vec<String>, name: &str, v: f64, range: Range) {
    if !range.holds(v) {
        p.push(format!("{name} must be {}, got {v:?}", range.text()));
    }
}

impl Config {
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
        for (name, v, range) in [
            ("latent_std", self.latent_std, Range::Pos),
            ("attn_dropout", self.attn_dropout, Range::UnitOpen),
            ("proj_dropout", self.proj_dropout, Range::UnitOpen),
            ("denoiser_p_std", self.denoiser_p_std, Range::NonNeg),
            (
                "denoiser_noise_scale",
                self.denoiser_noise_scale,
                Range::NonNeg,
            ),
            ("t_eps", self.t_eps, Range::PosUnit),
            ("decoder_prob", self.decoder_prob, Range::Unit),
            (
                "decoder_noise_scale",
                self.decoder_noise_scale,
                Range::NonNeg,
            ),
            ("decoder_p_std", self.decoder_p_std, Range::NonNeg),
            ("label_drop_prob", self.label_drop_prob, Range::Unit),
            ("self_cond_prob", self.self_cond_prob, Range::Unit),
            ("blr", self.blr, Range::PosUnit),
            ("min_lr", self.min_lr, Range::Unit),
            ("weight_decay", self.weight_decay, Range::NonNeg),
            ("adam_b1", self.adam_b1, Range::UnitOpen),
            ("adam_b2", self.adam_b2, Range::UnitOpen),
            ("ema_decay1", self.ema_decay1, Range::UnitOpen),
            ("eval_freq", self.eval_freq, Range::NonNeg),
            ("save_freq", self.save_freq, Range::NonNeg),
        ] {
            need(&mut p, name, v, range);
        }
        match self.lr {
            Some(lr) => need(&mut p, "lr", lr, Range::PosUnit),
            // An lr above 1 is a typo, whether set or derived from `blr`.
            None => need(
                &mut p,
                "blr * global_batch_size * grad_accum_steps / 256 (the peak lr, as lr is unset)",
                self.peak_lr(),
                Range::PosUnit,
            ),
        }
        if let Some(w) = self.warmup_epochs {
            need(&mut p, "warmup_epochs", w, Range::NonNeg);
        }
        if let Some(d) = &self.model_dims {
            need(&mut p, "model_dims.mlp_ratio", d.mlp_ratio, Range::Pos);
        }
        for (i, s) in self.sampling_configs.iter().enumerate() {
            let name = format!("sampling_configs[{i}].sde_gamma");
            need(&mut p, &name, s.sde_gamma, Range::NonNeg);
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
        // Architectures the reference allows that this build does not have are refused here,
        // not trained as something else.
        if self.num_self_cond_cfg_tokens == 0 {
            p.push("num_self_cond_cfg_tokens: 0 (the reference's explicit two-pass SC-CFG combination, its dead code path) is not built; every shipped config uses 4".into());
        }
        if self.num_model_mode_tokens == 0 {
            p.push("num_model_mode_tokens: 0 is not built (the decoder mode is signalled by the mode tokens); every shipped config uses 4".into());
        }
        if self.proj_dropout > 0.0 {
            p.push(format!(
                "proj_dropout: {} is not applied by this build (every shipped config uses 0.0); refusing rather than training without it",
                self.proj_dropout
            ));
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
}
