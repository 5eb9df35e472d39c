//! One training step on one rank: the ring of the step's quorum (made once per quorum id,
//! dropped when it fails), this rank's micro-batches from the rows it was handed, gradients,
//! the all-reduce, and the update. A step ends applied, collective-failed (nothing applied:
//! the replica holds the state before it) or failed (a data error: the run cannot go on).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use elf_shared::config::Config;
use elf_shared::failpoint::RingFault;
use elf_shared::ids::QuorumId;
use elf_shared::messages::{Applied, StepOutcome, StepTimings, TrainStep};

use crate::batch;
use crate::collective::{Collective, Ring, Single};
use crate::data::TrainData;
use crate::replica::{LossParts, Replica};
use crate::session::RingWatch;

/// Runs training steps, keeping the ring between steps of one quorum.
#[derive(Debug)]
pub struct StepRunner {
    ring: Option<(QuorumId, Box<dyn Collective>)>,
    watch: RingWatch,
    timeout: Duration,
    bucket_bytes: usize,
    micro: usize,
    n_shards: u64,
}

impl StepRunner {
    /// Builds a runner for config `c`; `watch` learns each ring so heartbeats can abort it.
    pub fn new(c: &Config, watch: RingWatch) -> Self {
        Self {
            ring: None,
            watch,
            timeout: Duration::from_millis(c.cluster.collective_timeout_ms),
            bucket_bytes: c.cluster.bucket_mib << 20,
            micro: c.train.micro_batch_size.unwrap_or(c.global_batch_size),
            n_shards: (c.global_batch_size / c.train.branch_shard_size) as u64,
        }
    }

    /// Returns the collective timeout (also the bound of a state copy).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Drops the ring (the replica's state changed under it, or its quorum is gone).
    pub fn forget_ring(&mut self) {
        self.ring = None;
        self.watch.set(None);
    }

    /// Trains step `t` on `replica` with the rows of `data`; returns how it ended and what it
    /// cost. `listener` is this worker's collective listener.
    pub fn run<B: AutodiffBackend>(
        &mut self,
        t: &TrainStep,
        replica: &mut Replica<B>,
        data: &TrainData,
        listener: &TcpListener,
    ) -> (StepOutcome, StepTimings) {
        let t0 = Instant::now();
        let mut timings = StepTimings::default();
        let failed = |error: String| StepOutcome::CollectiveFailed { error };
        if let Err(e) = self.ensure_ring(t, listener) {
            tracing::warn!(step = t.step.0, error = %e, "cannot form the ring; waiting for a new quorum");
            return (failed(e.to_string()), timings);
        }
        let c = &replica.config;
        let slice: Vec<(u64, u64)> = t
            .rows
            .iter()
            .enumerate()
            .map(|(i, &r)| (t.first_position + i as u64, r))
            .collect();
        let t_data = Instant::now();
        let mbs = match batch::build(
            c,
            data.data.as_ref(),
            &data.collator,
            t.step.0,
            &slice,
            self.n_shards,
            c.encoder.d_model,
            self.micro,
        ) {
            Ok(m) => m,
            Err(e) => {
                return (
                    StepOutcome::Failed {
                        error: e.to_string(),
                    },
                    timings,
                );
            }
        };
        timings.data_seconds = t_data.elapsed().as_secs_f64();
        let t_compute = Instant::now();
        let (mut grads, parts) = replica.gradients(&mbs);
        if elf_shared::failpoint::non_finite_at(t.step.0)
            && let Some(g) = grads.first_mut()
        {
            *g = f32::NAN;
        }
        timings.compute_seconds = t_compute.elapsed().as_secs_f64();
        let coll = &mut self.ring.as_mut().expect("formed above").1;
        coll.arm(RingFault::for_step(t.step.0));
        let reduced = coll.all_reduce_sum(&mut grads).and_then(|traffic| {
            let mut v = [parts.loss, parts.ce, parts.l2];
            coll.all_reduce_sum_f64(&mut v)?;
            Ok((traffic, v))
        });
        let (traffic, [loss, ce, l2]) = match reduced {
            Ok(x) => x,
            Err(e) => {
                // Nothing was applied: the state is the one before this step. The ring is
                // dropped; the coordinator decides what happens next.
                tracing::warn!(step = t.step.0, error = %e, "all-reduce failed; waiting for a new quorum");
                self.forget_ring();
                return (failed(e.to_string()), timings);
            }
        };
        // Every rank sees the same summed loss and gradient, so every rank decides alike.
        let (grad_norm, non_finite) = match non_finite_loss(ce, l2) {
            Some(why) => (f64::NAN, why),
            None => match replica.apply(grads, t.lr) {
                Ok(a) => (a.grad_norm, String::new()),
                Err(norm) => (norm, format!("the gradient norm is {norm}")),
            },
        };
        if !non_finite.is_empty() {
            tracing::error!(step = t.step.0, why = %non_finite, "non-finite step: nothing applied");
        }
        let (ce_loss, l2_loss) = LossParts { loss, ce, l2 }.rescaled(replica.config.decoder_prob);
        timings.allreduce_seconds = traffic.seconds;
        timings.allreduce_bytes = traffic.bytes_sent;
        timings.step_seconds = t0.elapsed().as_secs_f64();
        let outcome = StepOutcome::Applied(Applied {
            loss,
            ce_loss,
            l2_loss,
            grad_norm,
            param_digest: replica.param_digest(),
            non_finite,
        });
        (outcome, timings)
    }

    /// Makes the ring of `t`'s quorum unless this worker already has it.
    fn ensure_ring(
        &mut self,
        t: &TrainStep,
        listener: &TcpListener,
    ) -> Result<(), crate::collective::CollectiveError> {
        if self.ring.as_ref().is_some_and(|(q, _)| *q == t.quorum) {
            return Ok(());
        }
        self.forget_ring();
        let coll: Box<dyn Collective> = if t.world_size == 1 {
            Box::new(Single)
        } else {
            let key = crate::peer_auth::key(&t.ring_key).map_err(|e| {
                crate::collective::CollectiveError::Handshake {
                    peer: "the coordinator's ring key".into(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }
            })?;
            let r = Ring::connect(
                listener,
                &t.peers,
                t.rank as usize,
                t.quorum.0,
                &key,
                self.timeout,
                self.bucket_bytes,
            )?;
            self.watch.set(Some((t.quorum, r.aborter())));
            Box::new(r)
        };
        self.ring = Some((t.quorum, coll));
        Ok(())
    }
}

/// Says which branch's summed loss is not finite, if one is (the CE part comes from the decoder
/// branch's shards, the L2 part from the denoiser's).
fn non_finite_loss(ce: f64, l2: f64) -> Option<String> {
    let bad: Vec<String> = [("decoder branch (CE)", ce), ("denoiser branch (L2)", l2)]
        .into_iter()
        .filter(|(_, v)| !v.is_finite())
        .map(|(b, v)| format!("the loss of the {b} is {v}"))
        .collect();
    (!bad.is_empty()).then(|| bad.join(" and "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_non_finite_loss_names_its_branch() {
        assert_eq!(super::non_finite_loss(0.5, 1.0), None);
        assert_eq!(
            super::non_finite_loss(f64::NAN, 1.0).unwrap(),
            "the loss of the decoder branch (CE) is NaN"
        );
        assert_eq!(
            super::non_finite_loss(0.1, f64::INFINITY).unwrap(),
            "the loss of the denoiser branch (L2) is inf"
        );
    }
}
