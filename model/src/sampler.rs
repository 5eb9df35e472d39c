//! The sampler of spec §5: time grids, ODE and SDE Euler steps with self-conditioning, SC-CFG
//! through the prefix tokens, label CFG, condition restoring, and decoding at t = 1.
//!
//! Runs on whatever module it is given; callers pass the EMA weights on the inner backend.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use elf_shared::config::{SamplingMethod, TimeSchedule};
use elf_shared::seed::{Purpose, Stream, sigmoid};

use crate::elf::{Elf, Mode};
use crate::nn::tensor;

/// One point of a sampling sweep: a single (steps, cfg, SC-CFG) combination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSpec {
    /// ODE or SDE.
    pub method: SamplingMethod,
    /// Network evaluations `N`.
    pub steps: usize,
    /// Label-CFG scale (1 disables the unconditional pass).
    pub cfg: f64,
    /// SC-CFG scale fed to the prefix tokens.
    pub sc_cfg: f64,
    /// Time grid.
    pub schedule: TimeSchedule,
    /// SDE churn.
    pub gamma: f64,
}

/// Constants of the flow shared with training.
#[derive(Debug, Clone, Copy)]
pub struct FlowParams {
    /// Noise scale `s_n`.
    pub noise_scale: f64,
    /// Velocity floor.
    pub t_eps: f64,
    /// Training logit-normal mean (used by the logit-normal grid).
    pub p_mean: f64,
    /// Training logit-normal std.
    pub p_std: f64,
}

/// Returns the `N + 1` grid points (spec §5.1); the logit-normal grid draws from `stream`.
pub fn time_grid(
    schedule: TimeSchedule,
    n: usize,
    p: &FlowParams,
    stream: &mut Stream,
) -> Vec<f64> {
    match schedule {
        TimeSchedule::Uniform => (0..=n).map(|i| i as f64 / n as f64).collect(),
        TimeSchedule::LogitNormal => {
            let normals: Vec<f64> = (0..n.saturating_sub(1)).map(|_| stream.normal()).collect();
            grid_from_normals(&normals, p)
        }
    }
}

/// Samples that share one time grid. The reference draws a grid per device shard of each
/// generation batch (spec §5.1), and the paper's generation batch of 512 over 32 devices gives
/// 16 samples a shard; sample `i` of a generation uses the grid of group `i / 16`, whatever
/// the batch it is generated in.
pub const GRID_GROUP: u64 = 16;

/// The time grid of each of `n` samples starting at global sample index `first`.
pub fn row_grids(
    spec: &SampleSpec,
    p: &FlowParams,
    seed: u64,
    first: u64,
    n: usize,
) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let group = (first + i) / GRID_GROUP;
        if i > 0 && group == (first + i - 1) / GRID_GROUP {
            let prev = out[out.len() - 1].clone();
            out.push(prev);
            continue;
        }
        let mut st = Stream::new(seed, Purpose::SamplingGrid, 0, group);
        out.push(time_grid(spec.schedule, spec.steps, p, &mut st));
    }
    out
}

/// A per-sample scalar as a `[n, 1, 1]` tensor that broadcasts over positions and features.
fn column<B: Backend>(v: impl Iterator<Item = f64>, device: &B::Device) -> Tensor<B, 3> {
    let v: Vec<f32> = v.map(|x| x as f32).collect();
    let n = v.len();
    tensor::<B, 3>(v, [n, 1, 1], device)
}

/// Builds the logit-normal grid `[0, sort(σ(μ + s·nᵢ)), 1]` from standard normals.
pub fn grid_from_normals(normals: &[f64], p: &FlowParams) -> Vec<f64> {
    let mut inner: Vec<f64> = normals
        .iter()
        .map(|n| sigmoid(p.p_mean + p.p_std * n))
        .collect();
    inner.sort_by(f64::total_cmp);
    let mut g = Vec::with_capacity(inner.len() + 2);
    g.push(0.0);
    g.extend(inner);
    g.push(1.0);
    g
}

/// Condition latents and positions for conditional sampling.
#[derive(Debug, Clone)]
pub struct Condition<B: Backend> {
    /// Encoded, normalised latents; only condition positions are read. `[n, S, E]`
    pub latents: Tensor<B, 3>,
    /// Condition positions `[n, S, 1]` (1 = condition).
    pub mask: Tensor<B, 3>,
}

