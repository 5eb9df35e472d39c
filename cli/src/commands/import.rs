//! `elf import`: a reference checkpoint (a flax msgpack train state) into a committed checkpoint
//! of ours, usable by `elf sample`, `elf eval`, `elf train --resume` and `elf model forward`.
//!
//! The source's tree is spec §7's `{params, ema_params1, opt_state, step, epoch, dropout_rng}`.
//! Every leaf is accounted for: a parameter, an EMA parameter, a Muon/Adam moment (`mu`/`nu`
//! under the optimiser's tree, followed by the parameter's path), an optimiser count, the Muon
//! coefficients (checked against ours), or one of the scalars; anything else is an error naming
//! the leaf, as is a parameter of the model the source lacks or holds at another shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use elf_model::backend::CpuTrain;
use elf_model::t5::T5Encoder;
use elf_shared::flax::{Leaf, read_state};
use elf_shared::manifest::{FORMAT, Manifest, shard_file, step_dir};
use elf_store::Location;
use elf_store::checkpoints;
use elf_worker::replica::Replica;
use serde_json::json;

use crate::out;

/// The Muon Newton–Schulz coefficients (spec §4.10), which our optimiser uses and the source's
/// `ns_coeffs` must equal.
const NS_COEFFS: [f32; 3] = [3.4445, -4.7750, 2.0315];

/// `elf import` arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The reference checkpoint: a flax msgpack file (`flax.serialization.to_bytes` of the
    /// train state), or a folder of `checkpoint_<step>` entries (the highest is taken); either
    /// as a hub id (`org/name[@revision][/path]`, e.g. `embedded-language-flows/ELF-B-owt`).
    pub src: PathBuf,
    /// The run's config (the reference's YAML loads as is): the model it describes must be the
    /// source's, and the checkpoint records it.
    #[arg(long)]
    pub config: PathBuf,
    /// Config overrides `key=value` (repeatable), as for `elf train`.
    #[arg(long)]
    pub set: Vec<String>,
    /// The checkpoint root to commit into (path or URL), e.g. `runs/imported/checkpoints`.
    #[arg(long)]
    pub out: String,
}

/// Where a source leaf goes.
#[derive(Default)]
struct Sorted {
    live: BTreeMap<String, Vec<f32>>,
    ema: BTreeMap<String, Vec<f32>>,
    mu: BTreeMap<String, Vec<f32>>,
    nu: BTreeMap<String, Vec<f32>>,
    counts: Vec<(String, i64)>,
    step: Option<i64>,
    epoch: Option<i64>,
    opt_leaves: usize,
}

