//! `elf sample` and `elf eval`: generate from a committed checkpoint's EMA weights and score
//! the generations with the paper's metrics (spec §5–§6).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use elf_model::backend::{Cpu, CpuTrain};
use elf_store::hub::RepoKind::{Dataset, Model};
use elf_worker::eval::{self, EvalResult, Loaded};

use crate::out;

/// `elf sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// Checkpoint folder, or a checkpoint root (its `latest`): path, URL or hub id.
    #[arg(long)]
    checkpoint: String,
    /// Conditional prompts: JSONL with `{"input": ...}` per line (or any dataset format).
    #[arg(long)]
    input: Option<String>,
    /// Unconditional samples to generate (prompts: at most this many, default all).
    #[arg(long, short)]
    num: Option<usize>,
    /// A sampling YAML instead of the run's sampling configs (spec §5.7).
    #[arg(long)]
    sampling: Option<PathBuf>,
    /// Samples per batch (default: the config's global batch size).
    #[arg(long)]
    batch: Option<usize>,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// JSONL output: one `{"id", "prompt", "output", "tokens", "run"}` per sample.
    #[arg(long, default_value = "samples.jsonl")]
    out: PathBuf,
    /// How many samples to print.
    #[arg(long, default_value_t = 4)]
    show: usize,
}

/// `elf eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Checkpoint folder, or a checkpoint root (its `latest`): path, URL or hub id.
    #[arg(long)]
    checkpoint: String,
    /// The task's config (eval set, sampling configs, sample count, scorer); default: the
    /// checkpoint's own.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `key=value` overrides of that config.
    #[arg(long)]
    set: Vec<String>,
    /// Eval set (JSONL `{"input", "output"}` or any dataset format) instead of the config's
    /// `eval_data_path`.
    #[arg(long)]
    eval_file: Option<String>,
    /// GPT-2 folder (config.json, model.safetensors, tokenizer.json) for generative
    /// perplexity, instead of the config's `eval_ppl_model`.
    #[arg(long)]
    gpt2: Option<PathBuf>,
    /// Samples (unconditional) or eval rows (conditional) instead of `num_samples`.
    #[arg(long)]
    num_samples: Option<usize>,
    /// Samples per generation batch (default: the config's global batch size).
    #[arg(long)]
    batch: Option<usize>,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Several sampling seeds in one call (`--seeds 0,1,2`): the evaluation runs once per
    /// seed (generations under `<out>/seed-<s>/`), then each metric's mean and spread.
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    seeds: Vec<u64>,
    /// Where to write the metrics (JSON) and the generations (`<run>.jsonl` beside it).
    #[arg(long, default_value = "eval")]
    out: PathBuf,
}

fn progress(total: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} samples, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Runs `elf sample`.
pub fn sample(a: SampleArgs) -> anyhow::Result<()> {
    let device = Default::default();
    let ckpt = crate::hub_path(&a.checkpoint, Model, "--checkpoint")?;
    let m: Loaded<CpuTrain> = eval::load(&ckpt, &device)?;
    let c = &m.rc.config;
    let prompts = match &a.input {
        Some(f) => Some(eval::read_prompts(f, &m.tokenizer, a.num)?),
        None => None,
    };
    let n = a.num.unwrap_or(8);
    let specs = eval::specs(c, a.sampling.as_deref())?;
    let batch = a.batch.unwrap_or(c.global_batch_size);
    let mut all = vec![];
    for spec in &specs {
        let run = eval::run_name(spec, prompts.is_some());
        let total = prompts.as_ref().map_or(n, Vec::len);
        let bar = progress(total, &run);
        let gens = eval::sample_all(
            &m,
            spec,
            prompts.as_deref(),
            n,
            batch,
            a.seed,
            &device,
            &mut |d| bar.set_position(d as u64),
        )?;
        bar.finish_and_clear();
        for g in gens.iter().take(a.show) {
            match &g.prompt {
                Some(p) => out::line(format!("[{run} #{}] {p} => {}", g.id, g.output)),
                None => out::line(format!("[{run} #{}] {}", g.id, g.output)),
            }
        }
        all.extend(gens);
    }
    eval::write_generations(&a.out, &all)?;
    out::line(format!(
        "wrote {} samples of step {} to {}",
        all.len(),
        m.manifest.step,
        a.out.display()
    ));
    Ok(())
}

