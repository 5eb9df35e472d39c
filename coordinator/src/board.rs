//! What the status page shows beyond the model's status: the run's curves, its timeline, its
//! checkpoints and evaluations, progress and ETA, and the goodput account. The driver feeds it
//! what it observes (commits, events, the model's activity after every input); [`Board::page`]
//! copies it into the `/status` document. No IO and no clock of its own: every figure is a
//! unit test.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use elf_shared::messages::{EvalResult, RunStatus};
use serde::Serialize;

/// Points a curve keeps before it halves its resolution.
pub const HISTORY_POINTS: usize = 1024;
/// Timeline entries kept (oldest dropped first).
pub const TIMELINE_ENTRIES: usize = 300;
/// Flagged steps (non-finite values, spikes) kept.
pub const FLAGS: usize = 100;
/// Evaluated checkpoints kept.
pub const EVALS: usize = 100;
/// Checkpoint failures kept.
pub const FAILURES: usize = 20;
/// Evicted or departed workers kept.
pub const DEPARTED: usize = 50;
/// Recent commits the ETA and the spike detector look at.
pub const WINDOW: usize = 50;
/// A loss this many times the median of the recent window is flagged as a spike.
pub const SPIKE_RATIO: f64 = 2.0;

/// One committed step on the curves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// The step.
    pub step: u64,
    /// Total loss.
    pub loss: f64,
    /// CE part.
    pub ce_loss: f64,
    /// L2 part.
    pub l2_loss: f64,
    /// Learning rate.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The curves over the whole run at bounded memory: every `stride`-th step; when full, every
/// other point is dropped and the stride doubles (so the page always spans the whole run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Steps between kept points.
    pub stride: u64,
    /// Kept points, by step.
    pub points: Vec<Point>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            stride: 1,
            points: vec![],
        }
    }
}

impl History {
    /// Adds a committed step (kept when it falls on the stride).
    pub fn push(&mut self, p: Point) {
        if !p.step.is_multiple_of(self.stride) {
            return;
        }
        self.points.push(p);
        if self.points.len() >= HISTORY_POINTS {
            self.stride *= 2;
            let stride = self.stride;
            self.points.retain(|p| p.step.is_multiple_of(stride));
        }
    }
}

/// A step the page marks on the curves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    /// The step.
    pub step: u64,
    /// `non_finite` or `spike`.
    pub kind: &'static str,
    /// What, in words.
    pub text: String,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// When (seconds since the Unix epoch).
    pub at_unix: f64,
    /// The run's next step to commit then.
    pub step: u64,
    /// `start`, `registered`, `quorum`, `evicted`, `left`, `redone`, `skipped`, `joined`,
    /// `checkpoint`, `checkpoint_failed`, `eval`, `eval_failed`, `sigterm`, `end`.
    pub kind: &'static str,
    /// What happened, in words.
    pub text: String,
}

/// A worker that is no longer in the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Departed {
    /// Who.
    pub worker: String,
    /// `evicted` or `left`.
    pub how: &'static str,
    /// The eviction cause (`heartbeat_timeout`, ...), empty for a graceful leave.
    pub cause: &'static str,
    /// Why, in words.
    pub reason: String,
    /// The run's next step then.
    pub step: u64,
    /// When (seconds since the Unix epoch).
    pub at_unix: f64,
}

/// A checkpoint save that failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// When (seconds since the Unix epoch).
    pub at_unix: f64,
    /// Its error.
    pub error: String,
}

/// Checkpoints as the page shows them.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Checkpoints {
    /// The last committed checkpoint's step.
    pub last_step: Option<u64>,
    /// Seconds since it committed.
    pub last_age_seconds: Option<f64>,
    /// Its folder (what `latest` points at).
    pub latest: Option<String>,
    /// Steps whose checkpoints are on their way (shards or manifest).
    pub in_flight: Vec<u64>,
    /// Committed by this coordinator.
    pub committed: u64,
    /// Failed saves, newest last.
    pub failures: Vec<Failure>,
}

/// An evaluated checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluated {
    /// The checkpoint's step.
    pub step: u64,
    /// Seconds the job took.
    pub seconds: f64,
    /// One result per sampling config.
    pub results: Vec<EvalResult>,
}

