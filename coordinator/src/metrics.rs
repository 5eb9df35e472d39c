//! The coordinator's Prometheus metrics (`elf_` namespace, units in the names).

use elf_shared::messages::RunStatus;
use prometheus::{Gauge, GaugeVec, IntCounter, IntGauge, Opts, Registry};

use crate::state::steps::Commit;

/// Every metric the coordinator exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Committed steps.
    pub steps_committed: IntCounter,
    /// Last committed step.
    pub step: IntGauge,
    /// Wall time between the last two commits.
    pub step_seconds: Gauge,
    /// Tokens per second over the last step.
    pub tokens_per_second: Gauge,
    /// Loss parts of the last step (`part` = total, ce, l2).
    pub loss: GaugeVec,
    /// Learning rate of the last step.
    pub learning_rate: Gauge,
    /// Global gradient norm of the last step.
    pub grad_norm: Gauge,
    /// Workers in the quorum.
    pub quorum_size: IntGauge,
    /// Seconds since each member's last heartbeat (`worker`).
    pub heartbeat_age_seconds: GaugeVec,
    /// All-reduce seconds of the last step by rank (`rank`).
    pub allreduce_seconds: GaugeVec,
    /// Bytes each rank moved through the all-reduce, cumulative (`rank`).
    pub allreduce_bytes: GaugeVec,
    /// Checkpoints committed.
    pub checkpoint_saves: IntCounter,
    /// Checkpoint saves that failed.
    pub checkpoint_failures: IntCounter,
    /// Retention passes that failed after a commit.
    pub retention_failures: IntCounter,
    /// Step of the last committed checkpoint.
    pub checkpoint_last_step: IntGauge,
    /// Eval jobs completed.
    pub eval_jobs: IntCounter,
    /// Eval jobs that failed.
    pub eval_failures: IntCounter,
    /// Step of the last evaluated checkpoint.
    pub eval_last_step: IntGauge,
    /// Seconds the last eval job took.
    pub eval_seconds: Gauge,
    /// The last evaluation's metrics (`metric` = ppl, mean_entropy, bleu, rouge1, rouge2,
    /// rougeL; `run` = the sampling config's run name).
    pub eval_value: GaugeVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let c = |n: &str, h: &str| {
            let m = IntCounter::new(n, h).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let ig = |n: &str, h: &str| {
            let m = IntGauge::new(n, h).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let g = |n: &str, h: &str| {
            let m = Gauge::new(n, h).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let gv = |n: &str, h: &str, l: &[&str]| {
            let m = GaugeVec::new(Opts::new(n, h), l).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        Self {
            steps_committed: c(
                "elf_steps_committed_total",
                "Training steps committed by the coordinator.",
            ),
            step: ig("elf_step", "Last committed training step."),
            step_seconds: g(
                "elf_step_seconds",
                "Wall-clock seconds between the last two commits.",
            ),
            tokens_per_second: g(
                "elf_tokens_per_second",
                "Training tokens per second over the last step.",
            ),
            loss: gv(
                "elf_loss",
                "Loss parts of the last committed step.",
                &["part"],
            ),
            learning_rate: g(
                "elf_learning_rate",
                "Learning rate of the last committed step.",
            ),
            grad_norm: g(
                "elf_grad_norm",
                "Global gradient norm before clipping, last step.",
            ),
            quorum_size: ig("elf_quorum_size", "Workers in the current quorum."),
            heartbeat_age_seconds: gv(
                "elf_heartbeat_age_seconds",
                "Seconds since a worker's last heartbeat.",
                &["worker"],
            ),
            allreduce_seconds: gv(
                "elf_allreduce_seconds",
                "All-reduce seconds of the last step by rank.",
                &["rank"],
            ),
            allreduce_bytes: gv(
                "elf_allreduce_bytes",
                "Bytes a rank sent through the all-reduce, cumulative.",
                &["rank"],
            ),
            checkpoint_saves: c(
                "elf_checkpoint_saves_total",
                "Checkpoints committed (manifest written).",
            ),
            checkpoint_failures: c(
                "elf_checkpoint_failures_total",
                "Checkpoint saves that failed; training continued.",
            ),
            retention_failures: c(
                "elf_checkpoint_retention_failures_total",
                "Retention passes that failed after a commit (the checkpoint stayed committed).",
            ),
            checkpoint_last_step: ig(
                "elf_checkpoint_last_step",
                "Step of the last committed checkpoint.",
            ),
            eval_jobs: c("elf_eval_jobs_total", "Eval jobs completed."),
            eval_failures: c("elf_eval_failures_total", "Eval jobs that failed."),
            eval_last_step: ig(
                "elf_eval_last_step",
                "Step of the last evaluated checkpoint.",
            ),
            eval_seconds: g("elf_eval_seconds", "Seconds the last eval job took."),
            eval_value: gv(
                "elf_eval_value",
                "Metrics of the last evaluation by sampling run and metric.",
                &["run", "metric"],
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Records a committed step that took `secs` since the previous one.
    pub fn on_commit(&self, c: &Commit, secs: f64, tokens_per_s: f64) {
        let a = c.reports[0].applied().cloned().unwrap_or_default();
        self.steps_committed.inc();
        self.step.set(c.step.0 as i64);
        self.step_seconds.set(secs);
        self.tokens_per_second.set(tokens_per_s);
        self.loss.with_label_values(&["total"]).set(a.loss);
        self.loss.with_label_values(&["ce"]).set(a.ce_loss);
        self.loss.with_label_values(&["l2"]).set(a.l2_loss);
        self.learning_rate.set(c.lr);
        self.grad_norm.set(a.grad_norm);
        for r in &c.reports {
            let rank = r.rank.to_string();
            self.allreduce_seconds
                .with_label_values(&[&rank])
                .set(r.timings.allreduce_seconds);
            self.allreduce_bytes
                .with_label_values(&[&rank])
                .add(r.timings.allreduce_bytes as f64);
        }
    }

    /// Refreshes the gauges read from the status at scrape time: quorum size, heartbeat ages.
    pub fn refresh(&self, s: &RunStatus) {
        self.quorum_size
            .set(s.quorum.as_ref().map_or(0, |q| q.world_size as i64));
        for w in &s.workers {
            self.heartbeat_age_seconds
                .with_label_values(&[w.id.as_str()])
                .set(w.heartbeat_age_seconds);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
