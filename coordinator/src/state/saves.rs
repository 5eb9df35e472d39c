//! Checkpoint saves: each rank of the quorum that trained a step reports its uploaded shard;
//! when every shard is in and the step committed (in either order), the save is complete and
//! the driver writes its manifest. A save that lost a rank (the quorum changed before its
//! shards were in) or whose upload failed is abandoned for good: late shards are ignored, and
//! the commit never reopens it.

use std::collections::{BTreeMap, BTreeSet};

use elf_shared::ids::{QuorumId, Step, WorkerId};
use elf_shared::manifest::ShardEntry;
use elf_shared::messages::{ShardOutcome, ShardReport, StateIndex};

use super::membership::Quorum;
use super::steps::Commit;
use super::{Effect, Event, ManifestWritten, Model, Reply};
use crate::refusal::Refusal;

/// A save whose shards and step are all in: the driver writes its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedSave {
    /// The step.
    pub step: Step,
    /// Shard entries in rank order.
    pub shards: Vec<ShardEntry>,
    /// The state's index (from rank 0).
    pub index: StateIndex,
    /// The step's commit.
    pub commit: Commit,
}

#[derive(Debug, Clone, Default)]
struct Pending {
    /// The quorum that trained the step: shards of another attempt are stale.
    quorum: QuorumId,
    world: u32,
    shards: BTreeMap<u32, ShardEntry>,
    index: Option<StateIndex>,
    commit: Option<Commit>,
}

impl Pending {
    /// Returns the workers (by rank) whose shard is still missing, once the commit is known.
    fn missing(&self) -> Vec<&WorkerId> {
        self.commit.as_ref().map_or(vec![], |c| {
            c.quorum
                .ranks
                .iter()
                .enumerate()
                .filter(|(r, _)| !self.shards.contains_key(&(*r as u32)))
                .map(|(_, w)| w)
                .collect()
        })
    }
}

impl Pending {
    /// True when the step committed and every rank's shard is in.
    fn complete(&self) -> bool {
        self.commit.is_some() && self.world > 0 && self.shards.len() as u32 == self.world
    }
}

/// Saves in progress.
#[derive(Debug, Clone, Default)]
pub struct Saves {
    pending: BTreeMap<Step, Pending>,
    abandoned: BTreeSet<Step>,
    /// Manifests handed to the driver and not yet reported written.
    writing: usize,
    /// Checkpoints committed by this process.
    committed: u64,
}

impl Saves {
    /// Returns the pending save of `step` by quorum `q`: a newer quorum's attempt replaces an
    /// older one's (it redid the step); `None` for an older quorum's (stale).
    fn attempt(&mut self, step: Step, q: QuorumId) -> Option<&mut Pending> {
        let p = self.pending.entry(step).or_default();
        if q > p.quorum {
            *p = Pending {
                quorum: q,
                ..Pending::default()
            };
        }
        (p.quorum == q).then_some(p)
    }

    /// Records the commit of a step that is saved.
    pub fn committed(&mut self, c: &Commit) {
        if self.abandoned.contains(&c.step) {
            return;
        }
        if let Some(p) = self.attempt(c.step, c.quorum.id) {
            p.world = c.quorum.ranks.len() as u32;
            p.commit = Some(c.clone());
        }
    }

    /// Records a shard report; returns why the save failed when the upload did.
    pub fn shard(&mut self, r: ShardReport) -> Option<String> {
        if self.abandoned.contains(&r.step) {
            return None;
        }
        if self
            .pending
            .get(&r.step)
            .is_some_and(|p| r.quorum < p.quorum)
        {
            return None; // a shard of an attempt that was redone
        }
        match r.outcome {
            ShardOutcome::Failed { error } => {
                // Abandoned for good: a failure reported before the step's commit must not let
                // the commit open the save again (it would wait forever for this shard).
                self.pending.remove(&r.step);
                self.abandoned.insert(r.step);
                Some(format!(
                    "worker {} could not save step {}: {error}",
                    r.worker, r.step
                ))
            }
            ShardOutcome::Uploaded { entry, index } => {
                if let Some(p) = self.attempt(r.step, r.quorum) {
                    p.world = r.world_size;
                    p.shards.insert(r.rank, entry);
                    if index.is_some() {
                        p.index = index;
                    }
                }
                None
            }
        }
    }

    /// Removes and returns every complete save, and the steps of those that came without the
    /// state's index (rank 0 sends it with its shard; without it there is no manifest).
    pub fn take_complete(&mut self) -> (Vec<CompletedSave>, Vec<Step>) {
        let done: Vec<Step> = self
            .pending
            .iter()
            .filter(|(_, p)| p.complete())
            .map(|(s, _)| *s)
            .collect();
        // Every rank reports its shards in step order (one upload in flight): a save older than
        // a complete one that is still incomplete lost a report and can never complete.
        if let Some(newest) = done.last() {
            let stale: Vec<Step> = self
                .pending
                .iter()
                .filter(|(s, p)| *s < newest && !p.complete())
                .map(|(s, _)| *s)
                .collect();
            for s in stale {
                self.abandon(s);
            }
        }
        let (mut out, mut unindexed) = (vec![], vec![]);
        for step in done {
            let p = self.pending.remove(&step).expect("listed above");
            let Some(index) = p.index else {
                self.abandoned.insert(step);
                unindexed.push(step);
                continue;
            };
            self.writing += 1;
            out.push(CompletedSave {
                step,
                shards: p.shards.into_values().collect(),
                index,
                commit: p.commit.expect("complete saves have their commit"),
            });
        }
        (out, unindexed)
    }