/// A running eval job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Running {
    /// The checkpoint's step.
    pub step: u64,
    /// Who runs it.
    pub worker: String,
}

/// Eval jobs as the page shows them.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Evals {
    /// Evaluated checkpoints, oldest first.
    pub done: Vec<Evaluated>,
    /// Steps of the queued jobs.
    pub queued: Vec<u64>,
    /// Running jobs.
    pub running: Vec<Running>,
    /// Jobs that failed.
    pub failed: u64,
}

/// Where the run is on its way to the end.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Progress {
    /// Steps committed (including those before a resume).
    pub committed_steps: u64,
    /// Steps of the run.
    pub total_steps: u64,
    /// `committed_steps / total_steps`.
    pub ratio: f64,
    /// Training samples seen.
    pub samples_seen: u64,
    /// Training tokens seen.
    pub tokens_seen: u64,
    /// Training tokens per second over the last step.
    pub tokens_per_s: f64,
    /// Estimated seconds to the last step (mean of the recent step times).
    pub eta_seconds: Option<f64>,
    /// Model FLOPs per second over the last step.
    pub model_flops_per_s: Option<f64>,
    /// Model FLOPs utilisation (0-1), when the peak per worker is known.
    pub mfu: Option<f64>,
}

/// Why time did not train committed steps (a bounded set: a Prometheus label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Before the first worker registered, and the first step of a fresh run (loading,
    /// compiling, the first batch).
    Startup,
    /// The first step of a resumed run (workers load the checkpoint).
    Restore,
    /// Workers registered, but not enough for a quorum.
    WaitingForQuorum,
    /// A broken quorum re-forming, or a state copy to a joining worker.
    Healing,
    /// Work on steps that were trained again after a peer was lost mid-step.
    RedoneSteps,
    /// Work on steps skipped for a non-finite loss or gradient norm.
    SkippedSteps,
    /// Training waited while rank 0 evaluated a checkpoint.
    InlineEval,
    /// Training was over and the run waited for its last checkpoint.
    CheckpointWait,
}

impl Cause {
    /// Every cause, in label order.
    pub const ALL: [Cause; 8] = [
        Cause::Startup,
        Cause::Restore,
        Cause::WaitingForQuorum,
        Cause::Healing,
        Cause::RedoneSteps,
        Cause::SkippedSteps,
        Cause::InlineEval,
        Cause::CheckpointWait,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Startup => "startup",
            Cause::Restore => "restore",
            Cause::WaitingForQuorum => "waiting_for_quorum",
            Cause::Healing => "healing",
            Cause::RedoneSteps => "redone_steps",
            Cause::SkippedSteps => "skipped_steps",
            Cause::InlineEval => "inline_eval",
            Cause::CheckpointWait => "checkpoint_wait",
        }
    }
}

/// What the wall clock is spent on between two observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Training a step: goodput once it commits, badput if it is redone or skipped.
    Training,
    /// Not training, for this cause.
    Idle(Cause),
    /// The run is over: nothing is accounted.
    Over,
}

/// The goodput account: every second since the coordinator started is goodput (a step that
/// committed) or badput by cause. Time spent training a step is held until the step's fate is
/// known: a commit makes it goodput, a redo or a skip badput.
#[derive(Debug, Clone, PartialEq)]
pub struct Goodput {
    at: Instant,
    activity: Activity,
    pending: f64,
    good: f64,
    bad: BTreeMap<Cause, f64>,
}

impl Goodput {
    /// Starts the account at `now`, in start-up.
    pub fn new(now: Instant) -> Self {
        Self {
            at: now,
            activity: Activity::Idle(Cause::Startup),
            pending: 0.0,
            good: 0.0,
            bad: BTreeMap::new(),
        }
    }

    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        match self.activity {
            Activity::Training => self.pending += dt,
            Activity::Idle(c) => *self.bad.entry(c).or_default() += dt,
            Activity::Over => {}
        }
    }

    /// Charges the time since the last observation to the activity then, and switches to
    /// `activity`.
    pub fn observe(&mut self, now: Instant, activity: Activity) {
        self.advance(now);
        self.activity = activity;
    }

    /// A step committed: the time training it is goodput.
    pub fn committed(&mut self, now: Instant) {
        self.advance(now);
        self.good += std::mem::take(&mut self.pending);
    }

    /// A step was redone or skipped: the time training it is badput of `cause`.
    pub fn wasted(&mut self, now: Instant, cause: Cause) {
        self.advance(now);
        *self.bad.entry(cause).or_default() += std::mem::take(&mut self.pending);
    }

    /// Returns (goodput seconds, badput seconds by cause, seconds of the step in flight).
    pub fn totals(&self) -> (f64, BTreeMap<Cause, f64>, f64) {
        (self.good, self.bad.clone(), self.pending)
    }
}

