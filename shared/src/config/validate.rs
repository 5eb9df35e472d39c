//! The cross-field invariants of a config, every violation reported at once.

use super::{Config, ConfigError};

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
}
