//! The ELF training objective of spec §4: the denoiser (L2 on velocity, self-conditioning and
//! the SC-CFG guided target) and decoder (CE) branches.
//!
//! Every random number arrives in [`Draws`], made on the host from the keyed streams of
//! `elf_shared::seed` per (step, global sample index), so the loss of a sample does not depend on
//! which rank computes it. Losses are sums of `weight · ℓ` over positions, where the caller's
//! weights carry the loss mask and the per-shard normalisation `1 / (max(Σ m, 1) · n_shards)`;
//! summing them over micro-batches and ranks gives the reference's mean of per-shard losses.

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use elf_shared::config::{Config, TimeSchedule};
use elf_shared::seed::{Purpose, Stream, sigmoid};

use crate::elf::{Elf, Mode};
use crate::nn::tensor;
use crate::t5::T5Encoder;

/// Which branch a shard of the batch trains (spec §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Branch {
    /// L2 on velocity.
    Denoiser,
    /// Cross-entropy through the decoder head.
    Decoder,
}

/// A collated micro-batch on the host (spec §3.4) with its loss weights.
#[derive(Debug, Clone, Default)]
pub struct HostBatch {
    /// Samples.
    pub n: usize,
    /// Sequence length `S`.
    pub s: usize,
    /// Token ids `[n, S]`.
    pub ids: Vec<i32>,
    /// Condition length of each sample `[n]` (positions `< cond_len` are the condition).
    pub cond_len: Vec<u32>,
    /// Valid length of each sample `[n]` (positions `>= total_len` are padding).
    pub total_len: Vec<u32>,
    /// Label-drop flags `[n]` (1 = condition dropped).
    pub label_drop: Vec<f32>,
    /// Loss weights `[n, S]`: loss mask divided by the shard normaliser and shard count.
    pub weight: Vec<f32>,
}

/// The random draws of a micro-batch (spec §4.2, §4.6, §4.8).
#[derive(Debug, Clone, Default)]
pub struct Draws {
    /// SC-CFG scale `w` `[n]`.
    pub w: Vec<f32>,
    /// Flow time `t` `[n]` (denoiser).
    pub t: Vec<f32>,
    /// Self-conditioning coin `[n]` (denoiser).
    pub m_sc: Vec<f32>,
    /// Noise `ε` `[n, S, E]` (denoiser) or `ε'` (decoder).
    pub noise: Vec<f32>,
    /// Per-token mix `λ` `[n, S]` (decoder).
    pub lambda: Vec<f32>,
}

/// Returns the SC-CFG scale for a uniform `u` (spec §4.6): `1 + w` log-uniform on
/// `[1 + w_min, 1 + w_max]`.
pub fn sc_cfg_scale(u: f64, w_min: f64, w_max: f64) -> f64 {
    (1.0 + w_min) * ((1.0 + w_max) / (1.0 + w_min)).powf(u) - 1.0
}

/// Draws the random numbers of one sample for `branch` from its keyed streams.
///
/// `step` and `index` (the position in the global batch) key every stream.
pub fn draw_sample(
    c: &Config,
    branch: Branch,
    step: u64,
    index: u64,
    s: usize,
    e: usize,
    out: &mut Draws,
) {
    let seed = c.seed;
    let u = Stream::new(seed, Purpose::ScCfgScale, step, index).uniform();
    out.w
        .push(sc_cfg_scale(u, c.self_cond_cfg_min, c.self_cond_cfg_max) as f32);
    let mut noise = Stream::new(seed, Purpose::Noise, step, index);
    let start = out.noise.len();
    out.noise.resize(start + s * e, 0.0);
    match branch {
        Branch::Denoiser => {
            let mut ts = Stream::new(seed, Purpose::Time, step, index);
            let t = match c.time_schedule {
                TimeSchedule::LogitNormal => {
                    sigmoid(c.denoiser_p_mean + c.denoiser_p_std * ts.normal())
                }
                TimeSchedule::Uniform => ts.uniform(),
            };
            out.t.push(t as f32);
            let m = Stream::new(seed, Purpose::SelfCond, step, index).uniform() < c.self_cond_prob;
            out.m_sc.push(if m { 1.0 } else { 0.0 });
            noise.fill_normal_f32(&mut out.noise[start..]);
        }
        Branch::Decoder => {
            let mut ls = Stream::new(seed, Purpose::DecoderLambda, step, index);
            out.lambda.extend(
                (0..s).map(|_| sigmoid(c.decoder_p_mean + c.decoder_p_std * ls.normal()) as f32),
            );
            let mut dn = Stream::new(seed, Purpose::DecoderNoise, step, index);
            dn.fill_normal_f32(&mut out.noise[start..]);
        }
    }
}

