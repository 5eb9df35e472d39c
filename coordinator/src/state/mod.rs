//! The coordinator's decisions: one model whose only entry point, [`Model::handle`], takes
//! `(now, input)` and returns the reply, the reasons for what it decided, and the effects for
//! the driver to run (record a commit, write a manifest, record an eval, emit an event, finish
//! the run). No IO and no clock of its own, so every decision is a unit test.
//!
//! Sub-models, one concern each:
//! - [`membership`]: who is registered, their liveness, the quorum.
//! - [`steps`]: the step in flight: reports, commits, and a quorum broken by a lost peer.
//! - [`saves`]: checkpoint shards until a save is complete, and manifests in flight.
//! - [`evals`]: eval jobs, on dedicated eval workers or on rank 0 between steps.
//! - [`joins`]: copying a live peer's state to a worker that joins a running run.
//! - [`finish`]: when a finished (or failed) run may end: the holds for the last save, the
//!   eval jobs and the workers' final directives.
//!
//! Reading is not deciding: [`Input::NextDirective`] hands out work (a step, an eval job) and
//! records who heard their final directive, but never evicts a member or re-forms the quorum;
//! that happens on reports and on [`Input::Tick`]. After every input but a status request the
//! model settles what follows from it (the first quorum, a join, an inline eval job, the end
//! of the run), none of which changes membership.

pub mod evals;
pub mod finish;
pub mod joins;
pub mod leaves;
pub mod membership;
pub mod saves;
pub mod steps;
pub mod terminate;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use elf_shared::ids::{Step, WorkerId};
use elf_shared::manifest::step_dir;
use elf_shared::messages::{
    Directive, EvalJob, EvalReport, Leave, PROTOCOL_VERSION, Pulse, Registration, Role, RunStatus,
    ShardReport, StepReport, TrainStep, TransferReport,
};
use elf_shared::run::RunFacts;

use crate::refusal::Refusal;
use evals::Evals;
use finish::Finish;
use joins::Transfer;
use leaves::Leaves;
use membership::{Membership, Quorum};
use saves::{CompletedSave, Saves};
use steps::{Commit, Round};

/// Fixed facts of the run the model decides with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What the run is (plan, steps, schedule, world size).
    pub run: RunFacts,
    /// A worker silent for longer is evicted.
    pub heartbeat_timeout: Duration,
    /// Save after every this many steps (`checkpoint.interval_steps`; 0: the reference's
    /// `save_freq` cadence of `run.saves`, and the end when `save_final`).
    pub save_interval: u64,
    /// Save after the last step this process runs.
    pub save_final: bool,
    /// Where checkpoint folders go (URL or path).
    pub checkpoint_root: String,
    /// End this process's part of the run after this many steps (`--stop-after`).
    pub stop_after: Option<u64>,
    /// Evaluate every this many committed checkpoints (0: never).
    pub eval_every: u64,
    /// Evaluate the final checkpoint.
    pub eval_at_end: bool,
    /// Without an eval worker, rank 0 of the training workers evaluates between steps.
    pub eval_inline: bool,
    /// How long a finished run waits for its last checkpoint's shards and manifest.
    pub save_hold: Duration,
    /// How long an ended run waits for every worker to hear its final directive.
    pub farewell_hold: Duration,
    /// The coordinator listens beyond loopback: workers are on other hosts, so a loopback or
    /// unspecified collective address is refused.
    pub spans_hosts: bool,
    /// This coordinator's secret (random per process), from which the keys of rings and state
    /// copies derive.
    pub secret: String,
    /// Steps with a non-finite loss or gradient norm that may be skipped before the run fails
    /// (`train.skip_nonfinite`; 0 fails at the first).
    pub skip_nonfinite: u32,
}

impl Settings {
    /// Returns the number of steps this process trains to (`stop_after` capped by the run).
    pub fn end(&self) -> u64 {
        self.stop_after
            .map_or(self.run.total_steps, |s| s.min(self.run.total_steps))
    }

