//! Workers leaving the run: gracefully (SIGTERM from a drain or a preemption) or because they
//! failed.
//!
//! A graceful leave never costs a redone step: a quorum member that asks to leave while the
//! step in flight was handed to some rank trains that step with its peers (they wait for it
//! in the ring) and leaves once it commits; at a step boundary it leaves at once. Either way
//! the quorum re-forms without it before the next step is handed out, at the largest world
//! size that splits the batch, and the leaver is told the run is done for it.
//!
//! A failed worker reports its error before it exits: it is removed at once (as an eviction
//! would, 15 s sooner), and its error is kept for the status document, so the person
//! watching reads the worker's own error rather than "missed heartbeats".

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use elf_shared::ids::WorkerId;
use elf_shared::messages::{Leave, WorkerError};

use super::{Effect, Event, EvictionCause, Model, Phase, QuorumCause, Reply};

/// How many worker errors the status document keeps.
const KEPT_ERRORS: usize = 16;

/// Who is leaving, who left, and the errors failed workers reported.
#[derive(Debug, Clone, Default)]
pub struct Leaves {
    /// Quorum members that leave once the step in flight commits.
    leaving: BTreeSet<WorkerId>,
    /// Workers that left gracefully (told "done" when they ask).
    departed: BTreeSet<WorkerId>,
    /// The most recent failures, oldest first.
    errors: VecDeque<WorkerError>,
}

impl Leaves {
    /// Returns true when `w` left the run gracefully.
    pub fn departed(&self, w: &WorkerId) -> bool {
        self.departed.contains(w)
    }

    /// Returns the errors failed workers reported, oldest first.
    pub fn errors(&self) -> Vec<WorkerError> {
        self.errors.iter().cloned().collect()
    }

    /// Forgets `w`'s departure (it registered again).
    pub fn returned(&mut self, w: &WorkerId) {
        self.departed.remove(w);
        self.leaving.remove(w);
    }
}

impl Model {
    /// Takes a worker's leave.
    pub(super) fn leave(&mut self, now: Instant, l: Leave) -> Reply {
        let w = l.worker;
        // A config error before this process committed a step fails the run (every worker
        // would hit it); later it is this worker's alone.
        if !self.members.contains(&w) {
            // Already gone (evicted, or a repeated leave): nothing changes.
            return Reply::Accepted;
        }
        let in_quorum =
            self.phase == Phase::Running && self.quorum().is_some_and(|q| q.contains(&w));
        if let Some(error) = l.error {
            let text = format!("worker {w} failed: {error}");
            self.reasons.push(text.clone());
            self.effects.push(Effect::Event(Event::Evicted {
                worker: w.clone(),
                cause: EvictionCause::WorkerFailed,
                text,
            }));
            let started = self.committed_any;
            if l.invalid_config && !started && matches!(self.phase, Phase::Forming | Phase::Running)
            {
                self.invalid = true;
                self.phase = Phase::Failed(format!("worker {w}: {error}"));
            }
            if self.leaves.errors.len() == KEPT_ERRORS {
                self.leaves.errors.pop_front();
            }
            self.leaves.errors.push_back(WorkerError {
                worker: w.0.clone(),
                step: self.round.step.0,
                error,
            });
            self.members.remove(&w);
            self.leaves.leaving.remove(&w);
            self.evals.requeue_of(&w);
            if in_quorum {
                self.round.lose(now);
                self.resolve_broken(now);
            }
            self.cancel_transfer_of_gone();
            return Reply::Accepted;
        }
        if in_quorum && self.round.handed_any() {
            self.reasons.push(format!(
                "worker {w} leaves after step {} commits",
                self.round.step
            ));
            self.leaves.leaving.insert(w);
        } else {
            self.reasons.push(format!("worker {w} left the run"));
            self.effects
                .push(Effect::Event(Event::Left { worker: w.clone() }));
            self.depart(&w);
            if in_quorum {
                self.reform_after_leave();
            }
        }
        Reply::Accepted
    }

    /// At a step boundary, removes the quorum members that asked to leave and re-forms the
    /// quorum without them (no step is redone: none was handed out).
    pub(super) fn depart_leavers(&mut self) {
        if self.leaves.leaving.is_empty() || self.round.handed_any() {
            return;
        }
        let leavers: Vec<WorkerId> = std::mem::take(&mut self.leaves.leaving)
            .into_iter()
            .collect();
        let in_quorum = self.phase == Phase::Running
            && self
                .quorum()
                .is_some_and(|q| leavers.iter().any(|w| q.contains(w)));
        for w in &leavers {
            self.reasons.push(format!(
                "worker {w} left the run after step {}",
                self.round.step.0.saturating_sub(1)
            ));
            self.effects
                .push(Effect::Event(Event::Left { worker: w.clone() }));
            self.depart(w);
        }
        if in_quorum {
            self.reform_after_leave();
        }
    }

    fn depart(&mut self, w: &WorkerId) {
        self.members.remove(w);
        self.evals.requeue_of(w);
        self.leaves.departed.insert(w.clone());
        self.cancel_transfer_of_gone();
    }

    fn reform_after_leave(&mut self) {
        match self.reform(QuorumCause::Leave) {
            Some(q) => {
                let why = format!("{} after a leave at step {}", q.describe(), self.round.step);
                self.reasons.push(why);
            }
            None => self.fail_without_workers(None),
        }
    }
}
