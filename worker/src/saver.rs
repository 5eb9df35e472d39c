//! A rank's checkpoint saves: the step loop pays for a host snapshot of this rank's share of
//! the flat state only; the upload (and its report to the coordinator) runs on a thread beside
//! the next steps.
//!
//! At most one upload is in flight per rank. When the previous one is still running (a store
//! slower than the save interval), the next save waits for it rather than drop a checkpoint, so
//! every rank saves the same steps. The upload thread hands its host buffer back for the next
//! snapshot: a recycled, already-faulted buffer costs far less than a fresh allocation.

use std::thread::JoinHandle;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use elf_shared::ids::{QuorumId, Step, WorkerId};
use elf_shared::manifest::{TensorEntry, shard_file, shard_range};
use elf_shared::messages::{ShardOutcome, ShardReport, StateIndex, TrainStep};
use elf_store::Location;

use crate::checkpoint::write_shard;
use crate::client::Client;
use crate::metrics::WorkerMetrics;
use crate::replica::Replica;

/// One rank's saves.
#[derive(Debug)]
pub struct Saver {
    upload: Option<JoinHandle<Vec<f32>>>,
    client: Client,
    rt: tokio::runtime::Handle,
    worker: WorkerId,
    retries: usize,
}

impl Saver {
    /// Builds the saver of a replica; when the run saves at all, a thread pre-faults a buffer
    /// the size of this rank's share (`share` elements) so that the first snapshot does not
    /// pay for page faults inside the step loop either.
    pub fn new(
        saves: bool,
        share: usize,
        client: Client,
        rt: tokio::runtime::Handle,
        worker: WorkerId,
        retries: usize,
    ) -> Self {
        let upload = saves.then(|| {
            std::thread::spawn(move || {
                let mut v = vec![0.0f32; share];
                for page in v.chunks_mut(1024) {
                    page[0] = 1.0;
                }
                v
            })
        });
        Self {
            upload,
            client,
            rt,
            worker,
            retries,
        }
    }

    /// Snapshots this rank's share of `replica` after step `t` and uploads it into `dir` in
    /// the background, once the previous upload is done.
    pub fn save<B: AutodiffBackend>(
        &mut self,
        replica: &Replica<B>,
        t: &TrainStep,
        dir: &str,
        metrics: &WorkerMetrics,
    ) {
        let t_wait = Instant::now();
        let buf = self.wait();
        let waited = t_wait.elapsed().as_secs_f64();
        metrics.checkpoint_wait_seconds.set(waited);
        if waited > 1.0 {
            tracing::warn!(
                step = t.step.0,
                waited_seconds = waited,
                "waited for the previous checkpoint upload (the store is slower than checkpoint.interval_steps)"
            );
        }
        let (a, b) = shard_range(replica.state_numel(), t.rank as u64, t.world_size as u64);
        let (tensors, data) = replica.snapshot_range(a, b, buf);
        let job = Upload {
            dir: dir.to_string(),
            worker: self.worker.clone(),
            step: t.step,
            quorum: t.quorum,
            rank: t.rank,
            world: t.world_size,
            retries: self.retries,
            optimizer_count: replica.optimizer.count,
        };
        let (client, rt) = (self.client.clone(), self.rt.clone());
        self.upload = Some(std::thread::spawn(move || {
            job.run(tensors, data, client, rt)
        }));
    }

    /// Waits for the upload in flight; returns its buffer for reuse.
    pub fn wait(&mut self) -> Vec<f32> {
        self.upload
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// One rank's shard of a checkpoint, uploaded in the background.
struct Upload {
    dir: String,
    worker: WorkerId,
    step: Step,
    quorum: QuorumId,
    rank: u32,
    world: u32,
    retries: usize,
    optimizer_count: u64,
}

impl Upload {
    fn run(
        self,
        tensors: Vec<TensorEntry>,
        data: Vec<f32>,
        mut client: Client,
        rt: tokio::runtime::Handle,
    ) -> Vec<f32> {
        let numel = tensors.last().map_or(0, |t| t.offset + t.numel());
        let (a, b) = shard_range(numel, self.rank as u64, self.world as u64);
        let file = shard_file(self.rank, self.world);
        elf_shared::failpoint::delay("upload");
        let written = match data.iter().position(|v| !v.is_finite()) {
            // A non-finite state is never saved: the save fails, so it is never committed.
            Some(i) => Err(crate::checkpoint::CheckpointError::Piece {
                shard: file.clone(),
                message: format!(
                    "element {} (tensor {}) is {}: a non-finite state is not saved",
                    a + i as u64,
                    elf_shared::manifest::tensor_at(&tensors, a + i as u64),
                    data[i]
                ),
            }),
            None => Location::parse(&self.dir)
                .map_err(crate::checkpoint::CheckpointError::from)
                .and_then(|dir| write_shard(&dir, &file, &tensors, &data, a, b, self.retries)),
        };
        let outcome = match written {
            Ok(entry) => ShardOutcome::Uploaded {
                entry,
                index: (self.rank == 0).then_some(StateIndex {
                    tensors,
                    numel,
                    optimizer_count: self.optimizer_count,
                }),
            },
            Err(e) => {
                tracing::warn!(step = self.step.0, error = %e, "checkpoint shard not saved");
                ShardOutcome::Failed {
                    error: e.to_string(),
                }
            }
        };
        let report = ShardReport {
            worker: self.worker,
            step: self.step,
            quorum: self.quorum,
            rank: self.rank,
            world_size: self.world,
            outcome,
        };
        if let Err(e) = rt.block_on(client.report_shard(report)) {
            tracing::warn!(error = %e, "could not report the checkpoint shard");
        }
        data
    }
}