/// Objective constants taken from the config.
#[derive(Debug, Clone, Copy)]
pub struct ObjectiveParams {
    /// Latent mean `μ`.
    pub latent_mean: f64,
    /// Latent std `σ`.
    pub latent_std: f64,
    /// Denoiser noise scale `s_n`.
    pub noise_scale: f64,
    /// Decoder noise scale `s_d`.
    pub decoder_noise_scale: f64,
    /// Velocity floor.
    pub t_eps: f64,
}

impl ObjectiveParams {
    /// Reads the constants from a config.
    pub fn from_config(c: &Config) -> Self {
        Self {
            latent_mean: c.latent_mean,
            latent_std: c.latent_std,
            noise_scale: c.denoiser_noise_scale,
            decoder_noise_scale: c.decoder_noise_scale,
            t_eps: c.t_eps,
        }
    }
}

impl HostBatch {
    /// Returns the condition mask `[n, S]` on the host (1 = condition position).
    pub fn cond_host(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.n * self.s];
        for (i, &c) in self.cond_len.iter().enumerate() {
            v[i * self.s..i * self.s + c as usize].fill(1.0);
        }
        v
    }

    /// Returns the condition mask on `device`.
    ///
    /// -> `[n, S, 1]`
    pub fn cond_mask<B: Backend>(&self, device: &B::Device) -> Tensor<B, 3> {
        tensor::<B, 2>(self.cond_host(), [self.n, self.s], device).unsqueeze_dim(2)
    }

    /// Builds the encoder attention mask of spec §2.4 with label drop (§4.3) on `device`:
    /// `M[i, j] = c_i c_j + (1 − c_i)(v_j − drop · c_j)`.
    ///
    /// -> `[n, S, S]`
    pub fn encoder_mask<B: Backend>(&self, device: &B::Device) -> Tensor<B, 3> {
        let (n, s) = (self.n, self.s);
        let pos = tensor::<B, 2>((0..s).map(|i| i as f32).collect(), [1, s], device);
        let len = |v: &[u32]| tensor::<B, 2>(v.iter().map(|&x| x as f32).collect(), [n, 1], device);
        let c = pos.clone().lower(len(&self.cond_len)).float();
        let v = pos.lower(len(&self.total_len)).float();
        let drop = tensor::<B, 1>(self.label_drop.clone(), [n], device).reshape([n, 1, 1]);
        let ci = c.clone().unsqueeze_dim::<3>(2);
        let cj = c.unsqueeze_dim::<3>(1);
        let vj = v.unsqueeze_dim::<3>(1);
        ci.clone() * cj.clone() + (ci.neg() + 1.0) * (vj - drop * cj)
    }
}

/// Encodes a batch with the frozen encoder and normalises it (spec §2.3, §4.1, §4.3).
///
/// -> x₀: `[n, S, E]`, zero at condition positions of label-dropped samples
pub fn encode<B: Backend>(
    enc: &T5Encoder<B>,
    b: &HostBatch,
    p: &ObjectiveParams,
    device: &B::Device,
) -> Tensor<B, 3> {
    let ids = Tensor::<B, 2, Int>::from_data(
        burn::tensor::TensorData::new(b.ids.clone(), [b.n, b.s]),
        device,
    );
    let latent = enc.forward(ids, b.encoder_mask(device));
    let x0 = (latent - p.latent_mean) / p.latent_std;
    let drop = tensor::<B, 1>(b.label_drop.clone(), [b.n], device).reshape([b.n, 1, 1]);
    x0 * (b.cond_mask::<B>(device) * drop).neg().add_scalar(1.0)
}