/// One model evaluation `Eval(z, t, x̂_prev)` of spec §5.3 at each sample's time `t[i]`;
/// returns `(v, x)`.
pub fn evaluate<B: Backend>(
    model: &Elf<B>,
    z: Tensor<B, 3>,
    t: &[f64],
    x_prev: Tensor<B, 3>,
    cond: &Condition<B>,
    spec: &SampleSpec,
    p: &FlowParams,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let [n, _, _] = z.dims();
    let device = z.device();
    assert_eq!(t.len(), n, "one time per sample");
    let tt = tensor::<B, 1>(t.iter().map(|&x| x as f32).collect(), [n], &device);
    let w = Tensor::<B, 1>::full([n], spec.sc_cfg, &device);
    let inv = column::<B>(t.iter().map(|&t| 1.0 / (1.0 - t).max(p.t_eps)), &device);
    let free = cond.mask.clone().neg() + 1.0;
    let c_val = cond.latents.clone() * cond.mask.clone();
    let run = |z: Tensor<B, 3>, xp: Tensor<B, 3>| {
        let x = model
            .forward(
                Tensor::cat(vec![z.clone(), xp], 2),
                tt.clone(),
                w.clone(),
                Mode::Denoise,
            )
            .x;
        let v = (x.clone() - z) * inv.clone();
        (v, x)
    };
    let (v_c, x_c) = run(z.clone(), x_prev.clone());
    let (v_c, x_c) = (v_c * free.clone(), x_c * free.clone() + c_val.clone());
    if spec.cfg == 1.0 {
        return (v_c, x_c);
    }
    let (v_u, x_u) = run(z * free.clone(), x_prev * free.clone());
    let (v_u, x_u) = (v_u * free.clone(), x_u * free.clone());
    let v = v_u.clone() + (v_c - v_u) * spec.cfg;
    let x = x_u.clone() + (x_c - x_u) * spec.cfg;
    (v * free.clone(), x * free + c_val)
}

/// Generates a batch and returns the argmax tokens of the decoder head at t = 1.
///
/// `key` is `(seed, global index of the first sample)`: sample `first + i` draws its noise
/// from its own stream and its time grid from its group of [`GRID_GROUP`], so a sample does
/// not depend on the batch it is generated in. `n` samples of `S` positions with latent width
/// `E` = `cond.latents`' last dim. -> `[n, S]`
pub fn sample<B: Backend>(
    model: &Elf<B>,
    cond: &Condition<B>,
    spec: &SampleSpec,
    p: &FlowParams,
    key: (u64, u64),
) -> Tensor<B, 2, Int> {
    let [n, s, e] = cond.latents.dims();
    let device = cond.latents.device();
    let (seed, first) = key;
    let grids = row_grids(spec, p, seed, first, n);
    let mut noise_streams: Vec<Stream> = (0..n as u64)
        .map(|i| Stream::new(seed, Purpose::SamplingNoise, 0, first + i))
        .collect();
    let noise = |streams: &mut [Stream]| {
        let mut v = vec![0f32; n * s * e];
        for (i, st) in streams.iter_mut().enumerate() {
            st.fill_normal_f32(&mut v[i * s * e..(i + 1) * s * e]);
        }
        tensor::<B, 3>(v, [n, s, e], &device)
    };
    let free = cond.mask.clone().neg() + 1.0;
    let c_val = cond.latents.clone() * cond.mask.clone();

    let mut z = noise(&mut noise_streams) * p.noise_scale * free + c_val.clone();
    let mut x_prev = c_val;
    let last = spec.steps - 1;
    for i in 0..spec.steps {
        let t0: Vec<f64> = grids.iter().map(|g| g[i]).collect();
        let t1: Vec<f64> = grids.iter().map(|g| g[i + 1]).collect();
        let t = (t0.as_slice(), t1.as_slice());
        (z, x_prev) = if spec.method == SamplingMethod::Sde && i < last {
            let eps = noise(&mut noise_streams);
            sde_step(model, z, x_prev, t, eps, cond, spec, p)
        } else {
            ode_step(model, z, x_prev, t, cond, spec, p)
        };
    }
    decode(model, z, spec.sc_cfg)
}

/// One Euler step of the ODE from `t.0[i]` to `t.1[i]` for each sample `i`; returns the new
/// `z` and the x-estimate.
///
/// z, x_prev: `[n, S, E]` -> same
pub fn ode_step<B: Backend>(
    model: &Elf<B>,
    z: Tensor<B, 3>,
    x_prev: Tensor<B, 3>,
    t: (&[f64], &[f64]),
    cond: &Condition<B>,
    spec: &SampleSpec,
    p: &FlowParams,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let device = z.device();
    let (v, x) = evaluate(model, z.clone(), t.0, x_prev, cond, spec, p);
    let h = column::<B>(t.0.iter().zip(t.1).map(|(a, b)| b - a), &device);
    (z + v * h, x)
}

