//! The learning-rate schedule of spec §4.10 as a pure function of the optimiser step; shared
//! so the coordinator can put the rate in each step directive without a tensor library.

use crate::config::{Config, LrSchedule};

/// The learning rate as a function of the optimiser step `k` (spec §4.10).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warmup length `W` in optimiser steps.
    pub warmup: u64,
    /// Total optimiser steps `T` (for cosine).
    pub total: u64,
    /// Constant or cosine after warmup.
    pub kind: LrSchedule,
    /// Cosine floor.
    pub min_lr: f64,
}

impl Schedule {
    /// Builds the schedule of a config for a run of `total_steps` global steps with
    /// `steps_per_epoch` steps per epoch.
    pub fn from_config(c: &Config, steps_per_epoch: u64, total_steps: u64) -> Self {
        let k = c.grad_accum_steps as u64;
        let warmup_global = if c.warmup_steps >= 0 {
            c.warmup_steps as u64
        } else if let Some(e) = c.warmup_epochs {
            (e * steps_per_epoch as f64) as u64
        } else {
            0
        };
        Self {
            peak: c.peak_lr(),
            warmup: warmup_global / k,
            total: total_steps / k,
            kind: c.lr_schedule,
            min_lr: c.min_lr,
        }
    }

    /// Returns `lr(k)`; the first update (k = 0) has lr 0 when there is a warmup.
    pub fn lr(&self, k: u64) -> f64 {
        let w = self.warmup;
        if w > 0 && k < w {
            return self.peak * k as f64 / w as f64;
        }
        match self.kind {
            LrSchedule::Constant => self.peak,
            LrSchedule::Cosine => {
                let span = self.total.saturating_sub(w).max(1) as f64;
                let prog = (k.saturating_sub(w) as f64).min(span) / span;
                let alpha = if self.peak > 0.0 {
                    self.min_lr / self.peak
                } else {
                    0.0
                };
                self.peak
                    * ((1.0 - alpha) * 0.5 * (1.0 + (std::f64::consts::PI * prog).cos()) + alpha)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        Config::from_yaml(yaml, "t", std::path::Path::new("."), &[])
            .unwrap()
            .config
    }

    #[test]
    fn owt_warmup_matches_spec_checks() {
        // spec §12: OWT ELF-B, 19,000 steps/epoch -> W = 9,500, lr(1) = 2.105e-7, lr(9500+) = 0.002.
        let c = cfg("blr: 0.001\nglobal_batch_size: 512\nwarmup_steps: -1\nwarmup_epochs: 0.5\n");
        let s = Schedule::from_config(&c, 19_000, 95_000);
        assert_eq!(s.warmup, 9_500);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 2.105e-7).abs() < 1e-10, "{}", s.lr(1));
        assert_eq!(s.lr(9_500), 0.002);
        assert_eq!(s.lr(50_000), 0.002);
    }

    #[test]
    fn cosine_ends_at_min_lr() {
        let c = cfg("lr: 1.0\nwarmup_steps: 10\nlr_schedule: cosine\nmin_lr: 0.1\n");
        let s = Schedule::from_config(&c, 100, 110);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.55).abs() < 1e-12);
        assert!((s.lr(110) - 0.1).abs() < 1e-12);
        assert!((s.lr(500) - 0.1).abs() < 1e-12);
    }
}
