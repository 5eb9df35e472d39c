//! `elf model params` and `elf model forward` (the checkpoint-conversion check).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Subcommand;
use elf_model::backend::Cpu;
use elf_model::dims::{ElfDims, T5_VOCAB, T5Dims};
use elf_model::elf::{Elf, Mode};
use elf_model::nn::{tensor, to_vec};
use elf_model::t5::T5Encoder;
use elf_model::weights::{HostTensor, TensorFile, load_named, write_safetensors};

use crate::out;

/// Model commands.
#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Builds a preset and prints its trainable parameter count (counted from the module).
    Params {
        /// ELF-B, ELF-M, ELF-L or ELF-T.
        #[arg(long, default_value = "ELF-B")]
        model: String,
        /// CE vocabulary (`len(tokenizer)`; 32100 for T5).
        #[arg(long, default_value_t = T5_VOCAB)]
        vocab: usize,
    },
    /// Runs the ELF network (and optionally the T5 encoder) on weights and inputs from
    /// safetensors files and writes the outputs to safetensors.
    ///
    /// `--params` holds ELF parameters under their Flax paths (`blocks_0/attn/qkv/kernel`, spec
    /// §1.4), or is a committed checkpoint (folder, or root through `latest`; path or URL) whose
    /// EMA weights run, e.g. one `elf import` wrote; `--inputs` holds `u` [B,S,2E], `t` [B], `w` [B] and, with `--t5`, `input_ids`
    /// [B,S] and `attention_mask` [B,S,S] (or [B,S]). Writes `x_denoise`, `x_decode`, `logits`
    /// and, with `--t5`, `latent`.
    Forward {
        /// ELF parameters (a safetensors file of Flax names, or a checkpoint: its EMA).
        #[arg(long)]
        params: PathBuf,
        /// Inputs.
        #[arg(long)]
        inputs: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// An HF T5EncoderModel safetensors file (HF names).
        #[arg(long)]
        t5: Option<PathBuf>,
        /// The T5 relative-attention max distance (not recoverable from weights).
        #[arg(long, default_value_t = 128)]
        t5_max_distance: usize,
    },
}

/// Runs a model command.
pub fn run(cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Params { model, vocab } => {
            let dims = ElfDims::from_preset(&model, vocab, 1).with_context(|| {
                format!("--model: unknown preset {model:?} (ELF-B, ELF-M, ELF-L, ELF-T)")
            })?;
            let m = Elf::<Cpu>::init(&dims, 0, &Default::default());
            out::line(m.param_count());
            Ok(())
        }
        ModelCmd::Forward {
            params,
            inputs,
            out: out_path,
            t5,
            t5_max_distance,
        } => forward(&params, &inputs, &out_path, t5.as_deref(), t5_max_distance),
    }
}

/// Reads ELF dimensions off a parameter file.
fn elf_dims(f: &TensorFile, seq_len: usize) -> anyhow::Result<ElfDims> {
    let s = |n: &str| f.shape(n);
    let tok = s("t_emb_tokens")?;
    let hidden = tok[2];
    let hd = s("blocks_0/attn/q_norm/weight")?[0];
    let depth = f
        .names()
        .iter()
        .filter(|n| n.starts_with("blocks_") && n.ends_with("/norm1/weight"))
        .count();
    Ok(ElfDims {
        hidden,
        depth,
        heads: hidden / hd,
        ffn: s("blocks_0/mlp/w3/kernel")?[0],
        latent: s("self_cond_proj/kernel")?[1],
        bottleneck: s("text_proj/proj1/kernel")?[1],
        vocab: s("unembed_kernel")?[1],
        seq_len,
        n_time: tok[1],
        n_sc: s("self_cond_cfg_tokens")?[1],
        n_mode: s("mode_tokens")?[1],
    })
}

/// Reads T5 dimensions off an HF encoder file.
fn t5_dims(f: &TensorFile, max_distance: usize) -> anyhow::Result<T5Dims> {
    let emb = f.shape(if f.contains("shared.weight") {
        "shared.weight"
    } else {
        "encoder.embed_tokens.weight"
    })?;
    let rel = f.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?;
    let inner = f.shape("encoder.block.0.layer.0.SelfAttention.q.weight")?[0];
    Ok(T5Dims {
        vocab_size: emb[0],
        d_model: emb[1],
        d_kv: inner / rel[1],
        num_heads: rel[1],
        d_ff: f.shape("encoder.block.0.layer.1.DenseReluDense.wi.weight")?[0],
        num_layers: f
            .names()
            .iter()
            .filter(|n| n.ends_with("layer.0.layer_norm.weight"))
            .count(),
        relative_attention_num_buckets: rel[0],
        relative_attention_max_distance: max_distance,
        init_seed: 0,
    })
}