/// Runs `elf import`.
pub fn run(a: ImportArgs) -> anyhow::Result<()> {
    let given = a.src.to_string_lossy().into_owned();
    let src = PathBuf::from(crate::hub_path(
        &given,
        elf_store::hub::RepoKind::Model,
        "elf import",
    )?);
    let src = resolve_source(&src)?;
    let at = src.display().to_string();
    let bytes = std::fs::read(&src).with_context(|| format!("{at}: cannot read"))?;
    let leaves = read_state(&bytes).with_context(|| format!("{at}: not a flax msgpack state"))?;
    drop(bytes);
    // The config's data and encoder are not needed to convert weights: no hub downloads.
    let rc = crate::commands::cluster::load_reported(&a.config, &a.set)?;
    let c = &rc.config;
    let tokenizer = elf_dataset::tokenizer::TextTokenizer::for_config(
        c.tokenizer_name.as_deref(),
        &rc.base_dir,
    )?;
    let device = Default::default();
    // The encoder is frozen and not part of the state: a random one builds the index.
    let encoder = T5Encoder::random(&c.encoder, &device);
    let mut tr = Replica::<CpuTrain>::new(c.clone(), encoder, tokenizer.vocab_size(), device);
    let (index, _) = tr.snapshot();
    let shapes: BTreeMap<&str, &[usize]> = index
        .iter()
        .filter_map(|e| Some((e.name.strip_prefix("params/")?, e.shape.as_slice())))
        .collect();

    let s = sort(leaves, &shapes, &at)?;
    let steps = s
        .step
        .with_context(|| format!("{at}: no `step` (the reference's train state has one)"))?;
    anyhow::ensure!(
        steps > 0,
        "{at}: step {steps}: an untrained state, nothing to import"
    );
    let (ema, ema_from) = if s.ema.is_empty() {
        tracing::warn!(
            "{at}: no ema_params1; the EMA starts as the live parameters, as the reference loads it"
        );
        (s.live.clone(), "params (no ema_params1)")
    } else {
        (s.ema, "ema_params1")
    };
    let with_opt = s.opt_leaves > 0;
    let optimizer_count = if with_opt {
        let first = s.counts.first().map(|(_, n)| *n).with_context(|| {
            format!("{at}: opt_state has moments but no count; cannot tell the optimiser's step")
        })?;
        if let Some((p, n)) = s.counts.iter().find(|(_, n)| *n != first) {
            anyhow::bail!(
                "{at}: {p}: count {n}, but {} is {first}; the optimiser's counts disagree",
                s.counts[0].0
            );
        }
        u64::try_from(first).with_context(|| format!("{at}: negative count {first}"))?
    } else {
        tracing::warn!(
            "{at}: no opt_state; the optimiser moments start at zero (fine for sampling and eval; a resumed run restarts Muon/Adam's momentum)"
        );
        steps as u64
    };

    let mut data = Vec::with_capacity(index.iter().map(|e| e.numel() as usize).sum());
    for e in &index {
        let (kind, name) = e.name.split_once('/').expect("index names have a kind");
        let (from, what) = match kind {
            "params" => (&s.live, "params"),
            "ema" => (&ema, "ema_params1"),
            "opt_mu" => (&s.mu, "opt_state .../mu"),
            _ => (&s.nu, "opt_state .../nu"),
        };
        match from.get(name) {
            Some(v) => data.extend_from_slice(v),
            None if kind.starts_with("opt_") && !with_opt => {
                data.resize(data.len() + e.numel() as usize, 0.0);
            }
            None => anyhow::bail!(
                "{at}: {what}/{name} is missing (the config's model has it, shape {:?})",
                e.shape
            ),
        }
    }
    // A moment the source holds that our optimiser does not keep (another partition).
    let ours: std::collections::HashSet<&str> = index.iter().map(|e| e.name.as_str()).collect();
    for (kind, m) in [("opt_mu", &s.mu), ("opt_nu", &s.nu)] {
        if let Some(n) = m
            .keys()
            .find(|n| !ours.contains(format!("{kind}/{n}").as_str()))
        {
            anyhow::bail!(
                "{at}: opt_state holds a {} moment of {n}, which this config's optimiser ({:?}) does not keep",
                &kind[4..],
                c.optimizer
            );
        }
    }
    tr.restore(&index, &data, optimizer_count)
        .with_context(|| format!("{at}: the state does not fit the model"))?;

    let root = Location::parse(&a.out)?;
    let step = steps as u64 - 1;
    let existing = checkpoints::list_steps(&root)
        .with_context(|| format!("{}: cannot list", root.display()))?;
    anyhow::ensure!(
        !existing.contains(&step),
        "{}: already holds {}; import into another root (nothing was written)",
        root.display(),
        step_dir(step)
    );
    let dir = root.join(&step_dir(step));
    let numel = data.len() as u64;
    let shard =
        elf_worker::checkpoint::write_shard(&dir, &shard_file(0, 1), &index, &data, 0, numel, 3)?;
    let digest = tr.param_digest();
    let m = Manifest {
        format: FORMAT,
        step,
        next_step: steps as u64,
        optimizer_count,
        config_hash: c.hash().0,
        config_yaml: c.to_yaml(),
        world_size: 1,
        numel,
        tensors: index,
        shards: vec![shard],
        seed: c.seed,
        metrics: json!({"imported_from": at, "epoch": s.epoch, "param_digest": digest}),
        eval: serde_json::Value::Null,
        param_digest: digest,
        manifest_sha256: String::new(),
    }
    .sealed();
    checkpoints::commit(&root, &m)?;
    out::line(format!(
        "{}: committed step {step} (reference step {steps}, epoch {}) from {at}: {} parameters, EMA from {ema_from}, {}",
        dir.display(),
        s.epoch.map_or("?".into(), |e| e.to_string()),
        tr.num_params(),
        if with_opt {
            format!("optimiser moments from opt_state (count {optimizer_count})")
        } else {
            "optimiser moments zero (no opt_state)".into()
        }
    ));
    out::line(
        "not carried: dropout_rng (our draws are keyed by seed, step and sample, so the run's seed and step are its whole random state)",
    );
    Ok(())
}

