//! Generation from a trained replica: unconditional samples or continuations of conditions,
//! post-processed as the reference does (spec §5.5–5.6).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use elf_model::elf::Elf;
use elf_model::objective::{HostBatch, ObjectiveParams, encode};
use elf_model::sampler::{
    Condition, FlowParams, SampleSpec, finish_conditional, finish_unconditional, sample,
};
use elf_model::t5::T5Encoder;
use elf_shared::config::{Config, SamplingConfig};

use elf_dataset::Row;
use elf_dataset::collate::{CollateError, Collator};

/// The EOS id of the T5 vocabulary.
pub const EOS: i64 = 1;

/// Expands a sampling YAML entry into its sweep of single specs (steps × cfgs × SC-CFG scales).
pub fn sweep(s: &SamplingConfig) -> Vec<SampleSpec> {
    let mut out = vec![];
    for &steps in &s.num_sampling_steps {
        for &cfg in &s.cfgs {
            for &sc_cfg in &s.self_cond_cfg_scales {
                out.push(SampleSpec {
                    method: s.sampling_method,
                    steps,
                    cfg,
                    sc_cfg,
                    schedule: s.time_schedule,
                    gamma: s.sde_gamma,
                });
            }
        }
    }
    out
}

/// The spec a generation runs: unconditional generation is hard-wired to `cfg = 1`, as in
/// the reference (spec §5.7), whatever the sweep says (with no condition, the unconditional
/// pass of label CFG would only repeat the conditional one).
pub fn effective(spec: &SampleSpec, conditional: bool) -> SampleSpec {
    SampleSpec {
        cfg: if conditional { spec.cfg } else { 1.0 },
        ..*spec
    }
}

/// Returns the flow constants of a config.
pub fn flow_params(c: &Config) -> FlowParams {
    FlowParams {
        noise_scale: c.denoiser_noise_scale,
        t_eps: c.t_eps,
        p_mean: c.denoiser_p_mean,
        p_std: c.denoiser_p_std,
    }
}

/// Generates one batch and returns the post-processed token ids of each sample.
///
/// `prompts` holds conditional rows (the condition and, as in the reference's eval collator, the
/// reference target, which condition rows cannot see); `None` generates `n` unconditional samples.
/// `key` is `(seed, global index of the first sample)`.
///
/// # Errors
/// A prompt whose tokens fall outside the vocabulary.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Backend>(
    model: &Elf<B>,
    encoder: &T5Encoder<B>,
    c: &Config,
    collator: &Collator,
    prompts: Option<&[Row]>,
    n: usize,
    spec: &SampleSpec,
    key: (u64, u64),
    device: &B::Device,
) -> Result<Vec<Vec<u32>>, CollateError> {
    let s = c.max_length;
    let e = c.encoder.d_model;
    let p = flow_params(c);
    let (cond, lens) = match prompts {
        None => {
            let z = Tensor::<B, 3>::zeros([n, s, e], device);
            (
                Condition {
                    latents: z.clone(),
                    mask: Tensor::zeros([n, s, 1], device),
                },
                None,
            )
        }
        Some(rows) => {
            let mut b = HostBatch {
                s,
                ..HostBatch::default()
            };
            for r in rows {
                let col = collator.collate(r)?;
                b.n += 1;
                b.ids.extend_from_slice(&col.ids);
                b.cond_len.push(col.cond_len);
                b.total_len.push(col.total_len);
                b.label_drop.push(0.0);
            }
            let x0 = encode(encoder, &b, &ObjectiveParams::from_config(c), device);
            let mask = b.cond_mask::<B>(device);
            (Condition { latents: x0, mask }, Some(b.cond_len))
        }
    };
    let ids = sample(model, &cond, &effective(spec, lens.is_some()), &p, key);
    let [rows, _] = ids.dims();
    let flat: Vec<i64> = ids
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int tensor");
    Ok((0..rows)
        .map(|i| {
            let row = &flat[i * s..(i + 1) * s];
            let out = match &lens {
                None => finish_unconditional(row, EOS),
                Some(l) => {
                    let gen_len = s - c.max_input_length.unwrap_or(l[i] as usize);
                    finish_conditional(row, l[i] as usize, gen_len, EOS, c.pad_id() as i64)
                }
            };
            out.into_iter().map(|t| t as u32).collect()
        })
        .collect())
}
