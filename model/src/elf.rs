//! The ELF denoiser/decoder network of spec §1, in one file.
//!
//! One transformer with two modes: denoiser mode returns an x-prediction in normalised latent
//! space; decoder mode switches the four mode tokens on and also returns token logits from the
//! factored head. Field names are the Flax parameter tree's (spec §1.4), so
//! [`crate::weights`] maps them to reference paths mechanically.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;

use crate::dims::ElfDims;
use crate::nn::{Init, Initializer, Linear, RmsNorm, gelu_tanh, tensor};

/// The two-layer MLP that embeds `t` or the SC-CFG scale `w` (spec §1.3.6).
#[derive(Module, Debug)]
pub struct Embedder<B: Backend> {
    /// `256 -> H`, followed by SiLU.
    pub mlp_0: Linear<B>,
    /// `H -> H`.
    pub mlp_2: Linear<B>,
}

/// Width of the sinusoidal features fed to the embedders.
pub const FREQ_DIM: usize = 256;

impl<B: Backend> Embedder<B> {
    /// Embeds raw scalars (no ×1000 scaling).
    ///
    /// t: `[batch]` -> `[batch, H]`
    pub fn forward(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        let device = t.device();
        let half = FREQ_DIM / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|k| (-(10000f64.ln()) * k as f64 / half as f64).exp() as f32)
            .collect();
        let freqs = tensor::<B, 2>(freqs, [1, half], &device);
        let args = t.unsqueeze_dim::<2>(1) * freqs;
        let phi = Tensor::cat(vec![args.clone().cos(), args.sin()], 1);
        self.mlp_2.forward(silu(self.mlp_0.forward(phi)))
    }
}

/// The bias-free-then-biased text bottleneck (spec §1.2 step 2).
#[derive(Module, Debug)]
pub struct TextProj<B: Backend> {
    /// `E -> b`, no bias.
    pub proj1: Linear<B>,
    /// `b -> H`.
    pub proj2: Linear<B>,
}

/// Multi-head self-attention with per-head RMS-normalised queries and keys (spec §1.3.3).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `H -> 3H`, columns `[q | k | v]`.
    pub qkv: Linear<B>,
    /// Query norm over the head width.
    pub q_norm: RmsNorm<B>,
    /// Key norm over the head width.
    pub k_norm: RmsNorm<B>,
    /// Output projection `H -> H`.
    pub proj: Linear<B>,
}

/// The SwiGLU feed-forward (spec §1.3.5).
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    /// `H -> 2F`, columns `[x₁ | x₂]`.
    pub w12: Linear<B>,
    /// `F -> H`.
    pub w3: Linear<B>,
}

/// A pre-norm transformer block (spec §1.3.1).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm1: RmsNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub norm2: RmsNorm<B>,
    /// Feed-forward.
    pub mlp: SwiGlu<B>,
}

/// The x-prediction head: RMS norm then a zero-initialised linear.
#[derive(Module, Debug)]
pub struct FinalLayer<B: Backend> {
    /// Final norm.
    pub norm_final: RmsNorm<B>,
    /// `H -> E`, zero-initialised.
    pub linear: Linear<B>,
}

/// The ELF network.
#[derive(Module, Debug)]
pub struct Elf<B: Backend> {
    /// `2E -> E` projection of `[z, x_sc]`.
    pub self_cond_proj: Linear<B>,
    /// `E -> b -> H` text projection.
    pub text_proj: TextProj<B>,
    /// Decoder-mode tokens `(1, n_mode, H)`.
    pub mode_tokens: Param<Tensor<B, 3>>,
    /// Time embedder.
    pub t_embedder: Embedder<B>,
    /// Time prefix tokens `(1, n_time, H)`.
    pub t_emb_tokens: Param<Tensor<B, 3>>,
    /// SC-CFG scale embedder.
    pub self_cond_cfg_embedder: Embedder<B>,
    /// SC-CFG prefix tokens `(1, n_sc, H)`.
    pub self_cond_cfg_tokens: Param<Tensor<B, 3>>,
    /// Transformer blocks.
    pub blocks: Vec<Block<B>>,
    /// Decoder head projection `(H, E)`.
    pub proj_kernel: Param<Tensor<B, 2>>,
    /// Decoder head projection bias `(E)`.
    pub proj_bias: Param<Tensor<B, 1>>,
    /// Unembedding `(E, V)`.
    pub unembed_kernel: Param<Tensor<B, 2>>,
    /// Unembedding bias `(V)`.
    pub unembed_bias: Param<Tensor<B, 1>>,
    /// x-prediction head.
    pub final_layer: FinalLayer<B>,
    /// Sizes.
    #[module(skip)]
    pub dims: ElfDims,
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct ElfOutput<B: Backend> {
    /// x-prediction `[batch, S, E]`.
    pub x: Tensor<B, 3>,
    /// Logits `[batch, S, V]` in decoder mode.
    pub logits: Option<Tensor<B, 3>>,
}

/// Which outputs a forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mode tokens off, only the x-prediction.
    Denoise,
    /// Mode tokens on, x-prediction and logits.
    Decode,
    /// Mode tokens on, logits only (the x-prediction head is skipped; used where it is unused).
    DecodeLogitsOnly,
}

