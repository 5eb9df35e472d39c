//! The ELF coordinator: owns decisions, never tensors. It admits workers, forms the quorum,
//! hands out steps with each rank's slice of the global batch, commits steps when every replica
//! agrees, records metrics, and serves `/metrics` and `/status`.
//!
//! # Layout
//! - [`state`]: pure decisions (membership, quorum, directives, commits, eviction).
//! - [`service`]: the gRPC service: decode, call the state, encode; long-polls `NextStep`.
//! - [`metrics`]: Prometheus metrics.
//! - this file: [`start`], the driver that binds listeners, ticks the state and records commits.

pub mod metrics;
pub mod service;
pub mod state;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use elf_data::checkpoints;
use elf_data::source::Location;
use elf_shared::config::ResolvedConfig;
use elf_shared::events;
use elf_shared::manifest::{Manifest, ShardEntry, TensorEntry, step_dir};
use elf_shared::proto::EvalReport;
use elf_shared::proto::coordinator_server::CoordinatorServer;
use elf_shared::schedule::Schedule;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;
use crate::state::{ClusterState, Commit, CompletedSave, EvalJob, Phase, RunFacts};

/// Per-process facts of a coordinator (never hyperparameters: those are in the config).
#[derive(Debug, Clone)]
pub struct Options {
    /// gRPC listen address (`127.0.0.1:0` picks a port; the `ready` event reports it).
    pub listen: String,
    /// HTTP listen address for `/metrics` and `/status`.
    pub http_listen: String,
    /// Run folder (metrics, resolved config, samples).
    pub run_dir: PathBuf,
    /// Training workers to wait for (default: the config's `cluster.workers`).
    pub workers: Option<usize>,
    /// Emit JSON events on stdout.
    pub events: bool,
    /// Resume from this checkpoint folder (default: the newest valid one under the checkpoint
    /// root, if any).
    pub resume: Option<String>,
    /// End this process's run after this many steps (the config's run length is unchanged, so
    /// a later process resumes it).
    pub stop_after: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step committed.
    Done {
        /// Steps committed in total.
        steps: u64,
    },
    /// The run stopped.
    Failed(String),
}

/// Progress published to in-process observers (the `elf train` progress bar).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Steps committed.
    pub committed: u64,
    /// Steps in the run.
    pub total: u64,
    /// Loss parts of the last commit.
    pub loss: (f64, f64, f64),
    /// Tokens per second over the last step.
    pub tokens_per_s: f64,
}

/// State shared by the service, the HTTP endpoint and the driver.
#[derive(Debug)]
pub struct Inner {
    /// The decisions.
    pub state: Mutex<ClusterState>,
    /// Woken on every state change (long-polls wait on it).
    pub notify: Notify,
    /// The resolved config as shipped to workers.
    pub config_yaml: String,
    /// Its hash.
    pub config_hash: String,
    /// Run id.
    pub run_id: String,
    /// Run folder.
    pub run_dir: PathBuf,
    /// Heartbeat interval for workers.
    pub heartbeat_ms: u32,
    /// Metrics.
    pub metrics: Metrics,
    /// Workers that received their final directive.
    pub finished: Mutex<std::collections::BTreeSet<String>>,
    /// The checkpoint workers load before their first step.
    pub resume_from: Option<String>,
    checkpoint_root: Location,
    keep_last: usize,
    seed: u64,
    /// The last evaluation (for `/status`).
    last_eval: Mutex<serde_json::Value>,
    events: bool,
    recorder: Mutex<Recorder>,
    progress: watch::Sender<Progress>,
    tokens_per_step: f64,
}

/// Appends commits to the run's metrics files.
///
/// `train.jsonl` and `rank-<r>.jsonl` hold only values that are a pure function of the config
/// and seed (so two runs with the same seed give bit-identical files); wall-clock figures go to
/// `timing.jsonl`.
#[derive(Debug)]
struct Recorder {
    dir: PathBuf,
    train: File,
    timing: File,
    ranks: Vec<File>,
    start_step: u64,
    last_commit: Instant,
}

