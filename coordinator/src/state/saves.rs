//! Checkpoint saves: each rank of the quorum that trained a step reports its uploaded shard;
//! when every shard is in and the step committed (in either order), the save is complete and
//! the driver writes its manifest. A save that lost a rank (the quorum changed before its
//! shards were in) or whose upload failed is abandoned for good: late shards are ignored, and
//! the commit never reopens it.

use std::collections::{BTreeMap, BTreeSet};

use elf_shared::ids::Step;
use elf_shared::manifest::ShardEntry;
use elf_shared::messages::{ShardOutcome, ShardReport, StateIndex};

use super::steps::Commit;
use super::{Effect, Event, ManifestWritten, Model};

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
    world: u32,
    shards: BTreeMap<u32, ShardEntry>,
    index: Option<StateIndex>,
    commit: Option<Commit>,
}

impl Pending {
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
    /// Records the commit of a step that is saved.
    pub fn committed(&mut self, c: &Commit) {
        if self.abandoned.contains(&c.step) {
            return;
        }
        let p = self.pending.entry(c.step).or_default();
        p.world = c.quorum.ranks.len() as u32;
        p.commit = Some(c.clone());
    }

    /// Records a shard report; returns why the save failed when the upload did.
    pub fn shard(&mut self, r: ShardReport) -> Option<String> {
        if self.abandoned.contains(&r.step) {
            return None;
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
                let p = self.pending.entry(r.step).or_default();
                p.world = r.world_size;
                p.shards.insert(r.rank, entry);
                if index.is_some() {
                    p.index = index;
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

    /// Abandons every save still missing shards (a rank of it was lost); returns their steps.
    pub fn abandon_incomplete(&mut self) -> Vec<Step> {
        let incomplete: Vec<Step> = self
            .pending
            .iter()
            .filter(|(_, p)| p.world == 0 || p.shards.len() < p.world as usize)
            .map(|(s, _)| *s)
            .collect();
        for s in &incomplete {
            self.pending.remove(s);
            self.abandoned.insert(*s);
        }
        incomplete
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

    /// True while a checkpoint is on its way (shards or manifest).
    pub fn saving(&self) -> bool {
        !self.pending.is_empty() || self.writing > 0
    }
}

impl Model {
    /// Takes a shard report.
    pub(super) fn report_shard(&mut self, r: ShardReport) {
        if let Some(reason) = self.saves.shard(r) {
            self.reasons.push(reason.clone());
            self.effects
                .push(Effect::Event(Event::CheckpointFailed { reason }));
        }
        self.write_complete_saves();
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
        {
            self.evals.queue(elf_shared::messages::EvalJob {
                step: m.step,
                dir: m.dir,
            });
        }
    }
}
