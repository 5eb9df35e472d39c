//! Sampling and evaluation of a committed checkpoint (spec §5–§6): load the EMA weights, generate
//! with each entry of the sampling sweep, score with the paper's metrics.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use elf_dataset::collate::Collator;
use elf_dataset::tokenizer::TextTokenizer;
use elf_dataset::{Dataset, Row, open_dataset};
use elf_model::elf::Elf;
use elf_model::gpt2::Gpt2;
use elf_model::metrics::{bleu, entropy, perplexity, rouge};
use elf_model::sampler::SampleSpec;
use elf_model::t5::T5Encoder;
use elf_shared::config::{Config, ResolvedConfig, SamplingConfig};
use elf_shared::manifest::Manifest;
use elf_store::Location;

use crate::generate::{generate, sweep};

use crate::replica::{Replica, load_encoder};

/// A checkpoint ready to sample from: its config, the EMA network and the frozen encoder.
pub struct Loaded<B: AutodiffBackend> {
    /// The run's resolved config (from the manifest).
    pub rc: ResolvedConfig,
    /// The manifest.
    pub manifest: Manifest,
    /// The EMA parameters (spec §5: sampling always uses them).
    pub ema: Elf<B::InnerBackend>,
    /// The frozen encoder.
    pub encoder: T5Encoder<B::InnerBackend>,
    /// The text tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// Row -> sequence.
    pub collator: Collator,
}

/// Loads a committed checkpoint folder (`.../step-00000042`) or a run's checkpoint root (its
/// `latest` committed step), checking every shard's hash.
///
/// # Errors
/// No manifest (the step was never committed), a shard with a wrong hash, a config that no
/// longer resolves.
pub fn load<B: AutodiffBackend>(url: &str, device: &B::Device) -> anyhow::Result<Loaded<B>> {
    let dir = elf_store::checkpoints::folder(url)?;
    let manifest = elf_store::checkpoints::read_manifest(&dir)?;
    let rc = Config::from_yaml(
        &manifest.config_yaml,
        &format!("{} (manifest config)", dir.display()),
        Path::new("."),
        &[],
    )?;
    let c = &rc.config;
    let tokenizer = Arc::new(TextTokenizer::for_config(
        c.tokenizer_name.as_deref(),
        &rc.base_dir,
    )?);
    let vocab = tokenizer.vocab_size();
    let encoder = load_encoder::<B::InnerBackend>(&rc, device)?;
    let mut tr = Replica::<B>::new(c.clone(), encoder, vocab, device.clone());
    tr.load(&dir, &manifest)?;
    let collator = Collator::from_config(c, vocab);
    Ok(Loaded {
        ema: tr.ema.clone(),
        encoder: tr.encoder.clone(),
        rc,
        manifest,
        tokenizer,
        collator,
    })
}

/// One generated sample.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Generated {
    /// The sampling config's run name (spec §6.5).
    pub run: String,
    /// Index in the sample set.
    pub id: usize,
    /// The condition text (conditional tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The reference target text (eval sets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The decoded generation.
    pub output: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
}