/// Opens a metrics file keeping only the lines of steps before `start` (a fresh run starts it
/// empty; a resumed one drops the lines of steps it will train again).
fn open_from(path: &Path, start: u64) -> anyhow::Result<File> {
    let kept: Vec<String> = match fs::read_to_string(path) {
        Ok(text) if start > 0 => text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s < start)
            })
            .map(str::to_string)
            .collect(),
        _ => vec![],
    };
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for writing", path.display()))?;
    for l in kept {
        writeln!(f, "{l}")?;
    }
    Ok(f)
}

impl Recorder {
    fn record(&mut self, c: &Commit, hash: &str, tokens: f64) -> anyhow::Result<f64> {
        let r0 = &c.reports[0];
        let line = json!({
            "step": c.step, "loss": r0.loss, "ce_loss": r0.ce_loss, "l2_loss": r0.l2_loss, "lr": c.lr,
            "grad_norm": r0.grad_norm, "world_size": c.quorum.ranks.len(), "quorum_id": c.quorum.id,
            "param_digest": r0.param_digest, "config_hash": hash,
        });
        writeln!(self.train, "{line}")?;
        while self.ranks.len() < c.reports.len() {
            let r = self.ranks.len();
            self.ranks.push(open_from(
                &self.dir.join(format!("rank-{r}.jsonl")),
                self.start_step,
            )?);
        }
        for (rep, f) in c.reports.iter().zip(&mut self.ranks) {
            let line = json!({
                "step": rep.step, "rank": rep.rank, "worker": rep.worker_id, "loss": rep.loss,
                "ce_loss": rep.ce_loss, "l2_loss": rep.l2_loss, "grad_norm": rep.grad_norm,
                "param_digest": rep.param_digest, "config_hash": hash,
            });
            writeln!(f, "{line}")?;
        }
        let now = Instant::now();
        let secs = now.duration_since(self.last_commit).as_secs_f64();
        self.last_commit = now;
        let ranks: Vec<_> = c
            .reports
            .iter()
            .map(|r| json!({"rank": r.rank, "compute_seconds": r.compute_seconds, "allreduce_seconds": r.allreduce_seconds, "allreduce_bytes": r.allreduce_bytes, "step_seconds": r.step_seconds}))
            .collect();
        writeln!(
            self.timing,
            "{}",
            json!({"step": c.step, "step_seconds": secs, "tokens_per_s": tokens / secs.max(1e-9), "ranks": ranks})
        )?;
        Ok(secs)
    }
}

