//! The driver: the one task that owns the [`Model`], feeds it inputs and runs its effects.
//!
//! Inputs arrive on a channel (requests from the gRPC service and the HTTP endpoint, each with
//! a reply slot) or come back from the IO threads (a manifest written, eval results recorded).
//! The driver sleeps until the next input or the model's next deadline (an eviction, the end
//! of a hold), never on a fixed poll. After every input it bumps a version number that
//! long-polls wait on, so a worker waiting for its next directive hears of a commit at once.
//!
//! File and store IO never runs on the async runtime: the metrics files have their thread
//! ([`Recorder`]), manifests and eval results theirs ([`Storage`]).

use std::sync::Arc;
use std::time::Instant;

use elf_shared::events;
use elf_shared::messages::{EvalOutcome, EvalStatus, Losses, RunStatus};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::recorder::{Line, Recorder};
use crate::refusal::Refusal;
use crate::state::{Effect, Event, Input, Model, Outcome, Reply};
use crate::storage::{self, Completion, Job, Storage};

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

struct Request {
    input: Input,
    reply: oneshot::Sender<Reply>,
}

/// A cheap handle to the driver: what the service and the HTTP endpoint talk to.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    changes: watch::Receiver<u64>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Request({:?})", self.input)
    }
}

impl Handle {
    /// Hands an input to the model and waits for its reply.
    ///
    /// # Errors
    /// [`Refusal::Closed`] once the run is over.
    pub async fn call(&self, input: Input) -> Result<Reply, Refusal> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request { input, reply: tx })
            .await
            .map_err(|_| Refusal::Closed)?;
        rx.await.map_err(|_| Refusal::Closed)
    }

    /// Stops the run after one more checkpointed step (SIGTERM; see `state::terminate`).
    ///
    /// # Errors
    /// [`Refusal::Closed`] once the run is over.
    pub async fn terminate(&self) -> Result<(), Refusal> {
        self.call(Input::Terminate).await.map(|_| ())
    }

    /// Returns a receiver that changes after every input the model took.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Returns the status document.
    ///
    /// # Errors
    /// [`Refusal::Closed`] once the run is over.
    pub async fn status(&self) -> Result<RunStatus, Refusal> {
        match self.call(Input::Status).await? {
            Reply::Status(s) => Ok(*s),
            _ => Err(Refusal::Closed),
        }
    }
}

/// What the driver knows that the model does not: identity, throughput, the last results.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// `elf-<hash prefix>`.
    pub run_id: String,
    /// The resolved config's hash.
    pub config_hash: String,
    /// Tokens in one global batch.
    pub tokens_per_step: f64,
    /// Emit JSON events on stdout.
    pub events: bool,
}

/// The driver task's state.
pub struct Driver {
    model: Model,
    info: RunInfo,
    requests: mpsc::Receiver<Request>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    changes: watch::Sender<u64>,
    recorder: Recorder,
    storage: Storage,
    metrics: Arc<Metrics>,
    progress: watch::Sender<Progress>,
    last_commit: Instant,
    losses: Losses,
    tokens_per_s: f64,
    last_eval: Option<EvalStatus>,
    /// Inputs an effect produced without IO (a failed eval job is complete at once).
    pending: std::collections::VecDeque<Input>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("info", &self.info).finish()
    }
}

impl Driver {
    /// Builds the driver and its handle; IO goes to `recorder` and the storage thread.
    ///
    /// # Errors
    /// The storage thread cannot start.
    pub fn new(
        model: Model,
        info: RunInfo,
        recorder: Recorder,
        storage: storage::Context,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, Handle, watch::Receiver<Progress>)> {
        let (tx, requests) = mpsc::channel(256);
        let (changes, changes_rx) = watch::channel(0u64);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let storage = Storage::start(storage, done_tx)?;
        let (progress, progress_rx) = watch::channel(Progress {
            total: model.settings().run.total_steps,
            ..Progress::default()
        });
        let driver = Self {
            model,
            info,
            requests,
            done_rx,
            changes,
            recorder,
            storage,
            metrics,
            progress,
            last_commit: Instant::now(),
            losses: Losses::default(),
            tokens_per_s: 0.0,
            last_eval: None,
            pending: Default::default(),
        };
        Ok((
            driver,
            Handle {
                tx,
                changes: changes_rx,
            },
            progress_rx,
        ))
    }

