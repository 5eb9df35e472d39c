//! The coordinator's Prometheus metrics (`elf_` namespace, units in the names).

use elf_shared::messages::RunStatus;
use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

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
    /// `elf_build_info{version, protocol}` = 1.
    pub build_info: IntGaugeVec,
    /// `elf_run_info{run_id, config_hash, model}` = 1.
    pub run_info: IntGaugeVec,
    /// Wall time between commits.
    pub step_duration: Histogram,
    /// All-reduce time of each rank's step.
    pub allreduce_duration: Histogram,
    /// From the commit of a saved step to its checkpoint's commit.
    pub checkpoint_save_duration: Histogram,
    /// Training tokens of committed steps (this process).
    pub tokens: IntCounter,
    /// Model FLOPs utilisation over the last step (0-1).
    pub mfu: Gauge,
    /// Model FLOPs per second over the last step (`scripts/bench/flops.py`'s count).
    pub model_flops_per_second: Gauge,
    /// New quorums by cause.
    pub quorum_changes: IntCounterVec,
    /// Evicted workers by cause.
    pub evictions: IntCounterVec,
    /// Steps trained again because a peer was lost mid-step.
    pub steps_redone: IntCounter,
    /// Steps skipped for a non-finite loss or gradient norm.
    pub steps_skipped: IntCounter,
    /// Seconds that trained steps that were committed.
    pub goodput_seconds: Counter,
    /// Seconds that did not, by cause.
    pub badput_seconds: CounterVec,
    /// Goodput over all accounted time (0-1).
    pub goodput_ratio: Gauge,
    /// Committed steps over the run's steps (0-1).
    pub progress_ratio: Gauge,
    /// Estimated seconds to the end of the run.
    pub eta_seconds: Gauge,
    /// A rank's data and compute time over the quorum's median (`rank`).
    pub straggler_ratio: GaugeVec,
}

/// Buckets of the step and all-reduce histograms: 1 ms to about 2 min, doubling.
fn step_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 18).expect("valid buckets")
}

/// Buckets of the checkpoint-save histogram: 50 ms to about 14 min, doubling.
fn save_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.05, 2.0, 15).expect("valid buckets")
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
        let igv = |n: &str, h: &str, l: &[&str]| {
            let m = IntGaugeVec::new(Opts::new(n, h), l).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let icv = |n: &str, h: &str, l: &[&str]| {
            let m = IntCounterVec::new(Opts::new(n, h), l).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let h = |n: &str, help: &str, buckets: Vec<f64>| {
            let m = Histogram::with_opts(HistogramOpts::new(n, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let fc = |n: &str, help: &str| {
            let m = Counter::new(n, help).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let fcv = |n: &str, help: &str, l: &[&str]| {
            let m = CounterVec::new(Opts::new(n, help), l).expect("valid metric");
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
            build_info: igv(
                "elf_build_info",
                "The elf build: version and protocol version (always 1).",
                &["version", "protocol"],
            ),
            run_info: igv(
                "elf_run_info",
                "The run: id, config hash and model (always 1).",
                &["run_id", "config_hash", "model"],
            ),
            step_duration: h(
                "elf_step_duration_seconds",
                "Wall-clock seconds between consecutive commits.",
                step_buckets(),
            ),
            allreduce_duration: h(
                "elf_allreduce_duration_seconds",
                "Seconds each rank spent in the gradient all-reduce of a committed step.",
                step_buckets(),
            ),
            checkpoint_save_duration: h(
                "elf_checkpoint_save_duration_seconds",
                "Seconds from the commit of a saved step to the commit of its checkpoint.",
                save_buckets(),
            ),
            tokens: c(
                "elf_tokens_total",
                "Training tokens of the steps this coordinator committed.",
            ),
            mfu: g(
                "elf_mfu_ratio",
                "Model FLOPs utilisation over the last step: model FLOP/s over the quorum's peak (0-1; set when the peak is known).",
            ),
            model_flops_per_second: g(
                "elf_model_flops_per_second",
                "Model FLOPs per second over the last step (matmul FLOPs of scripts/bench/flops.py).",
            ),
            quorum_changes: icv(
                "elf_quorum_changes_total",
                "New quorums by cause (formed, peer_lost, leave, join).",
                &["cause"],
            ),
            evictions: icv(
                "elf_evictions_total",
                "Workers evicted by cause (heartbeat_timeout, worker_failed, registered_again, copy_failed).",
                &["cause"],
            ),
            steps_redone: c(
                "elf_steps_redone_total",
                "Steps trained again because nobody could finish them (a peer was lost mid-step).",
            ),
            steps_skipped: c(
                "elf_steps_skipped_total",
                "Steps skipped for a non-finite loss or gradient norm (train.skip_nonfinite).",
            ),
            goodput_seconds: fc(
                "elf_goodput_seconds_total",
                "Wall-clock seconds that trained steps which were committed.",
            ),
            badput_seconds: fcv(
                "elf_badput_seconds_total",
                "Wall-clock seconds that did not train committed steps, by cause.",
                &["cause"],
            ),
            goodput_ratio: g(
                "elf_goodput_ratio",
                "Goodput seconds over all accounted seconds (0-1).",
            ),
            progress_ratio: g(
                "elf_progress_ratio",
                "Committed steps over the run's steps (0-1).",
            ),
            eta_seconds: g(
                "elf_eta_seconds",
                "Estimated seconds until the last step commits (recent step times).",
            ),
            straggler_ratio: gv(
                "elf_straggler_ratio",
                "A rank's data and compute time over the quorum's median in its last committed step.",
                &["rank"],
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
        self.step_duration.observe(secs);
        for r in &c.reports {
            self.allreduce_duration.observe(r.timings.allreduce_seconds);
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
            if let (Some(rank), Some(r)) = (w.rank, w.straggler_ratio) {
                self.straggler_ratio
                    .with_label_values(&[&rank.to_string()])
                    .set(r);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
