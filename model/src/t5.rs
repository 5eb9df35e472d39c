//! The frozen T5 encoder of spec §2: HuggingFace `T5EncoderModel` numerics with a 3-D mask.
//!
//! Weights load from an HF safetensors file (`shared.weight`, `encoder.block.{l}...`); PyTorch
//! `(out, in)` weights are transposed into our `(in, out)` kernels. Without a checkpoint the
//! encoder is a seeded random initialisation of the configured shape (the caller warns).

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData};

use crate::dims::T5Dims;
use crate::nn::{Init, Initializer, Linear, RmsNorm, tensor};
use crate::weights::{TensorFile, WeightError};

/// One encoder block: self-attention and a ReLU feed-forward, both pre-norm.
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    /// Norm before attention (`layer.0.layer_norm`).
    pub ln0: RmsNorm<B>,
    /// Query projection, no bias.
    pub q: Linear<B>,
    /// Key projection, no bias.
    pub k: Linear<B>,
    /// Value projection, no bias.
    pub v: Linear<B>,
    /// Output projection, no bias.
    pub o: Linear<B>,
    /// Norm before the feed-forward (`layer.1.layer_norm`).
    pub ln1: RmsNorm<B>,
    /// `d_model -> d_ff`.
    pub wi: Linear<B>,
    /// `d_ff -> d_model`.
    pub wo: Linear<B>,
}

/// The T5 encoder stack.
#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    /// Token embedding `(vocab, d_model)`.
    pub embed: Param<Tensor<B, 2>>,
    /// Relative-position bias table `(buckets, heads)` of block 0, shared by all blocks.
    pub rel_bias: Param<Tensor<B, 2>>,
    /// Encoder blocks.
    pub blocks: Vec<T5Block<B>>,
    /// Final norm.
    pub final_norm: RmsNorm<B>,
    /// Shape.
    #[module(skip)]
    pub dims: T5Dims,
}