/// The ELF parameters to run: a safetensors file, or a committed checkpoint's EMA weights
/// (every shard's hash checked) under their Flax names.
fn params_file(params: &Path) -> anyhow::Result<TensorFile> {
    if params.is_file() {
        return Ok(TensorFile::open(params)?);
    }
    let url = params.to_str().context("--params: not UTF-8")?;
    let dir = elf_store::checkpoints::folder(url)
        .with_context(|| format!("--params {url}: neither a safetensors file nor a checkpoint"))?;
    let m = elf_store::checkpoints::read_manifest(&dir)?;
    let state = elf_worker::checkpoint::read_state(&dir, &m, &m.tensors)?;
    let ema: BTreeMap<String, HostTensor> = m
        .tensors
        .iter()
        .filter_map(|e| {
            let name = e.name.strip_prefix("ema/")?;
            let (a, b) = (e.offset as usize, (e.offset + e.numel()) as usize);
            let t = HostTensor {
                shape: e.shape.clone(),
                data: state[a..b].to_vec(),
            };
            Some((name.to_string(), t))
        })
        .collect();
    let bytes = elf_model::weights::to_safetensors(&ema, None);
    Ok(TensorFile::from_bytes(
        Path::new(&format!("{} (EMA)", dir.display())),
        bytes,
    )?)
}

fn forward(
    params: &Path,
    inputs: &Path,
    out_path: &Path,
    t5: Option<&Path>,
    max_distance: usize,
) -> anyhow::Result<()> {
    let device = Default::default();
    let pf = params_file(params)?;
    let inf = TensorFile::open(inputs)?;
    let u_shape = inf.shape("u")?;
    let [b, s, w2] = u_shape[..] else {
        anyhow::bail!(
            "{}: u must be [B, S, 2E], got {u_shape:?}",
            inputs.display()
        )
    };
    let dims = elf_dims(&pf, s)?;
    anyhow::ensure!(
        w2 == 2 * dims.latent,
        "{}: u has width {w2}, the parameters need 2E = {}",
        inputs.display(),
        2 * dims.latent
    );
    let model = load_named(Elf::<Cpu>::init(&dims, 0, &device), &pf)?;
    let u = tensor::<Cpu, 3>(inf.get_f32("u", &u_shape)?, [b, s, w2], &device);
    let t = tensor::<Cpu, 1>(inf.get_f32("t", &[b])?, [b], &device);
    let w = tensor::<Cpu, 1>(inf.get_f32("w", &[b])?, [b], &device);
    let mut outs = BTreeMap::new();
    let host = |t: Tensor<Cpu, 3>| HostTensor {
        shape: t.dims().to_vec(),
        data: to_vec(t),
    };
    outs.insert(
        "x_denoise".to_string(),
        host(
            model
                .forward(u.clone(), t.clone(), w.clone(), Mode::Denoise)
                .x,
        ),
    );
    let dec = model.forward(u, t, w, Mode::Decode);
    outs.insert("x_decode".to_string(), host(dec.x));
    outs.insert(
        "logits".to_string(),
        host(dec.logits.expect("decoder mode")),
    );
    if let Some(t5p) = t5 {
        let tf = TensorFile::open(t5p)?;
        let enc = T5Encoder::<Cpu>::load_hf(t5p, &t5_dims(&tf, max_distance)?, &device)?;
        let (ids, shape) = inf.get_i64("input_ids")?;
        let [bb, ss] = shape[..] else {
            anyhow::bail!("{}: input_ids must be [B, S]", inputs.display())
        };
        let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [bb, ss]), &device);
        let mshape = inf.shape("attention_mask")?;
        let mask = match mshape[..] {
            [_, _, _] => tensor::<Cpu, 3>(
                inf.get_f32("attention_mask", &mshape)?,
                [bb, ss, ss],
                &device,
            ),
            [_, _] => tensor::<Cpu, 2>(inf.get_f32("attention_mask", &mshape)?, [bb, ss], &device)
                .unsqueeze_dim::<3>(1)
                .repeat_dim(1, ss),
            _ => anyhow::bail!(
                "{}: attention_mask must be [B, S] or [B, S, S]",
                inputs.display()
            ),
        };
        outs.insert("latent".to_string(), host(enc.forward(ids, mask)));
    }
    write_safetensors(out_path, &outs)?;
    out::line(format!(
        "wrote {} ({})",
        out_path.display(),
        outs.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}
