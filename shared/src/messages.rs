//! What the coordinator and its workers say to each other, as domain types. The coordinator's
//! model takes and returns these; the worker builds and reads them; `elf-protocol` converts
//! them to and from the gRPC wire types (the only place that knows the wire form).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{QuorumId, Step, WorkerId};
use crate::manifest::{ShardEntry, TensorEntry};

/// The version of the protocol both sides must speak.
pub const PROTOCOL_VERSION: u32 = 2;

/// What a worker does in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A replica that trains.
    Train,
    /// A dedicated evaluator of committed checkpoints (never trains).
    Eval,
}

impl Role {
    /// Returns the role's name (`train`, `eval`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Eval => "eval",
        }
    }
}

/// A worker asking to join the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Its stable identity.
    pub worker: WorkerId,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// `host:port` its collective listens on (bound before registering).
    pub collective_addr: String,
    /// Train or eval.
    pub role: Role,
    /// The protocol version it speaks.
    pub protocol_version: u32,
}

/// What an admitted worker needs to train: the config and where things go.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// The resolved config, canonical YAML.
    pub config_yaml: String,
    /// Its hash.
    pub config_hash: String,
    /// The run location (URL or path): final weights, samples and eval generations go
    /// there; the worker proves it reaches it by reading the coordinator's marker.
    pub run_url: String,
    /// The checkpoint root (URL or path), which the worker must reach as well.
    pub checkpoint_root: String,
    /// How often to heartbeat.
    pub heartbeat: Duration,
    /// Identifies the run.
    pub run_id: String,
    /// A committed checkpoint folder to load before the first step.
    pub resume_from: Option<String>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulse {
    /// False: the coordinator does not know this worker (it must register again).
    pub known: bool,
    /// The current quorum.
    pub quorum: QuorumId,
    /// The current quorum's collective is broken (a peer was lost): a worker whose ring
    /// belongs to it, or to an older one, aborts the ring at once instead of waiting for the
    /// collective timeout.
    pub quorum_broken: bool,
}

impl Pulse {
    /// Returns true when a ring of quorum `ring` must be aborted.
    pub fn aborts(&self, ring: QuorumId) -> bool {
        ring < self.quorum || (ring == self.quorum && self.quorum_broken)
    }
}

/// One step for one rank.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStep {
    /// The step.
    pub step: Step,
    /// The quorum training it.
    pub quorum: QuorumId,
    /// Ranks in the quorum.
    pub world_size: u32,
    /// This worker's rank.
    pub rank: u32,
    /// Collective addresses in rank order.
    pub peers: Vec<String>,
    /// The first position of this rank's slice in the global batch.
    pub first_position: u64,
    /// Global dataset rows of this rank's slice, in position order.
    pub rows: Vec<u64>,
    /// Learning rate of the optimiser update this step belongs to.
    pub lr: f64,
    /// Steps in the run.
    pub total_steps: u64,
    /// Save a checkpoint shard of the state after this step into this folder.
    pub save_to: Option<String>,
    /// The quorum's ring key (hex), proved to the next rank in the ring handshake.
    pub ring_key: String,
}

/// An eval job: a committed checkpoint to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalJob {
    /// The checkpoint's step.
    pub step: Step,
    /// Its folder (URL or path).
    pub dir: String,
}

/// What a worker does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Directive {
    /// Nothing yet; ask again.
    Wait {
        /// Why.
        reason: String,
    },
    /// Train a step.
    Train(TrainStep),
    /// Evaluate a committed checkpoint, then report.
    Eval(EvalJob),
    /// Send this worker's whole training state (after step `step - 1`) to a joining worker.
    SendState {
        /// The step boundary.
        step: Step,
        /// The joiner's collective address.
        to: String,
        /// The copy's key (hex), proved to the joiner before any state byte.
        key: String,
    },
    /// Receive the training state (after step `step - 1`) from a member on the collective
    /// listener, load it, report; the next directive trains `step`.
    ReceiveState {
        /// The step boundary.
        step: Step,
        /// The donor's collective address.
        from: String,
        /// The copy's key (hex): a sender that cannot prove it is dropped unread.
        key: String,
        /// The digest of the parameters the copy must hold (the last committed step's; empty
        /// when unknown): a state that does not hash to it is refused.
        param_digest: String,
    },
    /// The run is complete.
    Done {
        /// Steps the run trained.
        steps: u64,
        /// This worker writes the run's final outputs (weights and samples): rank 0 of the
        /// final quorum, never a worker whose state is stale.
        write_outputs: bool,
    },
    /// This worker is not (or no longer) part of the run.
    Stop {
        /// Why.
        reason: String,
    },
}

