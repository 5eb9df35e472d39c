//! The step in flight: who was handed it, who reported it, and what happens when the quorum's
//! collective breaks.
//!
//! A step commits when every rank reported it applied with the same parameter digest (the
//! data-parallel invariant). When a peer dies or freezes during the all-reduce, the survivors
//! split in two: those whose all-reduce completed before the failure hold the full sum (the
//! lost peer's contribution included) and applied a correct step; the others applied nothing
//! and hold the state before it. The quorum is *broken*: heartbeats tell its members to abort
//! their rings, and once every live member that was handed the step has reported, the step is
//! resolved from what they said:
//! * some survivors applied it (with one digest): the step commits from their reports; the new
//!   quorum is made of them, and the others receive a peer's state (a join) at the next step
//!   boundary;
//! * none applied it: the step is redone by a quorum of the survivors, its rows re-sliced.
//!
//! So a run never ends while a worker holding a valid state is alive. A broken quorum whose
//! members are all alive (a transient fault) is resolved after one heartbeat timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use elf_shared::ids::{Step, WorkerId};
use elf_shared::messages::{StepOutcome, StepReport};

use super::membership::Quorum;
use super::{Effect, Model, Phase, Reply};
use crate::refusal::Refusal;

/// How many times in a row a step may be redone because no rank could all-reduce it before
/// the run fails: a ring that never forms (a firewall, an address peers cannot reach) must
/// fail loudly, not re-form at the same step forever.
pub const MAX_REDOS: u32 = 5;

/// A committed step, for the driver to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The step.
    pub step: Step,
    /// The quorum that trained it.
    pub quorum: Quorum,
    /// Its learning rate.
    pub lr: f64,
    /// The applied reports, in rank order (every rank's, unless a peer was lost late in the
    /// all-reduce: then the survivors' that applied it).
    pub reports: Vec<StepReport>,
}

/// The step in flight.
#[derive(Debug, Clone)]
pub struct Round {
    /// The next step to commit.
    pub step: Step,
    /// Applied reports by rank.
    applied: BTreeMap<u32, StepReport>,
    /// Members whose collective failed in this step (they hold the state before it).
    failed: BTreeSet<WorkerId>,
    /// Members handed this step.
    handed: BTreeSet<WorkerId>,
    /// Since when the quorum's collective is known broken.
    broken: Option<Instant>,
    /// A member of the quorum was evicted or registered again.
    lost: bool,
    /// Quorum members whose process is gone but who are registered again (a new process).
    gone: BTreeSet<WorkerId>,
}

impl Round {
    /// Starts at step `step`.
    pub fn new(step: Step) -> Self {
        Self {
            step,
            applied: BTreeMap::new(),
            failed: BTreeSet::new(),
            handed: BTreeSet::new(),
            broken: None,
            lost: false,
            gone: BTreeSet::new(),
        }
    }

    /// Forgets the step's reports (a new quorum starts it afresh).
    pub fn restart(&mut self) {
        *self = Self::new(self.step);
    }

    /// Returns true when rank `rank` reported the step applied.
    pub fn has_report(&self, rank: u32) -> bool {
        self.applied.contains_key(&rank)
    }

    /// Records that `w` was handed the step.
    pub fn hand(&mut self, w: &WorkerId) {
        self.handed.insert(w.clone());
    }

    /// Returns true when some rank was handed the step (it is no step boundary).
    pub fn handed_any(&self) -> bool {
        !self.handed.is_empty()
    }

    /// Returns true while the quorum's collective is broken.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Returns since when the collective is broken.
    pub fn broken_since(&self) -> Option<Instant> {
        self.broken
    }

    /// Records that a quorum member was lost.
    pub fn lose(&mut self, now: Instant) {
        self.broken.get_or_insert(now);
        self.lost = true;
    }

    /// Records that quorum member `w` registered again: its old process is lost, and the new
    /// one holds none of the run's state.
    pub fn gone(&mut self, now: Instant, w: &WorkerId) {
        self.lose(now);
        self.gone.insert(w.clone());
    }

    fn reported(&self, w: &WorkerId) -> bool {
        self.failed.contains(w) || self.applied.values().any(|r| &r.worker == w)
    }
}

