//! `elf train`: trains a config and prints samples from the EMA weights at the end.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use elf_shared::config::ResolvedConfig;
use elf_worker::batch;
use elf_worker::generate::{generate, sweep};
use elf_worker::setup::{DataSetup, load_encoder};
use elf_worker::trainer::Trainer;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tracing::info;

use crate::out;

/// Arguments of `elf train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run config (YAML).
    #[arg(long, default_value = "configs/quickstart.yaml")]
    pub config: PathBuf,
    /// Where metrics, logs and the resolved config go.
    #[arg(long, default_value = "runs/quickstart")]
    pub run_dir: PathBuf,
    /// Overrides, `key=value` (dotted keys reach sections), applied before validation.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

/// Runs `elf train`.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let rc = crate::load_config(&a.config, &a.set)?;
    train::<elf_model::backend::CpuTrain>(&rc, &a.run_dir, Default::default())
}

/// Trains in this process on `device`.
pub fn train<B: AutodiffBackend>(
    rc: &ResolvedConfig,
    run_dir: &Path,
    device: B::Device,
) -> anyhow::Result<()> {
    let c = &rc.config;
    let ds = DataSetup::open(rc)?;
    let encoder = load_encoder::<B::InnerBackend>(rc, &device)?;
    let mut tr = Trainer::<B>::new(
        c.clone(),
        encoder,
        ds.vocab,
        ds.schedule(rc),
        device.clone(),
    );
    fs::create_dir_all(run_dir.join("metrics"))
        .with_context(|| format!("{}: cannot create run dir", run_dir.display()))?;
    fs::write(run_dir.join("config.yaml"), c.to_yaml())
        .with_context(|| format!("{}: cannot write", run_dir.display()))?;
    let metrics_path = run_dir.join("metrics/train.jsonl");
    let mut metrics =
        fs::File::create(&metrics_path).with_context(|| format!("{}", metrics_path.display()))?;
    let hash = c.hash();
    info!(
        params = tr.num_params(),
        rows = ds.data.len(),
        steps = ds.total_steps,
        steps_per_epoch = ds.steps_per_epoch,
        config_hash = %hash,
        "training {}",
        ds.data.describe()
    );
    let g = c.global_batch_size as u64;
    let micro = c.train.micro_batch_size.unwrap_or(c.global_batch_size);
    let tokens_per_step = (g as usize * c.max_length) as f64;
    let pb = ProgressBar::new(ds.total_steps).with_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    let start = Instant::now();
    for step in 0..ds.total_steps {
        let t0 = Instant::now();
        let mbs = batch::build(
            c,
            &ds.plan,
            ds.data.as_ref(),
            &ds.collator,
            step,
            0..g,
            c.encoder.d_model,
            micro,
        )?;
        let (grads, parts) = tr.gradients(&mbs);
        let applied = tr.apply(grads);
        let secs = t0.elapsed().as_secs_f64();
        let (ce, l2) = parts.rescaled(c.decoder_prob);
        let line = json!({
            "step": step, "loss": parts.loss, "ce_loss": ce, "l2_loss": l2, "lr": applied.lr,
            "grad_norm": applied.grad_norm, "step_seconds": secs, "tokens_per_s": tokens_per_step / secs,
            "config_hash": hash.0,
        });
        writeln!(metrics, "{line}").with_context(|| format!("{}", metrics_path.display()))?;
        pb.set_position(step + 1);
        pb.set_message(format!(
            "loss {:.3} (l2 {l2:.3} ce {ce:.3}) {:.0} tok/s",
            parts.loss,
            tokens_per_step / secs
        ));
        if (step + 1) % c.log_freq.max(1) == 0 {
            info!(
                step = step + 1,
                loss = parts.loss,
                ce_loss = ce,
                l2_loss = l2,
                lr = applied.lr,
                "train"
            );
        }
    }
    pb.finish_and_clear();
    info!(seconds = start.elapsed().as_secs_f64(), "training done");
    print_samples(rc, &tr, &ds, &device)
}

/// Prints a few samples from the EMA weights with the first sampling config.
fn print_samples<B: AutodiffBackend>(
    rc: &ResolvedConfig,
    tr: &Trainer<B>,
    ds: &DataSetup,
    device: &B::Device,
) -> anyhow::Result<()> {
    let c = &rc.config;
    let n = c.train.final_samples;
    if n == 0 {
        return Ok(());
    }
    let mut spec = sweep(&c.sampling_configs[0])[0];
    spec.steps = c.train.final_sample_steps;
    let prompts: Option<Vec<_>> = if ds.data.is_conditional() {
        Some(
            (0..n as u64)
                .map(|i| ds.data.row(i))
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    };
    let tokens = generate(
        &tr.ema,
        &tr.encoder,
        c,
        &ds.collator,
        prompts.as_deref(),
        n,
        &spec,
        (c.seed, 0),
        device,
    )
    .map_err(anyhow::Error::msg)?;
    out::line(format!(
        "samples ({:?}, {} steps, EMA weights):",
        spec.method, spec.steps
    ));
    for (i, t) in tokens.iter().enumerate() {
        let text = ds.tokenizer.decode(t);
        match &prompts {
            Some(p) => out::line(format!(
                "[{i}] {} => {text}",
                p[i].input.clone().unwrap_or_else(|| ds
                    .tokenizer
                    .decode(p[i].condition_input_ids.as_deref().unwrap_or(&[])))
            )),
            None => out::line(format!("[{i}] {text}")),
        }
    }
    Ok(())
}
