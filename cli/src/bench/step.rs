//! `elf bench step`: our training step (T5 encoder + both branches in the reference's 80/20
//! mix, clip, Muon/Adam, EMA) against the PyTorch anchor `scripts/bench/bench_torch.py` at the
//! anchor's tiny size and at ELF-B, L = 128, B = 4, both on this CPU.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use elf_model::objective::Branch;
use elf_model::t5::T5Encoder;
use elf_worker::replica::Replica;
use serde_json::Value;

use super::{anchor_config, micro_batch};
use crate::out;

pub fn bench_step<B: AutodiffBackend>(
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
    let mut tr = Replica::<B>::new(c.clone(), encoder, vocab, device);
    let mut step = |i: u64, branch: Branch| {
        let mb = micro_batch(&c, branch, i, vocab as u32);
        let t0 = Instant::now();
        let (g, _) = tr.gradients(std::slice::from_ref(&mb));
        tr.apply(g, 1e-3).expect("a finite step");
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
    // The finite-value checks: per step, three summed losses (the gradient norm is computed
    // for clipping anyway); per save, one scan of the rank's share of the state before upload.
    let (_, state) = tr.snapshot();
    let t0 = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        std::hint::black_box(state.iter().position(|v| !v.is_finite()));
    }
    let scan_ms = t0.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let t0 = Instant::now();
    for i in 0..1000 {
        std::hint::black_box([0.5f64 + i as f64, 1.0, 2.0].iter().all(|v| v.is_finite()));
    }
    let step_check_ms = t0.elapsed().as_secs_f64() * 1e3 / 1000.0;
    out::line(format!(
        "bench step {label}: finite checks {:.5}% of a step in the step loop ({step_check_ms:.6} ms; target < 1%), plus a scan of the whole state at each save, on the upload thread: {:.2} ms ({:.2}% of one step, divided by checkpoint.interval_steps per step)",
        100.0 * step_check_ms / ours,
        scan_ms,
        100.0 * scan_ms / ours
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