/// Runs `elf eval`.
pub fn evaluate(a: EvalArgs) -> anyhow::Result<()> {
    let device = Default::default();
    let ckpt = crate::hub_path(&a.checkpoint, Model, "--checkpoint")?;
    let m: Loaded<CpuTrain> = eval::load(&ckpt, &device)?;
    let mut task = match &a.config {
        Some(p) => crate::load_config(p, &a.set)?,
        None => m.rc.clone(),
    };
    crate::resolve_hub_ids(&mut task, false)?;
    let eval_file = match &a.eval_file {
        Some(f) => Some(crate::hub_path(f, Dataset, "--eval-file")?),
        None => None,
    };
    let gpt2 = match &a.gpt2 {
        Some(g) => Some(PathBuf::from(crate::hub_path(
            &g.to_string_lossy(),
            Model,
            "--gpt2",
        )?)),
        None => None,
    };
    let overrides = eval::EvalOverrides {
        eval_file,
        gpt2,
        num_samples: a.num_samples,
        batch: a.batch,
        seed: Some(a.seed),
    };
    let mut plan = eval::plan_for::<Cpu>(&task, &m.tokenizer, overrides, &device)?;
    let seeds = if a.seeds.is_empty() {
        vec![a.seed]
    } else {
        a.seeds.clone()
    };
    let mut per_seed = vec![];
    for &seed in &seeds {
        plan.seed = seed;
        let dir = if seeds.len() == 1 {
            a.out.clone()
        } else {
            a.out.join(format!("seed-{seed}"))
        };
        let mut bar: Option<(String, indicatif::ProgressBar)> = None;
        let done = eval::run_plan(&m, &plan, &device, &mut |run, d, total| {
            if bar.as_ref().is_none_or(|(r, _)| r != run) {
                if let Some((_, b)) = bar.take() {
                    b.finish_and_clear();
                }
                bar = Some((run.to_string(), progress(total, run)));
            }
            if let Some((_, b)) = &bar {
                b.set_position(d as u64);
            }
        })?;
        if let Some((_, b)) = bar.take() {
            b.finish_and_clear();
        }
        let mut results: Vec<EvalResult> = vec![];
        for (r, gens) in done {
            eval::write_generations(&dir.join(format!("{}.jsonl", r.run)), &gens)?;
            results.push(r);
        }
        if seeds.len() > 1 {
            out::line(format!("seed {seed}"));
        }
        print_table(&results);
        per_seed.push(results);
    }
    let doc = if seeds.len() == 1 {
        serde_json::json!({
            "checkpoint": a.checkpoint,
            "step": m.manifest.step,
            "seed": seeds[0],
            "results": per_seed[0],
        })
    } else {
        let summary = spread(&per_seed);
        out::line(format!(
            "over seeds {}: mean ± sample standard deviation",
            seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
        for r in &summary {
            let parts: Vec<String> = r
                .metrics
                .iter()
                .map(|(k, s)| format!("{k} {:.2} ± {:.2}", s.mean, s.std))
                .collect();
            out::line(format!("{:<58} {}", r.run, parts.join("  ")));
        }
        serde_json::json!({
            "checkpoint": a.checkpoint,
            "step": m.manifest.step,
            "seeds": seeds,
            "per_seed": seeds.iter().zip(&per_seed)
                .map(|(s, r)| serde_json::json!({"seed": s, "results": r}))
                .collect::<Vec<_>>(),
            "summary": summary,
        })
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let path = a.out.join("metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    out::line(format!("wrote {}", path.display()));
    Ok(())
}

fn print_table(results: &[EvalResult]) {
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
    out::line(format!(
        "{:<58} {:>7} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8}",
        "run", "samples", "gen-ppl", "entropy", "bleu", "rouge1", "rouge2", "rougeL"
    ));
    for r in results {
        out::line(format!(
            "{:<58} {:>7} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8}",
            r.run,
            r.samples,
            fmt(r.ppl),
            fmt(r.mean_entropy),
            fmt(r.bleu),
            fmt(r.rouge1),
            fmt(r.rouge2),
            fmt(r.rouge_l)
        ));
    }
}

/// One metric over several seeds.
#[derive(Debug, serde::Serialize)]
struct Spread {
    /// Mean.
    mean: f64,
    /// Sample standard deviation (n − 1); 0 for one seed.
    std: f64,
    /// The value at each seed, in the order given.
    values: Vec<f64>,
}

/// One sampling config's metrics over the seeds.
#[derive(Debug, serde::Serialize)]
struct RunSpread {
    run: String,
    samples: usize,
    metrics: BTreeMap<&'static str, Spread>,
}

/// The mean and spread of each metric of each sampling config; every seed evaluates the same
/// sampling configs in the same order.
fn spread(per_seed: &[Vec<EvalResult>]) -> Vec<RunSpread> {
    per_seed[0]
        .iter()
        .enumerate()
        .map(|(i, first)| {
            let mut metrics = BTreeMap::new();
            for (name, _) in first.metrics() {
                let values: Vec<f64> = per_seed
                    .iter()
                    .filter_map(|rs| rs[i].metrics().into_iter().find(|(n, _)| *n == name))
                    .map(|(_, v)| v)
                    .collect();
                let n = values.len() as f64;
                let mean = values.iter().sum::<f64>() / n;
                let std = if values.len() > 1 {
                    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
                } else {
                    0.0
                };
                metrics.insert(name, Spread { mean, std, values });
            }
            RunSpread {
                run: first.run.clone(),
                samples: first.samples,
                metrics,
            }
        })
        .collect()
}
