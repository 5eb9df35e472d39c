//! Who is registered, whether they are alive, and the quorum: the training workers of the
//! current generation, ranked by worker id.
//!
//! A training member is *synced* when it holds the run's current state: it was there when
//! training started (or resumed), it was in the quorum that committed the last step, or a
//! live peer's state was copied to it. Only synced members enter a quorum; a member left out
//! of one stops being synced, since its state no longer follows the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use elf_shared::ids::{QuorumId, Step, WorkerId};
use elf_shared::messages::{Registration, Role, StepTimings};

use super::{Model, Phase};

/// A registered worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Device it trains on.
    pub device: String,
    /// Address of its collective.
    pub addr: String,
    /// Train or eval.
    pub role: Role,
    /// Last time it was heard from.
    pub last_seen: Instant,
    /// Last step it applied in a committed step.
    pub step: Option<Step>,
    /// Holds the run's current state (see the module doc).
    pub synced: bool,
    /// It loaded the run's start state when it registered (no step was handed out yet).
    pub start_state: bool,
    /// What its last committed step cost.
    pub timings: Option<StepTimings>,
}

/// The workers training together, in rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Quorum {
    /// Its generation.
    pub id: QuorumId,
    /// Worker ids by rank.
    pub ranks: Vec<WorkerId>,
}

impl Quorum {
    /// Returns the rank of `w`.
    pub fn rank_of(&self, w: &WorkerId) -> Option<usize> {
        self.ranks.iter().position(|r| r == w)
    }

    /// Returns true when `w` is in the quorum.
    pub fn contains(&self, w: &WorkerId) -> bool {
        self.ranks.contains(w)
    }

    /// Describes it as logs and reasons do: `quorum 2 formed with 2 workers (a, b)`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.ranks.iter().map(WorkerId::as_str).collect();
        format!(
            "quorum {} formed with {} workers ({})",
            self.id,
            self.ranks.len(),
            names.join(", ")
        )
    }
}

/// The registered workers and the quorum.
#[derive(Debug, Clone)]
pub struct Membership {
    members: BTreeMap<WorkerId, Member>,
    quorum: Option<Quorum>,
    next_id: QuorumId,
}

impl Default for Membership {
    fn default() -> Self {
        Self {
            members: BTreeMap::new(),
            quorum: None,
            next_id: QuorumId(1),
        }
    }
}

impl Membership {
    /// Admits a worker (or re-admits one with the same id); `start_state`: it loads the run's
    /// start state.
    pub fn admit(&mut self, now: Instant, r: &Registration, synced: bool, start_state: bool) {
        self.members.insert(
            r.worker.clone(),
            Member {
                device: r.device.clone(),
                addr: r.collective_addr.clone(),
                role: r.role,
                last_seen: now,
                step: None,
                synced,
                start_state,
                timings: None,
            },
        );
    }

    /// Marks synced every training worker that loaded the start state (valid while no step
    /// has been committed).
    pub fn sync_start_state_holders(&mut self) {
        for m in self.members.values_mut() {
            if m.role == Role::Train && m.start_state {
                m.synced = true;
            }
        }
    }

