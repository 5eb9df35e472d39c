//! SIGTERM on the coordinator (a drain, a preemption): commit one last checkpoint within the
//! grace period, then stop without ending the run.
//!
//! The step in flight was handed out with its save decision already made, so the last save is
//! of the next step boundary the model can still decide: the step in flight's successor when
//! a step is in flight, else the step about to be handed out. That step is handed out with
//! `save_to`; once it commits the run stops there (the workers are told to wait, never that
//! the run is done: they go on reconnecting, and a restarted coordinator resumes from the
//! checkpoint). The end waits for that checkpoint for at most the save hold.

use super::{Model, Phase};

impl Model {
    /// Takes SIGTERM: the run stops after one more checkpointed step.
    pub(super) fn terminate(&mut self) {
        if self.terminated {
            return;
        }
        self.terminated = true;
        let last = match self.phase {
            Phase::Running if self.round.handed_any() => self.round.step.next(),
            _ => self.round.step,
        };
        let end = (last.0 + 1).min(self.settings.end());
        self.settings.stop_after = Some(end);
        self.settings.save_final = true;
        let text = format!(
            "SIGTERM: stopping after step {} with a checkpoint; a restart resumes from it",
            end.saturating_sub(1)
        );
        self.reasons.push(text.clone());
        self.effects
            .push(super::Effect::Event(super::Event::Terminating { text }));
        match self.phase {
            // No step was trained by this process: nothing to save, stop now.
            Phase::Forming => self.phase = Phase::Done,
            Phase::Running if self.round.step.0 >= end => self.phase = Phase::Done,
            _ => {}
        }
    }
}