/// The loss of a micro-batch: the differentiable scalar and each sample's contribution.
#[derive(Debug)]
pub struct BranchLoss<B: Backend> {
    /// A differentiable scalar whose gradient is that of `Σ weight · ℓ` over the micro-batch.
    /// (For the decoder branch its *value* is a surrogate; read losses from `per_sample`.)
    pub total: Tensor<B, 1>,
    /// Per-sample `Σ_pos weight · ℓ` `[n]` on the host.
    pub per_sample: Vec<f32>,
}

fn per_sample_sums<B: Backend>(weighted: Tensor<B, 2>) -> Vec<f32> {
    crate::nn::to_vec(weighted.sum_dim(1).flatten::<1>(0, 1))
}

/// The denoiser branch (spec §4.7) in its exact two-pass form: one no-grad pass gives the
/// self-conditioning estimate and `v_u`; the graded pass's own (stop-gradient) output stands in
/// for `v_c`, which the reference computes on the identical input for `m_sc = 1` samples.
///
/// x0: `[n, S, E]` on the inner backend.
pub fn denoiser_loss<B: AutodiffBackend>(
    model: &Elf<B>,
    x0: Tensor<B::InnerBackend, 3>,
    b: &HostBatch,
    d: &Draws,
    p: &ObjectiveParams,
) -> BranchLoss<B> {
    let device = x0.device();
    let [n, s, e] = x0.dims();
    let t = tensor::<B::InnerBackend, 1>(d.t.clone(), [n], &device);
    let w = tensor::<B::InnerBackend, 1>(d.w.clone(), [n], &device);
    let t3 = t.clone().reshape([n, 1, 1]);
    let cond = b.cond_mask::<B::InnerBackend>(&device);
    let free = cond.clone().neg() + 1.0;
    let eps = tensor::<B::InnerBackend, 3>(d.noise.clone(), [n, s, e], &device);

    let z = t3.clone() * x0.clone() + (t3.clone().neg() + 1.0) * eps * p.noise_scale;
    let z = z * free.clone() + x0.clone() * cond.clone();
    let inv = (t3.neg() + 1.0).clamp_min(p.t_eps).recip();
    let v_star = (x0.clone() - z.clone()) * inv.clone();
    let x_cond = x0 * cond.clone();

    // Pass 1 (no grad): the empty-self-cond prediction, used for x_sc and v_u.
    let inner = model.valid();
    let u0 = Tensor::cat(vec![z.clone(), x_cond.clone()], 2);
    let x_raw = inner.forward(u0, t.clone(), w.clone(), Mode::Denoise).x;
    let v_u = (x_raw.clone() - z.clone()) * inv.clone();
    let x_u = x_raw * free.clone() + x_cond.clone();
    let m_sc = tensor::<B::InnerBackend, 1>(d.m_sc.clone(), [n], &device).reshape([n, 1, 1]);
    let x_sc = x_u * free * m_sc.clone() + x_cond;

    // Pass 2 (with grad).
    let u = Tensor::<B, 3>::from_inner(Tensor::cat(vec![z.clone(), x_sc], 2));
    let x_hat = model
        .forward(
            u,
            Tensor::from_inner(t),
            Tensor::from_inner(w.clone()),
            Mode::Denoise,
        )
        .x;
    let z_ad = Tensor::<B, 3>::from_inner(z);
    let inv_ad = Tensor::<B, 3>::from_inner(inv);
    let v_hat = (x_hat - z_ad) * inv_ad;

    // Guided target: v* + m_sc (1 − 1/w)(v_c − v_u), gradient stopped.
    let guide = (w.recip().neg() + 1.0).reshape([n, 1, 1]) * m_sc;
    let v_c = v_hat.clone().inner();
    let v_tgt = v_star + guide * (v_c - v_u);
    let diff = v_hat - Tensor::<B, 3>::from_inner(v_tgt);
    let per_pos = diff.square().mean_dim(2).reshape([n, s]);
    let weight = Tensor::<B, 2>::from_inner(tensor(b.weight.clone(), [n, s], &device));
    let weighted = per_pos * weight;
    let per_sample = per_sample_sums(weighted.clone().inner());
    BranchLoss {
        total: weighted.sum(),
        per_sample,
    }
}