/// The goodput account as the page shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GoodputView {
    /// Seconds that trained committed steps.
    pub goodput_seconds: f64,
    /// Seconds that did not, by cause.
    pub badput_seconds: BTreeMap<&'static str, f64>,
    /// Seconds spent on the step in flight (its fate is not known yet).
    pub in_flight_seconds: f64,
    /// Goodput over goodput and badput.
    pub ratio: Option<f64>,
}

/// What the run is, as the page heads it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RunView {
    /// The run location (`--run`).
    pub location: String,
    /// The model preset, or its dimensions.
    pub model: String,
    /// The checkpoint the run resumed from.
    pub resumed_from: Option<String>,
    /// The step this coordinator started at.
    pub start_step: u64,
    /// When this coordinator started (seconds since the Unix epoch).
    pub started_unix: f64,
    /// The elf version.
    pub version: &'static str,
}

/// The `/status` document: the model's status plus what the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The status of the Status RPC (every field at the top level).
    #[serde(flatten)]
    pub status: RunStatus,
    /// What the run is.
    pub run: RunView,
    /// Progress, ETA, throughput, MFU.
    pub progress: Progress,
    /// The curves.
    #[serde(serialize_with = "shared")]
    pub history: Arc<History>,
    /// Steps marked on the curves (non-finite values, spikes).
    pub flags: Vec<Flag>,
    /// Checkpoints.
    pub checkpoints: Checkpoints,
    /// Eval jobs and results.
    pub evals: Evals,
    /// Workers no longer in the run, newest last.
    pub departed: Vec<Departed>,
    /// Events, oldest first.
    pub timeline: Vec<Entry>,
    /// Goodput and badput.
    pub goodput: GoodputView,
    /// The coordinator's clock when the document was made (seconds since the Unix epoch).
    pub now_unix: f64,
}

/// Serialises what an `Arc` points at (serde's `rc` feature would do it for every crate).
fn shared<S: serde::Serializer, T: Serialize>(x: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
    x.as_ref().serialize(s)
}

/// Fixed facts the board needs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// What the run is.
    pub run: RunView,
    /// Samples in one global batch.
    pub samples_per_step: u64,
    /// Tokens in one global batch.
    pub tokens_per_step: u64,
    /// Model FLOPs per training token (`scripts/bench/flops.py`, "required" count).
    pub flops_per_token: Option<f64>,
    /// Peak FLOP/s of one worker's device, for MFU.
    pub peak_flops: Option<f64>,
}

/// The board: everything the page shows that the model does not keep.
#[derive(Debug, Clone)]
pub struct Board {
    facts: Facts,
    history: Arc<History>,
    flags: VecDeque<Flag>,
    recent_losses: VecDeque<f64>,
    recent_seconds: VecDeque<f64>,
    timeline: VecDeque<Entry>,
    departed: VecDeque<Departed>,
    checkpoints: Checkpoints,
    failures: VecDeque<Failure>,
    last_checkpoint_at: Option<Instant>,
    evals: VecDeque<Evaluated>,
    evals_failed: u64,
    goodput: Goodput,
    progress: Progress,
    committed_any: bool,
}

/// Seconds since the Unix epoch of `at`, given that `now` is `now_unix`.
fn unix_of(at: Instant, now: Instant, now_unix: f64) -> f64 {
    now_unix - now.saturating_duration_since(at).as_secs_f64()
}

/// Pushes onto a bounded queue, dropping the oldest.
fn push_bounded<T>(q: &mut VecDeque<T>, cap: usize, x: T) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(x);
}

