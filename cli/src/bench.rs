//! `elf bench`: performance measured against an anchor in the same run, reported as ratios.
//!
//! * `step`: our training step (T5 encoder + both branches in the reference's 80/20 mix, clip,
//!   Muon/Adam, EMA) against the PyTorch anchor `scripts/bench/bench_torch.py` at the anchor's
//!   tiny size and at ELF-B, L = 128, B = 4, both on this CPU.
//! * `data`: collated tokens/s for the OWT shape from a prepared Arrow dataset on disk, on one
//!   core, against 20x the token rate an H200 consumes for ELF-B (300k tokens/s unless given).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use clap::Subcommand;
use elf_data::collate::Collator;
use elf_data::open_dataset;
use elf_data::prepare::{OutFormat, prepare};
use elf_data::tokenizer::TextTokenizer;
use elf_model::backend::CpuTrain;
use elf_model::objective::{Branch, Draws, HostBatch, draw_sample};
use elf_model::t5::T5Encoder;
use elf_shared::config::{Config, EncoderDims, ModelDims};
use elf_shared::seed::{Purpose, Stream};
use elf_worker::batch::MicroBatch;
use elf_worker::trainer::Trainer;
use serde_json::Value;

use crate::out;

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
                    "flex" => bench_step::<CpuTrain>(s, steps, anchor)?,
                    #[cfg(feature = "ndarray")]
                    "ndarray" => bench_step::<elf_model::backend::NdArrayTrain>(s, steps, anchor)?,
                    other => anyhow::bail!(
                        "--backend {other}: not built in (flex, or ndarray with --features ndarray)"
                    ),
                }
            }
            Ok(())
        }
        BenchCmd::Allreduce { workers, mib, reps } => bench_allreduce(workers, mib, reps),
        BenchCmd::RingPeer(a) => ring_peer(a),
        BenchCmd::Checkpoint { dir, no_step } => bench_checkpoint(dir, no_step),
        BenchCmd::Eval {
            config,
            steps,
            every,
            samples,
            threads,
        } => bench_eval(&config, steps, every, samples, threads),
        BenchCmd::Sample {
            config,
            batch,
            steps,
            reps,
        } => bench_sample(&config, batch, steps, reps),
        BenchCmd::Data {
            rows,
            batches,
            h200_tokens_per_s,
        } => bench_data(rows, batches, h200_tokens_per_s),
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

