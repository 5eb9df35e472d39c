//! Why the coordinator refuses a request, and the one place that picks the gRPC status code
//! for each reason (quickwit's `ServiceErrorCode`). A worker maps the code back with
//! `elf_worker::client::from_status`: `FailedPrecondition` and `InvalidArgument` are fatal to
//! it, `Unavailable` means "come back later".

use elf_protocol::DecodeError;
use elf_shared::ids::{QuorumId, Step, WorkerId};

/// A refused request, with the reason the worker is told.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The worker speaks another protocol version.
    #[error("worker {worker} speaks protocol {theirs}, the coordinator speaks {ours}")]
    Protocol {
        /// Who.
        worker: WorkerId,
        /// Its version.
        theirs: u32,
        /// Ours.
        ours: u32,
    },
    /// A registration without an id.
    #[error("empty worker id")]
    EmptyWorkerId,
    /// A collective address that peers on other hosts cannot reach (loopback or
    /// unspecified) in a cluster whose coordinator listens beyond loopback.
    #[error(
        "worker {worker} registered the collective address {addr}, which peers on other hosts cannot reach: start it with --advertise <its IP or name> (or set POD_IP)"
    )]
    UnreachableAddress {
        /// Who.
        worker: WorkerId,
        /// The address it registered.
        addr: String,
    },
    /// A worker the coordinator does not know (evicted, or registered with an earlier
    /// coordinator): it must register again.
    #[error(
        "worker {0} is not registered (evicted, or unknown to this coordinator); register again"
    )]
    NotRegistered(WorkerId),
    /// The run has failed; nothing more is taken.
    #[error("the run has failed: {0}")]
    RunFailed(String),
    /// A step report while no step runs.
    #[error("no step is running")]
    NoStep,
    /// A report for another step, quorum or rank.
    #[error(
        "stale report from {worker} (step {step}, quorum {quorum}, rank {rank}); expected step {expected} of quorum {current}"
    )]
    StaleReport {
        /// Who.
        worker: WorkerId,
        /// The step it reported.
        step: Step,
        /// Its quorum.
        quorum: QuorumId,
        /// Its rank.
        rank: u32,
        /// The step in flight.
        expected: Step,
        /// The current quorum.
        current: QuorumId,
    },
    /// A state-copy report with no copy in progress.
    #[error("worker {worker} reported a state copy of step {step} that is not in progress")]
    NoTransfer {
        /// Who.
        worker: WorkerId,
        /// The step it reported.
        step: Step,
    },
    /// An eval report from a worker not running that job.
    #[error("worker {worker} reported an eval of step {step} it was not running")]
    NoEvalJob {
        /// Who.
        worker: WorkerId,
        /// The step it reported.
        step: Step,
    },
    /// A report about a step, quorum or rank its sender does not hold.
    #[error(
        "worker {worker} reported a shard of step {step} as rank {rank} of quorum {quorum}, which it is not"
    )]
    NotMember {
        /// Who.
        worker: WorkerId,
        /// The step it reported.
        step: Step,
        /// The quorum it named.
        quorum: QuorumId,
        /// The rank it named.
        rank: u32,
    },
    /// A request that does not decode.
    #[error("malformed request: {0}")]
    Malformed(#[from] DecodeError),
    /// The run is over and the coordinator is shutting down.
    #[error("the run is over; the coordinator is shutting down")]
    Closed,
}

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        let msg = r.to_string();
        match r {
            Refusal::Malformed(_) => tonic::Status::invalid_argument(msg),
            Refusal::Closed => tonic::Status::unavailable(msg),
            Refusal::NotRegistered(_) => tonic::Status::not_found(msg),
            Refusal::NotMember { .. } => tonic::Status::permission_denied(msg),
            Refusal::Protocol { .. }
            | Refusal::EmptyWorkerId
            | Refusal::UnreachableAddress { .. }
            | Refusal::RunFailed(_)
            | Refusal::NoStep
            | Refusal::StaleReport { .. }
            | Refusal::NoTransfer { .. }
            | Refusal::NoEvalJob { .. } => tonic::Status::failed_precondition(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_refusal_maps_to_one_status_code_and_keeps_its_reason() {
        let cases = [
            (
                Refusal::Protocol {
                    worker: "x".into(),
                    theirs: 1,
                    ours: 2,
                },
                Code::FailedPrecondition,
                "worker x speaks protocol 1, the coordinator speaks 2",
            ),
            (
                Refusal::StaleReport {
                    worker: "a".into(),
                    step: Step(7),
                    quorum: QuorumId(1),
                    rank: 0,
                    expected: Step(0),
                    current: QuorumId(1),
                },
                Code::FailedPrecondition,
                "stale report from a (step 7, quorum 1, rank 0); expected step 0 of quorum 1",
            ),
            (
                Refusal::Malformed(DecodeError::Missing {
                    message: "Directive",
                    field: "kind",
                }),
                Code::InvalidArgument,
                "malformed request: Directive: kind is missing",
            ),
            (
                Refusal::Closed,
                Code::Unavailable,
                "the run is over; the coordinator is shutting down",
            ),
        ];
        for (r, code, msg) in cases {
            let s = tonic::Status::from(r);
            assert_eq!((s.code(), s.message()), (code, msg));
        }
    }
}