impl Inner {
    /// Records a commit: metrics files, Prometheus, progress, events.
    pub fn on_commit(&self, c: &Commit) {
        let secs = match self.recorder.lock().expect("recorder lock").record(
            c,
            &self.config_hash,
            self.tokens_per_step,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot write metrics");
                0.0
            }
        };
        let r0 = &c.reports[0];
        let m = &self.metrics;
        m.steps_committed.inc();
        m.step.set(c.step as i64);
        m.step_seconds.set(secs);
        m.tokens_per_second
            .set(self.tokens_per_step / secs.max(1e-9));
        m.loss.with_label_values(&["total"]).set(r0.loss);
        m.loss.with_label_values(&["ce"]).set(r0.ce_loss);
        m.loss.with_label_values(&["l2"]).set(r0.l2_loss);
        m.learning_rate.set(c.lr);
        m.grad_norm.set(r0.grad_norm);
        for r in &c.reports {
            let rank = r.rank.to_string();
            m.allreduce_seconds
                .with_label_values(&[&rank])
                .set(r.allreduce_seconds);
            m.allreduce_bytes
                .with_label_values(&[&rank])
                .add(r.allreduce_bytes as f64);
        }
        let total = self.state.lock().expect("state lock").facts().total_steps;
        self.progress.send_modify(|p| {
            p.committed = c.step + 1;
            p.total = total;
            p.loss = (r0.loss, r0.ce_loss, r0.l2_loss);
            p.tokens_per_s = self.tokens_per_step / secs.max(1e-9);
        });
    }

    /// Writes the manifests of every save whose step and shards are all in, off the async
    /// runtime. Counted as in flight under the state lock, so the driver never sees a save
    /// neither pending nor in flight while its manifest is being written.
    pub fn write_complete_saves(self: &Arc<Self>) {
        let saves = self.state.lock().expect("state lock").take_complete_saves();
        for save in saves {
            let me = self.clone();
            std::thread::spawn(move || {
                let ok = match me.write_manifest(&save) {
                    Ok(deleted) => {
                        tracing::info!(step = save.step, ?deleted, "checkpoint committed");
                        me.metrics.checkpoint_saves.inc();
                        me.metrics.checkpoint_last_step.set(save.step as i64);
                        if me.events {
                            events::emit("checkpoint", json!({"step": save.step}));
                        }
                        true
                    }
                    Err(e) => {
                        tracing::warn!(step = save.step, error = %e, "checkpoint manifest not written; training continues");
                        me.metrics.checkpoint_failures.inc();
                        false
                    }
                };
                let dir = me.checkpoint_root.join(&step_dir(save.step)).display();
                me.state
                    .lock()
                    .expect("state lock")
                    .save_written(save.step, dir, ok);
                me.notify.notify_waiters();
            });
        }
    }

    /// Records a finished eval job: into its checkpoint's manifest, `metrics/eval.jsonl`,
    /// `/status` and Prometheus (blocking IO; called off the async runtime).
    pub fn record_eval(&self, job: &EvalJob, r: &EvalReport) {
        if !r.error.is_empty() {
            tracing::warn!(step = job.step, worker = %r.worker_id, error = %r.error, "eval job failed; training continues");
            self.metrics.eval_failures.inc();
            self.emit("eval_failed", json!({"step": job.step, "reason": r.error}));
            return;
        }
        let results: serde_json::Value =
            serde_json::from_str(&r.results_json).unwrap_or(serde_json::Value::Null);
        let doc = json!({"step": job.step, "results": results});
        let written = Location::parse(&job.dir)
            .map_err(anyhow::Error::from)
            .and_then(|dir| {
                let mut m = checkpoints::read_manifest(&dir)?;
                m.eval = json!({"results": results, "worker": r.worker_id, "seconds": r.seconds});
                checkpoints::rewrite_manifest(&dir, &m)?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::warn!(step = job.step, error = %e, "eval results not written into the manifest");
        }
        let line = format!("{doc}\n");
        let path = self.run_dir.join("metrics/eval.jsonl");
        if let Err(e) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot append the eval results");
        }
        for run in results.as_array().into_iter().flatten() {
            let name = run["run"].as_str().unwrap_or("");
            for metric in ["ppl", "mean_entropy", "bleu", "rouge1", "rouge2", "rougeL"] {
                if let Some(v) = run[metric].as_f64() {
                    self.metrics
                        .eval_value
                        .with_label_values(&[name, metric])
                        .set(v);
                }
            }
        }
        self.metrics.eval_jobs.inc();
        self.metrics.eval_last_step.set(job.step as i64);
        self.metrics.eval_seconds.set(r.seconds);
        tracing::info!(step = job.step, seconds = r.seconds, "checkpoint evaluated");
        // Observable everywhere before the event announces it.
        *self.last_eval.lock().expect("eval lock") = doc.clone();
        self.emit("eval", doc);
    }

    fn write_manifest(&self, save: &CompletedSave) -> anyhow::Result<Vec<u64>> {
        let r0 = save.shards.first().context("no shards")?;
        let tensors: Vec<TensorEntry> =
            serde_json::from_str(&r0.tensors_json).context("rank 0 sent no tensor index")?;
        let c = &save.commit.reports[0];
        let m = Manifest {
            format: elf_shared::manifest::FORMAT,
            step: save.step,
            next_step: save.step + 1,
            optimizer_count: r0.optimizer_count,
            config_hash: self.config_hash.clone(),
            config_yaml: self.config_yaml.clone(),
            world_size: save.shards.len() as u32,
            numel: r0.numel,
            tensors,
            shards: save
                .shards
                .iter()
                .map(|s| ShardEntry {
                    file: s.file.clone(),
                    sha256: s.sha256.clone(),
                    size: s.size,
                    start: s.start,
                    len: s.len,
                })
                .collect(),
            seed: self.seed,
            metrics: json!({"loss": c.loss, "ce_loss": c.ce_loss, "l2_loss": c.l2_loss, "grad_norm": c.grad_norm,
                            "lr": save.commit.lr, "param_digest": c.param_digest}),
            eval: serde_json::Value::Null,
        };
        elf_shared::failpoint::delay("manifest");
        checkpoints::commit(&self.checkpoint_root, &m)?;
        Ok(checkpoints::retain(&self.checkpoint_root, self.keep_last)?)
    }

    /// Emits an event when this coordinator prints events.
    pub fn emit(&self, event: &str, fields: serde_json::Value) {
        if self.events {
            events::emit(event, fields);
        }
    }

    /// Returns the `/status` document.
    pub fn status(&self) -> serde_json::Value {
        let s = self.state.lock().expect("state lock");
        let now = Instant::now();
        let phase = match s.phase() {
            Phase::Forming => "forming".to_string(),
            Phase::Running => "running".into(),
            Phase::Done => "done".into(),
            Phase::Failed(why) => format!("failed: {why}"),
        };
        let workers: Vec<_> = s
            .members()
            .iter()
            .map(|(id, m)| {
                json!({"id": id, "device": m.device, "collective_addr": m.addr, "role": m.role,
                       "heartbeat_age_seconds": now.duration_since(m.last_seen).as_secs_f64(), "last_step": m.step})
            })
            .collect();
        let p = self.progress.borrow().clone();
        json!({
            "run_id": self.run_id, "config_hash": self.config_hash, "phase": phase,
            "step": s.step(), "total_steps": s.facts().total_steps,
            "quorum": s.quorum().map(|q| json!({"id": q.id, "world_size": q.ranks.len(), "members": q.ranks})),
            "workers": workers,
            "throughput_tokens_per_s": p.tokens_per_s,
            "last_losses": {"loss": p.loss.0, "ce_loss": p.loss.1, "l2_loss": p.loss.2},
            "evals_outstanding": s.evals_outstanding(),
            "last_eval": *self.last_eval.lock().expect("eval lock"),
        })
    }

    /// Refreshes the heartbeat-age gauges and the quorum size.
    fn refresh_gauges(&self) {
        let s = self.state.lock().expect("state lock");
        let now = Instant::now();
        self.metrics
            .quorum_size
            .set(s.quorum().map_or(0, |q| q.ranks.len() as i64));
        for (id, m) in s.members() {
            self.metrics
                .heartbeat_age_seconds
                .with_label_values(&[id])
                .set(now.duration_since(m.last_seen).as_secs_f64());
        }
    }
}