    /// Records that `w` was heard from; false for an unknown worker.
    pub fn touch(&mut self, now: Instant, w: &WorkerId) -> bool {
        match self.members.get_mut(w) {
            Some(m) => {
                m.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Returns the members silent for longer than `timeout`.
    pub fn expired(&self, now: Instant, timeout: Duration) -> Vec<WorkerId> {
        self.members
            .iter()
            .filter(|(_, m)| now.duration_since(m.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Returns when the next member expires.
    pub fn next_expiry(&self, timeout: Duration) -> Option<Instant> {
        self.members
            .values()
            .map(|m| m.last_seen + timeout + Duration::from_millis(1))
            .min()
    }

    /// Removes a member.
    pub fn remove(&mut self, w: &WorkerId) -> Option<Member> {
        self.members.remove(w)
    }

    /// Returns the member `w`.
    pub fn get(&self, w: &WorkerId) -> Option<&Member> {
        self.members.get(w)
    }

    /// Returns true when `w` is registered.
    pub fn contains(&self, w: &WorkerId) -> bool {
        self.members.contains_key(w)
    }

    /// Returns the role of `w`.
    pub fn role(&self, w: &WorkerId) -> Option<Role> {
        self.members.get(w).map(|m| m.role)
    }

    /// Returns the collective address of `w` (empty for an unknown worker).
    pub fn addr(&self, w: &WorkerId) -> String {
        self.members
            .get(w)
            .map_or_else(String::new, |m| m.addr.clone())
    }

    /// Returns the members by id.
    pub fn iter(&self) -> impl Iterator<Item = (&WorkerId, &Member)> {
        self.members.iter()
    }

    /// Returns how many members have `role`.
    pub fn count(&self, role: Role) -> usize {
        self.members.values().filter(|m| m.role == role).count()
    }

    /// Returns the synced training members, by id.
    pub fn synced_trainers(&self) -> Vec<WorkerId> {
        self.members
            .iter()
            .filter(|(_, m)| m.role == Role::Train && m.synced)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Returns the first training member waiting for a peer's state.
    pub fn first_standby(&self) -> Option<WorkerId> {
        self.members
            .iter()
            .find(|(_, m)| m.role == Role::Train && !m.synced)
            .map(|(id, _)| id.clone())
    }

    /// Marks `w` as holding (or not) the run's current state.
    pub fn set_synced(&mut self, w: &WorkerId, synced: bool) {
        if let Some(m) = self.members.get_mut(w) {
            m.synced = synced;
        }
    }

    /// Records the last step `w` applied in a committed step.
    pub fn set_step(&mut self, w: &WorkerId, step: Step, timings: StepTimings) {
        if let Some(m) = self.members.get_mut(w) {
            m.step = Some(step);
            m.timings = Some(timings);
        }
    }

    /// Returns true when an eval worker is registered.
    pub fn has_eval_worker(&self) -> bool {
        self.count(Role::Eval) > 0
    }

    /// Returns the current quorum.
    pub fn quorum(&self) -> Option<&Quorum> {
        self.quorum.as_ref()
    }

    /// Makes `ranks` the new quorum (a new generation); synced training members left out of
    /// it stop being synced, since their state will not follow the run.
    pub fn form(&mut self, ranks: Vec<WorkerId>) -> Quorum {
        for (id, m) in self.members.iter_mut() {
            if m.role == Role::Train && !ranks.contains(id) {
                m.synced = false;
            }
        }
        let q = Quorum {
            id: self.next_id,
            ranks,
        };
        self.next_id = self.next_id.next();
        self.quorum = Some(q.clone());
        q
    }
}

impl Model {
    /// Forms the first quorum once the expected training workers are registered.
    pub(super) fn maybe_form(&mut self) {
        if self.phase != Phase::Forming {
            return;
        }
        let trainers: Vec<WorkerId> = self
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Train)
            .map(|(id, _)| id.clone())
            .collect();
        let want = self.settings.run.world_size;
        if trainers.len() < want {
            return;
        }
        let q = self.members.form(trainers.into_iter().take(want).collect());
        self.reasons.push(q.describe());
        self.quorum_changed(&q, super::QuorumCause::Formed);
        self.phase = Phase::Running;
    }

    /// Forms a new quorum from the live synced training workers at the largest world size
    /// that splits the batch; `None` when no training worker is left.
    pub(super) fn reform(&mut self, cause: super::QuorumCause) -> Option<Quorum> {
        let live = self.members.synced_trainers();
        let w = self.settings.run.valid_world(live.len())?;
        let q = self.members.form(live.into_iter().take(w).collect());
        self.round.restart();
        self.quorum_changed(&q, cause);
        Some(q)
    }

    fn quorum_changed(&mut self, q: &Quorum, cause: super::QuorumCause) {
        self.effects
            .push(super::Effect::Event(super::Event::QuorumChanged {
                id: q.id.0,
                world_size: q.ranks.len(),
                cause,
                text: q.describe(),
            }));
    }

    /// Evicts members silent for longer than the heartbeat timeout; a lost quorum member
    /// breaks the quorum's collective (the step is resolved once its survivors reported).
    pub(super) fn evict_silent(&mut self, now: Instant) {
        let timeout = self.settings.heartbeat_timeout;
        for id in self.members.expired(now, timeout) {
            self.members.remove(&id);
            self.evals.requeue_of(&id);
            let text = format!(
                "worker {id} missed heartbeats for more than {} ms",
                timeout.as_millis()
            );
            self.reasons.push(text.clone());
            self.effects
                .push(super::Effect::Event(super::Event::Evicted {
                    worker: id.clone(),
                    cause: super::EvictionCause::HeartbeatTimeout,
                    text,
                }));
            if self.phase == Phase::Running && self.quorum().is_some_and(|q| q.contains(&id)) {
                self.round.lose(now);
            }
        }
        self.cancel_transfer_of_gone();
    }
}
