//! Conversions between the wire types ([`crate::wire`]) and the domain types
//! (`elf_shared::messages`), written once. Encoding cannot fail; decoding refuses a message
//! that misses a required part (a directive without a kind, a report without an outcome, a
//! role left unspecified) instead of reading it as a default.

use std::time::Duration;

use elf_shared::ids::{QuorumId, Step, WorkerId};
use elf_shared::manifest::{ShardEntry, TensorEntry};
use elf_shared::messages::{
    Admission, Applied, Directive, EvalJob, EvalOutcome, EvalReport, EvalResult, EvalStatus, Leave,
    Losses, Pulse, QuorumStatus, Registration, Role, RunStatus, ShardOutcome, ShardReport,
    StateIndex, StepOutcome, StepReport, StepTimings, TrainStep, TransferReport, WorkerError,
    WorkerStatus,
};

use crate::wire;

/// A wire message that does not decode into its domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A required part is absent.
    #[error("{message}: {field} is missing")]
    Missing {
        /// The message type.
        message: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{message}: {field}: {detail}")]
    Invalid {
        /// The message type.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Writes `From` both ways between a domain struct and its wire twin with the same fields.
macro_rules! twins {
    ($domain:ty, $wire:ty, { $($f:ident),* $(,)? }) => {
        twins!($domain, $wire, { $($f),* }, optional {});
    };
    // `optional` fields are `Option`s of twin types themselves.
    ($domain:ty, $wire:ty, { $($f:ident),* $(,)? }, optional { $($o:ident),* $(,)? }) => {
        impl From<$domain> for $wire {
            fn from(x: $domain) -> Self {
                Self { $($f: x.$f,)* $($o: x.$o.map(Into::into),)* }
            }
        }
        impl From<$wire> for $domain {
            fn from(x: $wire) -> Self {
                Self { $($f: x.$f,)* $($o: x.$o.map(Into::into),)* }
            }
        }
    };
}

twins!(StepTimings, wire::StepTimings, {
    data_seconds,
    compute_seconds,
    allreduce_seconds,
    allreduce_bytes,
    step_seconds,
});
twins!(Applied, wire::Applied, {
    loss,
    ce_loss,
    l2_loss,
    grad_norm,
    param_digest,
    non_finite,
});
twins!(Losses, wire::Losses, { loss, ce_loss, l2_loss });
twins!(WorkerStatus, wire::WorkerStatus, {
    id,
    device,
    collective_addr,
    role,
    heartbeat_age_seconds,
    last_step,
    rank,
    straggler_ratio,
    straggler,
}, optional { last_timings });

fn missing(message: &'static str, field: &'static str) -> DecodeError {
    DecodeError::Missing { message, field }
}

impl From<Role> for wire::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Train => wire::Role::Train,
            Role::Eval => wire::Role::Eval,
        }
    }
}

fn decode_role(v: i32) -> Result<Role, DecodeError> {
    match wire::Role::try_from(v) {
        Ok(wire::Role::Train) => Ok(Role::Train),
        Ok(wire::Role::Eval) => Ok(Role::Eval),
        Ok(wire::Role::Unspecified) => Err(missing("RegisterRequest", "role")),
        Err(_) => Err(DecodeError::Invalid {
            message: "RegisterRequest",
            field: "role",
            detail: format!("unknown role {v}"),
        }),
    }
}

impl From<Registration> for wire::RegisterRequest {
    fn from(r: Registration) -> Self {
        Self {
            worker_id: r.worker.0,
            device: r.device,
            collective_addr: r.collective_addr,
            role: wire::Role::from(r.role) as i32,
            protocol_version: r.protocol_version,
        }
    }
}

impl TryFrom<wire::RegisterRequest> for Registration {
    type Error = DecodeError;
    fn try_from(r: wire::RegisterRequest) -> Result<Self, DecodeError> {
        Ok(Self {
            role: decode_role(r.role)?,
            worker: WorkerId(r.worker_id),
            device: r.device,
            collective_addr: r.collective_addr,
            protocol_version: r.protocol_version,
        })
    }
}

impl From<Admission> for wire::RegisterResponse {
    fn from(a: Admission) -> Self {
        Self {
            config_yaml: a.config_yaml.into_bytes(),
            config_hash: a.config_hash,
            run_url: a.run_url,
            checkpoint_root: a.checkpoint_root,
            heartbeat_ms: a.heartbeat.as_millis().min(u32::MAX as u128) as u32,
            run_id: a.run_id,
            resume_from: a.resume_from,
        }
    }
}