/// A started coordinator.
#[derive(Debug)]
pub struct Running {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// Shared state (for in-process observers).
    pub inner: Arc<Inner>,
    /// Progress updates.
    pub progress: watch::Receiver<Progress>,
    /// Resolves when the run is over and the final directives were delivered.
    pub done: tokio::task::JoinHandle<Outcome>,
}

/// Validates the run against its data, finds the checkpoint to resume, prepares the run
/// folder and builds the shared state (blocking IO; run off the async runtime).
#[allow(clippy::type_complexity)]
fn prepare(
    rc: ResolvedConfig,
    opts: &Options,
) -> anyhow::Result<(Arc<Inner>, watch::Receiver<Progress>, usize, u64, u64)> {
    let c = &rc.config;
    let elf_data::Training { data, plan, .. } = elf_data::open_training(&rc)?;
    let g = c.global_batch_size as u64;
    let workers = opts.workers.unwrap_or(c.cluster.workers);
    let shard = c.train.branch_shard_size as u64;
    if !plan.splits(workers as u64, shard) {
        anyhow::bail!(
            "{}: {workers} workers cannot split global_batch_size {g} into whole branch shards of {shard} (train.branch_shard_size)",
            rc.source
        );
    }
    let spe = plan.steps_per_epoch();
    let total_steps = c.train.max_steps.unwrap_or(spe * c.epochs);
    let hash = c.hash().0;
    let root_spec = c
        .checkpoint
        .url
        .clone()
        .unwrap_or_else(|| opts.run_dir.join("checkpoints").display().to_string());
    let checkpoint_root = Location::parse(&root_spec)?;
    let resume = match &opts.resume {
        Some(url) => {
            let dir = Location::parse(url)?;
            let m = checkpoints::read_manifest(&dir)?;
            checkpoints::verify(&dir, &m)?;
            Some((dir, m))
        }
        None => checkpoints::newest_valid(&checkpoint_root)?,
    };
    if let Some((dir, m)) = &resume {
        if m.config_hash != hash {
            anyhow::bail!(
                "{}: written by config {} but this config hashes to {hash}; resume with the same config or use a new run dir",
                dir.display(),
                m.config_hash
            );
        }
        tracing::info!(checkpoint = %dir.display(), step = m.step, world_size = m.world_size, "resuming");
    }
    let start_step = resume.as_ref().map_or(0, |(_, m)| m.next_step);
    let facts = RunFacts {
        expected: workers,
        total_steps,
        schedule: Schedule::from_config(c, spe, total_steps),
        plan,
        grad_accum: c.grad_accum_steps as u64,
        shard,
        heartbeat_timeout: Duration::from_millis(c.cluster.heartbeat_timeout_ms),
        save_interval: c.checkpoint.interval_steps,
        save_final: c.checkpoint.save_final,
        checkpoint_root: checkpoint_root.display(),
        stop_after: opts.stop_after,
        eval_every: c.eval.every_checkpoints,
        eval_at_end: c.eval.at_end,
        eval_inline: c.eval.on_training_workers,
    };
    let dir = &opts.run_dir;
    fs::create_dir_all(dir.join("metrics"))
        .with_context(|| format!("{}: cannot create the run folder", dir.display()))?;
    let yaml = c.to_yaml();
    fs::write(dir.join("config.yaml"), &yaml)
        .with_context(|| format!("{}: cannot write config.yaml", dir.display()))?;
    let recorder = Recorder {
        dir: dir.join("metrics"),
        train: open_from(&dir.join("metrics/train.jsonl"), start_step)?,
        timing: open_from(&dir.join("metrics/timing.jsonl"), start_step)?,
        ranks: vec![],
        start_step,
        last_commit: Instant::now(),
    };
    let (ptx, prx) = watch::channel(Progress {
        total: total_steps,
        ..Progress::default()
    });
    let inner = Arc::new(Inner {
        state: Mutex::new(ClusterState::new(facts, start_step)),
        notify: Notify::new(),
        config_yaml: yaml,
        run_id: format!("elf-{}", &hash[..12]),
        config_hash: hash,
        run_dir: dir.clone(),
        heartbeat_ms: c.cluster.heartbeat_ms as u32,
        metrics: Metrics::new(),
        finished: Mutex::new(Default::default()),
        resume_from: resume.map(|(d, _)| d.display()),
        checkpoint_root,
        keep_last: c.checkpoint.keep_last,
        seed: c.seed,
        last_eval: Mutex::new(serde_json::Value::Null),
        events: opts.events,
        recorder: Mutex::new(recorder),
        progress: ptx,
        tokens_per_step: (g as usize * c.max_length) as f64,
    });
    Ok((inner, prx, workers, total_steps, data.len()))
}