/// The lower median of `xs` (unsorted).
fn median(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = xs.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

impl Board {
    /// A board for a coordinator started at `now` (`now_unix` on the wall clock).
    pub fn new(mut facts: Facts, now: Instant, now_unix: f64) -> Self {
        facts.run.started_unix = now_unix;
        let mut b = Self {
            history: Arc::default(),
            flags: VecDeque::new(),
            recent_losses: VecDeque::new(),
            recent_seconds: VecDeque::new(),
            timeline: VecDeque::new(),
            departed: VecDeque::new(),
            checkpoints: Checkpoints::default(),
            failures: VecDeque::new(),
            last_checkpoint_at: None,
            evals: VecDeque::new(),
            evals_failed: 0,
            goodput: Goodput::new(now),
            progress: Progress {
                committed_steps: facts.run.start_step,
                ..Progress::default()
            },
            committed_any: false,
            facts,
        };
        let text = match &b.facts.run.resumed_from {
            Some(dir) => format!(
                "coordinator started; resuming from {dir} at step {}",
                b.facts.run.start_step
            ),
            None => "coordinator started; a fresh run".to_string(),
        };
        b.note(now, now_unix, b.facts.run.start_step, "start", text);
        b
    }

    /// Adds a timeline entry.
    pub fn note(
        &mut self,
        now: Instant,
        now_unix: f64,
        step: u64,
        kind: &'static str,
        text: String,
    ) {
        let at_unix = unix_of(now, now, now_unix);
        push_bounded(
            &mut self.timeline,
            TIMELINE_ENTRIES,
            Entry {
                at_unix,
                step,
                kind,
                text,
            },
        );
    }

    /// Records a committed step: the curves, flags, progress, throughput and the goodput of
    /// the time that trained it. `world` is the quorum's size, `secs` the wall time since the
    /// previous commit.
    pub fn committed(&mut self, now: Instant, p: Point, world: usize, secs: f64) {
        self.goodput.committed(now);
        let finite = [p.loss, p.ce_loss, p.l2_loss, p.grad_norm]
            .iter()
            .all(|x| x.is_finite());
        if !finite {
            push_bounded(
                &mut self.flags,
                FLAGS,
                Flag {
                    step: p.step,
                    kind: "non_finite",
                    text: format!(
                        "step {}: loss {}, grad norm {} (nothing applied)",
                        p.step, p.loss, p.grad_norm
                    ),
                },
            );
        } else {
            if let Some(m) = median(self.recent_losses.iter().copied())
                && self.recent_losses.len() >= 5
                && m > 0.0
                && p.loss > SPIKE_RATIO * m
            {
                push_bounded(
                    &mut self.flags,
                    FLAGS,
                    Flag {
                        step: p.step,
                        kind: "spike",
                        text: format!(
                            "step {}: loss {:.4} is {:.1}x the median {:.4} of the last {} steps",
                            p.step,
                            p.loss,
                            p.loss / m,
                            m,
                            self.recent_losses.len()
                        ),
                    },
                );
            }
            push_bounded(&mut self.recent_losses, WINDOW, p.loss);
        }
        // The first commit's interval holds start-up (loading, the first batch): not a step
        // time the ETA should extrapolate.
        if self.committed_any {
            push_bounded(&mut self.recent_seconds, WINDOW, secs);
        }
        self.committed_any = true;
        Arc::make_mut(&mut self.history).push(p);
        let f = &self.facts;
        let tokens_per_s = f.tokens_per_step as f64 / secs.max(1e-9);
        let flops = f.flops_per_token.map(|x| x * tokens_per_s);
        let pr = &mut self.progress;
        pr.committed_steps = p.step + 1;
        pr.samples_seen = pr.committed_steps * f.samples_per_step;
        pr.tokens_seen = pr.committed_steps * f.tokens_per_step;
        pr.tokens_per_s = tokens_per_s;
        pr.model_flops_per_s = flops;
        pr.mfu = match (flops, f.peak_flops) {
            (Some(x), Some(peak)) if peak > 0.0 && world > 0 => Some(x / (peak * world as f64)),
            _ => None,
        };
    }

    /// This coordinator committed a step.
    pub fn committed_any(&self) -> bool {
        self.committed_any
    }

    /// The goodput account.
    pub fn goodput(&mut self) -> &mut Goodput {
        &mut self.goodput
    }

    /// Records a worker that left the run (`how`: `evicted` or `left`).
    pub fn departed(&mut self, d: Departed) {
        push_bounded(&mut self.departed, DEPARTED, d);
    }

    /// Records a committed checkpoint (`dir` is what `latest` now names).
    pub fn checkpoint_committed(&mut self, now: Instant, step: u64, dir: String) {
        self.checkpoints.last_step = Some(step);
        self.checkpoints.latest = Some(dir);
        self.checkpoints.committed += 1;
        self.last_checkpoint_at = Some(now);
    }

    /// Records a failed checkpoint save.
    pub fn checkpoint_failed(&mut self, now: Instant, now_unix: f64, error: String) {
        push_bounded(
            &mut self.failures,
            FAILURES,
            Failure {
                at_unix: unix_of(now, now, now_unix),
                error,
            },
        );
    }

    /// Records an evaluated checkpoint.
    pub fn evaluated(&mut self, e: Evaluated) {
        push_bounded(&mut self.evals, EVALS, e);
    }

    /// Records a failed eval job.
    pub fn eval_failed(&mut self) {
        self.evals_failed += 1;
    }

    /// Returns the progress figures, with the ETA for a run that ends at step `end`.
    pub fn progress(&self, end: u64) -> Progress {
        let mut p = self.progress.clone();
        p.total_steps = end;
        p.ratio = if end == 0 {
            1.0
        } else {
            p.committed_steps as f64 / end as f64
        };
        let remaining = end.saturating_sub(p.committed_steps);
        p.eta_seconds = if remaining == 0 {
            Some(0.0)
        } else if self.recent_seconds.is_empty() {
            None
        } else {
            let mean = self.recent_seconds.iter().sum::<f64>() / self.recent_seconds.len() as f64;
            Some(mean * remaining as f64)
        };
        p
    }

    /// Returns the goodput account as shown.
    pub fn goodput_view(&self) -> GoodputView {
        let (good, bad, pending) = self.goodput.totals();
        let total = good + bad.values().sum::<f64>();
        GoodputView {
            goodput_seconds: good,
            badput_seconds: Cause::ALL
                .iter()
                .map(|c| (c.as_str(), bad.get(c).copied().unwrap_or(0.0)))
                .collect(),
            in_flight_seconds: pending,
            ratio: (total > 0.0).then(|| good / total),
        }
    }

    /// Builds the `/status` document from the model's `status` and its pending work.
    pub fn page(
        &self,
        now: Instant,
        now_unix: f64,
        status: RunStatus,
        end: u64,
        pending: (Vec<u64>, Vec<u64>, Vec<(u64, String)>),
    ) -> Page {
        let (in_flight, queued, running) = pending;
        let mut checkpoints = self.checkpoints.clone();
        checkpoints.in_flight = in_flight;
        checkpoints.failures = self.failures.iter().cloned().collect();
        checkpoints.last_age_seconds = self
            .last_checkpoint_at
            .map(|t| now.saturating_duration_since(t).as_secs_f64());
        Page {
            status,
            run: self.facts.run.clone(),
            progress: self.progress(end),
            history: self.history.clone(),
            flags: self.flags.iter().cloned().collect(),
            checkpoints,
            evals: Evals {
                done: self.evals.iter().cloned().collect(),
                queued,
                running: running
                    .into_iter()
                    .map(|(step, worker)| Running { step, worker })
                    .collect(),
                failed: self.evals_failed,
            },
            departed: self.departed.iter().cloned().collect(),
            timeline: self.timeline.iter().cloned().collect(),
            goodput: self.goodput_view(),
            now_unix,
        }
    }
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn point(step: u64, loss: f64) -> Point {
        Point {
            step,
            loss,
            ce_loss: loss / 2.0,
            l2_loss: loss / 2.0,
            lr: 1e-3,
            grad_norm: 1.0,
        }
    }

    #[test]
    fn the_history_spans_the_whole_run_at_bounded_size() {
        let mut h = History::default();
        for s in 0..10_000 {
            h.push(point(s, 1.0));
        }
        assert!(h.points.len() < HISTORY_POINTS, "{}", h.points.len());
        assert!(h.points.len() >= HISTORY_POINTS / 2 - 1);
        assert_eq!(h.points[0].step, 0);
        assert!(h.points.last().unwrap().step >= 10_000 - h.stride);
        assert!(h.points.iter().all(|p| p.step % h.stride == 0));
        assert_eq!(h.stride, 16);
    }

    #[test]
    fn goodput_holds_a_step_until_its_fate_is_known() {
        let t0 = Instant::now();
        let s = |x: f64| t0 + Duration::from_secs_f64(x);
        let mut g = Goodput::new(t0);
        g.observe(s(2.0), Activity::Idle(Cause::WaitingForQuorum)); // 2 s start-up
        g.observe(s(3.0), Activity::Training); // 1 s waiting
        g.committed(s(4.0)); // step 0: 1 s good
        g.observe(s(5.5), Activity::Idle(Cause::Healing)); // 1.5 s into step 1, a peer is lost
        g.observe(s(7.0), Activity::Training); // 1.5 s healing
        g.wasted(s(7.0), Cause::RedoneSteps); // step 1's first attempt is redone
        g.committed(s(8.0)); // step 1 again: 1 s good
        g.observe(s(9.0), Activity::Over);
        g.observe(s(100.0), Activity::Over);
        let (good, bad, pending) = g.totals();
        assert_eq!(good, 1.0 + 1.0);
        assert_eq!(
            pending, 1.0,
            "8..9 s: the step in flight when the run ended"
        );
        assert_eq!(bad[&Cause::Startup], 2.0);
        assert_eq!(bad[&Cause::WaitingForQuorum], 1.0);
        assert_eq!(bad[&Cause::Healing], 1.5);
        assert_eq!(bad[&Cause::RedoneSteps], 1.5);
        assert_eq!(good + bad.values().sum::<f64>(), 8.0);
    }

    #[test]
    fn flags_mark_non_finite_steps_and_spikes_against_the_recent_median() {
        let t0 = Instant::now();
        let mut b = Board::new(Facts::default(), t0, 0.0);
        for s in 0..10 {
            b.committed(t0, point(s, 1.0), 1, 1.0);
        }
        b.committed(t0, point(10, 1.9), 1, 1.0);
        b.committed(t0, point(11, 2.5), 1, 1.0);
        b.committed(t0, point(12, f64::NAN), 1, 1.0);
        let kinds: Vec<(u64, &str)> = b.flags.iter().map(|f| (f.step, f.kind)).collect();
        assert_eq!(kinds, vec![(11, "spike"), (12, "non_finite")]);
    }

    #[test]
    fn progress_counts_from_the_resumed_step_and_the_eta_skips_the_first_interval() {
        let t0 = Instant::now();
        let facts = Facts {
            run: RunView {
                start_step: 10,
                ..RunView::default()
            },
            samples_per_step: 8,
            tokens_per_step: 8 * 64,
            flops_per_token: Some(1e6),
            peak_flops: Some(1e9),
        };
        let mut b = Board::new(facts, t0, 0.0);
        assert_eq!(b.progress(100).committed_steps, 10);
        assert_eq!(b.progress(100).eta_seconds, None);
        b.committed(t0, point(10, 1.0), 2, 30.0); // start-up: not a step time
        b.committed(t0, point(11, 1.0), 2, 2.0);
        b.committed(t0, point(12, 1.0), 2, 4.0);
        let p = b.progress(100);
        assert_eq!(p.committed_steps, 13);
        assert_eq!(p.samples_seen, 13 * 8);
        assert_eq!(p.tokens_seen, 13 * 512);
        assert_eq!(p.eta_seconds, Some(3.0 * 87.0));
        assert_eq!(p.tokens_per_s, 512.0 / 4.0);
        // 128 tokens/s × 1e6 FLOPs/token over 2 workers × 1e9 FLOP/s.
        assert_eq!(p.mfu, Some(128.0 * 1e6 / 2e9));
        assert!((p.ratio - 0.13).abs() < 1e-12);
    }
}