/// A file, or the highest `checkpoint_<n>` in a folder (as the reference resolves one).
fn resolve_source(p: &Path) -> anyhow::Result<PathBuf> {
    let at = p.display();
    let md = std::fs::metadata(p).with_context(|| format!("{at}: cannot read"))?;
    let path = if md.is_dir() {
        let mut best: Option<(u64, PathBuf)> = None;
        for e in std::fs::read_dir(p).with_context(|| format!("{at}: cannot list"))? {
            let e = e.with_context(|| format!("{at}: cannot list"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(n) = name
                .strip_prefix("checkpoint_")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, e.path()));
            }
        }
        best.map(|(_, p)| p)
            .with_context(|| format!("{at}: a folder without checkpoint_<step> entries"))?
    } else {
        p.to_path_buf()
    };
    if path.is_dir() {
        anyhow::bail!(
            "{}: an Orbax checkpoint folder: convert it with `python scripts/reference/orbax_to_msgpack.py {} STATE.msgpack`, then import STATE.msgpack",
            path.display(),
            path.display()
        );
    }
    Ok(path)
}

/// Sorts every leaf of the source into its place, or fails naming it.
fn sort(
    leaves: BTreeMap<String, Leaf>,
    shapes: &BTreeMap<&str, &[usize]>,
    at: &str,
) -> anyhow::Result<Sorted> {
    let mut s = Sorted::default();
    for (path, leaf) in leaves {
        let unknown = || {
            anyhow::anyhow!(
                "{at}: {path}: not part of an ELF train state (params, ema_params1, opt_state, step, epoch, dropout_rng)"
            )
        };
        let tensor = |name: &str, leaf: Leaf| -> anyhow::Result<Vec<f32>> {
            let want = shapes.get(name).ok_or_else(|| {
                anyhow::anyhow!("{at}: {path}: the config's model has no parameter {name}")
            })?;
            match leaf {
                Leaf::Float { shape, data, .. } if shape == *want => Ok(data),
                Leaf::Float { shape, .. } => {
                    anyhow::bail!("{at}: {path}: shape {shape:?}, the config's model has {want:?}")
                }
                other => anyhow::bail!("{at}: {path}: {other:?} is not a float tensor"),
            }
        };
        let (head, rest) = path.split_once('/').unwrap_or((path.as_str(), ""));
        match head {
            "params" | "ema_params1" => {
                // TrainState.params may keep flax's own `{"params": ...}` wrapper.
                let name = rest
                    .strip_prefix("params/")
                    .filter(|n| shapes.contains_key(n));
                let name = name.unwrap_or(rest);
                let v = tensor(name, leaf)?;
                let into = if head == "params" {
                    &mut s.live
                } else {
                    &mut s.ema
                };
                into.insert(name.to_string(), v);
            }
            "opt_state" => {
                s.opt_leaves += 1;
                let moment = ["mu", "nu"].iter().find_map(|m| {
                    let k = format!("/{m}/");
                    let i = path.find(&k)?;
                    let name = &path[i + k.len()..];
                    shapes.contains_key(name).then(|| (*m, name.to_string()))
                });
                if let Some((m, name)) = moment {
                    let v = tensor(&name, leaf)?;
                    let into = if m == "mu" { &mut s.mu } else { &mut s.nu };
                    into.insert(name, v);
                } else if path.ends_with("/count") {
                    s.counts
                        .push((path.clone(), integer(&leaf).ok_or_else(unknown)?));
                } else if path.ends_with("/ns_coeffs") {
                    let ok = matches!(&leaf, Leaf::Float { data, .. }
                        if data.chunks(3).all(|c| c.len() == 3
                            && c.iter().zip(NS_COEFFS).all(|(a, b)| (a - b).abs() <= 1e-6)));
                    anyhow::ensure!(
                        ok,
                        "{at}: {path}: {leaf:?}, but our Muon uses the coefficients {NS_COEFFS:?}"
                    );
                } else {
                    return Err(unknown());
                }
            }
            "step" if rest.is_empty() => s.step = Some(integer(&leaf).ok_or_else(unknown)?),
            "epoch" if rest.is_empty() => s.epoch = Some(integer(&leaf).ok_or_else(unknown)?),
            "dropout_rng" if rest.is_empty() => {}
            _ => return Err(unknown()),
        }
    }
    Ok(s)
}

/// A Python int or a one-element integer array.
fn integer(leaf: &Leaf) -> Option<i64> {
    match leaf {
        Leaf::Scalar(n) => Some(*n),
        Leaf::Int { data, .. } if data.len() == 1 => Some(data[0]),
        _ => None,
    }
}