fn bench_step<B: AutodiffBackend>(
    size: &str,
    steps: usize,
    anchor: Option<&Path>,
) -> anyhow::Result<()>
where
    B::Device: Default,
{
    let (c, l, b) = anchor_config(size);
    let vocab = elf_model::dims::T5_VOCAB;
    let device = B::Device::default();
    let backend_name = B::name(&device);
    let encoder = T5Encoder::random(&c.encoder, &device);
    let mut tr = Trainer::<B>::new(c.clone(), encoder, vocab, device);
    let mut step = |i: u64, branch: Branch| {
        let mb = micro_batch(&c, branch, i, vocab as u32);
        let t0 = Instant::now();
        let (g, _) = tr.gradients(std::slice::from_ref(&mb));
        tr.apply(g, 1e-3);
        t0.elapsed().as_secs_f64() * 1e3
    };
    // Untimed warm-up: one of each branch, as the anchor does.
    step(0, Branch::Denoiser);
    step(1, Branch::Decoder);
    let (mut den, mut dec) = (vec![], vec![]);
    for i in 0..steps as u64 {
        if i % 5 == 4 {
            dec.push(step(2 + i, Branch::Decoder));
        } else {
            den.push(step(2 + i, Branch::Denoiser));
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let ours = 0.8 * mean(&den) + 0.2 * mean(&dec);
    let tokens = (b * l) as f64;
    let label = format!(
        "{} [{}]",
        if size == "tiny" {
            "tiny (H=64, D=2, T5 d=64x2)"
        } else {
            "ELF-B"
        },
        backend_name
    );
    out::line(format!(
        "bench step {label} B={b} L={l}: ours {ours:.1} ms/step ({:.0} tokens/s; denoiser {:.1} ms, decoder {:.1} ms)",
        tokens / (ours / 1e3),
        mean(&den),
        mean(&dec)
    ));
    let Some(anchor) = anchor else { return Ok(()) };
    let python = std::env::var("ELF_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.arg(anchor)
        .args(["--device", "cpu", "--batch", &b.to_string()]);
    if size == "tiny" {
        cmd.arg("--tiny");
    } else {
        cmd.args(["--seq-len", &l.to_string()]);
    }
    let o = cmd
        .output()
        .with_context(|| format!("running the anchor with {python}"))?;
    let line = String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default()
        .to_string();
    let rec: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
    match rec["step_ms"].as_f64() {
        Some(torch_ms) if o.status.success() => out::line(format!(
            "bench step {label} B={b} L={l}: torch {torch_ms:.1} ms/step ({} {}); ratio ours/torch = {:.2} (target <= 1.5)",
            rec["torch_version"].as_str().unwrap_or("?"),
            rec["precision"].as_str().unwrap_or(""),
            ours / torch_ms
        )),
        _ => out::line(format!(
            "bench step {label}: anchor failed ({python} {}): {}",
            anchor.display(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("no output")
        )),
    }
    Ok(())
}

fn bench_data(rows: u64, batches: u64, h200: f64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (l, b) = (1024usize, 32u64);
    // A JSONL of space-separated numbers tokenises to long sequences; prepare then reads them.
    let src = dir.path().join("src.jsonl");
    let mut text = String::new();
    let mut rng = Stream::new(0, Purpose::DataOrder, 7, 0);
    for _ in 0..rows {
        let words: Vec<String> = (0..700).map(|_| format!("w{}", rng.below(5000))).collect();
        text.push_str(&serde_json::json!({"text": words.join(" ")}).to_string());
        text.push('\n');
    }
    std::fs::write(&src, text)?;
    let tok = Arc::new(TextTokenizer::t5());
    let out_dir = dir.path().join("prepared");
    prepare(
        &src,
        &out_dir,
        OutFormat::Arrow,
        5_000,
        &tok,
        &mut |_, _, _| {},
    )?;
    let data = open_dataset(&out_dir.display().to_string(), &tok)?;
    let c = Config {
        max_length: l,
        global_batch_size: b as usize,
        ..Config::default()
    };
    let collator = Collator::from_config(&c, tok.vocab_size());
    let plan = elf_shared::plan::Plan::new(data.len(), b, 0)?;
    // One core: this thread only.
    let start = Instant::now();
    let mut tokens = 0u64;
    let mut ids = Vec::with_capacity(b as usize * l);
    for step in 0..batches {
        ids.clear();
        for p in 0..b {
            let row = data.row(plan.row(step, p))?;
            let col = collator.collate(&row).map_err(anyhow::Error::msg)?;
            let mut m = vec![0f32; l];
            collator.loss_mask(&col, &mut m);
            ids.extend_from_slice(&col.ids);
        }
        tokens += (b as usize * l) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = tokens as f64 / secs;
    out::line(format!(
        "bench data L={l} B={b}: {rate:.0} collated tokens/s on one core; target 20 x {h200:.0} = {:.0}; ratio = {:.2} (target >= 1)",
        20.0 * h200,
        rate / (20.0 * h200)
    ));
    Ok(())
}

fn bench_allreduce(workers: usize, mib: usize, reps: usize) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    anyhow::ensure!(workers >= 2, "--workers must be at least 2");
    let exe = std::env::current_exe()?;
    let mut procs = vec![];
    let mut addrs = vec![];
    for r in 0..workers {
        let mut child = Command::new(&exe)
            .args([
                "bench",
                "ring-peer",
                "--rank",
                &r.to_string(),
                "--mib",
                &mib.to_string(),
                "--reps",
                &reps.to_string(),
            ])
            .env("RAYON_NUM_THREADS", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).context("ring peer did not report its addresses")?;
        addrs.push(v);
        procs.push((child, out));
    }
    let peers: Vec<&str> = addrs
        .iter()
        .map(|a| a["ring"].as_str().unwrap_or_default())
        .collect();
    let msg = serde_json::json!({"peers": peers, "raw_peer": addrs[1]["raw"]}).to_string();
    for (c, _) in &mut procs {
        writeln!(c.stdin.as_mut().expect("piped"), "{msg}")?;
    }
    let (mut ring_s, mut raw_s, mut duplex_s) = (0f64, 0f64, 0f64);
    for (mut c, mut out) in procs {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("ring peer reported {line:?}"))?;
        ring_s = ring_s.max(v["seconds"].as_f64().unwrap_or(0.0));
        raw_s = raw_s.max(v["raw_seconds"].as_f64().unwrap_or(0.0));
        duplex_s = duplex_s.max(v["duplex_seconds"].as_f64().unwrap_or(0.0));
        c.wait()?;
    }
    let bytes = (mib << 20) as f64;
    let w = workers as f64;
    let busbw = bytes * 2.0 * (w - 1.0) / w / (ring_s / reps as f64);
    let raw = bytes / raw_s;
    let duplex = bytes / duplex_s;
    out::line(format!(
        "bench allreduce workers={workers} size={mib} MiB: ring bus bandwidth {:.2} GB/s; raw loopback TCP between two of the processes {:.2} GB/s one way, {:.2} GB/s per direction full duplex; ratio ring/raw = {:.2} (target >= 0.7), ring/duplex = {:.2}",
        busbw / 1e9,
        raw / 1e9,
        duplex / 1e9,
        busbw / raw,
        busbw / duplex
    ));
    Ok(())
}

fn ring_peer(a: RingPeerArgs) -> anyhow::Result<()> {
    use elf_worker::collective::{Collective, Ring};
    use std::io::{BufRead, Read, Write};
    let ring_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let raw_l = std::net::TcpListener::bind("127.0.0.1:0")?;
    out::line(
        serde_json::json!({"ring": ring_l.local_addr()?.to_string(), "raw": raw_l.local_addr()?.to_string()}),
    );
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line)?;
    let peers: Vec<String> = v["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect();
    let bytes = a.mib << 20;
    // Raw TCP between ranks 0 and 1, before the ring exists.
    let mut raw_seconds = 0.0;
    let chunk = vec![7u8; 1 << 20];
    if a.rank == 0 {
        let mut s = std::net::TcpStream::connect(v["raw_peer"].as_str().context("raw_peer")?)?;
        s.set_nodelay(true)?;
        let t0 = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        raw_seconds = t0.elapsed().as_secs_f64();
    } else if a.rank == 1 {
        let (mut s, _) = raw_l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < bytes {
            let n = s.read(&mut buf)?;
            anyhow::ensure!(n > 0, "raw sender closed early");
            got += n;
        }
        s.write_all(&[1])?;
    }
    // Full duplex between the same two processes: both directions at once, as a ring link is
    // used; the per-direction rate is the fair anchor when the ranks share the cores.
    let mut duplex_seconds = 0.0;
    if a.rank < 2 {
        let s = if a.rank == 0 {
            std::net::TcpStream::connect(v["raw_peer"].as_str().context("raw_peer")?)?
        } else {
            raw_l.accept()?.0
        };
        s.set_nodelay(true)?;
        let mut w = s.try_clone()?;
        let mut r = s;
        let t0 = Instant::now();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            let chunk = vec![7u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                w.write_all(&chunk[..n])?;
                left -= n;
            }
            Ok(())
        });
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < bytes {
            let n = r.read(&mut buf)?;
            anyhow::ensure!(n > 0, "duplex peer closed early");
            got += n;
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("duplex writer panicked"))??;
        duplex_seconds = t0.elapsed().as_secs_f64();
    }
    let mut ring = Ring::connect(
        &ring_l,
        &peers,
        a.rank,
        1,
        std::time::Duration::from_secs(60),
        4 << 20,
    )?;
    let mut buf = vec![1.0f32; bytes / 4];
    ring.all_reduce_sum(&mut buf)?;
    let t0 = Instant::now();
    for _ in 0..a.reps {
        ring.all_reduce_sum(&mut buf)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    out::line(
        serde_json::json!({"rank": a.rank, "seconds": seconds, "raw_seconds": raw_seconds, "duplex_seconds": duplex_seconds}),
    );
    Ok(())
}

fn bench_checkpoint(dir: Option<PathBuf>, no_step: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = tempfile::tempdir_in(dir.as_deref().unwrap_or(std::path::Path::new(".")))?;
    let (c, _, _) = anchor_config("base");
    let device = Default::default();
    let encoder = T5Encoder::random(&c.encoder, &device);
    let mut tr = Trainer::<CpuTrain>::new(c.clone(), encoder, elf_model::dims::T5_VOCAB, device);
    let step_ms = if no_step {
        None
    } else {
        let mb = micro_batch(&c, Branch::Denoiser, 0, elf_model::dims::T5_VOCAB as u32);
        let t0 = Instant::now();
        let (g, _) = tr.gradients(std::slice::from_ref(&mb));
        tr.apply(g, 1e-3);
        Some(t0.elapsed().as_secs_f64() * 1e3)
    };
    // What the step loop pays: the host snapshot. The first one into a fresh allocation (page
    // faults), then three into the recycled buffer, as the worker does (median).
    let t0 = Instant::now();
    let (_, first) = tr.snapshot_range(0, u64::MAX, Vec::new());
    let cold_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut blocked = vec![];
    let mut snap = (vec![], first);
    for _ in 0..3 {
        let t0 = Instant::now();
        snap = tr.snapshot_range(0, u64::MAX, snap.1);
        blocked.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    blocked.sort_by(f64::total_cmp);
    let (tensors, data) = snap;
    let bytes = data.len() as f64 * 4.0;
    // What runs in the background: encoding and writing the shard (one rank).
    let root = elf_data::source::Location::Local(tmp.path().join("ckpt"));
    let t0 = Instant::now();
    elf_worker::checkpoint::write_shard(
        &root,
        "shard-00000-of-00001.safetensors",
        &tensors,
        &data,
        0,
        data.len() as u64,
        1,
    )?;
    let upload_s = t0.elapsed().as_secs_f64();
    // The disk's raw sequential write, dd-like: 8 MiB blocks, then fsync.
    let raw_path = tmp.path().join("raw.bin");
    let block = vec![0x5au8; 8 << 20];
    let t0 = Instant::now();
    let mut f = std::fs::File::create(&raw_path)?;
    let mut left = bytes as usize;
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block[..n])?;
        left -= n;
    }
    f.sync_all()?;
    let raw_s = t0.elapsed().as_secs_f64();
    let upload = bytes / upload_s;
    let raw = bytes / raw_s;
    out::line(format!(
        "bench checkpoint ELF-B state {:.2} GB ({} tensors): step loop blocked {:.0} ms per save (snapshot into the recycled host buffer; {:.0} ms into a fresh allocation){}",
        bytes / 1e9,
        tensors.len(),
        blocked[1],
        cold_ms,
        match step_ms {
            Some(ms) => format!(
                "; one ELF-B CPU step {ms:.0} ms; blocked/step = {:.3} (target < 0.05)",
                blocked[1] / ms
            ),
            None => String::new(),
        }
    ));
    out::line(format!(
        "bench checkpoint upload {:.2} GB/s (encode + write + rename); raw sequential write {:.2} GB/s (8 MiB blocks + fsync); ratio = {:.2} (target >= 0.7)",
        upload / 1e9,
        raw / 1e9,
        upload / raw
    ));
    Ok(())
}

fn bench_sample(
    config: &Path,
    batch: Option<usize>,
    steps: usize,
    reps: usize,
) -> anyhow::Result<()> {
    use burn::tensor::Tensor;
    use elf_model::backend::Cpu;
    use elf_model::elf::{Elf, Mode};
    use elf_model::sampler::{Condition, SampleSpec, sample};
    use elf_shared::config::{SamplingMethod, TimeSchedule};
    let rc = crate::load_config(config, &[])?;
    let c = &rc.config;
    let device = Default::default();
    let dims = elf_model::dims::ElfDims::from_config(c, elf_model::dims::T5_VOCAB);
    let model = Elf::<Cpu>::init(&dims, c.seed, &device);
    let (n, s, e) = (
        batch.unwrap_or(c.global_batch_size),
        c.max_length,
        c.encoder.d_model,
    );
    let cond = Condition {
        latents: Tensor::<Cpu, 3>::zeros([n, s, e], &device),
        mask: Tensor::zeros([n, s, 1], &device),
    };
    let spec = SampleSpec {
        method: SamplingMethod::Sde,
        steps,
        cfg: 1.0,
        sc_cfg: 3.0,
        schedule: TimeSchedule::LogitNormal,
        gamma: 1.5,
    };
    let p = elf_worker::generate::flow_params(c);
    let sync = |t: Tensor<Cpu, 2, burn::tensor::Int>| t.into_data();
    sync(sample(&model, &cond, &spec, &p, (0, 0)));
    let t0 = Instant::now();
    for r in 0..reps {
        sync(sample(&model, &cond, &spec, &p, (0, r as u64 + 1)));
    }
    let sample_s = t0.elapsed().as_secs_f64() / reps as f64;
    // The anchor: the network evaluations alone (steps − 1 + 1 denoiser passes, one decoder pass).
    let u = Tensor::<Cpu, 3>::zeros([n, s, 2 * e], &device);
    let t = Tensor::<Cpu, 1>::full([n], 0.5, &device);
    let w = Tensor::<Cpu, 1>::full([n], 3.0, &device);
    let pass = |mode: Mode| {
        let o = model.forward(u.clone(), t.clone(), w.clone(), mode);
        match o.logits {
            Some(l) => drop(l.into_data()),
            None => drop(o.x.into_data()),
        }
    };
    pass(Mode::Denoise);
    let t0 = Instant::now();
    for _ in 0..reps {
        for _ in 0..steps {
            pass(Mode::Denoise);
        }
        pass(Mode::DecodeLogitsOnly);
    }
    let anchor_s = t0.elapsed().as_secs_f64() / reps as f64;
    let tokens = (n * s) as f64;
    out::line(format!(
        "bench sample {} (L = {s}, batch {n}): {steps}-step SDE sampling {:.0} ms per batch, {:.0} generated tokens/s; {} bare network passes {:.0} ms ({:.0} tokens/s); ratio = {:.2} (1 = no sampler overhead)",
        config.display(),
        sample_s * 1e3,
        tokens / sample_s,
        steps + 1,
        anchor_s * 1e3,
        tokens / anchor_s,
        anchor_s / sample_s
    ));
    Ok(())
}

/// Tokens per second of a finished run: all tokens over all step time, the first two steps
/// (warm-up) left out.
fn run_throughput(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("metrics/timing.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let (mut tokens, mut secs) = (0.0, 0.0);
    for line in text.lines().skip(2) {
        let v: Value = serde_json::from_str(line)?;
        let s = v["step_seconds"].as_f64().unwrap_or(0.0);
        tokens += v["tokens_per_s"].as_f64().unwrap_or(0.0) * s;
        secs += s;
    }
    anyhow::ensure!(secs > 0.0, "{}: no timed steps", path.display());
    Ok(tokens / secs)
}

fn bench_eval(
    config: &Path,
    steps: u64,
    every: u64,
    samples: usize,
    threads: Option<usize>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate the elf binary")?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = threads.unwrap_or((cores / 2).max(1)).to_string();
    let tmp = tempfile::tempdir()?;
    let run = |name: &str, eval: bool| -> anyhow::Result<(f64, usize)> {
        let dir = tmp.path().join(name);
        let mut args: Vec<String> = [
            "train",
            "--config",
            &config.display().to_string(),
            "--workers",
            "1",
            "--threads",
            &threads,
            "--run-dir",
            &dir.display().to_string(),
            "--set",
            &format!("train.max_steps={steps}"),
            "--set",
            &format!("checkpoint.interval_steps={every}"),
            "--set",
            "train.final_samples=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if eval {
            for s in [
                "--eval-workers".to_string(),
                "1".into(),
                "--set".into(),
                "eval.every_checkpoints=1".into(),
                "--set".into(),
                "eval.on_training_workers=false".into(),
                "--set".into(),
                format!("eval.num_samples={samples}"),
            ] {
                args.push(s);
            }
        }
        let o = Command::new(&exe)
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "elf {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        let evals = std::fs::read_to_string(dir.join("metrics/eval.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        Ok((run_throughput(&dir)?, evals))
    };
    let (base, _) = run("no-eval", false)?;
    let (with, evals) = run("eval", true)?;
    out::line(format!(
        "bench eval {} ({steps} steps, checkpoint every {every}, {threads} threads per process): training {:.0} tokens/s without eval, {:.0} tokens/s with a dedicated eval worker ({evals} eval jobs of {samples} samples); ratio = {:.3} (target >= 0.9)",
        config.display(),
        base,
        with,
        with / base
    ));
    Ok(())
}
