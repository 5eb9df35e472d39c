//! `elf bench eval`: training throughput with a dedicated eval worker evaluating every
//! checkpoint, against the same run without eval, both run here.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::out;

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

pub fn bench_eval(
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