    /// Returns true when the state after `step` is checkpointed.
    pub fn saves_after(&self, step: Step) -> bool {
        step.ends_interval(self.save_interval)
            || self.run.saves.falls_after(step)
            || self.evals_after(step)
            || (self.save_final && step.count() == self.end())
    }

    /// Returns true when the reference's `eval_freq` cadence evaluates the state after `step`
    /// (an eval job runs on a committed checkpoint, so that step is saved too).
    pub fn evals_after(&self, step: Step) -> bool {
        self.run.evals.falls_after(step)
    }

    /// Returns the key (hex) of `what` (`ring <quorum>`, `transfer <step> <joiner>`): a hash of
    /// the secret and the name, so each ring and copy has its own and the model stays pure.
    pub fn key(&self, what: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(format!("{}\n{what}", self.secret)))
    }

    /// Returns the checkpoint folder of `step`.
    pub fn checkpoint_dir(&self, step: Step) -> String {
        format!(
            "{}/{}",
            self.checkpoint_root.trim_end_matches('/'),
            step_dir(step.0)
        )
    }
}

/// What the model is asked or told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A worker asks to join.
    Register(Registration),
    /// A worker proves it is alive.
    Heartbeat(WorkerId),
    /// A worker asks what to do after applying `after` (`None`: nothing yet).
    NextDirective {
        /// Who asks.
        worker: WorkerId,
        /// The last step it applied.
        after: Option<Step>,
    },
    /// A worker reports a step.
    ReportStep(StepReport),
    /// A worker reports its checkpoint shard.
    ReportShard(ShardReport),
    /// A worker reports an eval job.
    ReportEval(EvalReport),
    /// A worker reports its side of a state copy.
    ReportTransfer(TransferReport),
    /// A worker leaves (gracefully at the next step boundary, or because it failed).
    Leave(Leave),
    /// The driver wrote (or failed to write) a manifest it was asked to.
    ManifestWritten(ManifestWritten),
    /// The driver recorded an eval report it was asked to.
    EvalRecorded {
        /// The worker that ran the job.
        worker: WorkerId,
        /// The job's step.
        step: Step,
    },
    /// A request for the status document.
    Status,
    /// SIGTERM: commit one last checkpoint, then stop (the run is not over).
    Terminate,
    /// Time passed: evict silent members, resolve a broken quorum, end the run when due.
    Tick,
}

/// The result of writing a checkpoint's manifest: the commit, then retention, separately.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestWritten {
    /// The checkpoint's step.
    pub step: Step,
    /// Its folder.
    pub dir: String,
    /// Why the manifest (the commit) failed; `None`: committed.
    pub commit_error: Option<String>,
    /// Why retention failed after the commit (the checkpoint stays committed).
    pub retention_error: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every step committed.
    Done {
        /// Steps committed in total.
        steps: u64,
    },
    /// The run stopped; the reason names the worker or step.
    Failed(String),
    /// The run cannot start as configured (a worker cannot reach a path the config names):
    /// a restart would fail the same way.
    Invalid(String),
    /// SIGTERM stopped the run after committing step `steps - 1` (its last checkpoint, if the
    /// save completed): a restart resumes it.
    Terminated {
        /// Steps committed in total.
        steps: u64,
    },
}

/// Something the driver does for the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record a committed step: metrics files, Prometheus, progress, the `step` event.
    RecordCommit(Commit),
    /// Write the manifest of a complete save, then retention; answer with
    /// [`Input::ManifestWritten`].
    WriteManifest(CompletedSave),
    /// Record an eval report (manifest, `eval.jsonl`, Prometheus, the `eval` event); answer
    /// with [`Input::EvalRecorded`].
    RecordEval {
        /// The job.
        job: EvalJob,
        /// Its report.
        report: EvalReport,
    },
    /// Emit an event (JSON on stdout, a metric, a log line).
    Event(Event),
    /// The run is over: stop serving.
    Finish(Outcome),
}