impl<B: Backend> Elf<B> {
    /// Builds a freshly initialised network (spec §1.4 initialisers), seeded by `seed`.
    pub fn init(dims: &ElfDims, seed: u64, device: &B::Device) -> Self {
        let mut g = Initializer::new(seed, elf_shared::seed::Purpose::ModelInit);
        let (h, e, b) = (dims.hidden, dims.latent, dims.bottleneck);
        let hd = dims.head_dim();
        let embedder = |g: &mut Initializer| Embedder {
            mlp_0: g.linear(Init::Normal(0.02), FREQ_DIM, h, true, device),
            mlp_2: g.linear(Init::Normal(0.02), h, h, true, device),
        };
        let self_cond_proj = g.linear(Init::Xavier, 2 * e, e, true, device);
        let text_proj = TextProj {
            proj1: g.linear(Init::Xavier, e, b, false, device),
            proj2: g.linear(Init::Xavier, b, h, true, device),
        };
        let mode_tokens = g.param(Init::Normal(0.02), [1, dims.n_mode, h], device);
        let t_embedder = embedder(&mut g);
        let t_emb_tokens = g.param(Init::Normal(0.02), [1, dims.n_time, h], device);
        let self_cond_cfg_embedder = embedder(&mut g);
        let self_cond_cfg_tokens = g.param(Init::Normal(0.02), [1, dims.n_sc, h], device);
        let blocks = (0..dims.depth)
            .map(|_| Block {
                norm1: g.rms_norm(h, device),
                attn: Attention {
                    qkv: g.linear(Init::Xavier, h, 3 * h, true, device),
                    q_norm: g.rms_norm(hd, device),
                    k_norm: g.rms_norm(hd, device),
                    proj: g.linear(Init::Xavier, h, h, true, device),
                },
                norm2: g.rms_norm(h, device),
                mlp: SwiGlu {
                    w12: g.linear(Init::Xavier, h, 2 * dims.ffn, true, device),
                    w3: g.linear(Init::Xavier, dims.ffn, h, true, device),
                },
            })
            .collect();
        let proj_kernel = g.param(Init::Xavier, [h, e], device);
        let proj_bias = g.param(Init::Zeros, [e], device);
        let unembed_kernel = g.param(Init::Xavier, [e, dims.vocab], device);
        let unembed_bias = g.param(Init::Zeros, [dims.vocab], device);
        let final_layer = FinalLayer {
            norm_final: g.rms_norm(h, device),
            linear: g.linear(Init::Zeros, h, e, true, device),
        };
        Self {
            self_cond_proj,
            text_proj,
            mode_tokens,
            t_embedder,
            t_emb_tokens,
            self_cond_cfg_embedder,
            self_cond_cfg_tokens,
            blocks,
            proj_kernel,
            proj_bias,
            unembed_kernel,
            unembed_bias,
            final_layer,
            dims: dims.clone(),
        }
    }

    /// Runs the network.
    ///
    /// u: `[batch, S, 2E]` (`[z, x_sc]`), t: `[batch]`, w: `[batch]` ->
    /// x: `[batch, S, E]`, logits: `[batch, S, V]` in decoder modes
    pub fn forward(
        &self,
        u: Tensor<B, 3>,
        t: Tensor<B, 1>,
        w: Tensor<B, 1>,
        mode: Mode,
    ) -> ElfOutput<B> {
        let d = &self.dims;
        let [batch, s, _] = u.dims();
        assert_eq!(
            s, d.seq_len,
            "ELF input must have exactly max_length = {} positions",
            d.seq_len
        );
        let h = d.hidden;
        let a = self.self_cond_proj.forward(u);
        let text = self
            .text_proj
            .proj2
            .forward(self.text_proj.proj1.forward(a));

        let e_t = self.t_embedder.forward(t).unsqueeze_dim::<3>(1);
        let e_w = self.self_cond_cfg_embedder.forward(w).unsqueeze_dim::<3>(1);
        let time = self.t_emb_tokens.val().expand([batch, d.n_time, h]) + e_t;
        let sc = self.self_cond_cfg_tokens.val().expand([batch, d.n_sc, h]) + e_w;
        let gate = if mode == Mode::Denoise { 0.0 } else { 1.0 };
        let mode_tok = (self.mode_tokens.val() * gate).expand([batch, d.n_mode, h]);
        let mut x = Tensor::cat(vec![time, sc, mode_tok, text], 1);

        let (cos, sin) = rope_tables::<B>(d.prefix(), s, d.head_dim(), &x.device());
        for block in &self.blocks {
            x = block.forward(x, d.heads, &cos, &sin);
        }
        let y = x.narrow(1, d.prefix(), s);

        let logits = match mode {
            Mode::Denoise => None,
            Mode::Decode | Mode::DecodeLogitsOnly => Some(self.decode_head(y.clone())),
        };
        let x = if mode == Mode::DecodeLogitsOnly {
            Tensor::zeros([batch, s, d.latent], &y.device())
        } else {
            self.final_layer
                .linear
                .forward(self.final_layer.norm_final.forward(y))
        };
        ElfOutput { x, logits }
    }

