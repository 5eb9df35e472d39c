//! The worker's Prometheus metrics (`elf_worker_` namespace, units in the names), served on
//! its own `/metrics`.

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use elf_shared::messages::StepTimings;

/// Every metric a worker exports.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Last step this worker finished.
    pub step: IntGauge,
    /// Wall-clock seconds of the last step.
    pub step_seconds: Gauge,
    /// Seconds of forward/backward in the last step.
    pub compute_seconds: Gauge,
    /// Reading and collating the rank's rows, last step.
    pub data_seconds: Gauge,
    /// Seconds of gradient all-reduce in the last step.
    pub allreduce_seconds: Gauge,
    /// Bytes sent through all-reduces.
    pub allreduce_bytes: IntCounter,
    /// Tokens trained per second in the last step.
    pub tokens_per_second: Gauge,
    /// Seconds the last save waited for the previous upload.
    pub checkpoint_wait_seconds: Gauge,
}

impl WorkerMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let g = |n: &str, h: &str| {
            let m = Gauge::new(n, h).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let step = IntGauge::new("elf_worker_step", "Last step this worker finished.")
            .expect("valid metric");
        registry
            .register(Box::new(step.clone()))
            .expect("unique metric");
        let allreduce_bytes = IntCounter::new(
            "elf_worker_allreduce_bytes_total",
            "Bytes this worker sent through all-reduces.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(allreduce_bytes.clone()))
            .expect("unique metric");
        Self {
            step,
            allreduce_bytes,
            step_seconds: g(
                "elf_worker_step_seconds",
                "Wall-clock seconds of the last step on this worker.",
            ),
            data_seconds: g(
                "elf_worker_data_seconds",
                "Seconds reading and collating this rank's rows, last step.",
            ),
            compute_seconds: g(
                "elf_worker_compute_seconds",
                "Seconds of forward/backward in the last step.",
            ),
            allreduce_seconds: g(
                "elf_worker_allreduce_seconds",
                "Seconds of gradient all-reduce in the last step.",
            ),
            tokens_per_second: g(
                "elf_worker_tokens_per_second",
                "Tokens this worker trained per second in the last step.",
            ),
            checkpoint_wait_seconds: g(
                "elf_worker_checkpoint_wait_seconds",
                "Seconds the last save waited for the previous upload of this rank.",
            ),
            registry,
        }
    }

    /// Records a finished step of `tokens` tokens.
    pub fn on_step(&self, step: u64, t: &StepTimings, tokens: usize) {
        self.step.set(step as i64);
        self.step_seconds.set(t.step_seconds);
        self.compute_seconds.set(t.compute_seconds);
        self.data_seconds.set(t.data_seconds);
        self.allreduce_seconds.set(t.allreduce_seconds);
        self.allreduce_bytes.inc_by(t.allreduce_bytes);
        self.tokens_per_second
            .set(tokens as f64 / t.step_seconds.max(1e-9));
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