/// Returns the relative-position bucket of offset `r = key − query` (spec §2.2, bidirectional).
pub fn relative_bucket(r: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if r > 0 { half } else { 0 };
    let n = r.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    // HF: max_exact + log(n / max_exact) / log(max_distance / max_exact) * (half - max_exact).
    let large = max_exact as f32
        + ((n as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
            * (half - max_exact) as f32);
    base + (large as usize).min(half - 1)
}

impl<B: Backend> T5Encoder<B> {
    /// Builds a seeded random encoder of shape `dims` (HF's T5 initialisation scales).
    pub fn random(dims: &T5Dims, device: &B::Device) -> Self {
        let mut g = Initializer::new(dims.init_seed, elf_shared::seed::Purpose::EncoderInit);
        let (d, inner, ff) = (dims.d_model, dims.num_heads * dims.d_kv, dims.d_ff);
        // HF `T5PreTrainedModel._init_weights` with factor 1.0.
        let std = |fan: usize| Init::Normal((fan as f64).powf(-0.5));
        let embed = g.param(Init::Normal(1.0), [dims.vocab_size, d], device);
        let rel_bias = g.param(
            std(d),
            [dims.relative_attention_num_buckets, dims.num_heads],
            device,
        );
        let blocks = (0..dims.num_layers)
            .map(|_| T5Block {
                ln0: g.rms_norm(d, device),
                q: g.linear(
                    Init::Normal(((d * dims.d_kv) as f64).powf(-0.5)),
                    d,
                    inner,
                    false,
                    device,
                ),
                k: g.linear(std(d), d, inner, false, device),
                v: g.linear(std(d), d, inner, false, device),
                o: g.linear(std(inner), inner, d, false, device),
                ln1: g.rms_norm(d, device),
                wi: g.linear(std(d), d, ff, false, device),
                wo: g.linear(std(ff), ff, d, false, device),
            })
            .collect();
        let final_norm = g.rms_norm(d, device);
        Self {
            embed,
            rel_bias,
            blocks,
            final_norm,
            dims: dims.clone(),
        }
    }

    /// Loads an HF `T5EncoderModel` (or `T5Model`/`T5ForConditionalGeneration`) safetensors file.
    ///
    /// # Errors
    /// Names the file and the tensor for a missing tensor or a shape that is not `dims`'.
    pub fn load_hf(path: &Path, dims: &T5Dims, device: &B::Device) -> Result<Self, WeightError> {
        let file = TensorFile::open(path)?;
        let (d, inner, ff) = (dims.d_model, dims.num_heads * dims.d_kv, dims.d_ff);
        let get = |name: &str, shape: &[usize]| file.get_f32(name, shape);
        let kernel = |name: &str, d_in: usize, d_out: usize| -> Result<Linear<B>, WeightError> {
            // PyTorch stores (out, in); our kernels are (in, out).
            let w = get(name, &[d_out, d_in])?;
            let t = tensor::<B, 2>(w, [d_out, d_in], device).transpose();
            Ok(Linear {
                kernel: Param::from_tensor(t),
                bias: None,
            })
        };
        let norm = |name: &str| -> Result<RmsNorm<B>, WeightError> {
            Ok(RmsNorm {
                weight: Param::from_tensor(tensor(get(name, &[d])?, [d], device)),
            })
        };
        let embed_name = if file.contains("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let embed = tensor(
            get(embed_name, &[dims.vocab_size, d])?,
            [dims.vocab_size, d],
            device,
        );
        let nb = dims.relative_attention_num_buckets;
        let rel = get(
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &[nb, dims.num_heads],
        )?;
        let mut blocks = Vec::with_capacity(dims.num_layers);
        for l in 0..dims.num_layers {
            let p = format!("encoder.block.{l}.layer");
            blocks.push(T5Block {
                ln0: norm(&format!("{p}.0.layer_norm.weight"))?,
                q: kernel(&format!("{p}.0.SelfAttention.q.weight"), d, inner)?,
                k: kernel(&format!("{p}.0.SelfAttention.k.weight"), d, inner)?,
                v: kernel(&format!("{p}.0.SelfAttention.v.weight"), d, inner)?,
                o: kernel(&format!("{p}.0.SelfAttention.o.weight"), inner, d)?,
                ln1: norm(&format!("{p}.1.layer_norm.weight"))?,
                wi: kernel(&format!("{p}.1.DenseReluDense.wi.weight"), d, ff)?,
                wo: kernel(&format!("{p}.1.DenseReluDense.wo.weight"), ff, d)?,
            });
        }
        Ok(Self {
            embed: Param::from_tensor(embed),
            rel_bias: Param::from_tensor(tensor(rel, [nb, dims.num_heads], device)),
            blocks,
            final_norm: norm("encoder.final_layer_norm.weight")?,
            dims: dims.clone(),
        })
    }

    /// Returns the position bias `[1, heads, S, S]` shared by every block.
    fn position_bias(&self, s: usize, device: &B::Device) -> Tensor<B, 4> {
        let d = &self.dims;
        let mut buckets = Vec::with_capacity(s * s);
        for i in 0..s {
            for j in 0..s {
                let b = relative_bucket(
                    j as i64 - i as i64,
                    d.relative_attention_num_buckets,
                    d.relative_attention_max_distance,
                );
                buckets.push(b as i64);
            }
        }
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [s, s]), device);
        // [S, S, heads] -> [1, heads, S, S]
        embedding(self.rel_bias.val(), idx)
            .permute([2, 0, 1])
            .unsqueeze_dim(0)
    }

    /// Encodes token ids under a 0/1 attention mask; returns HF's `last_hidden_state`.
    ///
    /// ids: `[batch, S]`, mask: `[batch, S, S]` (1 = query row may see key column) -> `[batch, S, d_model]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>, mask: Tensor<B, 3>) -> Tensor<B, 3> {
        let d = &self.dims;
        let [batch, s] = ids.dims();
        let device = ids.device();
        let (heads, dkv) = (d.num_heads, d.d_kv);
        // (1 − m) · f32::MIN, added to the scores before an fp32 softmax.
        let mask_add = (mask.neg() + 1.0).unsqueeze_dim::<4>(1) * (f32::MIN as f64);
        let bias = self.position_bias(s, &device) + mask_add;
        let mut h = embedding(self.embed.val(), ids);
        for blk in &self.blocks {
            let x = blk.ln0.forward(h.clone());
            let split = |lin: &Linear<B>| {
                lin.forward(x.clone())
                    .reshape([batch, s, heads, dkv])
                    .swap_dims(1, 2)
            };
            let (q, k, v) = (split(&blk.q), split(&blk.k), split(&blk.v));
            // T5 does not scale scores by 1/sqrt(d_kv).
            let scores = q.matmul(k.swap_dims(2, 3)) + bias.clone();
            let a = softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([batch, s, heads * dkv]);
            h = h + blk.o.forward(a);
            let x = blk.ln1.forward(h.clone());
            h = h + blk.wo.forward(relu(blk.wi.forward(x)));
        }
        self.final_norm.forward(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_table_matches_spec() {
        // spec §2.2: |r| -> bucket for r < 0; +16 for r > 0.
        let table = [
            (0, 0),
            (1, 1),
            (7, 7),
            (8, 8),
            (11, 8),
            (12, 9),
            (15, 9),
            (16, 10),
            (22, 10),
            (23, 11),
            (31, 11),
            (32, 12),
            (45, 12),
            (46, 13),
            (63, 13),
            (64, 14),
            (90, 14),
            (91, 15),
            (500, 15),
            (1100, 15),
        ];
        for (n, b) in table {
            assert_eq!(relative_bucket(-(n as i64), 32, 128), b, "r = -{n}");
            if n > 0 {
                assert_eq!(relative_bucket(n as i64, 32, 128), b + 16, "r = {n}");
            }
        }
    }
}
