//! `elf bench checkpoint`: for an ELF-B-sized state on the local disk, the time the step loop
//! is blocked per save (the host snapshot) and the upload throughput, against the same disk's
//! raw sequential write throughput measured in the same run.

use std::path::PathBuf;
use std::time::Instant;

use elf_model::backend::CpuTrain;
use elf_model::objective::Branch;
use elf_model::t5::T5Encoder;
use elf_worker::replica::Replica;

use super::{anchor_config, micro_batch};
use crate::out;

pub fn bench_checkpoint(dir: Option<PathBuf>, no_step: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = tempfile::tempdir_in(dir.as_deref().unwrap_or(std::path::Path::new(".")))?;
    let (c, _, _) = anchor_config("base");
    let device = Default::default();
    let encoder = T5Encoder::random(&c.encoder, &device);
    let mut tr = Replica::<CpuTrain>::new(c.clone(), encoder, elf_model::dims::T5_VOCAB, device);
    let step_ms = if no_step {
        None
    } else {
        let mb = micro_batch(&c, Branch::Denoiser, 0, elf_model::dims::T5_VOCAB as u32);
        let t0 = Instant::now();
        let (g, _) = tr.gradients(std::slice::from_ref(&mb));
        tr.apply(g, 1e-3).expect("a finite step");
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
    let root = elf_store::Location::Local(tmp.path().join("ckpt"));
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