/// Something that happened that operators and tests watch for.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker was admitted.
    Registered {
        /// Who.
        worker: WorkerId,
        /// Its device.
        device: String,
        /// Its collective address.
        addr: String,
    },
    /// A worker's checkpoint upload failed; the save is abandoned and training goes on.
    CheckpointFailed {
        /// Why, naming the worker and step.
        reason: String,
    },
    /// A checkpoint's manifest was written.
    CheckpointCommitted {
        /// The step.
        step: Step,
    },
    /// A checkpoint's manifest could not be written; training goes on.
    CheckpointNotCommitted {
        /// The step.
        step: Step,
        /// Why.
        reason: String,
    },
    /// Retention after a commit failed (the checkpoint stays committed).
    RetentionFailed {
        /// The committed step.
        step: Step,
        /// Why.
        reason: String,
    },
    /// A joining worker received a peer's state and entered the quorum.
    Joined {
        /// Who.
        worker: WorkerId,
        /// The step boundary.
        step: Step,
        /// The new world size.
        world_size: usize,
    },
    /// A state copy failed; the joiner was dropped.
    JoinFailed {
        /// Who.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// A new quorum was formed.
    QuorumChanged {
        /// Its generation.
        id: u64,
        /// Its ranks.
        world_size: usize,
        /// Why it changed.
        cause: QuorumCause,
        /// What the logs say.
        text: String,
    },
    /// A worker was removed from the run without asking to leave.
    Evicted {
        /// Who.
        worker: WorkerId,
        /// Why.
        cause: EvictionCause,
        /// What the logs say.
        text: String,
    },
    /// A worker left the run gracefully.
    Left {
        /// Who.
        worker: WorkerId,
    },
    /// Nobody applied the step (a peer was lost mid-step): the new quorum trains it again.
    StepRedone {
        /// The step.
        step: Step,
        /// What the logs say.
        text: String,
    },
    /// A step with a non-finite loss or gradient norm was skipped (`train.skip_nonfinite`).
    StepSkipped {
        /// The step.
        step: Step,
        /// What the logs say.
        text: String,
    },
    /// SIGTERM arrived: the run stops after one more checkpointed step.
    Terminating {
        /// What the logs say.
        text: String,
    },
}

/// Why a quorum changed (a bounded set: a Prometheus label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumCause {
    /// The run's first quorum (in this coordinator process).
    Formed,
    /// A member was lost (evicted, failed, registered again) and the survivors re-formed.
    PeerLost,
    /// A member left gracefully.
    Leave,
    /// A joining worker received a peer's state.
    Join,
}

impl QuorumCause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Formed => "formed",
            Self::PeerLost => "peer_lost",
            Self::Leave => "leave",
            Self::Join => "join",
        }
    }
}

/// Why a worker was evicted (a bounded set: a Prometheus label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionCause {
    /// Silent for longer than `cluster.heartbeat_timeout_ms`.
    HeartbeatTimeout,
    /// It reported an error and left.
    WorkerFailed,
    /// A quorum member registered again (a new process): its old state is gone.
    RegisteredAgain,
    /// Its side of a state copy failed.
    CopyFailed,
}

impl EvictionCause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::WorkerFailed => "worker_failed",
            Self::RegisteredAgain => "registered_again",
            Self::CopyFailed => "copy_failed",
        }
    }
}

/// The model's answer to one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The worker was admitted; `load_checkpoint`: it trains from the run's start state (the
    /// checkpoint the run resumed from, if any), else it waits as a standby for a peer's copy.
    Admitted {
        /// Load the run's start checkpoint before the first step.
        load_checkpoint: bool,
    },
    /// The answer to a heartbeat.
    Pulse(Pulse),
    /// What the worker does next.
    Directive(Directive),
    /// The report was taken.
    Accepted,
    /// The request was refused.
    Refused(Refusal),
    /// The model's part of the status document.
    Status(Box<RunStatus>),
    /// Nothing to answer (internal inputs).
    None,
}

