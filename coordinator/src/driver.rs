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
use elf_shared::ids::Step;
use elf_shared::messages::{EvalOutcome, EvalStatus, Losses, RunStatus};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::board::{self, Activity, Board, Cause, Departed, Evaluated, Page, Point};
use crate::metrics::Metrics;
use crate::recorder::{Line, Recorder};
use crate::refusal::Refusal;
use crate::state::{Effect, Event, Input, Model, Outcome, Phase, Reply, RunState};
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
    reply: Answer,
}

/// Where the driver answers a request.
enum Answer {
    /// The model's reply.
    Reply(oneshot::Sender<Reply>),
    /// The `/status` document (for [`Input::Status`]).
    Page(oneshot::Sender<Box<Page>>),
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
            .send(Request {
                input,
                reply: Answer::Reply(tx),
            })
            .await
            .map_err(|_| Refusal::Closed)?;
        rx.await.map_err(|_| Refusal::Closed)
    }

    /// Returns the `/status` document: the status plus what the page shows. The driver only
    /// copies it (the history is shared, not copied); serialising happens in the caller.
    ///
    /// # Errors
    /// [`Refusal::Closed`] once the run is over.
    pub async fn page(&self) -> Result<Page, Refusal> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request {
                input: Input::Status,
                reply: Answer::Page(tx),
            })
            .await
            .map_err(|_| Refusal::Closed)?;
        rx.await.map(|p| *p).map_err(|_| Refusal::Closed)
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
    /// What the status page needs to know of the run.
    pub facts: board::Facts,
    /// Steps per logged window (the reference's `log_freq`).
    pub log_freq: u64,
}

/// The losses of the steps since the last logged window (the reference prints their means
/// every `log_freq` steps, with the steps per second over the window).
#[derive(Debug)]
struct Window {
    steps: u64,
    sums: [f64; 3],
    since: Instant,
}