/// Reads conditional prompts from a dataset (JSONL `{"input","output"}`, Arrow, Parquet).
///
/// # Errors
/// An unreadable file or a malformed row (naming the file and line).
pub fn read_prompts(
    spec: &str,
    tokenizer: &Arc<TextTokenizer>,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Row>> {
    let ds: Box<dyn Dataset> = open_dataset(spec, tokenizer)?;
    let n = limit.map_or(ds.len(), |l| (l as u64).min(ds.len()));
    (0..n)
        .map(|i| ds.row(i).map_err(anyhow::Error::from))
        .collect()
}

/// Generates `n` samples (or one per prompt) with one sampling spec, `batch` at a time;
/// `progress` is called with the number done.
///
/// # Errors
/// A prompt the collator rejects.
#[allow(clippy::too_many_arguments)]
pub fn sample_all<B: AutodiffBackend>(
    m: &Loaded<B>,
    spec: &SampleSpec,
    prompts: Option<&[Row]>,
    n: usize,
    batch: usize,
    seed: u64,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
) -> anyhow::Result<Vec<Generated>> {
    let total = prompts.map_or(n, <[Row]>::len);
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(total);
    for start in (0..total).step_by(batch) {
        let end = (start + batch).min(total);
        let rows = prompts.map(|p| &p[start..end]);
        let ids = generate(
            &m.ema,
            &m.encoder,
            &m.rc.config,
            &m.collator,
            rows,
            end - start,
            spec,
            (seed, start as u64),
            device,
        )?;
        for (k, tokens) in ids.into_iter().enumerate() {
            let row = rows.map(|r| &r[k]);
            out.push(Generated {
                run: run_name(spec, prompts.is_some()),
                id: start + k,
                prompt: row.and_then(|r| {
                    r.input.clone().or_else(|| {
                        r.condition_input_ids
                            .as_ref()
                            .map(|c| m.tokenizer.decode(c))
                    })
                }),
                reference: row.and_then(|r| r.target.clone()),
                output: m.tokenizer.decode(&tokens),
                tokens,
            });
        }
        progress(end);
    }
    Ok(out)
}

/// The run name of one spec, as the reference names its output folders (spec §6.5).
pub fn run_name(spec: &SampleSpec, conditional: bool) -> String {
    use elf_shared::config::{SamplingMethod as Method, TimeSchedule};
    let method = match spec.method {
        Method::Ode => "ode",
        Method::Sde => "sde",
    };
    let schedule = match spec.schedule {
        TimeSchedule::Uniform => "uniform",
        TimeSchedule::LogitNormal => "logit_normal",
    };
    let mut s = format!("{method}-steps{}-cfg{}", spec.steps, fmt_num(spec.cfg));
    if spec.sc_cfg != 1.0 {
        s.push_str(&format!("-sccfg{}", fmt_num(spec.sc_cfg)));
    }
    s.push_str(&format!("-ts_{schedule}"));
    if matches!(spec.method, Method::Sde) {
        // `sde_gamma` is a float field of the reference's dataclass, and Python prints a float
        // with its point: `gamma1.0`, not `gamma1` (the cfg and SC-CFG scales of the shipped
        // YAMLs are ints: `cfg1`, `sccfg3`).
        s.push_str(&format!("-gamma{}", py_float(spec.gamma)));
    }
    s.push_str(if conditional { "-cond" } else { "-uncond" });
    s
}

/// Python's `str(float)` for the small numbers in run names (`1.0` -> `1`, as the YAML ints).
fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// Python's `str(float)` for the small numbers in run names (`1.0` -> `1.0`, `1.5` -> `1.5`).
fn py_float(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// The GPT-2 scorer of generative perplexity: the network and its tokenizer.
pub struct Scorer<B: burn::tensor::backend::Backend> {
    /// The causal LM.
    pub model: Gpt2<B>,
    /// Its tokenizer (`tokenizer.json` in the same folder).
    pub tokenizer: TextTokenizer,
    /// EOS = pad id (`<|endoftext|>`).
    pub eos: u32,
}

impl<B: burn::tensor::backend::Backend> Scorer<B> {
    /// Loads a GPT-2 folder: `config.json`, `model.safetensors`, `tokenizer.json`.
    ///
    /// # Errors
    /// Missing files or tensors, naming them; a tokenizer without `<|endoftext|>`.
    pub fn load(dir: &Path, device: &B::Device) -> anyhow::Result<Self> {
        let model = Gpt2::load(dir, device)?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let eos = tokenizer.token_id("<|endoftext|>").with_context(|| {
            format!(
                "{}: tokenizer has no <|endoftext|> token",
                dir.join("tokenizer.json").display()
            )
        })?;
        Ok(Self {
            model,
            tokenizer,
            eos,
        })
    }
}

pub use elf_shared::messages::EvalResult;

/// Scores generations: BLEU and ROUGE against the references when there are any, else
/// generative perplexity and entropy with the scorer (spec §6.2–6.4).
pub fn score<B: burn::tensor::backend::Backend>(
    run: String,
    gens: &[Generated],
    scorer: Option<&Scorer<B>>,
    max_len: usize,
    batch: usize,
    device: &B::Device,
) -> EvalResult {
    let mut r = EvalResult {
        run,
        samples: gens.len(),
        ..EvalResult::default()
    };
    if gens.iter().any(|g| g.reference.is_some()) {
        // References are the eval set's raw target text (spec §6.4); a row without one cannot
        // be scored, and is left out loudly rather than scored against an empty string.
        let (hyps, refs): (Vec<&str>, Vec<&str>) = gens
            .iter()
            .filter_map(|g| Some((g.output.as_str(), g.reference.as_deref()?)))
            .unzip();
        if refs.len() < gens.len() {
            tracing::warn!(
                run = %r.run,
                unscored = gens.len() - refs.len(),
                "eval rows without a target text are left out of BLEU/ROUGE"
            );
        }
        r.samples = refs.len();
        r.bleu = Some(bleu::corpus_bleu(&hyps, &refs).score);
        let m = rouge::corpus_rouge(&hyps, &refs);
        (r.rouge1, r.rouge2, r.rouge_l) = (Some(m.rouge1), Some(m.rouge2), Some(m.rouge_l));
    } else if let Some(s) = scorer {
        let limit = max_len.min(s.model.config.n_positions);
        let ids: Vec<Vec<u32>> = gens
            .iter()
            .filter(|g| !g.output.trim().is_empty())
            .map(|g| {
                let mut v = s.tokenizer.encode(&g.output);
                v.truncate(limit);
                v
            })
            .filter(|v| !v.is_empty())
            .collect();
        let p = perplexity::generative_perplexity(&s.model, &ids, s.eos, batch, device);
        r.ppl = Some(p.ppl);
        r.mean_entropy = Some(entropy::mean_entropy(&ids));
    }
    r
}

/// The sampling sweep to run: the config's, or a sampling YAML's.
///
/// # Errors
/// An unreadable sampling YAML.
pub fn specs(c: &Config, sampling: Option<&Path>) -> anyhow::Result<Vec<SampleSpec>> {
    let list: Vec<SamplingConfig> = match sampling {
        Some(p) => elf_shared::config::load_sampling_configs(p)?,
        None => c.sampling_configs.clone(),
    };
    Ok(list.iter().flat_map(sweep).collect())
}

/// What an evaluation runs: the sweep, the samples or eval rows, the scorer.
pub struct EvalPlan<B: burn::tensor::backend::Backend> {
    /// Sampling specs (the sweep).
    pub specs: Vec<SampleSpec>,
    /// Conditional eval rows (None: unconditional).
    pub prompts: Option<Vec<Row>>,
    /// Unconditional samples.
    pub n: usize,
    /// Generation batch.
    pub batch: usize,
    /// GPT-2 scorer (unconditional).
    pub scorer: Option<Scorer<B>>,
    /// Scorer context limit.
    pub max_len: usize,
    /// Scorer batch.
    pub scorer_batch: usize,
    /// Sampling seed.
    pub seed: u64,
}

/// What the command line may change about a config's evaluation.
#[derive(Debug, Clone, Default)]
pub struct EvalOverrides {
    /// Eval set instead of `eval_data_path`.
    pub eval_file: Option<String>,
    /// GPT-2 folder instead of `eval.gpt2` / `eval_ppl_model`.
    pub gpt2: Option<std::path::PathBuf>,
    /// Samples or eval rows instead of `eval.num_samples` / `num_samples`.
    pub num_samples: Option<usize>,
    /// Generation batch instead of `eval.batch` / `global_batch_size`.
    pub batch: Option<usize>,
    /// Sampling seed instead of the config's `seed`.
    pub seed: Option<u64>,
}

/// The evaluation a task config asks for (spec §6): its eval set (or `eval_file`), its sample
/// count, its sweep, and the GPT-2 scorer at `gpt2` (default: `eval.gpt2`, else
/// `eval_ppl_model` when that names a folder; without one perplexity is skipped, with a
/// warning).
///
/// # Errors
/// An unreadable eval set or a GPT-2 folder that does not load.
pub fn plan_for<B: burn::tensor::backend::Backend>(
    task: &ResolvedConfig,
    tokenizer: &Arc<TextTokenizer>,
    o: EvalOverrides,
    device: &B::Device,
) -> anyhow::Result<EvalPlan<B>> {
    let EvalOverrides {
        eval_file,
        gpt2,
        num_samples,
        batch,
        seed,
    } = o;
    let seed = seed.unwrap_or(task.config.seed);
    let c = &task.config;
    let eval_set = eval_file.or_else(|| c.eval_data_path.as_ref().map(|p| task.resolve(p)));
    let n = num_samples.or(c.eval.num_samples).unwrap_or(c.num_samples);
    let prompts = match &eval_set {
        Some(f) => Some(read_prompts(f, tokenizer, Some(n))?),
        None => None,
    };
    let scorer = if prompts.is_some() {
        None
    } else {
        let dir = gpt2
            .or_else(|| c.eval.gpt2.as_ref().map(|p| task.resolve(p).into()))
            .unwrap_or_else(|| task.resolve(&c.eval_ppl_model).into());
        if dir.is_dir() {
            Some(Scorer::load(&dir, device)?)
        } else {
            tracing::warn!(
                scorer = %dir.display(),
                "no GPT-2 folder there: generative perplexity and entropy are skipped (give one with config.json, model.safetensors, tokenizer.json)"
            );
            None
        }
    };
    Ok(EvalPlan {
        specs: specs(c, None)?,
        prompts,
        n,
        batch: batch.or(c.eval.batch).unwrap_or(c.global_batch_size),
        scorer,
        max_len: c.eval_ppl_max_length,
        scorer_batch: c.eval_ppl_batch_size.clamp(1, 8),
        seed,
    })
}

/// Runs an evaluation plan on a loaded checkpoint: for each spec, its generations and scores.
/// `progress(run, done, total)` follows the generation.
///
/// # Errors
/// A prompt the collator rejects.
pub fn run_plan<B: AutodiffBackend>(
    m: &Loaded<B>,
    plan: &EvalPlan<B::InnerBackend>,
    device: &B::Device,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> anyhow::Result<Vec<(EvalResult, Vec<Generated>)>> {
    let mut out = vec![];
    for spec in &plan.specs {
        let run = run_name(spec, plan.prompts.is_some());
        let total = plan.prompts.as_ref().map_or(plan.n, Vec::len);
        let gens = sample_all(
            m,
            spec,
            plan.prompts.as_deref(),
            plan.n,
            plan.batch,
            plan.seed,
            device,
            &mut |d| progress(&run, d, total),
        )?;
        let r = score(
            run,
            &gens,
            plan.scorer.as_ref(),
            plan.max_len,
            plan.scorer_batch,
            device,
        );
        out.push((r, gens));
    }
    Ok(out)
}

/// Writes generations as JSONL, one object per sample.
///
/// # Errors
/// IO errors, naming the file.
pub fn write_generations(path: &Path, gens: &[Generated]) -> anyhow::Result<()> {
    let text = generations_jsonl(gens)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// Returns generations as JSON lines.
///
/// # Errors
/// A generation that does not serialise.
pub fn generations_jsonl(gens: &[Generated]) -> anyhow::Result<String> {
    let mut text = String::new();
    for g in gens {
        text.push_str(&serde_json::to_string(g)?);
        text.push('\n');
    }
    Ok(text)
}

/// An eval job of the coordinator: evaluate the committed checkpoint in `dir` as the run's
/// config asks, write the generations under `<run>/eval/step-<k>/` (the run location, a URL
/// or path), and return the results.
///
/// # Errors
/// A checkpoint that does not load (e.g. deleted by retention), an unreadable eval set.
pub fn run_job<B: AutodiffBackend>(
    dir: &str,
    run: &Location,
    device: &B::Device,
) -> anyhow::Result<Vec<EvalResult>> {
    let m: Loaded<B> = load(dir, device)?;
    let plan = plan_for::<B::InnerBackend>(&m.rc, &m.tokenizer, EvalOverrides::default(), device)?;
    let step = m.manifest.step;
    let results = run_plan(&m, &plan, device, &mut |_, _, _| {})?;
    let folder = run.join("eval").join(&elf_shared::manifest::step_dir(step));
    let mut out = vec![];
    for (r, gens) in results {
        let loc = folder.join(&format!("{}.jsonl", r.run));
        loc.put(generations_jsonl(&gens)?.into_bytes())?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{effective, sweep};
    use elf_shared::config::load_sampling_configs;

    fn shipped(file: &str) -> Vec<SampleSpec> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/sampling_configs");
        load_sampling_configs(&dir.join(file))
            .unwrap()
            .iter()
            .flat_map(sweep)
            .collect()
    }

    #[test]
    fn run_names_are_the_references() {
        // Spec §6.5's format, on the shipped sampling YAMLs (the reference's folder names).
        let u: Vec<String> = shipped("uncond_sampling_configs.yml")
            .iter()
            .map(|s| run_name(s, false))
            .collect();
        assert_eq!(
            u,
            [
                "sde-steps32-cfg1-sccfg3-ts_logit_normal-gamma1.5-uncond",
                "sde-steps64-cfg1-sccfg3-ts_logit_normal-gamma1.0-uncond"
            ]
        );
        let c: Vec<String> = shipped("cond_sampling_configs.yml")
            .iter()
            .map(|s| run_name(s, true))
            .collect();
        assert_eq!(c, ["ode-steps64-cfg2-ts_logit_normal-cond"]);
    }

    #[test]
    fn unconditional_generation_runs_at_cfg_one() {
        let mut s = shipped("cond_sampling_configs.yml")[0];
        assert_eq!(effective(&s, true).cfg, 2.0);
        assert_eq!(effective(&s, false).cfg, 1.0);
        s.cfg = 1.5;
        assert_eq!(effective(&s, false), SampleSpec { cfg: 1.0, ..s });
    }
}