/// Everything [`Model::handle`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The answer to the input.
    pub reply: Reply,
    /// Why the model changed what it changed (evictions, quorum changes), for the logs.
    pub reasons: Vec<String>,
    /// What the driver must do.
    pub effects: Vec<Effect>,
}

/// What the run is doing, as `/status` names it (`state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Fewer training workers registered than the run starts with.
    WaitingForQuorum,
    /// Steps are handed out and committed.
    Training,
    /// A quorum lost a peer, or a joiner receives a peer's state: training waits.
    ReForming,
    /// Training is over (or stopping on SIGTERM); the last checkpoint is on its way.
    Checkpointing,
    /// A checkpoint is evaluated: between steps on rank 0, or after the last step.
    Evaluating,
    /// The run (or this process's part of it) is over.
    Done,
    /// The run stopped on an error.
    Failed,
}

impl RunState {
    /// The name `/status` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForQuorum => "waiting_for_quorum",
            Self::Training => "training",
            Self::ReForming => "re_forming",
            Self::Checkpointing => "checkpointing",
            Self::Evaluating => "evaluating",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// Where the run is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Waiting for workers.
    Forming,
    /// Training.
    Running,
    /// Every step committed.
    Done,
    /// Stopped; the reason names the worker or step.
    Failed(String),
}

/// The coordinator's state and its decisions.
#[derive(Debug, Clone)]
pub struct Model {
    settings: Settings,
    phase: Phase,
    members: Membership,
    round: Round,
    saves: Saves,
    evals: Evals,
    transfer: Option<Transfer>,
    finish: Finish,
    leaves: Leaves,
    /// The run failed because of its config (see [`Outcome::Invalid`]).
    invalid: bool,
    /// SIGTERM arrived (see [`terminate`]).
    terminated: bool,
    /// This process committed a step.
    committed_any: bool,
    /// Attempts of the current step redone because nobody could all-reduce it, and the last
    /// collective error (see [`steps::MAX_REDOS`]).
    redos: (u32, Option<String>),
    /// Steps skipped for a non-finite loss or gradient norm.
    skipped: u32,
    /// The parameter digest of the last step this process committed (what a copy must hold).
    last_digest: String,
    /// Reports refused because their sender does not hold what they are about (counted in
    /// [`Model::handle`]).
    refused_reports: u64,
    /// Filled while one input is handled, drained into its [`Output`].
    reasons: Vec<String>,
    effects: Vec<Effect>,
}

impl Model {
    /// Starts a run whose next step to train is `start`.
    pub fn new(settings: Settings, start: Step) -> Self {
        let phase = if start.0 >= settings.end() {
            Phase::Done
        } else {
            Phase::Forming
        };
        Self {
            phase,
            members: Membership::default(),
            round: Round::new(start),
            saves: Saves::default(),
            evals: Evals::default(),
            transfer: None,
            finish: Finish::default(),
            leaves: Leaves::default(),
            invalid: false,
            terminated: false,
            committed_any: false,
            redos: (0, None),
            skipped: 0,
            last_digest: String::new(),
            refused_reports: 0,
            reasons: vec![],
            effects: vec![],
            settings,
        }
    }