/// Validates the run against its data, binds the listeners and starts serving.
///
/// # Errors
/// An unreadable dataset, a world size that does not divide the batch into whole branch
/// shards, an unwritable run folder, or a listen address that cannot be bound.
pub async fn start(rc: ResolvedConfig, opts: Options) -> anyhow::Result<Running> {
    // Opening the dataset and finding the checkpoint to resume may block on object-store IO,
    // which must not run on the async runtime's threads.
    let o = opts.clone();
    let (inner, prx, workers, total_steps, rows) =
        tokio::task::spawn_blocking(move || prepare(rc, &o)).await??;
    let grpc = TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", opts.listen))?;
    let http = TcpListener::bind(&opts.http_listen)
        .await
        .with_context(|| format!("--http {}: cannot bind", opts.http_listen))?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    tracing::info!(%grpc_addr, %http_addr, workers, total_steps, rows, "coordinator ready");
    if opts.events {
        events::emit(
            "ready",
            json!({"role": "coordinator", "addr": grpc_addr.to_string(), "http": http_addr.to_string(), "run_id": inner.run_id,
                   "resumed_from": inner.resume_from, "start_step": inner.state.lock().expect("state lock").step()}),
        );
    }
    let h = inner.clone();
    tokio::spawn(elf_shared::http::serve(http, move |path| {
        let h = h.clone();
        async move {
            match path.as_str() {
                "/metrics" => {
                    h.refresh_gauges();
                    (
                        200,
                        elf_shared::http::PROMETHEUS,
                        elf_shared::http::render(&h.metrics.registry),
                    )
                }
                "/status" => (200, "application/json", h.status().to_string()),
                _ => (404, "text/plain", "not found\n".into()),
            }
        }
    }));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = service::Service {
        inner: inner.clone(),
    };
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(svc))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
    });
    let d = inner.clone();
    let events_on = opts.events;
    let done = tokio::spawn(async move {
        let outcome = drive(&d, events_on).await;
        let _ = stop_tx.send(());
        // A graceful shutdown waits for every client connection to close; a frozen worker's
        // never does, so the wait is bounded.
        let abort = server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .is_err()
        {
            tracing::warn!("a client kept its connection open; closing the server anyway");
            abort.abort();
        }
        outcome
    });
    Ok(Running {
        grpc_addr,
        http_addr,
        inner,
        progress: prx,
        done,
    })
}

