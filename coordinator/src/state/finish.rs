//! When a run that is done (or failed) may end. A done run first waits for its last
//! checkpoint (shards and manifest, at most `save_hold`) and for every outstanding eval job; a
//! run with an outcome then waits (at most `farewell_hold`) until every member of the final
//! quorum and every eval worker has been handed its final directive, so nobody is left
//! reconnecting to a coordinator that is gone. Then the model emits [`Effect::Finish`], once.

use std::collections::BTreeSet;
use std::time::Instant;

use elf_shared::ids::WorkerId;
use elf_shared::messages::Role;

use super::{Effect, Model, Outcome, Phase, Settings};

/// End-of-run bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct Finish {
    /// When the run was first seen done.
    done_at: Option<Instant>,
    /// Whether the wait for the last save is over (it arrived or the hold expired).
    saves_settled: bool,
    /// When the outcome was decided.
    decided_at: Option<Instant>,
    /// Workers handed a final directive (`Done` or `Stop`).
    told: BTreeSet<WorkerId>,
    /// `Finish` was emitted.
    ended: bool,
}

impl Finish {
    /// Records that `w` was handed its final directive.
    pub fn told(&mut self, w: &WorkerId) {
        self.told.insert(w.clone());
    }

    /// Returns when a hold expires.
    pub fn next_deadline(&self, s: &Settings) -> Option<Instant> {
        if self.ended {
            return None;
        }
        match (self.decided_at, self.done_at) {
            (Some(d), _) => Some(d + s.farewell_hold),
            (None, Some(d)) if !self.saves_settled => Some(d + s.save_hold),
            _ => None,
        }
    }

    /// Returns true once the run has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

impl Model {
    /// Ends the run when its holds are over (see the module doc).
    pub(super) fn maybe_finish(&mut self, now: Instant) {
        if self.finish.ended {
            return;
        }
        let outcome = match &self.phase {
            Phase::Done => {
                let done_at = *self.finish.done_at.get_or_insert(now);
                self.abandon_unrunnable_evals();
                if !self.finish.saves_settled {
                    if self.saves.saving() {
                        if now < done_at + self.settings.save_hold {
                            return;
                        }
                        self.reasons.push(format!(
                            "the last checkpoint was not complete {} s after the last step; ending without it",
                            self.settings.save_hold.as_secs()
                        ));
                        self.saves.give_up();
                    }
                    self.finish.saves_settled = true;
                }
                if self.terminated {
                    // Nobody is told the run is done: it is not.
                    self.finish.ended = true;
                    self.effects.push(Effect::Finish(Outcome::Terminated {
                        steps: self.round.step.0,
                    }));
                    return;
                }
                if self.evals.outstanding() > 0 {
                    return;
                }
                Outcome::Done {
                    steps: self.round.step.0,
                }
            }
            Phase::Failed(why) if self.invalid => Outcome::Invalid(why.clone()),
            Phase::Failed(why) => Outcome::Failed(why.clone()),
            Phase::Forming | Phase::Running => return,
        };
        let decided_at = *self.finish.decided_at.get_or_insert(now);
        let mut must_hear: Vec<WorkerId> =
            self.quorum().map(|q| q.ranks.clone()).unwrap_or_default();
        must_hear.extend(
            self.members
                .iter()
                .filter(|(_, m)| m.role == Role::Eval)
                .map(|(id, _)| id.clone()),
        );
        let all_told = must_hear
            .iter()
            .all(|w| self.finish.told.contains(w) || !self.members.contains(w));
        if all_told || now >= decided_at + self.settings.farewell_hold {
            self.finish.ended = true;
            self.effects.push(Effect::Finish(outcome));
        }
    }
}
