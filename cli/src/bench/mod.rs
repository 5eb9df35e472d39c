//! `elf bench`: performance measured against an anchor in the same run, reported as ratios
//! (every figure in BENCHMARKS.md comes from one of these).
//!
//! # Layout
//! - [`step`]: the CPU training step against the PyTorch anchor.
//! - [`data`]: collated tokens/s against what an H200 consumes.
//! - [`allreduce`]: the TCP ring against raw loopback TCP.
//! - [`checkpoint`]: the save's blocked time and upload throughput against the raw disk.
//! - [`sample`]: sampling against bare network passes.
//! - [`eval`]: training throughput with an eval worker against without.
//! - [`status`]: what one open status page costs the coordinator, against one core.
//! - this file: the subcommand, and the anchor's config and batches the step benches share.

mod allreduce;
mod checkpoint;
mod data;
mod eval;
mod sample;
mod status;
mod step;

use std::path::PathBuf;

use clap::Subcommand;
use elf_model::backend::CpuTrain;
use elf_model::objective::{Branch, Draws, HostBatch, draw_sample};
use elf_shared::config::{Config, EncoderDims, ModelDims};
use elf_shared::seed::{Purpose, Stream};
use elf_worker::batch::MicroBatch;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// ms per training step and tokens/s on CPU, ours vs the PyTorch anchor, at two sizes.
    Step {
        /// Which sizes: tiny, base or both.
        #[arg(long, default_value = "both")]
        size: String,
        /// Timed steps per branch mix (one in five is a decoder step).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// The anchor script.
        #[arg(long, default_value = "scripts/bench/bench_torch.py")]
        anchor: PathBuf,
        /// Skip the anchor (prints our figures only).
        #[arg(long)]
        no_anchor: bool,
        /// CPU backend: flex (default) or ndarray (needs `--features ndarray`).
        #[arg(long, default_value = "flex")]
        backend: String,
    },
    /// Ring all-reduce bus bandwidth over loopback between worker processes, against the raw
    /// loopback TCP throughput between two of the same processes, measured in the same run.
    Allreduce {
        /// Processes in the ring.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Buffer size in MiB.
        #[arg(long, default_value_t = 256)]
        mib: usize,
        /// Timed all-reduces.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Run each process on a host of its own: a network namespace per rank, joined by a
        /// bridge, with links capped at `--link-gbit` (tc tbf; needs root and iproute2). The
        /// anchor is then the capped link's raw TCP rate, measured in the same run.
        #[arg(long)]
        hosts: Option<usize>,
        /// The link rate of `--hosts`, in Gbit/s.
        #[arg(long, default_value_t = 1.0)]
        link_gbit: f64,
    },
    /// Checkpoint cost for an ELF-B-sized state on the local disk: time the step loop is
    /// blocked per save (the host snapshot), upload throughput, and raw sequential write
    /// throughput of the same disk measured in the same run.
    Checkpoint {
        /// Folder on the disk to measure (default: a temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Skip timing an ELF-B CPU step (the blocked-time target is 5% of one).
        #[arg(long)]
        no_step: bool,
    },
    /// Generated tokens/s of SDE sampling (32 steps, spec §5.7's first OWT entry) from a
    /// config's network on CPU, against the same number of bare network evaluations measured
    /// in the same run (ratio 1 = the sampler adds nothing to the network's cost).
    Sample {
        /// The config whose network and sequence length to use.
        #[arg(long, default_value = "configs/tiny.yaml")]
        config: PathBuf,
        /// Samples per batch (default: the config's global batch size).
        #[arg(long)]
        batch: Option<usize>,
        /// Sampling steps.
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// Timed batches.
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Training throughput with a dedicated eval worker evaluating every checkpoint, against
    /// the same run without eval, both run here (target: at least 0.9). Each process gets
    /// `--threads` threads, so the eval worker has cores of its own, as it would on a cluster.
    Eval {
        /// The run config.
        #[arg(long, default_value = "configs/quickstart.yaml")]
        config: PathBuf,
        /// Training steps per run.
        #[arg(long, default_value_t = 40)]
        steps: u64,
        /// Checkpoint (and eval) every this many steps.
        #[arg(long, default_value_t = 8)]
        every: u64,
        /// Samples per eval job.
        #[arg(long, default_value_t = 16)]
        samples: usize,
        /// Threads per worker process (default: half the cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// What one open status page (a `/status` refresh per second) costs the coordinator,
    /// with every bounded list of the page full, as a share of one core.
    Status {
        /// Timed repetitions of each figure (the median is printed).
        #[arg(long, default_value_t = 200)]
        reps: usize,
    },
    /// One process of `bench allreduce` (internal).
    #[command(hide = true)]
    RingPeer(RingPeerArgs),
    /// Collated tokens/s from a prepared Arrow dataset at L = 1024, B = 32, on one core.
    Data {
        /// Rows to prepare (random token sequences of 1024 ids).
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        /// Batches to time.
        #[arg(long, default_value_t = 400)]
        batches: u64,
        /// Tokens/s an H200 consumes for ELF-B (the anchor's figure).
        #[arg(long, default_value_t = 300_000.0)]
        h200_tokens_per_s: f64,
    },
}

/// Arguments of the hidden `bench ring-peer` (one process of `bench allreduce`).
#[derive(Debug, clap::Args)]
pub struct RingPeerArgs {
    /// This process's rank.
    #[arg(long)]
    rank: usize,
    /// MiB to all-reduce.
    #[arg(long)]
    mib: usize,
    /// Timed repetitions.
    #[arg(long)]
    reps: usize,
    /// The address its listeners bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Step {
            size,
            steps,
            anchor,
            no_anchor,
            backend,
        } => {
            let sizes: Vec<&str> = match size.as_str() {
                "both" => vec!["tiny", "base"],
                s @ ("tiny" | "base") => vec![s],
                other => anyhow::bail!("--size: {other:?} is not tiny, base or both"),
            };
            let anchor = (!no_anchor).then_some(anchor.as_path());
            for s in sizes {
                match backend.as_str() {
                    "flex" => step::bench_step::<CpuTrain>(s, steps, anchor)?,
                    #[cfg(feature = "ndarray")]
                    "ndarray" => {
                        step::bench_step::<elf_model::backend::NdArrayTrain>(s, steps, anchor)?
                    }
                    other => anyhow::bail!(
                        "--backend {other}: not built in (flex, or ndarray with --features ndarray)"
                    ),
                }
            }
            Ok(())
        }
        BenchCmd::Allreduce {
            workers,
            mib,
            reps,
            hosts: None,
            ..
        } => allreduce::bench_allreduce(workers, mib, reps),
        BenchCmd::Allreduce {
            mib,
            reps,
            hosts: Some(hosts),
            link_gbit,
            ..
        } => allreduce::bench_allreduce_hosts(hosts, link_gbit, mib, reps),
        BenchCmd::RingPeer(a) => allreduce::ring_peer(a),
        BenchCmd::Checkpoint { dir, no_step } => checkpoint::bench_checkpoint(dir, no_step),
        BenchCmd::Eval {
            config,
            steps,
            every,
            samples,
            threads,
        } => eval::bench_eval(&config, steps, every, samples, threads),
        BenchCmd::Sample {
            config,
            batch,
            steps,
            reps,
        } => sample::bench_sample(&config, batch, steps, reps),
        BenchCmd::Data {
            rows,
            batches,
            h200_tokens_per_s,
        } => data::bench_data(rows, batches, h200_tokens_per_s),
        BenchCmd::Status { reps } => status::bench_status(reps),
    }
}