    /// Abandons the save of `step` unless it is complete (it was taken already); returns
    /// whether there was one to abandon.
    pub fn abandon(&mut self, step: Step) -> bool {
        let had = self.pending.remove(&step).is_some();
        self.abandoned.insert(step);
        had
    }

    /// Abandons the committed saves missing the shard of a rank whose worker is not `alive`
    /// (it will never come); returns their steps.
    pub fn abandon_lost(&mut self, alive: &dyn Fn(&WorkerId) -> bool) -> Vec<Step> {
        let lost: Vec<Step> = self
            .pending
            .iter()
            .filter(|(_, p)| p.missing().into_iter().any(|w| !alive(w)))
            .map(|(s, _)| *s)
            .collect();
        for s in &lost {
            self.abandon(*s);
        }
        lost
    }

    /// Gives up on every save on its way (a finished run's hold expired); returns their steps.
    pub fn give_up(&mut self) -> Vec<Step> {
        let steps: Vec<Step> = self.pending.keys().copied().collect();
        for s in &steps {
            self.abandon(*s);
        }
        self.writing = 0;
        steps
    }

    /// Records that a manifest the driver was writing is done; returns how many checkpoints
    /// this process has committed when it was committed.
    pub fn written(&mut self, committed: bool) -> Option<u64> {
        self.writing = self.writing.saturating_sub(1);
        committed.then(|| {
            self.committed += 1;
            self.committed
        })
    }

    /// Returns the steps whose checkpoints are on their way (shards still uploading, or the
    /// manifest being written).
    pub fn in_flight(&self) -> Vec<u64> {
        self.pending.keys().map(|s| s.0).collect()
    }

    /// True while a checkpoint is on its way (shards or manifest).
    pub fn saving(&self) -> bool {
        !self.pending.is_empty() || self.writing > 0
    }
}

impl Saves {
    /// Returns the quorum `q` that committed the pending save of `step`, if it did.
    fn committed_by(&self, step: Step, q: QuorumId) -> Option<&Quorum> {
        self.pending
            .get(&step)
            .and_then(|p| p.commit.as_ref())
            .map(|c| &c.quorum)
            .filter(|c| c.id == q)
    }
}

impl Model {
    /// Takes a shard report: only from the registered worker that holds the rank it names in
    /// the quorum it names (the current one, or the one that committed the step); anything
    /// else is refused and counted, and changes nothing.
    pub(super) fn report_shard(&mut self, r: ShardReport) -> Reply {
        let holds = |q: &Quorum| {
            q.ranks.len() as u32 == r.world_size && q.ranks.get(r.rank as usize) == Some(&r.worker)
        };
        let member = self.members.contains(&r.worker)
            && (self.quorum().is_some_and(|q| q.id == r.quorum && holds(q))
                || self.saves.committed_by(r.step, r.quorum).is_some_and(holds));
        if !member {
            return Reply::Refused(Refusal::NotMember {
                worker: r.worker,
                step: r.step,
                quorum: r.quorum,
                rank: r.rank,
            });
        }
        if let Some(reason) = self.saves.shard(r) {
            self.reasons.push(reason.clone());
            self.effects
                .push(Effect::Event(Event::CheckpointFailed { reason }));
        }
        self.write_complete_saves();
        Reply::Accepted
    }

    /// Hands every complete save to the driver.
    pub(super) fn write_complete_saves(&mut self) {
        let (complete, unindexed) = self.saves.take_complete();
        for save in complete {
            self.effects.push(Effect::WriteManifest(save));
        }
        for step in unindexed {
            self.effects.push(Effect::Event(Event::CheckpointFailed {
                reason: format!("rank 0 sent no state index with its shard of step {step}"),
            }));
        }
    }

    /// Takes the driver's report of a manifest: a committed checkpoint may schedule an eval
    /// job; a retention failure is reported apart and changes nothing about the commit.
    pub(super) fn manifest_written(&mut self, m: ManifestWritten) {
        if let Some(reason) = m.retention_error {
            self.effects.push(Effect::Event(Event::RetentionFailed {
                step: m.step,
                reason,
            }));
        }
        if let Some(reason) = m.commit_error {
            self.saves.written(false);
            self.effects
                .push(Effect::Event(Event::CheckpointNotCommitted {
                    step: m.step,
                    reason,
                }));
            return;
        }
        let committed = self.saves.written(true).expect("committed");
        self.effects
            .push(Effect::Event(Event::CheckpointCommitted { step: m.step }));
        let every = self.settings.eval_every;
        if (every > 0 && committed.is_multiple_of(every))
            || (self.settings.eval_at_end && m.step.count() == self.settings.end())
            || self.settings.evals_after(m.step)
        {
            self.evals.queue(elf_shared::messages::EvalJob {
                step: m.step,
                dir: m.dir,
            });
        }
    }
}