impl TryFrom<wire::RegisterResponse> for Admission {
    type Error = DecodeError;
    fn try_from(r: wire::RegisterResponse) -> Result<Self, DecodeError> {
        let config_yaml = String::from_utf8(r.config_yaml).map_err(|_| DecodeError::Invalid {
            message: "RegisterResponse",
            field: "config_yaml",
            detail: "not UTF-8".into(),
        })?;
        if r.heartbeat_ms == 0 {
            return Err(DecodeError::Invalid {
                message: "RegisterResponse",
                field: "heartbeat_ms",
                detail: "must be at least 1".into(),
            });
        }
        Ok(Self {
            config_yaml,
            config_hash: r.config_hash,
            run_url: r.run_url,
            checkpoint_root: r.checkpoint_root,
            heartbeat: Duration::from_millis(r.heartbeat_ms as u64),
            run_id: r.run_id,
            resume_from: r.resume_from,
        })
    }
}

impl From<Pulse> for wire::HeartbeatResponse {
    fn from(p: Pulse) -> Self {
        Self {
            known: p.known,
            quorum_id: p.quorum.0,
            quorum_broken: p.quorum_broken,
        }
    }
}

impl From<wire::HeartbeatResponse> for Pulse {
    fn from(p: wire::HeartbeatResponse) -> Self {
        Self {
            known: p.known,
            quorum: QuorumId(p.quorum_id),
            quorum_broken: p.quorum_broken,
        }
    }
}

impl From<Directive> for wire::Directive {
    fn from(d: Directive) -> Self {
        use wire::directive::Kind;
        let kind = match d {
            Directive::Wait { reason } => Kind::Wait(wire::Wait { reason }),
            Directive::Train(t) => Kind::Train(wire::Train {
                step: t.step.0,
                quorum_id: t.quorum.0,
                world_size: t.world_size,
                rank: t.rank,
                peers: t.peers,
                first_position: t.first_position,
                rows: t.rows,
                lr: t.lr,
                total_steps: t.total_steps,
                save_to: t.save_to,
                ring_key: t.ring_key,
            }),
            Directive::Eval(j) => Kind::Eval(wire::Eval {
                step: j.step.0,
                checkpoint_dir: j.dir,
            }),
            Directive::SendState { step, to, key } => Kind::SendState(wire::SendState {
                step: step.0,
                joiner_addr: to,
                key,
            }),
            Directive::ReceiveState {
                step,
                from,
                key,
                param_digest,
            } => Kind::ReceiveState(wire::ReceiveState {
                step: step.0,
                donor_addr: from,
                key,
                param_digest,
            }),
            Directive::Done {
                steps,
                write_outputs,
            } => Kind::Done(wire::Done {
                steps,
                write_outputs,
            }),
            Directive::Stop { reason } => Kind::Stop(wire::Stop { reason }),
        };
        Self { kind: Some(kind) }
    }
}

impl TryFrom<wire::Directive> for Directive {
    type Error = DecodeError;
    fn try_from(d: wire::Directive) -> Result<Self, DecodeError> {
        use wire::directive::Kind;
        Ok(match d.kind.ok_or_else(|| missing("Directive", "kind"))? {
            Kind::Wait(w) => Directive::Wait { reason: w.reason },
            Kind::Train(t) => {
                if t.world_size == 0
                    || t.rank >= t.world_size
                    || t.peers.len() != t.world_size as usize
                {
                    return Err(DecodeError::Invalid {
                        message: "Train",
                        field: "rank",
                        detail: format!(
                            "rank {} of world size {} with {} peers",
                            t.rank,
                            t.world_size,
                            t.peers.len()
                        ),
                    });
                }
                Directive::Train(TrainStep {
                    step: Step(t.step),
                    quorum: QuorumId(t.quorum_id),
                    world_size: t.world_size,
                    rank: t.rank,
                    peers: t.peers,
                    first_position: t.first_position,
                    rows: t.rows,
                    lr: t.lr,
                    total_steps: t.total_steps,
                    save_to: t.save_to,
                    ring_key: t.ring_key,
                })
            }
            Kind::Eval(e) => Directive::Eval(EvalJob {
                step: Step(e.step),
                dir: e.checkpoint_dir,
            }),
            Kind::SendState(s) => Directive::SendState {
                step: Step(s.step),
                to: s.joiner_addr,
                key: s.key,
            },
            Kind::ReceiveState(r) => Directive::ReceiveState {
                step: Step(r.step),
                from: r.donor_addr,
                key: r.key,
                param_digest: r.param_digest,
            },
            Kind::Done(d) => Directive::Done {
                steps: d.steps,
                write_outputs: d.write_outputs,
            },
            Kind::Stop(s) => Directive::Stop { reason: s.reason },
        })
    }
}

