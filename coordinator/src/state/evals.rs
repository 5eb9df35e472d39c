//! Eval jobs on committed checkpoints (every `eval_every` committed checkpoints, and the final
//! one). A dedicated eval worker takes the next queued job when it asks; training never waits
//! for it. Without one (and `eval.on_training_workers`), rank 0 of the quorum takes a job at a
//! step boundary nobody has been handed yet, and the other ranks wait; at the end of the run
//! the training workers are held until the last checkpoint is written and evaluated.
//!
//! A job is outstanding from the moment it is queued until the driver has recorded its
//! results, so a run never ends with results unwritten.

use std::collections::{BTreeMap, VecDeque};

use elf_shared::ids::{Step, WorkerId};
use elf_shared::messages::{Directive, EvalJob, EvalReport};
use elf_shared::run::Cadence;

use super::{Effect, Model, Phase, Reply};
use crate::refusal::Refusal;

/// Eval jobs queued, running, and being recorded.
#[derive(Debug, Clone, Default)]
pub struct Evals {
    queue: VecDeque<EvalJob>,
    running: BTreeMap<WorkerId, EvalJob>,
    recording: BTreeMap<(WorkerId, Step), EvalJob>,
}

impl Evals {
    /// Queues a job.
    pub fn queue(&mut self, job: EvalJob) {
        self.queue.push_back(job);
    }

    /// Returns the queued jobs' steps, in order.
    pub fn queued(&self) -> Vec<Step> {
        self.queue.iter().map(|j| j.step).collect()
    }

    /// Returns the jobs queued, running or being recorded.
    pub fn outstanding(&self) -> usize {
        self.queue.len() + self.running.len() + self.recording.len()
    }

    /// Returns the running jobs: (step, worker).
    pub fn running(&self) -> Vec<(u64, String)> {
        self.running
            .iter()
            .map(|(w, j)| (j.step.0, w.0.clone()))
            .collect()
    }

    /// True when a training worker of `quorum` runs an eval job (training waits for it).
    pub fn running_inline(&self, quorum: Option<&super::membership::Quorum>) -> bool {
        quorum.is_some_and(|q| self.running.keys().any(|w| q.contains(w)))
    }

    /// Puts the job of a lost worker back at the front of the queue.
    pub fn requeue_of(&mut self, w: &WorkerId) {
        if let Some(job) = self.running.remove(w) {
            self.queue.push_front(job);
        }
    }

    /// Completes a job whose report the driver recorded.
    pub fn complete(&mut self, w: &WorkerId, step: Step) {
        self.recording.remove(&(w.clone(), step));
    }
}

impl Model {
    /// True when training workers run the eval jobs (no dedicated eval worker).
    fn inline_mode(&self) -> bool {
        let s = &self.settings;
        let scheduled = s.eval_every > 0 || s.eval_at_end || s.run.evals != Cadence::Never;
        s.eval_inline && scheduled && !self.members.has_eval_worker()
    }

    /// The directive of a dedicated eval worker: its job, the next queued one, `Done` once
    /// training is over with nothing left to save, else `Wait`.
    pub(super) fn eval_worker_directive(&mut self, w: &WorkerId) -> Directive {
        if let Phase::Failed(why) = &self.phase {
            return Directive::Stop {
                reason: why.clone(),
            };
        }
        if let Some(job) = self.evals.running.get(w) {
            return Directive::Eval(job.clone());
        }
        if let Some(job) = self.evals.queue.pop_front() {
            self.evals.running.insert(w.clone(), job.clone());
            return Directive::Eval(job);
        }
        if self.phase == Phase::Done && !self.saves.saving() {
            return Directive::Done {
                steps: self.round.step.0,
                write_outputs: false,
            };
        }
        Directive::wait("no committed checkpoint to evaluate yet")
    }

    /// The eval side of a training worker's directive: its job, or a wait while rank 0
    /// evaluates or the last checkpoint is on its way; `None` when training goes on.
    pub(super) fn inline_eval_directive(&self, w: &WorkerId) -> Option<Directive> {
        if let Some(job) = self.evals.running.get(w) {
            return Some(Directive::Eval(job.clone()));
        }
        if !self.inline_mode() || !self.quorum()?.contains(w) {
            return None;
        }
        let done = match self.phase {
            Phase::Running => false,
            Phase::Done => true,
            _ => return None,
        };
        if let Some(job) = self.evals.running.values().next() {
            return Some(Directive::wait(format!(
                "rank 0 is evaluating step {}",
                job.step
            )));
        }
        if done && (self.saves.saving() || !self.evals.queue.is_empty()) {
            return Some(Directive::wait(
                "the last checkpoint is being written (it may be evaluated)",
            ));
        }
        None
    }

    /// Returns the quorum member that runs inline jobs: rank 0, or once the run is done (no
    /// quorum re-forms then) the first rank still alive.
    fn inline_evaluator(&self) -> Option<WorkerId> {
        let q = self.quorum()?;
        match self.phase {
            Phase::Done => q.ranks.iter().find(|r| self.members.contains(r)).cloned(),
            _ => q.ranks.first().cloned(),
        }
    }

    /// Gives rank 0 the next queued job at a step boundary (or once training is done).
    pub(super) fn maybe_assign_inline_eval(&mut self) {
        if !self.inline_mode() || self.evals.queue.is_empty() || !self.evals.running.is_empty() {
            return;
        }
        let Some(rank0) = self.inline_evaluator() else {
            return;
        };
        let boundary = match self.phase {
            Phase::Running => {
                !self.round.handed_any() && !self.round.is_broken() && self.transfer.is_none()
            }
            Phase::Done => true,
            _ => false,
        };
        if boundary {
            let job = self.evals.queue.pop_front().expect("not empty");
            self.evals.running.insert(rank0, job);
        }
    }

    /// Takes an eval report: the driver records it, then the job is complete.
    pub(super) fn report_eval(&mut self, r: EvalReport) -> Reply {
        match self.evals.running.get(&r.worker) {
            Some(job) if job.step == r.step => {
                let job = self.evals.running.remove(&r.worker).expect("present");
                self.evals
                    .recording
                    .insert((r.worker.clone(), job.step), job.clone());
                self.effects.push(Effect::RecordEval { job, report: r });
                Reply::Accepted
            }
            _ => Reply::Refused(Refusal::NoEvalJob {
                worker: r.worker,
                step: r.step,
            }),
        }
    }

    /// Drops the queued jobs nobody can run (no eval worker, no training worker to run them
    /// inline); returns the reasons.
    pub(super) fn abandon_unrunnable_evals(&mut self) {
        let inline = self.settings.eval_inline
            && self.inline_evaluator().is_some()
            && matches!(self.phase, Phase::Running | Phase::Done);
        if self.members.has_eval_worker() || inline || !self.evals.running.is_empty() {
            return;
        }
        for job in self.evals.queue.drain(..) {
            self.reasons.push(format!(
                "no worker can run the eval job of step {} (no eval worker, training over); skipped",
                job.step
            ));
        }
    }
}