impl Model {
    /// Takes a step report.
    pub(super) fn report_step(&mut self, now: Instant, r: StepReport) -> Reply {
        if !self.members.touch(now, &r.worker) {
            // Evicted while its report was on the way: it registers again as a standby.
            return Reply::Refused(Refusal::NotRegistered(r.worker));
        }
        let q = match (&self.phase, self.quorum()) {
            (Phase::Running, Some(q)) => q.clone(),
            (Phase::Failed(why), _) => return Reply::Refused(Refusal::RunFailed(why.clone())),
            _ => return Reply::Refused(Refusal::NoStep),
        };
        if r.quorum != q.id
            || r.step != self.round.step
            || q.ranks.get(r.rank as usize) != Some(&r.worker)
        {
            return Reply::Refused(Refusal::StaleReport {
                worker: r.worker.clone(),
                step: r.step,
                quorum: r.quorum,
                rank: r.rank,
                expected: self.round.step,
                current: q.id,
            });
        }
        if self.round.reported(&r.worker) {
            return Reply::Accepted;
        }
        match &r.outcome {
            StepOutcome::Failed { error } => {
                self.phase = Phase::Failed(format!(
                    "worker {} failed step {}: {error}",
                    r.worker, r.step
                ));
            }
            StepOutcome::CollectiveFailed { error } => {
                self.redos.1 = Some(format!("worker {}: {error}", r.worker));
                self.round.broken.get_or_insert(now);
                self.round.failed.insert(r.worker.clone());
                self.resolve_broken(now);
            }
            StepOutcome::Applied(_) => {
                self.round.applied.insert(r.rank, r);
                if self.round.is_broken() {
                    self.resolve_broken(now);
                } else if self.round.applied.len() == q.ranks.len() {
                    let reports = std::mem::take(&mut self.round.applied)
                        .into_values()
                        .collect();
                    self.commit(q, reports);
                }
            }
        }
        Reply::Accepted
    }

    /// Commits the step from `reports` (applied, in rank order) when their digests agree.
    fn commit(&mut self, quorum: Quorum, reports: Vec<StepReport>) -> bool {
        let step = self.round.step;
        let digest = |r: &StepReport| r.applied().map(|a| a.param_digest.clone());
        let first = digest(&reports[0]);
        if let Some(bad) = reports.iter().find(|x| digest(x) != first) {
            self.phase = Phase::Failed(format!(
                "replicas diverged at step {step}: rank {} has digest {} but rank {} has {}",
                bad.rank,
                digest(bad).unwrap_or_default(),
                reports[0].rank,
                first.unwrap_or_default()
            ));
            return false;
        }
        if let Some(why) = reports[0]
            .applied()
            .map(|a| &a.non_finite)
            .filter(|w| !w.is_empty())
        {
            // Nothing was applied anywhere (every rank saw the same sums): the state is the
            // one before the step, and the policy decides whether its batch is dropped.
            self.skipped += 1;
            let allowed = self.settings.skip_nonfinite;
            if self.skipped > allowed {
                self.phase = Phase::Failed(format!(
                    "step {step}: {why}; nothing was applied (train.skip_nonfinite is {allowed}, so the run stops)"
                ));
                return false;
            }
            let text = format!(
                "step {step} skipped: {why}; nothing was applied and its batch is dropped ({} of {allowed} skips used)",
                self.skipped
            );
            self.reasons.push(text.clone());
            self.effects
                .push(Effect::Event(super::Event::StepSkipped { step, text }));
        }
        for r in &reports {
            self.members.set_step(&r.worker, step, r.timings);
        }
        self.last_digest = first.unwrap_or_default();
        let commit = Commit {
            step,
            lr: self.settings.run.lr(step),
            quorum,
            reports,
        };
        if self.settings.saves_after(step) {
            self.saves.committed(&commit);
        }
        self.effects.push(Effect::RecordCommit(commit));
        self.committed_any = true;
        self.redos = (0, None);
        self.write_complete_saves();
        self.round = super::steps::Round::new(step.next());
        if self.round.step.0 >= self.settings.end() {
            self.phase = Phase::Done;
        }
        true
    }