    /// Runs the model until the run ends; returns how it ended.
    pub async fn run(mut self) -> Outcome {
        // A run that is done before it starts (resumed at its last step) settles at once.
        let mut outcome = self.step(Input::Tick, None);
        while outcome.is_none() {
            let deadline = self.model.next_deadline(Instant::now());
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            outcome = tokio::select! {
                Some(req) = self.requests.recv() => self.step(req.input, Some(req.reply)),
                Some(done) = self.done_rx.recv() => {
                    let input = self.completed(done);
                    self.step(input, None)
                }
                () = sleep => self.step(Input::Tick, None),
            };
        }
        let outcome = outcome.expect("loop ends with an outcome");
        // Every metrics line and queued write lands before the run is reported over.
        let (mut recorder, mut storage) = (self.recorder, self.storage);
        let _ = tokio::task::spawn_blocking(move || {
            recorder.close();
            storage.close();
        })
        .await;
        if self.info.events {
            match &outcome {
                Outcome::Done { steps } => events::emit(
                    "done",
                    json!({"final_step": steps.saturating_sub(1), "steps": steps}),
                ),
                Outcome::Failed(why) | Outcome::Invalid(why) => {
                    events::emit("failed", json!({"reason": why}))
                }
                Outcome::Terminated { steps } => {
                    events::emit("terminated", json!({"steps": steps}))
                }
            }
        }
        outcome
    }

    /// Feeds one input (and those its effects produce), runs the effects, answers; returns the
    /// outcome once the run ends.
    fn step(&mut self, input: Input, reply: Option<oneshot::Sender<Reply>>) -> Option<Outcome> {
        let (mut finished, mut changed) = self.feed(input, reply);
        while let Some(input) = self.pending.pop_front() {
            let (f, c) = self.feed(input, None);
            finished = finished.or(f);
            changed |= c;
        }
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
        finished
    }

    /// Feeds one input; returns the outcome once the run ends, and whether waiting
    /// long-polls must ask again. A read (a directive, a heartbeat, the status) changes what
    /// others are told only when it had effects (the end of the run); waking them after every
    /// read would have long-polls wake each other forever.
    fn feed(
        &mut self,
        input: Input,
        reply: Option<oneshot::Sender<Reply>>,
    ) -> (Option<Outcome>, bool) {
        let read = matches!(
            input,
            Input::NextDirective { .. } | Input::Heartbeat(_) | Input::Status
        );
        let out = self.model.handle(Instant::now(), input);
        let changed = !read || !out.effects.is_empty() || !out.reasons.is_empty();
        for r in &out.reasons {
            tracing::warn!(reason = %r, "cluster change");
        }
        let mut finished = None;
        for e in out.effects {
            if let Some(o) = self.run_effect(e) {
                finished = Some(o);
            }
        }
        if let Some(tx) = reply {
            let _ = tx.send(match out.reply {
                Reply::Status(s) => Reply::Status(Box::new(self.complete_status(*s))),
                r => r,
            });
        }
        (finished, changed)
    }

    fn complete_status(&self, mut s: RunStatus) -> RunStatus {
        s.run_id = self.info.run_id.clone();
        s.config_hash = self.info.config_hash.clone();
        s.throughput_tokens_per_s = self.tokens_per_s;
        s.last_losses = self.losses;
        s.last_eval = self.last_eval.clone();
        s
    }

    /// Turns an IO thread's completion into the model's input (recording what the driver
    /// observes first, so `/status` shows an eval before its event announces it).
    fn completed(&mut self, c: Completion) -> Input {
        match c {
            Completion::Manifest(m) => Input::ManifestWritten(m),
            Completion::Eval {
                job,
                worker,
                results,
                seconds,
            } => {
                for r in &results {
                    for (metric, v) in r.metrics() {
                        self.metrics
                            .eval_value
                            .with_label_values(&[r.run.as_str(), metric])
                            .set(v);
                    }
                }
                self.metrics.eval_jobs.inc();
                self.metrics.eval_last_step.set(job.step.0 as i64);
                self.metrics.eval_seconds.set(seconds);
                tracing::info!(step = job.step.0, seconds, "checkpoint evaluated");
                self.last_eval = Some(EvalStatus {
                    step: job.step.0,
                    results: results.clone(),
                });
                self.emit("eval", storage::eval_doc(job.step, &results));
                Input::EvalRecorded {
                    worker,
                    step: job.step,
                }
            }
        }
    }