/// The anchor's `Cfg` (train_owt_ELF-B values) as our config, at its tiny or ELF-B size.
fn anchor_config(size: &str) -> (Config, usize, usize) {
    let mut c = Config {
        latent_std: 0.2,
        denoiser_p_mean: -1.5,
        denoiser_noise_scale: 2.0,
        decoder_prob: 0.2,
        decoder_noise_scale: 5.0,
        blr: 0.001,
        warmup_steps: 0,
        ..Config::default()
    };
    let (l, b) = if size == "tiny" {
        c.encoder = EncoderDims {
            d_model: 64,
            d_kv: 16,
            num_heads: 4,
            d_ff: 128,
            num_layers: 2,
            ..EncoderDims::default()
        };
        c.model_dims = Some(ModelDims {
            hidden: 64,
            depth: 2,
            heads: 4,
            mlp_ratio: 4.0,
        });
        (64, 8)
    } else {
        (128, 4)
    };
    c.max_length = l;
    c.global_batch_size = b;
    c.train.branch_shard_size = b;
    (c, l, b)
}

/// A synthetic micro-batch of the anchor's shape, one branch, keyed by `step`.
fn micro_batch(c: &Config, branch: Branch, step: u64, vocab: u32) -> MicroBatch {
    let (s, n) = (c.max_length, c.global_batch_size);
    let mut ids_rng = Stream::new(0, Purpose::DataOrder, 99, step);
    let mut draws = Draws::default();
    for p in 0..n as u64 {
        draw_sample(c, branch, step, p, s, c.encoder.d_model, &mut draws);
    }
    MicroBatch {
        branch,
        batch: HostBatch {
            n,
            s,
            ids: (0..n * s)
                .map(|_| ids_rng.below(vocab as u64) as i32)
                .collect(),
            cond_len: vec![0; n],
            total_len: vec![s as u32; n],
            label_drop: vec![0.0; n],
            weight: vec![1.0 / (n * s) as f32; n * s],
        },
        draws,
        positions: (0..n as u64).collect(),
    }
}