    /// Resolves a broken quorum once every live member handed the step has reported, and a
    /// member was lost or the fault outlasted a heartbeat timeout (see the module doc).
    pub(super) fn resolve_broken(&mut self, now: Instant) {
        let Some(since) = self.round.broken else {
            return;
        };
        if self.phase != Phase::Running {
            return;
        }
        let q = self.quorum().cloned().expect("a running run has a quorum");
        let live: Vec<WorkerId> = q
            .ranks
            .iter()
            .filter(|w| self.members.contains(w) && !self.round.gone.contains(*w))
            .cloned()
            .collect();
        if live
            .iter()
            .any(|w| self.round.handed.contains(w) && !self.round.reported(w))
        {
            return;
        }
        let transient = now.duration_since(since) > self.settings.heartbeat_timeout;
        if !self.round.lost && !transient {
            return;
        }
        let step = self.round.step;
        // Only a live holder's state can carry the run on: the report of a worker that
        // applied the step and then died describes a state nobody holds.
        let applied: Vec<StepReport> = std::mem::take(&mut self.round.applied)
            .into_values()
            .filter(|r| live.contains(&r.worker))
            .collect();
        let lost_reason = self.reasons.last().cloned();
        // Earlier saves missing a lost worker's shard can never complete.
        let (members, gone) = (&self.members, &self.round.gone);
        let lost = self
            .saves
            .abandon_lost(&|w| members.contains(w) && !gone.contains(w));
        for s in lost {
            self.reasons.push(format!(
                "checkpoint of step {s} abandoned: a rank that had not saved it was lost"
            ));
        }
        if applied.is_empty() {
            // Shards of this attempt (if any) are stale once the new quorum redoes the step.
            // Nobody applied it: every survivor holds the state before it; redo it.
            for w in &live {
                self.members.set_synced(w, true);
            }
            if !self.committed_any {
                // Nothing committed yet: standbys that loaded the start state hold the run's
                // state too, so a lost member's slot (a worker that never trained) is theirs.
                self.members.sync_start_state_holders();
            }
            self.redos.0 += 1;
            if self.redos.0 >= MAX_REDOS {
                self.phase = Phase::Failed(format!(
                    "step {step} could not be all-reduced {MAX_REDOS} times in a row (last: {}); check that the workers reach each other's collective addresses (--advertise)",
                    self.redos.1.as_deref().unwrap_or("a peer was lost")
                ));
                return;
            }
            match self.reform(super::QuorumCause::PeerLost) {
                Some(q) => {
                    let text = format!("{}; step {step} is redone", q.describe());
                    self.reasons.push(text.clone());
                    self.effects
                        .push(Effect::Event(super::Event::StepRedone { step, text }));
                }
                None => self.fail_without_workers(lost_reason),
            }
            return;
        }
        // Some applied it: the step is correct (their all-reduce summed every rank's part).
        // They carry the run on; the others hold the state before it and must receive a
        // peer's state to rejoin.
        let holders: BTreeSet<WorkerId> = applied.iter().map(|r| r.worker.clone()).collect();
        for w in &live {
            self.members.set_synced(w, holders.contains(w));
        }
        let behind: Vec<&str> = live
            .iter()
            .filter(|w| !holders.contains(w))
            .map(WorkerId::as_str)
            .collect();
        let every_rank = applied.len() == q.ranks.len();
        if !self.commit(q, applied) {
            return;
        }
        // Its save needs every rank's shard: the workers behind never started theirs.
        if !every_rank && self.saves.abandon(step) {
            self.reasons.push(format!(
                "checkpoint of step {step} abandoned: not every rank applied the step"
            ));
        }
        // Even after the last step: the final quorum (whose rank 0 writes the outputs) is made
        // of the workers that hold its state.
        match self.reform(super::QuorumCause::PeerLost) {
            Some(q) => {
                let mut why = format!(
                    "{}; step {step} committed by the survivors that applied it",
                    q.describe()
                );
                if !behind.is_empty() {
                    why.push_str(&format!(
                        " ({} will receive a peer's state)",
                        behind.join(", ")
                    ));
                }
                self.reasons.push(why);
            }
            None => self.fail_without_workers(lost_reason),
        }
    }

    /// Fails the run: no training worker holding a valid state is left.
    pub(super) fn fail_without_workers(&mut self, lost: Option<String>) {
        let why = format!("no training worker is left at step {}", self.round.step);
        self.phase = Phase::Failed(match lost {
            Some(l) => format!("{l}; {why}"),
            None => why,
        });
    }

    /// Time passed: evictions, a broken quorum's resolution.
    pub(super) fn tick(&mut self, now: Instant) {
        self.evict_silent(now);
        self.resolve_broken(now);
    }
}
