//! The coordinator's decisions as pure functions of its state and `now`.
//!
//! Membership: workers register with an id and the address of their collective; the first
//! quorum forms when `expected` training workers are present, ranked by worker id. Steps: every
//! member of the quorum gets the same step with its rank, the ring of peers, its slice of the
//! global batch (from the sample plan) and the learning rate; a step commits when every rank
//! reported it with the same parameter digest (the data-parallel invariant). Liveness: a
//! member silent for longer than the heartbeat timeout is evicted, which (until elastic
//! recovery lands) fails the run with a reason naming the worker.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use elf_shared::manifest::step_dir;
use elf_shared::plan::Plan;
use elf_shared::proto::{
    EvalReport, PROTOCOL_VERSION, RegisterRequest, ShardReport, StepDirective, StepReport,
    TransferReport, step_directive::Kind,
};
use elf_shared::schedule::Schedule;

/// A registered worker.
#[derive(Debug, Clone)]
pub struct Member {
    /// Device it trains on.
    pub device: String,
    /// Address of its collective.
    pub addr: String,
    /// `train` or `eval`.
    pub role: String,
    /// Last time it was heard from.
    pub last_seen: Instant,
    /// Last step it finished.
    pub step: Option<u64>,
    /// Holds the run's current state: it was there when training started (or resumed), or a
    /// live peer's state was copied to it. Only synced workers enter a quorum.
    pub synced: bool,
}

/// A state copy from a quorum member (the donor) to a worker joining a running run.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The joining worker.
    pub joiner: String,
    /// The member sending its state.
    pub donor: String,
    /// The step boundary: the state after step `step - 1`.
    pub step: u64,
    /// The donor reported its side done.
    pub sent: bool,
}

/// The workers training together, in rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Quorum {
    /// Increases whenever membership changes.
    pub id: u64,
    /// Worker ids by rank.
    pub ranks: Vec<String>,
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

/// A committed step, for the driver to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The step.
    pub step: u64,
    /// Quorum that trained it.
    pub quorum: Quorum,
    /// Learning rate used.
    pub lr: f64,
    /// Every rank's report, in rank order.
    pub reports: Vec<StepReport>,
}

/// Fixed facts of the run.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// Training workers to wait for.
    pub expected: usize,
    /// Steps in the run.
    pub total_steps: u64,
    /// The sample plan.
    pub plan: Plan,
    /// Learning rate by optimiser step.
    pub schedule: Schedule,
    /// Global batches per optimiser step.
    pub grad_accum: u64,
    /// Branch shard size (a rank's slice must hold whole shards).
    pub shard: u64,
    /// Eviction threshold.
    pub heartbeat_timeout: Duration,
    /// Save every this many steps (0: only at the end).
    pub save_interval: u64,
    /// Save after the last step this process runs.
    pub save_final: bool,
    /// Where checkpoint folders go (URL or path).
    pub checkpoint_root: String,
    /// Stop (done) after this many steps even if the run has more (for staged runs and tests).
    pub stop_after: Option<u64>,
    /// Evaluate every this many committed checkpoints (0: never).
    pub eval_every: u64,
    /// Evaluate the final checkpoint.
    pub eval_at_end: bool,
    /// Without an eval worker, rank 0 of the training workers evaluates between steps.
    pub eval_inline: bool,
}

impl RunFacts {
    /// Returns the step after which this process stops.
    pub fn end(&self) -> u64 {
        self.stop_after
            .map_or(self.total_steps, |s| s.min(self.total_steps))
    }

    /// Returns true when the state after `step` is to be checkpointed.
    pub fn saves_after(&self, step: u64) -> bool {
        let k = step + 1;
        (self.save_interval > 0 && k.is_multiple_of(self.save_interval))
            || (self.save_final && k == self.end())
    }
}

/// A checkpoint whose shards and step are all in: the driver writes its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedSave {
    /// The step.
    pub step: u64,
    /// Shard reports in rank order (rank 0 carries the tensor index).
    pub shards: Vec<ShardReport>,
    /// The commit of the step.
    pub commit: Commit,
}

/// A committed checkpoint to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalJob {
    /// The checkpoint's step.
    pub step: u64,
    /// Its folder (URL or path).
    pub dir: String,
}

#[derive(Debug, Clone, Default)]
struct PendingSave {
    world: u32,
    shards: BTreeMap<u32, ShardReport>,
    commit: Option<Commit>,
}