impl Directive {
    /// Builds a `Wait`.
    pub fn wait(reason: impl Into<String>) -> Self {
        Self::Wait {
            reason: reason.into(),
        }
    }

    /// Returns true for the directives after which a worker exits.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Done { .. } | Self::Stop { .. })
    }
}

/// The loss parts and parameter digest of an applied step (every rank reports the same).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Mean loss over the global batch.
    pub loss: f64,
    /// CE part, rescaled by the branch probability.
    pub ce_loss: f64,
    /// L2 part, rescaled by the branch probability.
    pub l2_loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// sha256 of the parameters after the step.
    pub param_digest: String,
    /// Empty for a finite step; else why nothing was applied (a non-finite loss or gradient
    /// norm, naming the branch): the replica holds the state before the step.
    pub non_finite: String,
}

/// How a step ended on one worker.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The all-reduce completed and the update was applied.
    Applied(Applied),
    /// The collective failed (a peer vanished, froze or could not be reached): nothing of the
    /// step was applied; the worker holds the state before it.
    CollectiveFailed {
        /// What failed, naming the peer.
        error: String,
    },
    /// Anything else (a data error, say): the run cannot go on.
    Failed {
        /// What failed.
        error: String,
    },
}

/// Wall-clock figures of a step on one worker.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StepTimings {
    /// Reading and collating the rank's rows (and encoding them).
    pub data_seconds: f64,
    /// Forward and backward.
    pub compute_seconds: f64,
    /// Gradient all-reduce.
    pub allreduce_seconds: f64,
    /// Bytes this rank sent in the all-reduce.
    pub allreduce_bytes: u64,
    /// The whole step.
    pub step_seconds: f64,
}

/// A worker's report of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Who.
    pub worker: WorkerId,
    /// Which step.
    pub step: Step,
    /// In which quorum.
    pub quorum: QuorumId,
    /// At which rank.
    pub rank: u32,
    /// How it ended.
    pub outcome: StepOutcome,
    /// What it cost.
    pub timings: StepTimings,
}

impl StepReport {
    /// Returns the applied figures, if the step was applied.
    pub fn applied(&self) -> Option<&Applied> {
        match &self.outcome {
            StepOutcome::Applied(a) => Some(a),
            _ => None,
        }
    }
}

/// The index of a whole flat training state (sent by rank 0 with its shard).
#[derive(Debug, Clone, PartialEq)]
pub struct StateIndex {
    /// Tensors over the flat state.
    pub tensors: Vec<TensorEntry>,
    /// Elements in the flat state.
    pub numel: u64,
    /// Optimiser updates taken.
    pub optimizer_count: u64,
}

/// How a rank's checkpoint upload ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutcome {
    /// The shard is in the store.
    Uploaded {
        /// Its manifest entry.
        entry: ShardEntry,
        /// The state's index (rank 0 only).
        index: Option<StateIndex>,
    },
    /// The upload failed; the save is abandoned.
    Failed {
        /// Why.
        error: String,
    },
}

/// A rank's report of its checkpoint shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardReport {
    /// Who.
    pub worker: WorkerId,
    /// The checkpoint's step.
    pub step: Step,
    /// The quorum that trained the step (a shard of an attempt that was redone is stale).
    pub quorum: QuorumId,
    /// The rank that wrote it.
    pub rank: u32,
    /// Ranks writing this checkpoint.
    pub world_size: u32,
    /// How it ended.
    pub outcome: ShardOutcome,
}

/// The metrics of one sampling config of an evaluation (spec §6).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalResult {
    /// The sampling config's run name (spec §6.5).
    pub run: String,
    /// Samples: the rows scored (conditional), or the samples generated (unconditional; the
    /// empty ones are left out of perplexity, spec §6.2).
    pub samples: usize,
    /// Generative perplexity (unconditional, with a scorer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppl: Option<f64>,
    /// Mean unigram entropy of the GPT-2 ids (unconditional, with a scorer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_entropy: Option<f64>,
    /// Corpus BLEU (conditional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bleu: Option<f64>,
    /// Mean ROUGE-1 F1 × 100 (conditional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rouge1: Option<f64>,
    /// Mean ROUGE-2 F1 × 100 (conditional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rouge2: Option<f64>,
    /// Mean ROUGE-L F1 × 100 (conditional).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "rougeL")]
    pub rouge_l: Option<f64>,
}

impl EvalResult {
    /// Returns `(name, value)` for each metric present.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        [
            ("ppl", self.ppl),
            ("mean_entropy", self.mean_entropy),
            ("bleu", self.bleu),
            ("rouge1", self.rouge1),
            ("rouge2", self.rouge2),
            ("rougeL", self.rouge_l),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect()
    }
}