/// Ticks the state until the run ends, then waits (bounded) for the workers to hear of it.
async fn drive(inner: &Arc<Inner>, events_on: bool) -> Outcome {
    let mut last_step = u64::MAX;
    let mut save_deadline: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (phase, step, quorum) = {
            let mut s = inner.state.lock().expect("state lock");
            for why in s.tick(Instant::now()) {
                tracing::warn!(reason = %why, "evicted");
            }
            // Quorum members and eval workers must all hear the final directive.
            let mut told = s.quorum().map(|q| q.ranks.clone()).unwrap_or_default();
            told.extend(
                s.members()
                    .iter()
                    .filter(|(_, m)| m.role == "eval")
                    .map(|(id, _)| id.clone()),
            );
            (s.phase().clone(), s.step(), told)
        };
        inner.notify.notify_waiters();
        if events_on
            && step != last_step
            && matches!(phase, Phase::Running | Phase::Done)
            && step > 0
        {
            events::emit("step", json!({"step": step - 1}));
        }
        last_step = step;
        let (saving, evals) = {
            let mut s = inner.state.lock().expect("state lock");
            for job in s.abandon_evals() {
                tracing::warn!(
                    step = job.step,
                    "no worker can run this eval job (no eval worker, training over); skipped"
                );
            }
            (s.saving(), s.evals_outstanding())
        };
        let outcome = match phase {
            Phase::Done
                if saving
                    && save_deadline
                        .get_or_insert_with(|| Instant::now() + Duration::from_secs(60))
                        > &mut Instant::now() =>
            {
                continue;
            }
            // Eval jobs run to completion (an evicted eval worker's job goes back to the
            // queue; jobs nobody can run are abandoned above).
            Phase::Done if evals > 0 => continue,
            Phase::Done => Outcome::Done { steps: step },
            Phase::Failed(why) => Outcome::Failed(why),
            _ => continue,
        };
        // Give every quorum member a chance to fetch DONE/STOP before the server goes away.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let all = {
                let f = inner.finished.lock().expect("finished lock");
                quorum.iter().all(|id| f.contains(id))
            };
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if events_on {
            match &outcome {
                Outcome::Done { steps } => events::emit(
                    "done",
                    json!({"final_step": steps.saturating_sub(1), "steps": steps}),
                ),
                Outcome::Failed(why) => events::emit("failed", json!({"reason": why})),
            }
        }
        return outcome;
    }
}