    /// Applies the factored decoder head to the raw residual stream (no norm, spec §1.2 step 7).
    ///
    /// y: `[batch, S, H]` -> `[batch, S, V]`
    fn decode_head(&self, y: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, s, h] = y.dims();
        let p = y.reshape([batch * s, h]).matmul(self.proj_kernel.val())
            + self.proj_bias.val().unsqueeze_dim(0);
        let logits = gelu_tanh(p).matmul(self.unembed_kernel.val())
            + self.unembed_bias.val().unsqueeze_dim(0);
        logits.reshape([batch, s, self.dims.vocab])
    }

    /// Returns the number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.num_params()
    }
}

impl<B: Backend> Block<B> {
    /// x: `[batch, L, H]` -> `[batch, L, H]`
    fn forward(
        &self,
        x: Tensor<B, 3>,
        heads: usize,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), heads, cos, sin);
        let hidden = self.norm2.forward(x.clone());
        x + self.mlp.forward(hidden)
    }
}

impl<B: Backend> SwiGlu<B> {
    /// x: `[batch, L, H]` -> `[batch, L, H]`
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x12 = self.w12.forward(x);
        let f = x12.dims()[2] / 2;
        let x1 = x12.clone().narrow(2, 0, f);
        let x2 = x12.narrow(2, f, f);
        self.w3.forward(silu(x1) * x2)
    }
}

impl<B: Backend> Attention<B> {
    /// x: `[batch, L, H]` -> `[batch, L, H]`
    fn forward(
        &self,
        x: Tensor<B, 3>,
        heads: usize,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let [batch, l, h] = x.dims();
        let hd = h / heads;
        // One copy into [3·B·n_h, L, hd] (q, k, v blocks), then contiguous slices: the norms and
        // RoPE below never iterate over strided views.
        let qkv = self
            .qkv
            .forward(x)
            .reshape([batch, l, 3, heads, hd])
            .permute([2, 0, 3, 1, 4])
            .reshape([3 * batch * heads, l, hd]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i * batch * heads, batch * heads)
                .reshape([batch, heads, l, hd])
        };
        let q = apply_rope(self.q_norm.forward(part(0)), cos, sin);
        let k = apply_rope(self.k_norm.forward(part(1)), cos, sin);
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
        let out = softmax(scores, 3).matmul(part(2));
        self.proj
            .forward(out.swap_dims(1, 2).reshape([batch, l, h]))
    }
}

/// Builds the interleaved RoPE tables with an unrotated prefix (spec §1.3.4).
///
/// -> cos, sin: `[1, 1, prefix + S, hd]`, each frequency repeated for its pair
pub fn rope_tables<B: Backend>(
    prefix: usize,
    s: usize,
    hd: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let l = prefix + s;
    let mut cos = vec![1f32; l * hd];
    let mut sin = vec![0f32; l * hd];
    for i in 0..s {
        // The reference computes positions as (i / S) · S in float32.
        let p = (i as f32 / s as f32) * s as f32;
        for k in 0..hd / 2 {
            let theta = (10000f32).powf(-2.0 * k as f32 / hd as f32);
            let (sn, cs) = (p * theta).sin_cos();
            let row = (prefix + i) * hd;
            cos[row + 2 * k] = cs;
            cos[row + 2 * k + 1] = cs;
            sin[row + 2 * k] = sn;
            sin[row + 2 * k + 1] = sn;
        }
    }
    (
        tensor(cos, [1, 1, l, hd], device),
        tensor(sin, [1, 1, l, hd], device),
    )
}

/// Rotates adjacent pairs: `out[2k] = x[2k]·c − x[2k+1]·s`, `out[2k+1] = x[2k+1]·c + x[2k]·s`.
///
/// The pair swap `(x[2k], x[2k+1]) -> (−x[2k+1], x[2k])` is a product with a fixed
/// block-diagonal matrix, which keeps every operand contiguous.
///
/// x: `[batch, heads, L, hd]` -> same
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, nh, l, hd] = x.dims();
    let mut r = vec![0f32; hd * hd];
    for k in 0..hd / 2 {
        // out[j] = Σ_i x[i] R[i, j]: out[2k] = −x[2k+1], out[2k+1] = x[2k].
        r[(2 * k + 1) * hd + 2 * k] = -1.0;
        r[(2 * k) * hd + 2 * k + 1] = 1.0;
    }
    let rot = tensor::<B, 2>(r, [hd, hd], &x.device());
    let rotated = x
        .clone()
        .reshape([b * nh * l, hd])
        .matmul(rot)
        .reshape([b, nh, l, hd]);
    x * cos.clone() + rotated * sin.clone()
}