/// One SDE step with churn `γ` and fresh noise `eps` (spec §5.4); returns the new `z` and x.
///
/// z, x_prev, eps: `[n, S, E]` -> same
#[allow(clippy::too_many_arguments)]
pub fn sde_step<B: Backend>(
    model: &Elf<B>,
    z: Tensor<B, 3>,
    x_prev: Tensor<B, 3>,
    t: (&[f64], &[f64]),
    eps: Tensor<B, 3>,
    cond: &Condition<B>,
    spec: &SampleSpec,
    p: &FlowParams,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let device = z.device();
    let (t0, t1) = t;
    let alpha: Vec<f64> = t0
        .iter()
        .zip(t1)
        .map(|(a, b)| (1.0 - spec.gamma * (b - a)).clamp(0.0, 1.0))
        .collect();
    let tb: Vec<f64> = alpha.iter().zip(t0).map(|(a, t)| a * t).collect();
    let free = cond.mask.clone().neg() + 1.0;
    let c_val = cond.latents.clone() * cond.mask.clone();
    let keep = column::<B>(alpha.iter().copied(), &device);
    let churn = column::<B>(alpha.iter().map(|a| (1.0 - a) * p.noise_scale), &device);
    let zb = (z * keep + eps * churn) * free + c_val;
    let (v, x) = evaluate(model, zb.clone(), &tb, x_prev, cond, spec, p);
    let h = column::<B>(t1.iter().zip(&tb).map(|(b, a)| b - a), &device);
    (zb + v * h, x)
}

/// Decodes latents with one decoder-mode pass at t = 1 and takes the argmax (spec §5.6).
///
/// z: `[n, S, E]` -> `[n, S]`
pub fn decode<B: Backend>(model: &Elf<B>, z: Tensor<B, 3>, sc_cfg: f64) -> Tensor<B, 2, Int> {
    let [n, _, _] = z.dims();
    let device = z.device();
    let u = Tensor::cat(vec![z.clone(), z.zeros_like()], 2);
    let ones = Tensor::<B, 1>::ones([n], &device);
    let w = Tensor::<B, 1>::full([n], sc_cfg, &device);
    let logits = model
        .forward(u, ones, w, Mode::DecodeLogitsOnly)
        .logits
        .expect("decoder mode returns logits");
    logits.argmax(2).squeeze_dim(2)
}

/// Unconditional post-processing: every position from the first EOS on becomes pad 0.
pub fn finish_unconditional(ids: &[i64], eos: i64) -> Vec<i64> {
    let cut = ids.iter().position(|&t| t == eos).unwrap_or(ids.len());
    ids.iter()
        .enumerate()
        .map(|(i, &t)| if i < cut { t } else { 0 })
        .collect()
}

/// Conditional post-processing: drop the condition, keep `gen_len` tokens, pad from the first EOS.
pub fn finish_conditional(
    ids: &[i64],
    cond_len: usize,
    gen_len: usize,
    eos: i64,
    pad: i64,
) -> Vec<i64> {
    let mut out: Vec<i64> = ids.iter().skip(cond_len).copied().collect();
    out.resize(ids.len(), 0);
    out.truncate(gen_len);
    let cut = out.iter().position(|&t| t == eos).unwrap_or(out.len());
    out.iter()
        .enumerate()
        .map(|(i, &t)| if i < cut { t } else { pad })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_have_n_plus_one_sorted_points() {
        let p = FlowParams {
            noise_scale: 2.0,
            t_eps: 0.05,
            p_mean: -1.5,
            p_std: 0.8,
        };
        let mut s = Stream::new(0, Purpose::SamplingGrid, 0, 0);
        let g = time_grid(TimeSchedule::LogitNormal, 32, &p, &mut s);
        assert_eq!(g.len(), 33);
        assert_eq!((g[0], g[32]), (0.0, 1.0));
        assert!(g.windows(2).all(|w| w[0] <= w[1]));
        let u = time_grid(TimeSchedule::Uniform, 4, &p, &mut s);
        assert_eq!(u, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn sixteen_samples_share_a_grid_whatever_the_batch() {
        let p = FlowParams {
            noise_scale: 2.0,
            t_eps: 0.05,
            p_mean: -1.5,
            p_std: 0.8,
        };
        let spec = SampleSpec {
            method: SamplingMethod::Sde,
            steps: 32,
            cfg: 1.0,
            sc_cfg: 3.0,
            schedule: TimeSchedule::LogitNormal,
            gamma: 1.5,
        };
        let all = row_grids(&spec, &p, 7, 0, 40);
        for (i, g) in all.iter().enumerate() {
            assert_eq!(g, &all[i / 16 * 16], "sample {i} shares its group's grid");
        }
        assert_ne!(all[0], all[16]);
        assert_ne!(all[16], all[32]);
        // Batches of 24 and 16 (boundaries inside a group) give each sample the same grid.
        let mut split = row_grids(&spec, &p, 7, 0, 24);
        split.extend(row_grids(&spec, &p, 7, 24, 16));
        assert_eq!(split, all);
        // Another seed, other grids.
        assert_ne!(row_grids(&spec, &p, 8, 0, 1)[0], all[0]);
    }

    #[test]
    fn post_processing_matches_spec() {
        assert_eq!(
            finish_unconditional(&[5, 6, 1, 7, 1], 1),
            vec![5, 6, 0, 0, 0]
        );
        assert_eq!(
            finish_conditional(&[9, 9, 5, 1, 7, 3], 2, 3, 1, 1),
            vec![5, 1, 1]
        );
    }
}