/// The coordinator's state.
#[derive(Debug, Clone)]
pub struct ClusterState {
    facts: RunFacts,
    members: BTreeMap<String, Member>,
    quorum: Option<Quorum>,
    next_quorum_id: u64,
    step: u64,
    reports: BTreeMap<u32, StepReport>,
    phase: Phase,
    saves: BTreeMap<u64, PendingSave>,
    /// Manifests taken for writing and not yet reported written.
    writing: usize,
    /// Checkpoints committed by this process.
    committed: u64,
    /// Whether any rank was handed the current step (no inline eval may start then: the other
    /// ranks would wait for rank 0 in the all-reduce).
    handed: bool,
    eval_queue: VecDeque<EvalJob>,
    /// Eval jobs by the worker running them.
    eval_running: BTreeMap<String, EvalJob>,
    /// Since when the current quorum's collective is known broken (a rank reported a failed
    /// all-reduce); the quorum is re-formed when the culprit is evicted, or after a heartbeat
    /// timeout with everyone still alive (a transient fault).
    broken_since: Option<Instant>,
    /// Saves dropped because a rank was lost before its shard was in (late shards ignored).
    abandoned: std::collections::BTreeSet<u64>,
    /// The state copy in progress to a joining worker.
    transfer: Option<Transfer>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl ClusterState {
    /// Starts a run at step `start`.
    pub fn new(facts: RunFacts, start: u64) -> Self {
        let phase = if start >= facts.end() {
            Phase::Done
        } else {
            Phase::Forming
        };
        Self {
            facts,
            members: BTreeMap::new(),
            quorum: None,
            next_quorum_id: 1,
            step: start,
            reports: BTreeMap::new(),
            phase,
            saves: BTreeMap::new(),
            writing: 0,
            committed: 0,
            handed: false,
            eval_queue: VecDeque::new(),
            eval_running: BTreeMap::new(),
            broken_since: None,
            abandoned: Default::default(),
            transfer: None,
        }
    }

    /// Returns the phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Returns the next step to commit.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Returns the run facts.
    pub fn facts(&self) -> &RunFacts {
        &self.facts
    }

    /// Returns the current quorum.
    pub fn quorum(&self) -> Option<&Quorum> {
        self.quorum.as_ref()
    }

    /// Returns the members by id.
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// Admits a worker (or re-admits one with the same id).
    ///
    /// # Errors
    /// A protocol mismatch, a second registration while running, or a finished run.
    pub fn register(&mut self, now: Instant, r: &RegisterRequest) -> Result<(), Refused> {
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Refused(format!(
                "worker {} speaks protocol {}, the coordinator speaks {PROTOCOL_VERSION}",
                r.worker_id, r.protocol_version
            )));
        }
        if r.worker_id.is_empty() {
            return Err(Refused("empty worker id".into()));
        }
        if let Phase::Failed(why) = &self.phase {
            return Err(Refused(format!("the run has failed: {why}")));
        }
        let in_quorum = self
            .quorum
            .as_ref()
            .is_some_and(|q| q.ranks.contains(&r.worker_id));
        // A training worker arriving while the run is running waits as a standby until a live
        // peer's state is copied to it (at a step boundary); then it enters the quorum.
        let synced = self.phase == Phase::Forming || in_quorum;
        self.members.insert(
            r.worker_id.clone(),
            Member {
                device: r.device.clone(),
                addr: r.collective_addr.clone(),
                role: r.role.clone(),
                last_seen: now,
                step: None,
                synced,
            },
        );
        self.maybe_form();
        Ok(())
    }

    fn maybe_form(&mut self) {
        if self.phase != Phase::Forming {
            return;
        }
        let trainers: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.role != "eval")
            .map(|(id, _)| id.clone())
            .collect();
        if trainers.len() < self.facts.expected {
            return;
        }
        let ranks: Vec<String> = trainers.into_iter().take(self.facts.expected).collect();
        self.quorum = Some(Quorum {
            id: self.next_quorum_id,
            ranks,
        });
        self.next_quorum_id += 1;
        self.phase = Phase::Running;
    }

    /// The current quorum's id (0 before the first).
    pub fn quorum_id(&self) -> u64 {
        self.quorum.as_ref().map_or(0, |q| q.id)
    }

    /// Records a heartbeat; returns false for an unknown worker (it must register again).
    pub fn heartbeat(&mut self, now: Instant, id: &str) -> bool {
        match self.members.get_mut(id) {
            Some(m) => {
                m.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Evicts silent members; returns a reason for each eviction.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let timeout = self.facts.heartbeat_timeout;
        let dead: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        let mut reasons = vec![];
        let mut lost = false;
        for id in dead {
            self.members.remove(&id);
            if let Some(job) = self.eval_running.remove(&id) {
                self.eval_queue.push_front(job);
            }
            let why = format!(
                "worker {id} missed heartbeats for more than {} ms",
                timeout.as_millis()
            );
            if self.quorum.as_ref().is_some_and(|q| q.ranks.contains(&id))
                && self.phase == Phase::Running
            {
                lost = true;
            }
            reasons.push(why);
        }
        if let Some(t) = &self.transfer
            && (!self.members.contains_key(&t.joiner) || !self.members.contains_key(&t.donor))
        {
            let joiner = t.joiner.clone();
            self.transfer = None;
            self.members.remove(&joiner);
        }
        let transient = self
            .broken_since
            .is_some_and(|t| now.duration_since(t) > timeout);
        if (lost || transient) && self.phase == Phase::Running {
            match self.reform() {
                Ok(q) => reasons.push(format!(
                    "quorum {} formed with {} workers ({}); step {} is redone",
                    q.id,
                    q.ranks.len(),
                    q.ranks.join(", "),
                    self.step
                )),
                Err(why) => {
                    let evicted = reasons.last().cloned().unwrap_or_default();
                    self.phase = Phase::Failed(format!("{evicted}; {why} at step {}", self.step));
                }
            }
        }
        reasons
    }

    /// The largest world size not above `n` that splits the global batch into whole branch
    /// shards per rank.
    pub fn valid_world(&self, n: usize) -> Option<usize> {
        (1..=n)
            .rev()
            .find(|&w| self.facts.plan.splits(w as u64, self.facts.shard))
    }

    /// Forms a new quorum from the live training workers (ranked by id), dropping the in-flight
    /// step's reports: the step is redone, its rows re-sliced for the new world size.
    fn reform(&mut self) -> Result<Quorum, String> {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.role != "eval" && m.synced)
            .map(|(id, _)| id.clone())
            .collect();
        let w = self
            .valid_world(live.len())
            .ok_or_else(|| "no training worker is left".to_string())?;
        let q = Quorum {
            id: self.next_quorum_id,
            ranks: live.into_iter().take(w).collect(),
        };
        self.next_quorum_id += 1;
        self.quorum = Some(q.clone());
        self.reports.clear();
        self.handed = false;
        self.broken_since = None;
        // A save still missing shards may be missing a lost rank's: it can never complete.
        let incomplete: Vec<u64> = self
            .saves
            .iter()
            .filter(|(_, p)| p.world == 0 || p.shards.len() < p.world as usize)
            .map(|(s, _)| *s)
            .collect();
        for s in incomplete {
            tracing::warn!(
                step = s,
                "checkpoint abandoned: the quorum changed before its shards were in"
            );
            self.saves.remove(&s);
            self.abandoned.insert(s);
        }
        Ok(q)
    }

    fn wait(reason: String) -> StepDirective {
        StepDirective {
            kind: Kind::Wait as i32,
            reason,
            ..Default::default()
        }
    }

    /// Returns what worker `id` should do after finishing `after` (`None`: nothing yet).
    pub fn directive(&mut self, id: &str, after: Option<u64>) -> StepDirective {
        let total = self.facts.total_steps;
        if self.members.get(id).is_some_and(|m| m.role == "eval") {
            return self.eval_directive(id);
        }
        if let Some(d) = self.inline_eval(id, after) {
            return d;
        }
        match &self.phase {
            Phase::Failed(why) => {
                return StepDirective {
                    kind: Kind::Stop as i32,
                    reason: why.clone(),
                    total_steps: total,
                    ..Default::default()
                };
            }
            Phase::Done => {
                return StepDirective {
                    kind: Kind::Done as i32,
                    step: self.step,
                    total_steps: total,
                    ..Default::default()
                };
            }
            Phase::Forming => {
                let have = self.members.values().filter(|m| m.role != "eval").count();
                return Self::wait(format!(
                    "waiting for {} workers, {have} registered",
                    self.facts.expected
                ));
            }
            Phase::Running => {}
        }
        let q = self.quorum.clone().expect("running has a quorum");
        if self.broken_since.is_some() {
            return Self::wait(format!(
                "quorum {} lost a peer at step {}; re-forming",
                q.id, self.step
            ));
        }
        if let Some(d) = self.join_directive(id, after) {
            return d;
        }
        let Some(rank) = q.ranks.iter().position(|r| r == id) else {
            if self.members.contains_key(id) {
                return Self::wait(format!(
                    "standby: quorum {} has {} workers",
                    q.id,
                    q.ranks.len()
                ));
            }
            return StepDirective {
                kind: Kind::Stop as i32,
                reason: format!("worker {id} is not in the quorum"),
                ..Default::default()
            };
        };
        // Having finished the step in flight is normal (its report waits for the others'); having
        // finished it without a report here means the report was discarded with its quorum.
        if let Some(a) = after
            && (a > self.step || (a == self.step && !self.reports.contains_key(&(rank as u32))))
        {
            // It applied a step that was then discarded (its all-reduce completed just before a
            // peer's failure broke the others'): its state is ahead of the run's. It leaves, and
            // the others go on without it.
            let why = format!(
                "worker {id} applied step {a}, which was redone after the quorum changed; it must restart from a checkpoint"
            );
            self.members.remove(id);
            if let Err(e) = self.reform() {
                self.phase = Phase::Failed(format!("{why}; {e} at step {}", self.step));
            }
            return StepDirective {
                kind: Kind::Stop as i32,
                reason: why,
                ..Default::default()
            };
        }
        let ready = match after {
            None => true,
            Some(a) => a + 1 == self.step,
        };
        if !ready || self.reports.contains_key(&(rank as u32)) {
            return Self::wait(format!("step {} in flight", self.step));
        }
        self.handed = true;
        let world = q.ranks.len() as u64;
        let slice = self
            .facts
            .plan
            .rank_slice(self.step, world, rank as u64)
            .expect("world divides the batch (checked at start)");
        StepDirective {
            kind: Kind::Train as i32,
            step: self.step,
            quorum_id: q.id,
            world_size: world as u32,
            rank: rank as u32,
            peers: q
                .ranks
                .iter()
                .map(|r| {
                    self.members
                        .get(r)
                        .map_or_else(String::new, |m| m.addr.clone())
                })
                .collect(),
            first_position: slice.first().map_or(0, |x| x.0),
            rows: slice.iter().map(|x| x.1).collect(),
            lr: self.facts.schedule.lr(self.step / self.facts.grad_accum),
            reason: String::new(),
            total_steps: total,
            save: self.facts.saves_after(self.step),
            checkpoint_dir: format!(
                "{}/{}",
                self.facts.checkpoint_root.trim_end_matches('/'),
                step_dir(self.step)
            ),
        }
    }

    /// Copies state to a standby worker when it would grow the quorum: at a step boundary no
    /// rank has been handed yet, rank 0 sends, the joiner receives, everyone else waits.
    fn join_directive(&mut self, id: &str, after: Option<u64>) -> Option<StepDirective> {
        if self.transfer.is_none() {
            let q = self.quorum.as_ref()?;
            let boundary = !self.handed
                && self.phase == Phase::Running
                && self.eval_running.is_empty()
                && after.is_none_or(|a| a + 1 == self.step || !q.ranks.iter().any(|r| r == id));
            if !boundary {
                return None;
            }
            let joiner = self
                .members
                .iter()
                .find(|(_, m)| m.role != "eval" && !m.synced)
                .map(|(j, _)| j.clone())?;
            let synced = self
                .members
                .values()
                .filter(|m| m.role != "eval" && m.synced)
                .count();
            if self.valid_world(synced + 1).unwrap_or(0) <= q.ranks.len() {
                return None;
            }
            self.transfer = Some(Transfer {
                joiner,
                donor: q.ranks[0].clone(),
                step: self.step,
                sent: false,
            });
        }
        let t = self.transfer.clone().expect("set above");
        let addr = |w: &str| {
            self.members
                .get(w)
                .map_or_else(String::new, |m| m.addr.clone())
        };
        let transfer = |kind: Kind, peer: String| StepDirective {
            kind: kind as i32,
            step: t.step,
            peers: vec![peer],
            total_steps: self.facts.total_steps,
            ..Default::default()
        };
        Some(if id == t.joiner {
            transfer(Kind::ReceiveState, addr(&t.donor))
        } else if id == t.donor && !t.sent {
            transfer(Kind::SendState, addr(&t.joiner))
        } else {
            Self::wait(format!("worker {} is joining at step {}", t.joiner, t.step))
        })
    }

    /// Takes one side's report of a state copy. The joiner's success enters it into a new
    /// quorum; a failure on either side drops the joiner.
    ///
    /// # Errors
    /// A report about no copy in progress.
    pub fn report_transfer(&mut self, r: &TransferReport) -> Result<Option<Quorum>, Refused> {
        let Some(t) = self.transfer.as_mut().filter(|t| t.step == r.step) else {
            return Err(Refused(format!(
                "worker {} reported a state copy of step {} that is not in progress",
                r.worker_id, r.step
            )));
        };
        if !r.error.is_empty() {
            let joiner = t.joiner.clone();
            self.transfer = None;
            self.members.remove(&joiner);
            return Ok(None);
        }
        if r.sender {
            t.sent = true;
            return Ok(None);
        }
        let joiner = t.joiner.clone();
        self.transfer = None;
        if let Some(m) = self.members.get_mut(&joiner) {
            m.synced = true;
        }
        self.reform().map(Some).map_err(Refused)
    }

    /// Takes a step report; returns the commit when it completed the step.
    ///
    /// # Errors
    /// A report for another step or quorum, or from a worker outside the quorum.
    pub fn report(&mut self, now: Instant, r: StepReport) -> Result<Option<Commit>, Refused> {
        if let Some(m) = self.members.get_mut(&r.worker_id) {
            m.last_seen = now;
        }
        let q = match (&self.phase, &self.quorum) {
            (Phase::Running, Some(q)) => q.clone(),
            (Phase::Failed(why), _) => return Err(Refused(format!("the run has failed: {why}"))),
            _ => return Err(Refused("no step is running".into())),
        };
        if r.quorum_id != q.id
            || r.step != self.step
            || q.ranks.get(r.rank as usize) != Some(&r.worker_id)
        {
            return Err(Refused(format!(
                "stale report from {} (step {}, quorum {}, rank {}); expected step {} of quorum {}",
                r.worker_id, r.step, r.quorum_id, r.rank, self.step, q.id
            )));
        }
        if r.collective_failed {
            // Survivors of a lost peer: the step is redone once the quorum is re-formed.
            self.broken_since.get_or_insert(now);
            self.reports.clear();
            return Ok(None);
        }
        if !r.error.is_empty() {
            self.phase = Phase::Failed(format!(
                "worker {} failed step {}: {}",
                r.worker_id, r.step, r.error
            ));
            return Ok(None);
        }
        self.reports.insert(r.rank, r);
        if self.reports.len() < q.ranks.len() {
            return Ok(None);
        }
        let reports: Vec<StepReport> = std::mem::take(&mut self.reports).into_values().collect();
        let digest = &reports[0].param_digest;
        if let Some(bad) = reports.iter().find(|x| &x.param_digest != digest) {
            self.phase = Phase::Failed(format!(
                "replicas diverged at step {}: rank {} has digest {} but rank 0 has {}",
                self.step, bad.rank, bad.param_digest, digest
            ));
            return Ok(None);
        }
        for x in &reports {
            if let Some(m) = self.members.get_mut(&x.worker_id) {
                m.step = Some(x.step);
            }
        }
        let commit = Commit {
            step: self.step,
            quorum: q,
            lr: self.facts.schedule.lr(self.step / self.facts.grad_accum),
            reports,
        };
        if self.facts.saves_after(self.step) && !self.abandoned.contains(&self.step) {
            let p = self.saves.entry(self.step).or_default();
            p.world = commit.quorum.ranks.len() as u32;
            p.commit = Some(commit.clone());
        }
        self.step += 1;
        self.handed = false;
        if self.step >= self.facts.end() {
            self.phase = Phase::Done;
        }
        Ok(Some(commit))
    }

    /// Records a shard report; returns the reason when the worker's save failed (the save is
    /// dropped and training continues).
    pub fn report_shard(&mut self, r: ShardReport) -> Option<String> {
        if self.abandoned.contains(&r.step) {
            return None;
        }
        if !r.error.is_empty() {
            // Abandoned for good: a failure reported before the step's commit must not let
            // the commit open the save again (it would wait forever for this shard).
            self.saves.remove(&r.step);
            self.abandoned.insert(r.step);
            return Some(format!(
                "worker {} could not save step {}: {}",
                r.worker_id, r.step, r.error
            ));
        }
        let p = self.saves.entry(r.step).or_default();
        p.world = r.world_size;
        p.shards.insert(r.rank, r);
        None
    }

    /// Removes and returns every save whose step committed and whose shards are all in (shards
    /// may arrive before or after the commit).
    pub fn take_complete_saves(&mut self) -> Vec<CompletedSave> {
        let done: Vec<u64> = self
            .saves
            .iter()
            .filter(|(_, p)| p.commit.is_some() && p.world > 0 && p.shards.len() as u32 == p.world)
            .map(|(s, _)| *s)
            .collect();
        self.writing += done.len();
        done.into_iter()
            .map(|step| {
                let p = self.saves.remove(&step).expect("listed above");
                CompletedSave {
                    step,
                    shards: p.shards.into_values().collect(),
                    commit: p.commit.expect("filtered"),
                }
            })
            .collect()
    }

    /// True while a checkpoint of this run is still on its way (shards or manifest).
    pub fn saving(&self) -> bool {
        !self.saves.is_empty() || self.writing > 0
    }

    /// Records that the manifest of a taken save was written (`ok`) or not; a written one may
    /// schedule an eval job (every `eval_every` committed checkpoints, and the final one).
    pub fn save_written(&mut self, step: u64, dir: String, ok: bool) {
        self.writing = self.writing.saturating_sub(1);
        if !ok {
            return;
        }
        self.committed += 1;
        let every = self.facts.eval_every;
        if (every > 0 && self.committed.is_multiple_of(every))
            || (self.facts.eval_at_end && step + 1 == self.facts.end())
        {
            self.eval_queue.push_back(EvalJob { step, dir });
        }
    }

    /// Eval jobs queued or running.
    pub fn evals_outstanding(&self) -> usize {
        self.eval_queue.len() + self.eval_running.len()
    }

    /// True when a `--role eval` worker is registered.
    pub fn has_eval_worker(&self) -> bool {
        self.members.values().any(|m| m.role == "eval")
    }

    fn eval_kind(job: &EvalJob, total: u64) -> StepDirective {
        StepDirective {
            kind: Kind::Eval as i32,
            step: job.step,
            checkpoint_dir: job.dir.clone(),
            total_steps: total,
            ..Default::default()
        }
    }

    /// The directive of a dedicated eval worker: the job it runs, the next queued one, DONE
    /// when training is over with nothing left to evaluate, else WAIT.
    fn eval_directive(&mut self, id: &str) -> StepDirective {
        let total = self.facts.total_steps;
        if let Phase::Failed(why) = &self.phase {
            return StepDirective {
                kind: Kind::Stop as i32,
                reason: why.clone(),
                ..Default::default()
            };
        }
        if let Some(job) = self.eval_running.get(id) {
            return Self::eval_kind(job, total);
        }
        if let Some(job) = self.eval_queue.pop_front() {
            let d = Self::eval_kind(&job, total);
            self.eval_running.insert(id.to_string(), job);
            return d;
        }
        if self.phase == Phase::Done && !self.saving() {
            return StepDirective {
                kind: Kind::Done as i32,
                step: self.step,
                total_steps: total,
                ..Default::default()
            };
        }
        Self::wait("no committed checkpoint to evaluate yet".into())
    }

    /// Eval on the training workers (no eval worker registered, `eval_inline`): at a step
    /// boundary no rank has been handed yet, rank 0 gets the job and the others wait; at the
    /// end of the run the workers are held until the last checkpoint is written and evaluated.
    fn inline_eval(&mut self, id: &str, after: Option<u64>) -> Option<StepDirective> {
        let f = &self.facts;
        if !f.eval_inline || (f.eval_every == 0 && !f.eval_at_end) || self.has_eval_worker() {
            return None;
        }
        let q = self.quorum.as_ref()?;
        let rank = q.ranks.iter().position(|r| r == id)?;
        let total = f.total_steps;
        let done = match self.phase {
            Phase::Running => false,
            Phase::Done => true,
            _ => return None,
        };
        if let Some(job) = self.eval_running.get(id) {
            return Some(Self::eval_kind(job, total));
        }
        if let Some((_, job)) = self.eval_running.iter().next() {
            return Some(Self::wait(format!(
                "rank 0 is evaluating step {}",
                job.step
            )));
        }
        let boundary = after.is_none_or(|a| a + 1 == self.step) && !self.handed;
        if !self.eval_queue.is_empty() && (boundary || done) {
            if rank != 0 {
                return Some(Self::wait("rank 0 is about to evaluate".into()));
            }
            let job = self.eval_queue.pop_front().expect("not empty");
            let d = Self::eval_kind(&job, total);
            self.eval_running.insert(id.to_string(), job);
            return Some(d);
        }
        if done && self.saving() {
            return Some(Self::wait(
                "the last checkpoint is being written (it may be evaluated)".into(),
            ));
        }
        None
    }

    /// The job an eval report is about (the report is recorded before [`Self::report_eval`]
    /// completes it, so the run never ends between the two).
    ///
    /// # Errors
    /// A report from a worker that was not running that job.
    pub fn eval_job_of(&self, r: &EvalReport) -> Result<EvalJob, Refused> {
        match self.eval_running.get(&r.worker_id) {
            Some(job) if job.step == r.step => Ok(job.clone()),
            _ => Err(Refused(format!(
                "worker {} reported an eval of step {} it was not running",
                r.worker_id, r.step
            ))),
        }
    }

    /// Completes the eval job of a report; returns it.
    ///
    /// # Errors
    /// A report from a worker that was not running that job.
    pub fn report_eval(&mut self, r: &EvalReport) -> Result<EvalJob, Refused> {
        let job = self.eval_job_of(r)?;
        self.eval_running.remove(&r.worker_id);
        Ok(job)
    }

    /// Drops the eval jobs nobody can run (no eval worker, no inline evaluation); returns them.
    pub fn abandon_evals(&mut self) -> Vec<EvalJob> {
        let inline = self.facts.eval_inline
            && self.quorum.is_some()
            && matches!(self.phase, Phase::Running | Phase::Done);
        if self.has_eval_worker() || inline || !self.eval_running.is_empty() {
            return vec![];
        }
        self.eval_queue.drain(..).collect()
    }

    /// Marks the run failed (used by the driver for errors outside the protocol).
    pub fn fail(&mut self, why: String) {
        self.phase = Phase::Failed(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elf_shared::config::Config;

    fn facts(expected: usize, total: u64) -> RunFacts {
        let c = Config {
            lr: Some(1.0),
            warmup_steps: 4,
            ..Config::default()
        };
        RunFacts {
            expected,
            total_steps: total,
            plan: Plan::new(64, 8, 0).unwrap(),
            schedule: Schedule::from_config(&c, 8, total),
            grad_accum: 1,
            shard: 2,
            heartbeat_timeout: Duration::from_secs(5),
            save_interval: 0,
            save_final: false,
            checkpoint_root: "ckpt".into(),
            stop_after: None,
            eval_every: 0,
            eval_at_end: false,
            eval_inline: true,
        }
    }

    fn member(id: &str) -> RegisterRequest {
        RegisterRequest {
            worker_id: id.into(),
            device: "cpu".into(),
            collective_addr: format!("127.0.0.1:{}", id.len()),
            role: "train".into(),
            protocol_version: PROTOCOL_VERSION,
        }
    }

    fn report(d: &StepDirective, id: &str, digest: &str) -> StepReport {
        StepReport {
            worker_id: id.into(),
            step: d.step,
            quorum_id: d.quorum_id,
            rank: d.rank,
            param_digest: digest.into(),
            loss: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn quorum_forms_when_expected_workers_register_ranked_by_id() {
        let now = Instant::now();
        let mut s = ClusterState::new(facts(2, 3), 0);
        s.register(now, &member("w1")).unwrap();
        let d = s.directive("w1", None);
        assert_eq!(d.kind, Kind::Wait as i32);
        assert_eq!(d.reason, "waiting for 2 workers, 1 registered");
        s.register(now, &member("w0")).unwrap();
        assert_eq!(s.quorum().unwrap().ranks, vec!["w0", "w1"]);
        let d0 = s.directive("w0", None);
        let d1 = s.directive("w1", None);
        assert_eq!((d0.kind, d0.rank, d1.rank), (Kind::Train as i32, 0, 1));
        assert_eq!(d0.rows.len(), 4);
        assert_eq!((d0.first_position, d1.first_position), (0, 4));
        let all: Vec<u64> = d0.rows.iter().chain(&d1.rows).copied().collect();
        assert_eq!(all, s.facts().plan.global_batch(0));
        assert_eq!(d0.lr, 0.0, "first update has lr 0 during warmup");
    }

    #[test]
    fn a_step_commits_only_when_every_rank_reported_the_same_digest() {
        let now = Instant::now();
        let mut s = ClusterState::new(facts(2, 2), 0);
        s.register(now, &member("a")).unwrap();
        s.register(now, &member("b")).unwrap();
        let (da, db) = (s.directive("a", None), s.directive("b", None));
        assert_eq!(s.report(now, report(&da, "a", "x")).unwrap(), None);
        assert_eq!(s.directive("a", Some(0)).reason, "step 0 in flight");
        let c = s.report(now, report(&db, "b", "x")).unwrap().unwrap();
        assert_eq!((c.step, c.reports.len()), (0, 2));
        let d = s.directive("a", Some(0));
        assert_eq!((d.kind, d.step), (Kind::Train as i32, 1));
        assert_eq!(d.lr, 0.25);
        let db = s.directive("b", Some(0));
        s.report(now, report(&d, "a", "y")).unwrap();
        s.report(now, report(&db, "b", "z")).unwrap();
        match s.phase() {
            Phase::Failed(why) => assert!(
                why.starts_with("replicas diverged at step 1: rank 1"),
                "{why}"
            ),
            p => panic!("{p:?}"),
        }
        assert_eq!(s.directive("a", Some(1)).kind, Kind::Stop as i32);
    }

    #[test]
    fn the_last_commit_finishes_the_run() {
        let now = Instant::now();
        let mut s = ClusterState::new(facts(1, 1), 0);
        s.register(now, &member("solo")).unwrap();
        let d = s.directive("solo", None);
        assert_eq!(d.world_size, 1);
        assert_eq!(d.rows.len(), 8);
        s.report(now, report(&d, "solo", "x")).unwrap().unwrap();
        assert_eq!(s.phase(), &Phase::Done);
        assert_eq!(s.directive("solo", Some(0)).kind, Kind::Done as i32);
    }

    #[test]
    fn a_silent_worker_is_evicted_and_the_survivors_redo_the_step_re_sliced() {
        let t0 = Instant::now();
        let mut s = ClusterState::new(facts(2, 5), 0);
        s.register(t0, &member("a")).unwrap();
        s.register(t0, &member("b")).unwrap();
        // Step 0 handed to both; b vanishes; a's all-reduce fails.
        let (da, _db) = (s.directive("a", None), s.directive("b", None));
        let mut r = report(&da, "a", "x");
        r.error = "rank 1 (127.0.0.1:1): closed".into();
        r.collective_failed = true;
        assert_eq!(s.report(t0, r).unwrap(), None);
        assert_eq!(
            s.phase(),
            &Phase::Running,
            "a lost peer does not fail the run"
        );
        assert!(s.directive("a", None).reason.contains("re-forming"));
        let t1 = t0 + Duration::from_secs(3);
        assert!(s.heartbeat(t1, "a"));
        assert!(s.tick(t1).is_empty());
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(
            s.tick(t2),
            [
                "worker b missed heartbeats for more than 5000 ms",
                "quorum 2 formed with 1 workers (a); step 0 is redone"
            ]
        );
        assert!(!s.heartbeat(t2, "b"));
        // a redoes step 0 alone, with the whole global batch.
        let d = s.directive("a", None);
        assert_eq!(
            (d.kind, d.step, d.quorum_id, d.world_size),
            (Kind::Train as i32, 0, 2, 1)
        );
        assert_eq!(d.rows, s.facts().plan.global_batch(0));
        // b's late report of the old quorum is refused.
        let late = StepReport {
            worker_id: "b".into(),
            quorum_id: 1,
            rank: 1,
            ..Default::default()
        };
        assert!(s.report(t2, late).is_err());
        assert_eq!(s.report(t2, report(&d, "a", "y")).unwrap().unwrap().step, 0);
    }

    #[test]
    fn survivors_that_cannot_all_reduce_with_everyone_alive_re_form_after_the_timeout() {
        let t0 = Instant::now();
        let mut s = ClusterState::new(facts(2, 5), 0);
        s.register(t0, &member("a")).unwrap();
        s.register(t0, &member("b")).unwrap();
        let da = s.directive("a", None);
        let mut r = report(&da, "a", "x");
        r.collective_failed = true;
        s.report(t0, r).unwrap();
        for t in [3, 6] {
            let now = t0 + Duration::from_secs(t);
            s.heartbeat(now, "a");
            s.heartbeat(now, "b");
            s.tick(now);
        }
        assert_eq!(s.quorum().unwrap().id, 2);
        assert_eq!(s.quorum().unwrap().ranks, ["a", "b"]);
        assert_eq!(s.directive("b", None).kind, Kind::Train as i32);
    }

    #[test]
    fn losing_every_training_worker_fails_the_run_naming_them() {
        let t0 = Instant::now();
        let mut s = ClusterState::new(facts(1, 5), 0);
        s.register(t0, &member("a")).unwrap();
        let why = s.tick(t0 + Duration::from_secs(6));
        assert_eq!(why, ["worker a missed heartbeats for more than 5000 ms"]);
        assert_eq!(
            s.phase(),
            &Phase::Failed(
                "worker a missed heartbeats for more than 5000 ms; no training worker is left at step 0"
                    .into()
            )
        );
    }

    #[test]
    fn saves_complete_when_every_shard_and_the_commit_are_in() {
        let now = Instant::now();
        let mut f = facts(2, 4);
        f.save_interval = 2;
        f.stop_after = Some(3);
        f.save_final = true;
        assert_eq!(f.end(), 3);
        assert!(!f.saves_after(0) && f.saves_after(1) && f.saves_after(2));
        let mut s = ClusterState::new(f, 0);
        s.register(now, &member("a")).unwrap();
        s.register(now, &member("b")).unwrap();
        let shard = |id: &str, step: u64, rank: u32| ShardReport {
            worker_id: id.into(),
            step,
            rank,
            world_size: 2,
            file: format!("shard-{rank}"),
            ..Default::default()
        };
        for step in 0..2u64 {
            let (da, db) = (
                s.directive("a", step.checked_sub(1)),
                s.directive("b", step.checked_sub(1)),
            );
            assert_eq!(da.save, step == 1);
            assert_eq!(da.checkpoint_dir, format!("ckpt/step-{step:09}"));
            if step == 1 {
                // Shards may arrive before the step commits.
                assert_eq!(s.report_shard(shard("a", 1, 0)), None);
                assert_eq!(s.report_shard(shard("b", 1, 1)), None);
                assert!(s.take_complete_saves().is_empty(), "not committed yet");
            }
            s.report(now, report(&da, "a", "x")).unwrap();
            s.report(now, report(&db, "b", "x")).unwrap();
        }
        let saves = s.take_complete_saves();
        assert_eq!(saves.len(), 1);
        let c = &saves[0];
        assert_eq!(
            (c.step, c.shards.len(), c.commit.step, c.shards[0].rank),
            (1, 2, 1, 0)
        );
        assert!(s.saves.is_empty());
        let mut bad = shard("a", 2, 0);
        bad.error = "store timed out".into();
        assert_eq!(
            s.report_shard(bad).unwrap(),
            "worker a could not save step 2: store timed out"
        );
    }

    #[test]
    fn bad_registrations_and_stale_reports_are_refused_with_reasons() {
        let now = Instant::now();
        let mut s = ClusterState::new(facts(1, 3), 0);
        let mut old = member("x");
        old.protocol_version = 0;
        assert_eq!(
            s.register(now, &old).unwrap_err().0,
            "worker x speaks protocol 0, the coordinator speaks 1"
        );
        s.register(now, &member("a")).unwrap();
        // A late worker is admitted as a standby until a peer's state is copied to it.
        s.register(now, &member("late")).unwrap();
        assert!(!s.members()["late"].synced);
        let d = s.directive("a", None);
        assert_eq!(d.kind, Kind::SendState as i32, "{d:?}");
        s.report_transfer(&TransferReport {
            worker_id: "a".into(),
            sender: true,
            ..Default::default()
        })
        .unwrap();
        s.report_transfer(&TransferReport {
            worker_id: "late".into(),
            error: "no donor connected within 3000 ms".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(
            !s.members().contains_key("late"),
            "a failed join drops the joiner"
        );
        let d = s.directive("a", None);
        let mut r = report(&d, "a", "x");
        r.step = 7;
        assert!(
            s.report(now, r)
                .unwrap_err()
                .0
                .starts_with("stale report from a (step 7")
        );
        let mut r = report(&d, "a", "x");
        r.error = "peer rank 1 closed the connection".into();
        s.report(now, r).unwrap();
        assert_eq!(
            s.phase(),
            &Phase::Failed("worker a failed step 0: peer rank 1 closed the connection".into())
        );
    }
    /// Trains `a` and `b` through step `step` (both ranks report).
    fn commit_step(s: &mut ClusterState, step: u64) {
        let after = step.checked_sub(1);
        let (da, db) = (s.directive("a", after), s.directive("b", after));
        assert_eq!((da.kind, da.step), (Kind::Train as i32, step), "{da:?}");
        s.report(Instant::now(), report(&da, "a", "x")).unwrap();
        s.report(Instant::now(), report(&db, "b", "x")).unwrap();
    }

    fn eval_member(id: &str) -> RegisterRequest {
        RegisterRequest {
            role: "eval".into(),
            ..member(id)
        }
    }

    #[test]
    fn eval_jobs_follow_every_k_committed_checkpoints_and_the_last() {
        let mut f = facts(2, 6);
        (f.eval_every, f.eval_at_end) = (2, true);
        let mut s = ClusterState::new(f, 0);
        for (step, ok) in [(0, true), (1, false), (2, true), (3, true), (5, true)] {
            s.save_written(step, format!("ckpt/{step}"), ok);
        }
        // Committed: 0, 2, 3, 5 -> the 2nd (2), the 4th (5), and 5 is also the last.
        let queued: Vec<u64> = s.eval_queue.iter().map(|j| j.step).collect();
        assert_eq!(queued, [2, 5]);
    }

    #[test]
    fn an_eval_worker_takes_jobs_and_training_never_waits_for_it() {
        let now = Instant::now();
        let mut f = facts(2, 4);
        f.eval_every = 1;
        let mut s = ClusterState::new(f, 0);
        s.register(now, &member("a")).unwrap();
        s.register(now, &member("b")).unwrap();
        s.register(now, &eval_member("e")).unwrap();
        assert_eq!(
            s.quorum().unwrap().ranks,
            ["a", "b"],
            "eval workers do not train"
        );
        assert_eq!(s.directive("e", None).kind, Kind::Wait as i32);
        commit_step(&mut s, 0);
        s.save_written(0, "ckpt/0".into(), true);
        let d = s.directive("e", None);
        assert_eq!(
            (d.kind, d.step, d.checkpoint_dir.as_str()),
            (Kind::Eval as i32, 0, "ckpt/0")
        );
        // Training goes on while the job runs.
        commit_step(&mut s, 1);
        assert_eq!(s.evals_outstanding(), 1);
        // A stale or foreign report is refused; the right one completes the job.
        let mut r = EvalReport {
            worker_id: "a".into(),
            step: 0,
            ..Default::default()
        };
        assert!(s.report_eval(&r).is_err());
        r.worker_id = "e".into();
        assert_eq!(s.report_eval(&r).unwrap().step, 0);
        assert_eq!(s.evals_outstanding(), 0);
        // A silent eval worker's job goes back to the queue.
        s.save_written(1, "ckpt/1".into(), true);
        assert_eq!(s.directive("e", None).kind, Kind::Eval as i32);
        s.heartbeat(now + Duration::from_secs(4), "a");
        s.heartbeat(now + Duration::from_secs(4), "b");
        s.tick(now + Duration::from_secs(6));
        assert!(!s.has_eval_worker());
        assert_eq!(s.eval_queue.front().map(|j| j.step), Some(1));
    }

    #[test]
    fn without_an_eval_worker_rank_0_evaluates_at_a_step_boundary_only() {
        let now = Instant::now();
        let mut f = facts(2, 3);
        (f.eval_every, f.eval_at_end) = (1, true);
        let mut s = ClusterState::new(f, 0);
        s.register(now, &member("a")).unwrap();
        s.register(now, &member("b")).unwrap();
        commit_step(&mut s, 0);
        // b was handed step 1 before the checkpoint of step 0 committed: no eval until step 1
        // is done, or a would leave b waiting in the all-reduce.
        let db = s.directive("b", Some(0));
        assert_eq!(db.kind, Kind::Train as i32);
        s.save_written(0, "ckpt/0".into(), true);
        let da = s.directive("a", Some(0));
        assert_eq!((da.kind, da.step), (Kind::Train as i32, 1));
        s.report(now, report(&da, "a", "x")).unwrap();
        s.report(now, report(&db, "b", "x")).unwrap();
        // At the boundary: b waits, a evaluates, then step 2 goes on.
        let db = s.directive("b", Some(1));
        assert_eq!(db.kind, Kind::Wait as i32, "{db:?}");
        let da = s.directive("a", Some(1));
        assert_eq!((da.kind, da.step), (Kind::Eval as i32, 0));
        assert_eq!(
            s.directive("b", Some(1)).reason,
            "rank 0 is evaluating step 0"
        );
        s.report_eval(&EvalReport {
            worker_id: "a".into(),
            step: 0,
            ..Default::default()
        })
        .unwrap();
        commit_step(&mut s, 2);
        assert_eq!(s.phase(), &Phase::Done);
        // The run is over but its last checkpoint is still being written: the workers are
        // held, then rank 0 evaluates it, then everyone is done.
        s.saves.entry(2).or_default();
        assert_eq!(s.directive("a", Some(2)).kind, Kind::Wait as i32);
        s.saves.clear();
        s.writing = 1;
        s.save_written(2, "ckpt/2".into(), true);
        assert_eq!(s.directive("b", Some(2)).kind, Kind::Wait as i32);
        let da = s.directive("a", Some(2));
        assert_eq!((da.kind, da.step), (Kind::Eval as i32, 2));
        s.report_eval(&EvalReport {
            worker_id: "a".into(),
            step: 2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.directive("a", Some(2)).kind, Kind::Done as i32);
        assert_eq!(s.directive("b", Some(2)).kind, Kind::Done as i32);
    }
    #[test]
    fn a_worker_that_applied_a_discarded_step_leaves_and_the_others_go_on() {
        let now = Instant::now();
        let mut s = ClusterState::new(facts(2, 5), 0);
        s.register(now, &member("a")).unwrap();
        s.register(now, &member("b")).unwrap();
        let (da, db) = (s.directive("a", None), s.directive("b", None));
        // a finished step 0 and waits for b: normal.
        s.report(now, report(&da, "a", "x")).unwrap();
        assert_eq!(s.directive("a", Some(0)).reason, "step 0 in flight");
        // b's all-reduce failed: step 0 will be redone, but a already applied it.
        let mut r = report(&db, "b", "x");
        r.collective_failed = true;
        s.report(now, r).unwrap();
        let later = now + Duration::from_secs(6);
        s.heartbeat(later, "a");
        s.heartbeat(later, "b");
        s.tick(later);
        let d = s.directive("a", Some(0));
        assert_eq!(d.kind, Kind::Stop as i32);
        assert!(d.reason.contains("applied step 0"), "{}", d.reason);
        assert_eq!(s.quorum().unwrap().ranks, ["b"]);
        let d = s.directive("b", None);
        assert_eq!((d.kind, d.step, d.world_size), (Kind::Train as i32, 0, 1));
    }
    #[test]
    fn a_save_that_failed_before_its_step_committed_is_not_reopened_by_the_commit() {
        let now = Instant::now();
        let mut f = facts(1, 4);
        f.save_interval = 1;
        let mut s = ClusterState::new(f, 0);
        s.register(now, &member("a")).unwrap();
        let d = s.directive("a", None);
        let failed = ShardReport {
            worker_id: "a".into(),
            step: 0,
            world_size: 1,
            error: "store timed out".into(),
            ..Default::default()
        };
        assert!(s.report_shard(failed).is_some());
        s.report(now, report(&d, "a", "x")).unwrap();
        assert!(!s.saving(), "nothing can complete the save of step 0");
        assert!(s.take_complete_saves().is_empty());
    }
}
