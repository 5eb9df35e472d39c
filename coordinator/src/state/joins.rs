//! Joins: a training worker that does not hold the run's current state (one registered while
//! the run trains, or a survivor left behind by a step the others applied) receives a live
//! peer's whole state over a direct connection, then enters a new quorum. One copy at a time,
//! at a step boundary nobody has been handed yet, and only when the new world size can train
//! the run; rank 0 sends, the joiner receives, everyone else waits. A copy that fails drops the
//! joiner; one whose donor is lost leaves the joiner a standby.

use elf_shared::ids::{Step, WorkerId};
use elf_shared::messages::{Directive, TransferReport};

use super::{Effect, Event, Model, Phase, Reply};
use crate::refusal::Refusal;

/// A state copy from a quorum member (the donor) to a joining worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The joining worker.
    pub joiner: WorkerId,
    /// The member sending its state.
    pub donor: WorkerId,
    /// The step boundary: the state after step `step - 1`.
    pub step: Step,
    /// The donor reported its side done.
    pub sent: bool,
    /// The joiner reported the state loaded (it enters a quorum once the donor reported too).
    pub received: bool,
}

impl Model {
    /// Starts a copy to the first standby when one would grow the quorum at this boundary.
    pub(super) fn maybe_start_transfer(&mut self) {
        if self.phase != Phase::Running
            || self.transfer.is_some()
            || self.round.handed_any()
            || self.round.is_broken()
            || !self.evals_on_trainers_idle()
        {
            return;
        }
        let Some(q) = self.quorum() else { return };
        let Some(joiner) = self.members.first_standby() else {
            return;
        };
        let synced = self.members.synced_trainers().len();
        if self.settings.run.valid_world(synced + 1).unwrap_or(0) <= q.ranks.len() {
            return;
        }
        self.transfer = Some(Transfer {
            joiner,
            donor: q.ranks[0].clone(),
            step: self.round.step,
            sent: false,
            received: false,
        });
    }

    /// True when no training worker is running an eval job (a donor must be free).
    fn evals_on_trainers_idle(&self) -> bool {
        self.quorum().is_none_or(|q| {
            q.ranks
                .iter()
                .all(|r| self.inline_eval_directive(r).is_none())
        })
    }

    /// The directive of a worker while a copy is in progress (`None`: no copy).
    pub(super) fn transfer_directive(&self, w: &WorkerId) -> Option<Directive> {
        let t = self.transfer.as_ref()?;
        Some(if w == &t.joiner && !t.received {
            Directive::ReceiveState {
                step: t.step,
                from: self.members.addr(&t.donor),
                key: self
                    .settings
                    .key(&format!("transfer {} {}", t.step, t.joiner)),
                param_digest: self.last_digest.clone(),
            }
        } else if w == &t.donor && !t.sent {
            Directive::SendState {
                step: t.step,
                to: self.members.addr(&t.joiner),
                key: self
                    .settings
                    .key(&format!("transfer {} {}", t.step, t.joiner)),
            }
        } else {
            Directive::wait(format!("worker {} is joining at step {}", t.joiner, t.step))
        })
    }

    /// Takes one side's report of a copy: the joiner's success enters it into a new quorum; a
    /// failure on either side drops the joiner.
    pub(super) fn report_transfer(&mut self, r: TransferReport) -> Reply {
        let side = |t: &Transfer| {
            t.step == r.step
                && if r.sender {
                    t.donor == r.worker
                } else {
                    t.joiner == r.worker
                }
        };
        let Some(t) = self.transfer.as_mut().filter(|t| side(t)) else {
            return Reply::Refused(Refusal::NoTransfer {
                worker: r.worker,
                step: r.step,
            });
        };
        if let Some(error) = r.error {
            let joiner = t.joiner.clone();
            self.transfer = None;
            self.members.remove(&joiner);
            self.effects.push(Effect::Event(Event::Evicted {
                worker: joiner.clone(),
                cause: super::EvictionCause::CopyFailed,
                text: format!("the state copy to worker {joiner} failed: {error}"),
            }));
            self.effects.push(Effect::Event(Event::JoinFailed {
                worker: joiner,
                reason: error,
            }));
            return Reply::Accepted;
        }
        // Admitted only once both sides said the copy is whole: a joiner's word alone (or a
        // copy whose donor failed) never enters a quorum.
        if r.sender {
            t.sent = true;
        } else {
            t.received = true;
        }
        if !(t.sent && t.received) {
            return Reply::Accepted;
        }
        let (joiner, step) = (t.joiner.clone(), t.step);
        self.transfer = None;
        self.members.set_synced(&joiner, true);
        match self.reform(super::QuorumCause::Join) {
            Some(q) => {
                self.reasons
                    .push(format!("{}; worker {joiner} joined", q.describe()));
                self.effects.push(Effect::Event(Event::Joined {
                    worker: joiner,
                    step,
                    world_size: q.ranks.len(),
                }));
            }
            None => self.fail(format!(
                "no training worker is left at step {}",
                self.round.step
            )),
        }
        Reply::Accepted
    }

    /// Cancels a copy whose joiner or donor is gone. A joiner that lost its donor stays a
    /// standby (a copy from another donor may follow; its report of this one is refused).
    pub(super) fn cancel_transfer_of_gone(&mut self) {
        let Some(t) = &self.transfer else { return };
        if self.members.contains(&t.joiner) && self.members.contains(&t.donor) {
            return;
        }
        let joiner = t.joiner.clone();
        self.transfer = None;
        self.reasons.push(format!(
            "the state copy to worker {joiner} was abandoned: a side of it was lost"
        ));
    }
}