    /// Takes one input at time `now`; returns the reply, the reasons and the effects.
    pub fn handle(&mut self, now: Instant, input: Input) -> Output {
        let reply = match input {
            Input::Register(r) => self.register(now, r),
            Input::Heartbeat(w) => Reply::Pulse(self.heartbeat(now, &w)),
            Input::NextDirective { worker, after } => {
                if self.leaves.departed(&worker) {
                    Reply::Directive(Directive::Done {
                        steps: self.round.step.0,
                        write_outputs: false,
                    })
                } else if self.members.contains(&worker) || self.phase == Phase::Done {
                    Reply::Directive(self.directive(&worker, after))
                } else {
                    // Evicted (its link was down, say): it registers again and rejoins as a
                    // standby by itself.
                    Reply::Refused(Refusal::NotRegistered(worker))
                }
            }
            Input::ReportStep(r) => self.report_step(now, r),
            Input::ReportShard(r) => self.report_shard(r),
            Input::ReportEval(r) => self.report_eval(r),
            Input::ReportTransfer(r) => self.report_transfer(r),
            Input::ManifestWritten(m) => {
                self.manifest_written(m);
                Reply::None
            }
            Input::Leave(l) => self.leave(now, l),
            Input::EvalRecorded { worker, step } => {
                self.evals.complete(&worker, step);
                Reply::None
            }
            Input::Status => Reply::Status(Box::new(self.status(now))),
            Input::Terminate => {
                self.terminate();
                Reply::None
            }
            Input::Tick => {
                self.tick(now);
                Reply::None
            }
        };
        if let Reply::Refused(
            Refusal::NotMember { .. }
            | Refusal::StaleReport { .. }
            | Refusal::NoTransfer { .. }
            | Refusal::NoEvalJob { .. },
        ) = &reply
        {
            self.refused_reports += 1;
        }
        if !matches!(reply, Reply::Status(_)) {
            self.settle(now);
        }
        Output {
            reply,
            reasons: std::mem::take(&mut self.reasons),
            effects: std::mem::take(&mut self.effects),
        }
    }

    /// Returns the phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Returns the next step to commit.
    pub fn step(&self) -> Step {
        self.round.step
    }

    /// Returns the settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Returns the current quorum.
    pub fn quorum(&self) -> Option<&Quorum> {
        self.members.quorum()
    }

    /// Returns the membership.
    pub fn members(&self) -> &Membership {
        &self.members
    }