/// How an eval job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalOutcome {
    /// Scored, one result per sampling config.
    Scored(Vec<EvalResult>),
    /// The job failed (reported, never fatal to training).
    Failed {
        /// Why.
        error: String,
    },
}

/// A worker's report of an eval job.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Who.
    pub worker: WorkerId,
    /// The evaluated checkpoint's step.
    pub step: Step,
    /// Wall time of the job.
    pub seconds: f64,
    /// How it ended.
    pub outcome: EvalOutcome,
}

/// One side's report of a state copy to a joining worker.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferReport {
    /// Who.
    pub worker: WorkerId,
    /// The step boundary of the copy.
    pub step: Step,
    /// The donor's report (else the joiner's).
    pub sender: bool,
    /// Why this side failed, if it did.
    pub error: Option<String>,
}

/// The quorum as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// Its generation.
    pub id: u64,
    /// Ranks.
    pub world_size: usize,
    /// Worker ids by rank.
    pub members: Vec<String>,
}

/// A registered worker as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its id.
    pub id: String,
    /// Its device.
    pub device: String,
    /// Where its collective listens.
    pub collective_addr: String,
    /// `train` or `eval`.
    pub role: String,
    /// Seconds since it was last heard from.
    pub heartbeat_age_seconds: f64,
    /// The last step it applied in a committed step.
    pub last_step: Option<u64>,
    /// Its rank in the current quorum (`None`: a standby or an eval worker).
    pub rank: Option<u32>,
    /// What its last committed step cost.
    pub last_timings: Option<StepTimings>,
    /// Its time before the all-reduce (data and compute) over the quorum's median
    /// ([`STRAGGLER_RATIO`] or more makes it a straggler); `None` without a committed step.
    pub straggler_ratio: Option<f64>,
    /// It is far slower than its peers: `straggler_ratio >= STRAGGLER_RATIO`.
    pub straggler: bool,
}

/// A quorum member whose data and compute time is at least this multiple of the quorum's
/// median is flagged a straggler. Step time itself cannot tell: the all-reduce makes
/// every rank wait for the slowest, so all ranks' step times are alike.
pub const STRAGGLER_RATIO: f64 = 1.5;

/// Loss parts of the last committed step.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Losses {
    /// Total.
    pub loss: f64,
    /// CE part.
    pub ce_loss: f64,
    /// L2 part.
    pub l2_loss: f64,
}

/// The last evaluation as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalStatus {
    /// The evaluated checkpoint's step.
    pub step: u64,
    /// One result per sampling config.
    pub results: Vec<EvalResult>,
}

/// The run's status: the `/status` JSON document and the `Status` RPC's answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunStatus {
    /// `elf-<config hash prefix>`.
    pub run_id: String,
    /// The resolved config's hash.
    pub config_hash: String,
    /// `forming`, `running`, `done` or `failed: <reason>`.
    pub phase: String,
    /// What the run is doing: `waiting_for_quorum`, `training`, `re_forming`,
    /// `checkpointing`, `evaluating`, `done` or `failed`.
    pub state: String,
    /// Why, in words (`waiting for 2 workers, 1 registered`; the failure).
    pub state_reason: String,
    /// A worker silent for longer is evicted (`cluster.heartbeat_timeout_ms`).
    pub heartbeat_timeout_seconds: f64,
    /// The next step to commit.
    pub step: u64,
    /// Steps in the run.
    pub total_steps: u64,
    /// The current quorum.
    pub quorum: Option<QuorumStatus>,
    /// Every registered worker, by id.
    pub workers: Vec<WorkerStatus>,
    /// Training tokens per second over the last step.
    pub throughput_tokens_per_s: f64,
    /// Loss parts of the last committed step.
    pub last_losses: Losses,
    /// Eval jobs queued or running.
    pub evals_outstanding: usize,
    /// The last evaluation.
    pub last_eval: Option<EvalStatus>,
    /// The most recent errors workers reported before they left (oldest first, bounded).
    pub worker_errors: Vec<WorkerError>,
    /// Steps skipped for a non-finite loss or gradient norm (`train.skip_nonfinite`).
    pub skipped_steps: u32,
    /// Reports (step, shard, eval, copy) refused because their sender did not hold the step,
    /// quorum, rank or job they named.
    pub refused_reports: u64,
}

/// An error a worker reported before it left the run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerError {
    /// Who.
    pub worker: String,
    /// The run's step when it left.
    pub step: u64,
    /// Its error.
    pub error: String,
}

/// A worker leaving the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Leave {
    /// Who.
    pub worker: WorkerId,
    /// `None`: a graceful leave at the next step boundary; `Some`: the worker failed.
    pub error: Option<String>,
    /// The error is about the run's config as this worker sees it (a path it cannot reach):
    /// a run that has not started fails with it.
    pub invalid_config: bool,
}