    fn run_effect(&mut self, e: Effect) -> Option<Outcome> {
        match e {
            Effect::RecordCommit(c) => {
                let now = Instant::now();
                let secs = now.duration_since(self.last_commit).as_secs_f64();
                self.last_commit = now;
                self.tokens_per_s = self.info.tokens_per_step / secs.max(1e-9);
                let a = c.reports[0].applied().cloned().unwrap_or_default();
                self.losses = Losses {
                    loss: a.loss,
                    ce_loss: a.ce_loss,
                    l2_loss: a.l2_loss,
                };
                self.metrics.on_commit(&c, secs, self.tokens_per_s);
                let total = self.model.settings().run.total_steps;
                let tokens_per_s = self.tokens_per_s;
                self.progress.send_modify(|p| {
                    p.committed = c.step.count();
                    p.total = total;
                    p.loss = (a.loss, a.ce_loss, a.l2_loss);
                    p.tokens_per_s = tokens_per_s;
                });
                self.emit("step", json!({"step": c.step.0}));
                self.recorder.record(Line {
                    commit: c,
                    seconds: secs,
                    tokens_per_s,
                });
            }
            Effect::WriteManifest(save) => {
                // The metrics in the run location cover every step up to a checkpoint before
                // it commits: a restarted coordinator resumes there and keeps every line.
                let metrics = self.recorder.published();
                self.storage.submit(Job::Manifest(save, metrics));
            }
            Effect::RecordEval { job, report } => match report.outcome {
                EvalOutcome::Scored(results) => self.storage.submit(Job::Eval {
                    job,
                    worker: report.worker,
                    results,
                    seconds: report.seconds,
                }),
                EvalOutcome::Failed { error } => {
                    tracing::warn!(step = job.step.0, worker = %report.worker, error = %error, "eval job failed; training continues");
                    self.metrics.eval_failures.inc();
                    self.emit("eval_failed", json!({"step": job.step.0, "reason": error}));
                    self.pending.push_back(Input::EvalRecorded {
                        worker: report.worker,
                        step: job.step,
                    });
                }
            },
            Effect::Event(ev) => self.event(ev),
            Effect::Finish(o) => return Some(o),
        }
        None
    }

    fn event(&mut self, ev: Event) {
        let m = &self.metrics;
        match ev {
            Event::Registered {
                worker,
                device,
                addr,
            } => tracing::info!(worker_id = %worker, %device, %addr, "worker registered"),
            Event::CheckpointFailed { reason } => {
                tracing::warn!(reason = %reason, "checkpoint save failed; training continues");
                m.checkpoint_failures.inc();
                self.emit("checkpoint_failed", json!({"reason": reason}));
            }
            Event::CheckpointCommitted { step } => {
                m.checkpoint_saves.inc();
                m.checkpoint_last_step.set(step.0 as i64);
                self.emit("checkpoint", json!({"step": step.0}));
            }
            Event::CheckpointNotCommitted { step, reason } => {
                tracing::warn!(step = step.0, reason = %reason, "checkpoint manifest not written; training continues");
                m.checkpoint_failures.inc();
            }
            Event::RetentionFailed { step, reason } => {
                tracing::warn!(step = step.0, reason = %reason, "old checkpoints not pruned (the new one is committed)");
                m.retention_failures.inc();
            }
            Event::Joined {
                worker,
                step,
                world_size,
            } => {
                tracing::info!(worker_id = %worker, step = step.0, world_size, "worker joined");
                self.emit(
                    "joined",
                    json!({"worker_id": worker.0, "step": step.0, "world_size": world_size}),
                );
            }
            Event::JoinFailed { worker, reason } => {
                tracing::warn!(worker_id = %worker, reason = %reason, "state copy to a joining worker failed; it is dropped");
            }
        }
    }

    fn emit(&self, event: &str, fields: serde_json::Value) {
        if self.info.events {
            events::emit(event, fields);
        }
    }
}