impl Window {
    fn new() -> Self {
        Self {
            steps: 0,
            sums: [0.0; 3],
            since: Instant::now(),
        }
    }
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
    /// What the page shows beyond the model's status.
    board: Board,
    /// When each saved step committed (the start of its checkpoint's save).
    saves_started: std::collections::BTreeMap<u64, Instant>,
    /// Goodput seconds already added to the counters (good, bad by cause).
    exported: (f64, std::collections::BTreeMap<Cause, f64>),
    /// The current logging window.
    window: Window,
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
        let f = &info.facts;
        metrics
            .build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &elf_shared::messages::PROTOCOL_VERSION.to_string(),
            ])
            .set(1);
        metrics
            .run_info
            .with_label_values(&[&info.run_id, &info.config_hash, &f.run.model])
            .set(1);
        for c in Cause::ALL {
            metrics.badput_seconds.with_label_values(&[c.as_str()]);
        }
        let board = Board::new(info.facts.clone(), Instant::now(), board::unix_now());
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
            board,
            saves_started: Default::default(),
            exported: Default::default(),
            window: Window::new(),
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
    fn step(&mut self, input: Input, reply: Option<Answer>) -> Option<Outcome> {
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
    fn feed(&mut self, input: Input, reply: Option<Answer>) -> (Option<Outcome>, bool) {
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
        let now = Instant::now();
        let activity = if finished.is_some() {
            Activity::Over
        } else {
            self.activity()
        };
        self.board.goodput().observe(now, activity);
        self.export_goodput();
        match (reply, out.reply) {
            (Some(Answer::Page(tx)), Reply::Status(s)) => {
                let status = self.complete_status(*s);
                let page = self.board.page(
                    now,
                    board::unix_now(),
                    status,
                    self.model.settings().end(),
                    self.model.pending_work(),
                );
                let _ = tx.send(Box::new(page));
            }
            (Some(Answer::Reply(tx)), Reply::Status(s)) => {
                let _ = tx.send(Reply::Status(Box::new(self.complete_status(*s))));
            }
            (Some(Answer::Reply(tx)), r) => {
                let _ = tx.send(r);
            }
            // A page is only asked with Input::Status; dropping the sender answers Closed.
            (Some(Answer::Page(_)) | None, _) => {}
        }
        (finished, changed)
    }

    /// Adds a committed step to the logging window; every `log_freq` steps logs the window's
    /// mean loss parts, its steps per second, the lr and the fractional epoch, and starts a
    /// new one.
    fn log_window(&mut self, step: Step, (loss, l2, ce): (f64, f64, f64), lr: f64) {
        let w = &mut self.window;
        w.steps += 1;
        for (s, v) in w.sums.iter_mut().zip([loss, l2, ce]) {
            *s += v;
        }
        if !step.ends_interval(self.info.log_freq) {
            return;
        }
        let n = w.steps as f64;
        let secs = w.since.elapsed().as_secs_f64().max(1e-9);
        let spe = self.model.settings().run.steps_per_epoch.max(1);
        tracing::info!(
            step = step.count(),
            epoch = format!("{:.3}", step.count() as f64 / spe as f64),
            train_loss = w.sums[0] / n,
            train_l2_loss = w.sums[1] / n,
            train_ce_loss = w.sums[2] / n,
            lr,
            steps_per_s = format!("{:.3}", n / secs),
            "train window"
        );
        self.window = Window::new();
    }

    /// What the wall clock is spent on from now until the next input (the goodput account).
    fn activity(&self) -> Activity {
        let resumed = self.info.facts.run.resumed_from.is_some();
        match self.model.activity().0 {
            RunState::Training if self.board.committed_any() => Activity::Training,
            RunState::Training if resumed => Activity::Idle(Cause::Restore),
            RunState::Training => Activity::Idle(Cause::Startup),
            RunState::WaitingForQuorum
                if !self.board.committed_any() && self.model.members().iter().next().is_none() =>
            {
                Activity::Idle(Cause::Startup)
            }
            RunState::WaitingForQuorum => Activity::Idle(Cause::WaitingForQuorum),
            RunState::ReForming => Activity::Idle(Cause::Healing),
            RunState::Evaluating if *self.model.phase() == Phase::Running => {
                Activity::Idle(Cause::InlineEval)
            }
            RunState::Checkpointing => Activity::Idle(Cause::CheckpointWait),
            RunState::Evaluating | RunState::Done | RunState::Failed => Activity::Over,
        }
    }

    /// Adds the goodput account's growth since the last export to the counters, and sets
    /// the gauges read from the board.
    fn export_goodput(&mut self) {
        let (good, bad, _) = self.board.goodput().totals();
        let m = &self.metrics;
        let (old_good, old_bad) = &mut self.exported;
        if good > *old_good {
            m.goodput_seconds.inc_by(good - *old_good);
            *old_good = good;
        }
        for (c, v) in bad {
            let old = old_bad.entry(c).or_default();
            if v > *old {
                m.badput_seconds
                    .with_label_values(&[c.as_str()])
                    .inc_by(v - *old);
                *old = v;
            }
        }
        if let Some(r) = self.board.goodput_view().ratio {
            m.goodput_ratio.set(r);
        }
        let p = self.board.progress(self.model.settings().end());
        m.progress_ratio.set(p.ratio);
        if let Some(eta) = p.eta_seconds {
            m.eta_seconds.set(eta);
        }
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
                self.board.evaluated(Evaluated {
                    step: job.step.0,
                    seconds,
                    results: results.clone(),
                });
                let summary: Vec<String> = results
                    .iter()
                    .map(|r| {
                        let ms: Vec<String> = r
                            .metrics()
                            .iter()
                            .map(|(n, v)| format!("{n} {v:.3}"))
                            .collect();
                        format!("{}: {}", r.run, ms.join(", "))
                    })
                    .collect();
                self.timeline(
                    "eval",
                    format!(
                        "checkpoint of step {} evaluated in {seconds:.1} s ({})",
                        job.step,
                        summary.join("; ")
                    ),
                );
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
                self.metrics.tokens.inc_by(self.info.tokens_per_step as u64);
                self.board.committed(
                    now,
                    Point {
                        step: c.step.0,
                        loss: a.loss,
                        ce_loss: a.ce_loss,
                        l2_loss: a.l2_loss,
                        lr: c.lr,
                        grad_norm: a.grad_norm,
                    },
                    c.quorum.ranks.len(),
                    secs,
                );
                let pr = self.board.progress(self.model.settings().end());
                if let Some(f) = pr.model_flops_per_s {
                    self.metrics.model_flops_per_second.set(f);
                }
                if let Some(mfu) = pr.mfu {
                    self.metrics.mfu.set(mfu);
                }
                if self.model.settings().saves_after(c.step) {
                    self.saves_started.insert(c.step.0, now);
                }
                let total = self.model.settings().run.total_steps;
                let tokens_per_s = self.tokens_per_s;
                self.progress.send_modify(|p| {
                    p.committed = c.step.count();
                    p.total = total;
                    p.loss = (a.loss, a.ce_loss, a.l2_loss);
                    p.tokens_per_s = tokens_per_s;
                });
                self.log_window(c.step, (a.loss, a.l2_loss, a.ce_loss), c.lr);
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
                    self.board.eval_failed();
                    self.timeline(
                        "eval_failed",
                        format!(
                            "eval of the checkpoint of step {} failed: {error}",
                            job.step
                        ),
                    );
                    self.emit("eval_failed", json!({"step": job.step.0, "reason": error}));
                    self.pending.push_back(Input::EvalRecorded {
                        worker: report.worker,
                        step: job.step,
                    });
                }
            },
            Effect::Event(ev) => self.event(ev),
            Effect::Finish(o) => {
                let text = match &o {
                    Outcome::Done { steps } => format!("the run is done: {steps} steps trained"),
                    Outcome::Failed(why) => format!("the run failed: {why}"),
                    Outcome::Invalid(why) => format!("the run cannot start: {why}"),
                    Outcome::Terminated { steps } => {
                        format!("stopped by SIGTERM after {steps} steps; a restart resumes")
                    }
                };
                self.timeline("end", text);
                return Some(o);
            }
        }
        None
    }

    /// Adds a timeline entry at the current step.
    fn timeline(&mut self, kind: &'static str, text: String) {
        let step = self.model.step().0;
        self.board
            .note(Instant::now(), board::unix_now(), step, kind, text);
    }

    fn departed(&mut self, worker: &str, how: &'static str, cause: &'static str, reason: String) {
        self.board.departed(Departed {
            worker: worker.to_string(),
            how,
            cause,
            reason,
            step: self.model.step().0,
            at_unix: board::unix_now(),
        });
    }

    fn event(&mut self, ev: Event) {
        let m = self.metrics.clone();
        let now = Instant::now();
        match ev {
            Event::Registered {
                worker,
                device,
                addr,
            } => {
                tracing::info!(worker_id = %worker, %device, %addr, "worker registered");
                self.timeline(
                    "registered",
                    format!("worker {worker} registered ({device}, collective {addr})"),
                );
            }
            Event::CheckpointFailed { reason } => {
                tracing::warn!(reason = %reason, "checkpoint save failed; training continues");
                m.checkpoint_failures.inc();
                self.emit("checkpoint_failed", json!({"reason": reason}));
                self.board
                    .checkpoint_failed(now, board::unix_now(), reason.clone());
                self.timeline("checkpoint_failed", reason);
            }
            Event::CheckpointCommitted { step } => {
                m.checkpoint_saves.inc();
                m.checkpoint_last_step.set(step.0 as i64);
                if let Some(t) = self.saves_started.remove(&step.0) {
                    m.checkpoint_save_duration
                        .observe(now.duration_since(t).as_secs_f64());
                }
                // Saves that will never commit (abandoned, superseded) are not waited on.
                self.saves_started.retain(|s, _| *s > step.0);
                let dir = self.model.settings().checkpoint_dir(step);
                self.board.checkpoint_committed(now, step.0, dir.clone());
                self.emit("checkpoint", json!({"step": step.0}));
                self.timeline(
                    "checkpoint",
                    format!("checkpoint of step {step} committed: {dir}"),
                );
            }
            Event::CheckpointNotCommitted { step, reason } => {
                tracing::warn!(step = step.0, reason = %reason, "checkpoint manifest not written; training continues");
                m.checkpoint_failures.inc();
                let text = format!("checkpoint of step {step} not committed: {reason}");
                self.board
                    .checkpoint_failed(now, board::unix_now(), text.clone());
                self.timeline("checkpoint_failed", text);
            }
            Event::RetentionFailed { step, reason } => {
                tracing::warn!(step = step.0, reason = %reason, "old checkpoints not pruned (the new one is committed)");
                m.retention_failures.inc();
                self.timeline(
                    "checkpoint_failed",
                    format!("retention after the checkpoint of step {step} failed: {reason}"),
                );
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
                self.timeline(
                    "joined",
                    format!("worker {worker} received a peer's state at step {step} and joined ({world_size} workers)"),
                );
            }
            Event::JoinFailed { worker, reason } => {
                tracing::warn!(worker_id = %worker, reason = %reason, "state copy to a joining worker failed; it is dropped");
            }
            Event::QuorumChanged {
                id,
                world_size,
                cause,
                text,
            } => {
                m.quorum_changes.with_label_values(&[cause.as_str()]).inc();
                self.emit(
                    "quorum",
                    json!({"quorum_id": id, "world_size": world_size, "cause": cause.as_str()}),
                );
                self.timeline("quorum", format!("{text} ({})", cause.as_str()));
            }
            Event::Evicted {
                worker,
                cause,
                text,
            } => {
                m.evictions.with_label_values(&[cause.as_str()]).inc();
                self.emit(
                    "evicted",
                    json!({"worker_id": worker.0, "cause": cause.as_str(), "reason": text}),
                );
                self.departed(worker.as_str(), "evicted", cause.as_str(), text.clone());
                self.timeline(
                    "evicted",
                    format!("worker {worker} evicted ({}): {text}", cause.as_str()),
                );
            }
            Event::Left { worker } => {
                self.departed(worker.as_str(), "left", "", "left the run".into());
                self.timeline("left", format!("worker {worker} left the run"));
            }
            Event::StepRedone { step, text } => {
                m.steps_redone.inc();
                self.board.goodput().wasted(now, Cause::RedoneSteps);
                self.emit("redone", json!({"step": step.0}));
                self.timeline("redone", text);
            }
            Event::StepSkipped { step, text } => {
                m.steps_skipped.inc();
                self.board.goodput().wasted(now, Cause::SkippedSteps);
                self.emit("skipped", json!({"step": step.0}));
                self.timeline("skipped", text);
            }
            Event::Terminating { text } => self.timeline("sigterm", text),
        }
    }

    fn emit(&self, event: &str, fields: serde_json::Value) {
        if self.info.events {
            events::emit(event, fields);
        }
    }
}