impl From<StepReport> for wire::StepReport {
    fn from(r: StepReport) -> Self {
        use wire::step_report::Outcome;
        let outcome = match r.outcome {
            StepOutcome::Applied(a) => Outcome::Applied(a.into()),
            StepOutcome::CollectiveFailed { error } => Outcome::CollectiveFailed(error),
            StepOutcome::Failed { error } => Outcome::Failed(error),
        };
        Self {
            worker_id: r.worker.0,
            step: r.step.0,
            quorum_id: r.quorum.0,
            rank: r.rank,
            timings: Some(r.timings.into()),
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<wire::StepReport> for StepReport {
    type Error = DecodeError;
    fn try_from(r: wire::StepReport) -> Result<Self, DecodeError> {
        use wire::step_report::Outcome;
        let outcome = match r.outcome.ok_or_else(|| missing("StepReport", "outcome"))? {
            Outcome::Applied(a) => StepOutcome::Applied(a.into()),
            Outcome::CollectiveFailed(error) => StepOutcome::CollectiveFailed { error },
            Outcome::Failed(error) => StepOutcome::Failed { error },
        };
        Ok(Self {
            worker: WorkerId(r.worker_id),
            step: Step(r.step),
            quorum: QuorumId(r.quorum_id),
            rank: r.rank,
            outcome,
            timings: r.timings.map(Into::into).unwrap_or_default(),
        })
    }
}

fn tensor_to_wire(t: TensorEntry) -> wire::TensorEntry {
    wire::TensorEntry {
        name: t.name,
        shape: t.shape.into_iter().map(|d| d as u64).collect(),
        offset: t.offset,
    }
}

fn tensor_from_wire(t: wire::TensorEntry) -> TensorEntry {
    TensorEntry {
        name: t.name,
        shape: t.shape.into_iter().map(|d| d as usize).collect(),
        offset: t.offset,
    }
}

impl From<ShardReport> for wire::ShardReport {
    fn from(r: ShardReport) -> Self {
        use wire::shard_report::Outcome;
        let outcome = match r.outcome {
            ShardOutcome::Uploaded { entry, index } => Outcome::Uploaded(wire::ShardUploaded {
                file: entry.file,
                sha256: entry.sha256,
                size: entry.size,
                start: entry.start,
                len: entry.len,
                index: index.map(|i| wire::StateIndex {
                    tensors: i.tensors.into_iter().map(tensor_to_wire).collect(),
                    numel: i.numel,
                    optimizer_count: i.optimizer_count,
                }),
            }),
            ShardOutcome::Failed { error } => Outcome::Failed(error),
        };
        Self {
            worker_id: r.worker.0,
            step: r.step.0,
            quorum_id: r.quorum.0,
            rank: r.rank,
            world_size: r.world_size,
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<wire::ShardReport> for ShardReport {
    type Error = DecodeError;
    fn try_from(r: wire::ShardReport) -> Result<Self, DecodeError> {
        use wire::shard_report::Outcome;
        let outcome = match r.outcome.ok_or_else(|| missing("ShardReport", "outcome"))? {
            Outcome::Uploaded(u) => ShardOutcome::Uploaded {
                entry: ShardEntry {
                    file: u.file,
                    sha256: u.sha256,
                    size: u.size,
                    start: u.start,
                    len: u.len,
                },
                index: u.index.map(|i| StateIndex {
                    tensors: i.tensors.into_iter().map(tensor_from_wire).collect(),
                    numel: i.numel,
                    optimizer_count: i.optimizer_count,
                }),
            },
            Outcome::Failed(error) => ShardOutcome::Failed { error },
        };
        Ok(Self {
            worker: WorkerId(r.worker_id),
            step: Step(r.step),
            quorum: QuorumId(r.quorum_id),
            rank: r.rank,
            world_size: r.world_size,
            outcome,
        })
    }
}

impl From<EvalResult> for wire::EvalResult {
    fn from(r: EvalResult) -> Self {
        Self {
            run: r.run,
            samples: r.samples as u64,
            ppl: r.ppl,
            mean_entropy: r.mean_entropy,
            bleu: r.bleu,
            rouge1: r.rouge1,
            rouge2: r.rouge2,
            rouge_l: r.rouge_l,
        }
    }
}

impl From<wire::EvalResult> for EvalResult {
    fn from(r: wire::EvalResult) -> Self {
        Self {
            run: r.run,
            samples: r.samples as usize,
            ppl: r.ppl,
            mean_entropy: r.mean_entropy,
            bleu: r.bleu,
            rouge1: r.rouge1,
            rouge2: r.rouge2,
            rouge_l: r.rouge_l,
        }
    }
}

impl From<EvalReport> for wire::EvalReport {
    fn from(r: EvalReport) -> Self {
        use wire::eval_report::Outcome;
        let outcome = match r.outcome {
            EvalOutcome::Scored(results) => Outcome::Results(wire::EvalResults {
                results: results.into_iter().map(Into::into).collect(),
            }),
            EvalOutcome::Failed { error } => Outcome::Failed(error),
        };
        Self {
            worker_id: r.worker.0,
            step: r.step.0,
            seconds: r.seconds,
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<wire::EvalReport> for EvalReport {
    type Error = DecodeError;
    fn try_from(r: wire::EvalReport) -> Result<Self, DecodeError> {
        use wire::eval_report::Outcome;
        let outcome = match r.outcome.ok_or_else(|| missing("EvalReport", "outcome"))? {
            Outcome::Results(rs) => {
                EvalOutcome::Scored(rs.results.into_iter().map(Into::into).collect())
            }
            Outcome::Failed(error) => EvalOutcome::Failed { error },
        };
        Ok(Self {
            worker: WorkerId(r.worker_id),
            step: Step(r.step),
            seconds: r.seconds,
            outcome,
        })
    }
}

impl From<TransferReport> for wire::TransferReport {
    fn from(r: TransferReport) -> Self {
        Self {
            worker_id: r.worker.0,
            step: r.step.0,
            sender: r.sender,
            error: r.error,
        }
    }
}

impl From<wire::TransferReport> for TransferReport {
    fn from(r: wire::TransferReport) -> Self {
        Self {
            worker: WorkerId(r.worker_id),
            step: Step(r.step),
            sender: r.sender,
            error: r.error,
        }
    }
}

impl From<Leave> for wire::LeaveRequest {
    fn from(l: Leave) -> Self {
        Self {
            worker_id: l.worker.0,
            error: l.error,
            invalid_config: l.invalid_config,
        }
    }
}

impl From<wire::LeaveRequest> for Leave {
    fn from(l: wire::LeaveRequest) -> Self {
        Self {
            worker: WorkerId(l.worker_id),
            error: l.error,
            invalid_config: l.invalid_config,
        }
    }
}

impl From<RunStatus> for wire::RunStatus {
    fn from(s: RunStatus) -> Self {
        Self {
            run_id: s.run_id,
            config_hash: s.config_hash,
            phase: s.phase,
            step: s.step,
            total_steps: s.total_steps,
            quorum: s.quorum.map(|q| wire::QuorumStatus {
                id: q.id,
                world_size: q.world_size as u32,
                members: q.members,
            }),
            workers: s.workers.into_iter().map(Into::into).collect(),
            throughput_tokens_per_s: s.throughput_tokens_per_s,
            last_losses: Some(s.last_losses.into()),
            evals_outstanding: s.evals_outstanding as u64,
            last_eval: s.last_eval.map(|e| wire::EvalStatus {
                step: e.step,
                results: e.results.into_iter().map(Into::into).collect(),
            }),
            worker_errors: s
                .worker_errors
                .into_iter()
                .map(|e| wire::WorkerError {
                    worker_id: e.worker,
                    step: e.step,
                    error: e.error,
                })
                .collect(),
            skipped_steps: s.skipped_steps,
            refused_reports: s.refused_reports,
            state: s.state,
            state_reason: s.state_reason,
            heartbeat_timeout_seconds: s.heartbeat_timeout_seconds,
        }
    }
}

impl From<wire::RunStatus> for RunStatus {
    fn from(s: wire::RunStatus) -> Self {
        Self {
            run_id: s.run_id,
            config_hash: s.config_hash,
            phase: s.phase,
            step: s.step,
            total_steps: s.total_steps,
            quorum: s.quorum.map(|q| QuorumStatus {
                id: q.id,
                world_size: q.world_size as usize,
                members: q.members,
            }),
            workers: s.workers.into_iter().map(Into::into).collect(),
            throughput_tokens_per_s: s.throughput_tokens_per_s,
            last_losses: s.last_losses.unwrap_or_default().into(),
            evals_outstanding: s.evals_outstanding as usize,
            last_eval: s.last_eval.map(|e| EvalStatus {
                step: e.step,
                results: e.results.into_iter().map(Into::into).collect(),
            }),
            worker_errors: s
                .worker_errors
                .into_iter()
                .map(|e| WorkerError {
                    worker: e.worker_id,
                    step: e.step,
                    error: e.error,
                })
                .collect(),
            skipped_steps: s.skipped_steps,
            refused_reports: s.refused_reports,
            state: s.state,
            state_reason: s.state_reason,
            heartbeat_timeout_seconds: s.heartbeat_timeout_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_round_trip_and_a_kindless_one_is_refused() {
        let all = [
            Directive::wait("step 3 in flight"),
            Directive::Train(TrainStep {
                step: Step(3),
                quorum: QuorumId(2),
                world_size: 2,
                rank: 1,
                peers: vec!["a:1".into(), "b:2".into()],
                first_position: 8,
                rows: vec![5, 9],
                lr: 0.01,
                total_steps: 20,
                save_to: Some("ckpt/step-000000003".into()),
                ring_key: "00ff".into(),
            }),
            Directive::Eval(EvalJob {
                step: Step(9),
                dir: "ckpt/step-000000009".into(),
            }),
            Directive::SendState {
                step: Step(4),
                to: "c:3".into(),
                key: "ab".into(),
            },
            Directive::ReceiveState {
                step: Step(4),
                from: "a:1".into(),
                key: "ab".into(),
                param_digest: "cd".into(),
            },
            Directive::Done {
                steps: 20,
                write_outputs: true,
            },
            Directive::Stop {
                reason: "not in the quorum".into(),
            },
        ];
        for d in all {
            let w = wire::Directive::from(d.clone());
            assert_eq!(Directive::try_from(w).unwrap(), d);
        }
        assert_eq!(
            Directive::try_from(wire::Directive { kind: None })
                .unwrap_err()
                .to_string(),
            "Directive: kind is missing"
        );
        let bad = wire::Directive {
            kind: Some(wire::directive::Kind::Train(wire::Train {
                world_size: 2,
                rank: 2,
                ..Default::default()
            })),
        };
        assert!(Directive::try_from(bad).is_err());
    }

    #[test]
    fn reports_round_trip_and_need_an_outcome() {
        let r = StepReport {
            worker: "w0".into(),
            step: Step(7),
            quorum: QuorumId(3),
            rank: 0,
            outcome: StepOutcome::CollectiveFailed {
                error: "peer rank 1 closed".into(),
            },
            timings: StepTimings {
                step_seconds: 1.5,
                ..Default::default()
            },
        };
        assert_eq!(
            StepReport::try_from(wire::StepReport::from(r.clone())).unwrap(),
            r
        );
        let mut w = wire::StepReport::from(r);
        w.outcome = None;
        assert_eq!(
            StepReport::try_from(w).unwrap_err().to_string(),
            "StepReport: outcome is missing"
        );
        let s = ShardReport {
            worker: "w0".into(),
            step: Step(3),
            quorum: QuorumId(2),
            rank: 0,
            world_size: 1,
            outcome: ShardOutcome::Uploaded {
                entry: ShardEntry {
                    file: "shard-00000-of-00001.safetensors".into(),
                    sha256: "ab".into(),
                    size: 10,
                    start: 0,
                    len: 2,
                },
                index: Some(StateIndex {
                    tensors: vec![TensorEntry {
                        name: "params/w".into(),
                        shape: vec![2, 1],
                        offset: 0,
                    }],
                    numel: 2,
                    optimizer_count: 4,
                }),
            },
        };
        assert_eq!(
            ShardReport::try_from(wire::ShardReport::from(s.clone())).unwrap(),
            s
        );
        let e = EvalReport {
            worker: "e0".into(),
            step: Step(9),
            seconds: 2.0,
            outcome: EvalOutcome::Scored(vec![EvalResult {
                run: "ode-32".into(),
                samples: 3,
                ppl: Some(40.0),
                ..Default::default()
            }]),
        };
        assert_eq!(
            EvalReport::try_from(wire::EvalReport::from(e.clone())).unwrap(),
            e
        );
    }

    #[test]
    fn an_unspecified_role_is_refused() {
        let mut r = wire::RegisterRequest::from(Registration {
            worker: "w".into(),
            device: "cpu".into(),
            collective_addr: "127.0.0.1:1".into(),
            role: Role::Eval,
            protocol_version: 2,
        });
        assert_eq!(Registration::try_from(r.clone()).unwrap().role, Role::Eval);
        r.role = 0;
        assert_eq!(
            Registration::try_from(r).unwrap_err().to_string(),
            "RegisterRequest: role is missing"
        );
    }
}