    /// Returns when the model next needs an [`Input::Tick`] after `now`: an eviction, the
    /// end of a transient fault's wait, the end of a hold.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let timeout = self.settings.heartbeat_timeout;
        let mut at = self.members.next_expiry(timeout);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        // Past its timeout a broken quorum waits for reports (inputs), not for time.
        consider(
            self.round
                .broken_since()
                .map(|s| s + timeout + Duration::from_millis(1))
                .filter(|t| *t > now),
        );
        consider(self.finish.next_deadline(&self.settings));
        at
    }

    fn register(&mut self, now: Instant, r: Registration) -> Reply {
        if r.protocol_version != PROTOCOL_VERSION {
            return Reply::Refused(Refusal::Protocol {
                worker: r.worker,
                theirs: r.protocol_version,
                ours: PROTOCOL_VERSION,
            });
        }
        if r.worker.as_str().is_empty() {
            return Reply::Refused(Refusal::EmptyWorkerId);
        }
        if self.settings.spans_hosts && elf_protocol::security::only_this_host(&r.collective_addr) {
            return Reply::Refused(Refusal::UnreachableAddress {
                worker: r.worker,
                addr: r.collective_addr,
            });
        }
        if let Phase::Failed(why) = &self.phase {
            return Reply::Refused(Refusal::RunFailed(why.clone()));
        }
        // A training worker arriving while the run trains waits as a standby until a live
        // peer's state is copied to it (at a step boundary); then it enters the quorum. Until
        // this coordinator hands out a step, the start state (checkpoint or initialisation)
        // is the run's state: it loads it, and can take the slot of a member lost before any
        // step was trained.
        let synced = self.phase == Phase::Forming;
        let start_state = synced
            || (self.phase == Phase::Running && !self.committed_any && !self.round.handed_any());
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.joiner == r.worker || t.donor == r.worker)
        {
            self.transfer = None;
            self.reasons.push(format!(
                "the state copy involving worker {} was abandoned: it registered again",
                r.worker
            ));
        }
        if self.phase == Phase::Running && self.quorum().is_some_and(|q| q.contains(&r.worker)) {
            // A quorum member registering again is a new process (a restart, or a reconnect
            // after a broken connection): its state is not the run's, and its old process
            // will never report. The quorum re-forms without it; it rejoins by a copy.
            self.round.gone(now, &r.worker);
            let text = format!(
                "worker {} registered again while in quorum {}: it rejoins by a copy",
                r.worker,
                self.quorum().map_or(0, |q| q.id.0)
            );
            self.reasons.push(text.clone());
            self.effects.push(Effect::Event(Event::Evicted {
                worker: r.worker.clone(),
                cause: EvictionCause::RegisteredAgain,
                text,
            }));
        }
        self.leaves.returned(&r.worker);
        self.effects.push(Effect::Event(Event::Registered {
            worker: r.worker.clone(),
            device: r.device.clone(),
            addr: r.collective_addr.clone(),
        }));
        self.members.admit(now, &r, synced, start_state);
        Reply::Admitted {
            load_checkpoint: start_state,
        }
    }

    fn heartbeat(&mut self, now: Instant, w: &WorkerId) -> Pulse {
        Pulse {
            known: self.members.touch(now, w),
            quorum: self.quorum().map_or_else(Default::default, |q| q.id),
            quorum_broken: self.round.is_broken(),
        }
    }

    /// Returns what worker `w` does after applying `after`. Hands out a step or an eval job;
    /// never changes membership.
    fn directive(&mut self, w: &WorkerId, after: Option<Step>) -> Directive {
        let d = self.decide_directive(w, after);
        if d.is_final() {
            self.finish.told(w);
        }
        d
    }

    fn decide_directive(&mut self, w: &WorkerId, after: Option<Step>) -> Directive {
        if self.members.role(w) == Some(Role::Eval) {
            return self.eval_worker_directive(w);
        }
        if let Some(d) = self.inline_eval_directive(w) {
            return d;
        }
        match &self.phase {
            Phase::Failed(why) => {
                return Directive::Stop {
                    reason: why.clone(),
                };
            }
            Phase::Done if self.terminated => {
                return Directive::wait(
                    "the coordinator is shutting down (SIGTERM); the run resumes from its last checkpoint"
                        .to_string(),
                );
            }
            Phase::Done => {
                return Directive::Done {
                    steps: self.round.step.0,
                    write_outputs: self.final_writer().as_ref() == Some(w),
                };
            }
            Phase::Forming => {
                return Directive::wait(format!(
                    "waiting for {} workers, {} registered",
                    self.settings.run.world_size,
                    self.members.count(Role::Train)
                ));
            }
            Phase::Running => {}
        }
        let q = self.quorum().cloned().expect("a running run has a quorum");
        if self.round.is_broken() {
            return Directive::wait(format!(
                "quorum {} lost a peer at step {}; re-forming",
                q.id, self.round.step
            ));
        }
        if let Some(d) = self.transfer_directive(w) {
            return d;
        }
        let Some(rank) = q.rank_of(w) else {
            if self.members.contains(w) {
                return Directive::wait(format!(
                    "standby: quorum {} has {} workers",
                    q.id,
                    q.ranks.len()
                ));
            }
            return Directive::Stop {
                reason: format!("worker {w} is not in the quorum"),
            };
        };
        let step = self.round.step;
        if let Some(a) = after
            && (a > step || (a == step && !self.round.has_report(rank as u32)))
        {
            // Its state is ahead of the run's: it applied a step the run never took. It must
            // restart from a checkpoint; when it leaves, the quorum re-forms without it.
            return Directive::Stop {
                reason: format!(
                    "worker {w} applied step {a}, which the run has not committed; it must restart from a checkpoint"
                ),
            };
        }
        let ready = after.is_none_or(|a| a.next() == step);
        if !ready || self.round.has_report(rank as u32) {
            return Directive::wait(format!("step {step} in flight"));
        }
        self.round.hand(w);
        let world = q.ranks.len() as u64;
        let slice = self
            .settings
            .run
            .plan
            .rank_slice(step.0, world, rank as u64)
            .expect("every quorum's world size splits the batch (checked when formed)");
        Directive::Train(TrainStep {
            step,
            quorum: q.id,
            world_size: world as u32,
            rank: rank as u32,
            peers: q.ranks.iter().map(|r| self.members.addr(r)).collect(),
            first_position: slice.first().map_or(0, |x| x.0),
            rows: slice.iter().map(|x| x.1).collect(),
            lr: self.settings.run.lr(step),
            total_steps: self.settings.run.total_steps,
            save_to: self
                .settings
                .saves_after(step)
                .then(|| self.settings.checkpoint_dir(step)),
            ring_key: self.settings.key(&format!("ring {}", q.id)),
        })
    }

    /// Returns the worker that writes a done run's outputs: the first rank of the final quorum
    /// that still holds the run's state (not one that registered again since).
    fn final_writer(&self) -> Option<WorkerId> {
        self.quorum()?
            .ranks
            .iter()
            .find(|r| self.members.get(r).is_some_and(|m| m.synced))
            .cloned()
    }

    /// Decides what follows an input: the first quorum, a join, an inline eval job, the end.
    fn settle(&mut self, now: Instant) {
        self.depart_leavers();
        self.maybe_form();
        self.maybe_start_transfer();
        self.maybe_assign_inline_eval();
        self.maybe_finish(now);
    }

    /// Marks the run failed (for errors outside the protocol).
    pub fn fail(&mut self, why: String) {
        self.phase = Phase::Failed(why);
    }

    /// Returns what the run is doing and why: the `state` and `state_reason` of `/status`.
    pub fn activity(&self) -> (RunState, String) {
        match &self.phase {
            Phase::Forming => (
                RunState::WaitingForQuorum,
                format!(
                    "waiting for {} training workers, {} registered",
                    self.settings.run.world_size,
                    self.members.count(Role::Train)
                ),
            ),
            Phase::Running => {
                let q = self.quorum();
                let (qid, world) = q.map_or((0, 0), |q| (q.id.0, q.ranks.len()));
                if self.round.is_broken() {
                    (
                        RunState::ReForming,
                        format!(
                            "quorum {qid} lost a peer at step {}; waiting for the survivors' reports",
                            self.round.step
                        ),
                    )
                } else if let Some(t) = &self.transfer {
                    (
                        RunState::ReForming,
                        format!(
                            "copying worker {}'s state to joining worker {} at step {}",
                            t.donor, t.joiner, t.step
                        ),
                    )
                } else if self.evals.running_inline(self.quorum()) {
                    (
                        RunState::Evaluating,
                        format!(
                            "rank 0 evaluates a checkpoint between steps (step {} next)",
                            self.round.step
                        ),
                    )
                } else {
                    (
                        RunState::Training,
                        format!(
                            "step {} of {} in quorum {qid} ({world} workers)",
                            self.round.step, self.settings.run.total_steps
                        ),
                    )
                }
            }
            Phase::Done if self.saves.saving() => (
                RunState::Checkpointing,
                if self.terminated {
                    "SIGTERM: waiting for the last checkpoint before stopping".to_string()
                } else {
                    "every step is trained; waiting for the last checkpoint".to_string()
                },
            ),
            Phase::Done if self.evals.outstanding() > 0 => (
                RunState::Evaluating,
                format!(
                    "every step is trained; {} eval jobs left",
                    self.evals.outstanding()
                ),
            ),
            Phase::Done if self.terminated => (
                RunState::Done,
                "stopped by SIGTERM; a restart resumes from the last checkpoint".to_string(),
            ),
            Phase::Done => (RunState::Done, format!("{} steps trained", self.round.step)),
            Phase::Failed(why) => (RunState::Failed, why.clone()),
        }
    }

    /// Returns the steps whose checkpoints are on their way (shards or manifest), and the eval
    /// jobs queued and running (step, worker), for the status page.
    pub fn pending_work(&self) -> (Vec<u64>, Vec<u64>, Vec<(u64, String)>) {
        (
            self.saves.in_flight(),
            self.evals.queued().iter().map(|s| s.0).collect(),
            self.evals.running(),
        )
    }

    /// Returns the model's part of the status document (the driver adds throughput, losses
    /// and the last evaluation).
    fn status(&self, now: Instant) -> RunStatus {
        use elf_shared::messages::{QuorumStatus, STRAGGLER_RATIO, WorkerStatus};
        let phase = match &self.phase {
            Phase::Forming => "forming".to_string(),
            Phase::Running => "running".into(),
            Phase::Done if self.terminated => "terminating".into(),
            Phase::Done => "done".into(),
            Phase::Failed(why) => format!("failed: {why}"),
        };
        let (state, state_reason) = self.activity();
        let quorum = self.quorum();
        // Data and compute time of the members whose last committed step is the run's last:
        // the all-reduce makes every rank's step time alike, so only the time before it
        // tells a slow rank.
        let last = self.round.step.0.checked_sub(1);
        let busy = |m: &membership::Member| {
            m.timings
                .filter(|_| m.step.map(|s| s.0) == last)
                .map(|t| t.data_seconds + t.compute_seconds)
        };
        let mut times: Vec<f64> = quorum
            .map(|q| {
                q.ranks
                    .iter()
                    .filter_map(|w| self.members.get(w).and_then(busy))
                    .collect()
            })
            .unwrap_or_default();
        times.sort_by(f64::total_cmp);
        // The median (of two middle values, their mean): with two ranks the slower is only a
        // straggler at 3x the faster, not at any gap.
        let median = match times.len() {
            0 => None,
            n if n % 2 == 1 => Some(times[n / 2]),
            n => Some((times[n / 2 - 1] + times[n / 2]) / 2.0),
        };
        RunStatus {
            phase,
            state: state.as_str().into(),
            state_reason,
            heartbeat_timeout_seconds: self.settings.heartbeat_timeout.as_secs_f64(),
            step: self.round.step.0,
            total_steps: self.settings.run.total_steps,
            quorum: quorum.map(|q| QuorumStatus {
                id: q.id.0,
                world_size: q.ranks.len(),
                members: q.ranks.iter().map(|r| r.0.clone()).collect(),
            }),
            workers: self
                .members
                .iter()
                .map(|(id, m)| {
                    let rank = quorum.and_then(|q| q.rank_of(id)).map(|r| r as u32);
                    let ratio = match (rank, busy(m), median) {
                        (Some(_), Some(t), Some(med)) if times.len() > 1 && med > 0.0 => {
                            Some(t / med)
                        }
                        _ => None,
                    };
                    WorkerStatus {
                        id: id.0.clone(),
                        device: m.device.clone(),
                        collective_addr: m.addr.clone(),
                        role: m.role.as_str().into(),
                        heartbeat_age_seconds: now.duration_since(m.last_seen).as_secs_f64(),
                        last_step: m.step.map(|s| s.0),
                        rank,
                        last_timings: m.timings,
                        straggler_ratio: ratio,
                        straggler: ratio.is_some_and(|r| r >= STRAGGLER_RATIO),
                    }
                })
                .collect(),
            evals_outstanding: self.evals.outstanding(),
            worker_errors: self.leaves.errors(),
            skipped_steps: self.skipped,
            refused_reports: self.refused_reports,
            ..RunStatus::default()
        }
    }
}