/// The decoder branch (spec §4.8): CE of the decoder head on a partially noised latent at t = 1.
///
/// x0: `[n, S, E]` on the inner backend.
pub fn decoder_loss<B: AutodiffBackend>(
    model: &Elf<B>,
    x0: Tensor<B::InnerBackend, 3>,
    b: &HostBatch,
    d: &Draws,
    p: &ObjectiveParams,
) -> BranchLoss<B> {
    let device = x0.device();
    let [n, s, e] = x0.dims();
    let lambda =
        tensor::<B::InnerBackend, 2>(d.lambda.clone(), [n, s], &device).unsqueeze_dim::<3>(2);
    let eps = tensor::<B::InnerBackend, 3>(d.noise.clone(), [n, s, e], &device);
    let z = lambda.clone() * x0.clone() + (lambda.neg() + 1.0) * eps * p.decoder_noise_scale;
    let u = Tensor::cat(vec![z, x0.zeros_like()], 2);
    let ones = Tensor::<B::InnerBackend, 1>::ones([n], &device);
    let w = tensor::<B::InnerBackend, 1>(d.w.clone(), [n], &device);
    let logits = model
        .forward(
            Tensor::from_inner(u),
            Tensor::from_inner(ones),
            Tensor::from_inner(w),
            Mode::DecodeLogitsOnly,
        )
        .logits
        .expect("decoder mode returns logits");
    let v = logits.dims()[2];
    let logits = logits.reshape([n * s, v]);
    let ids = Tensor::<B::InnerBackend, 2, Int>::from_data(
        burn::tensor::TensorData::new(b.ids.clone(), [n * s, 1]),
        &device,
    );
    let weight = tensor::<B::InnerBackend, 2>(b.weight.clone(), [n * s, 1], &device);
    let (nll, grad) = weighted_cross_entropy(logits.clone().inner(), ids, weight.clone());
    // d(Σ logits ⊙ G)/d logits = G: the CE gradient enters autodiff without a log-softmax graph.
    let surrogate = (logits * Tensor::from_inner(grad)).sum();
    let per_sample = per_sample_sums((nll * weight).reshape([n, s]));
    BranchLoss {
        total: surrogate,
        per_sample,
    }
}

/// Cross-entropy from logits in one pass, without autodiff: per-row NLL and the gradient of
/// `Σ_rows w · NLL` with respect to the logits, `w · (softmax − onehot)`, in fp32 (spec §4.8).
///
/// logits: `[rows, V]`, ids: `[rows, 1]`, w: `[rows, 1]` -> nll: `[rows, 1]`, grad: `[rows, V]`
pub fn weighted_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    ids: Tensor<B, 2, Int>,
    w: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let device = logits.device();
    if crate::backend::is_host::<B>(&device) {
        // Host memory already: one fused pass with a vectorised exp (see `cpu`).
        let [rows, v] = logits.dims();
        let mut z = crate::nn::to_vec(logits);
        let ids: Vec<i64> = ids.into_data().convert::<i64>().to_vec().expect("int ids");
        let w = crate::nn::to_vec(w);
        let nll = crate::cpu::cross_entropy_rows(&mut z, v, &ids, &w);
        return (
            tensor(nll, [rows, 1], &device),
            tensor(z, [rows, v], &device),
        );
    }
    let m = logits.clone().max_dim(1);
    let e = (logits.clone() - m.clone()).exp();
    let sum = e.clone().sum_dim(1);
    let lse = m + sum.clone().log();
    let nll = lse - logits.gather(1, ids.clone());
    let p = e * (w.clone() / sum);
    let grad = p.scatter(1, ids, w.neg(), burn::tensor::IndexingUpdateOp::Add);
    (nll, grad)
}
