//! The coordinator's writes to the checkpoint store, on one thread of their own, in order:
//! manifests (the commit of a checkpoint), then retention, and eval results into the manifest
//! they belong to and `metrics/eval.jsonl`. One writer in order means `latest` only moves
//! forward and retention never races a manifest being written. Each job's result goes back to
//! the driver as a [`Completion`].

use std::fs::OpenOptions;
use std::io::Write;

use elf_shared::ids::{Step, WorkerId};
use elf_shared::manifest::{FORMAT, Manifest, step_dir};
use elf_shared::messages::{EvalJob, EvalResult};
use elf_store::{Location, StoreError, checkpoints};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;

use crate::io_thread::IoThread;
use crate::state::ManifestWritten;
use crate::state::saves::CompletedSave;

/// A write for the storage thread.
#[derive(Debug)]
pub enum Job {
    /// Commit a complete save (once the metrics files are published: the receiver), then
    /// apply retention.
    Manifest(CompletedSave, std::sync::mpsc::Receiver<()>),
    /// Record an eval job's results.
    Eval {
        /// The job.
        job: EvalJob,
        /// Who ran it.
        worker: WorkerId,
        /// Its results.
        results: Vec<EvalResult>,
        /// Its wall time.
        seconds: f64,
    },
}

/// How long a manifest waits for the metrics files to be published.
const METRICS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a finished job tells the driver.
#[derive(Debug)]
pub enum Completion {
    /// A manifest was written (or not).
    Manifest(ManifestWritten),
    /// Eval results were recorded.
    Eval {
        /// The job.
        job: EvalJob,
        /// Who ran it.
        worker: WorkerId,
        /// Its results.
        results: Vec<EvalResult>,
        /// Its wall time.
        seconds: f64,
    },
}

/// What the storage thread writes with.
#[derive(Debug, Clone)]
pub struct Context {
    /// The checkpoint root.
    pub root: Location,
    /// Committed checkpoints kept.
    pub keep_last: usize,
    /// The resolved config, as stored in every manifest.
    pub config_yaml: String,
    /// Its hash.
    pub config_hash: String,
    /// The run's seed.
    pub seed: u64,
    /// The run folder (for `metrics/eval.jsonl`).
    pub folder: crate::run_folder::RunFolder,
}

/// The storage thread.
#[derive(Debug)]
pub struct Storage(IoThread<Job>);

impl Storage {
    /// Starts the thread; completions go to `done`.
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn start(ctx: Context, done: UnboundedSender<Completion>) -> std::io::Result<Self> {
        let thread = IoThread::start("elf-storage", move |job: Job| {
            let c = match job {
                Job::Manifest(save, metrics) => {
                    // Bounded: a store outage delays a checkpoint, never stalls it.
                    if metrics.recv_timeout(METRICS_WAIT).is_err() {
                        tracing::warn!(
                            step = save.step.0,
                            "committing before the metrics files were published"
                        );
                    }
                    Completion::Manifest(ctx.commit(&save))
                }
                Job::Eval {
                    job,
                    worker,
                    results,
                    seconds,
                } => {
                    ctx.record_eval(&job, &worker, &results, seconds);
                    Completion::Eval {
                        job,
                        worker,
                        results,
                        seconds,
                    }
                }
            };
            // The driver is gone only once the run is over.
            let _ = done.send(c);
        })?;
        Ok(Self(thread))
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) {
        self.0.submit(job);
    }

    /// Finishes the queued jobs and stops the thread (blocking).
    pub fn close(&mut self) {
        self.0.close();
    }
}

impl Context {
    /// Writes the manifest of a complete save (the commit), then applies retention; the two
    /// results are reported apart.
    fn commit(&self, save: &CompletedSave) -> ManifestWritten {
        let m = self.manifest(save);
        let dir = self.root.join(&step_dir(save.step.0)).display();
        elf_shared::failpoint::delay("manifest");
        let (commit_error, retention_error) = match checkpoints::commit(&self.root, &m) {
            Err(e) => (Some(e.to_string()), None),
            Ok(()) => match checkpoints::retain(&self.root, self.keep_last) {
                Ok(deleted) => {
                    tracing::info!(step = save.step.0, ?deleted, "checkpoint committed");
                    (None, None)
                }
                Err(e) => (None, Some(e.to_string())),
            },
        };
        ManifestWritten {
            step: save.step,
            dir,
            commit_error,
            retention_error,
        }
    }

    fn manifest(&self, save: &CompletedSave) -> Manifest {
        let a = save.commit.reports[0]
            .applied()
            .cloned()
            .unwrap_or_default();
        Manifest {
            format: FORMAT,
            step: save.step.0,
            next_step: save.step.next().0,
            optimizer_count: save.index.optimizer_count,
            config_hash: self.config_hash.clone(),
            config_yaml: self.config_yaml.clone(),
            world_size: save.shards.len() as u32,
            numel: save.index.numel,
            tensors: save.index.tensors.clone(),
            shards: save.shards.clone(),
            seed: self.seed,
            metrics: json!({"loss": a.loss, "ce_loss": a.ce_loss, "l2_loss": a.l2_loss, "grad_norm": a.grad_norm,
                            "lr": save.commit.lr, "param_digest": a.param_digest}),
            eval: serde_json::Value::Null,
            param_digest: a.param_digest.clone(),
            manifest_sha256: String::new(),
        }
    }

    /// Writes an eval job's results into its checkpoint's manifest and `metrics/eval.jsonl`;
    /// failures are logged (the results stay in `/status` and Prometheus).
    fn record_eval(&self, job: &EvalJob, worker: &WorkerId, results: &[EvalResult], seconds: f64) {
        let into_manifest = || -> Result<(), StoreError> {
            let dir = Location::parse(&job.dir)?;
            let mut m = checkpoints::read_manifest(&dir)?;
            m.eval = json!({"results": results, "worker": worker.0, "seconds": seconds});
            checkpoints::rewrite_manifest(&dir, &m)
        };
        if let Err(e) = into_manifest() {
            tracing::warn!(step = job.step.0, error = %e, "eval results not written into the manifest");
        }
        let line = format!("{}\n", eval_doc(job.step, results));
        let path = self.folder.local.join("metrics/eval.jsonl");
        if let Err(e) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot append the eval results");
        } else if let Err(e) = self.folder.publish("metrics/eval.jsonl") {
            tracing::warn!(error = %format!("{e:#}"), "cannot publish the eval results to the run location");
        }
    }
}

/// The JSON line of an evaluation in `metrics/eval.jsonl`.
pub fn eval_doc(step: Step, results: &[EvalResult]) -> serde_json::Value {
    json!({"step": step.0, "results": results})
}
