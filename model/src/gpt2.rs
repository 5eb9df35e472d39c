//! A GPT-2 family causal LM (HuggingFace `GPT2LMHeadModel` numerics, float32), the scorer of
//! generative perplexity (spec §6.2). Loads any size from an HF `model.safetensors` and its
//! `config.json` (names with or without the `transformer.` prefix; the LM head is tied to the
//! token embedding). HF's `Conv1D` weights are already `(in, out)`: no transposes.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu_approximate, log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::nn::{Linear, tensor};
use crate::weights::{TensorFile, WeightError};

/// The fields of an HF GPT-2 `config.json` the network needs.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length.
    pub n_positions: usize,
    /// Width.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP width (default 4 × n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Layer-norm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Must be `gelu_new` (the tanh GELU), as every released GPT-2.
    #[serde(default = "default_act")]
    pub activation_function: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}

/// Layer norm with gain and bias (biased variance, as torch).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Gain.
    pub weight: Param<Tensor<B, 1>>,
    /// Bias.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerNorm<B> {
    fn forward(&self, x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
        let mean = x.clone().mean_dim(2);
        let c = x - mean;
        let var = c.clone().square().mean_dim(2);
        let n = c / (var + eps).sqrt();
        n * self.weight.val().reshape([1, 1, -1]) + self.bias.val().reshape([1, 1, -1])
    }
}

/// One transformer block.
#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    /// Norm before attention.
    pub ln_1: LayerNorm<B>,
    /// Fused q, k, v projection `(d, 3d)`.
    pub c_attn: Linear<B>,
    /// Attention output projection.
    pub attn_proj: Linear<B>,
    /// Norm before the MLP.
    pub ln_2: LayerNorm<B>,
    /// MLP up projection.
    pub c_fc: Linear<B>,
    /// MLP down projection.
    pub mlp_proj: Linear<B>,
}

/// The GPT-2 LM.
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    /// Token embedding `(vocab, d)`, also the LM head.
    pub wte: Param<Tensor<B, 2>>,
    /// Position embedding `(n_positions, d)`.
    pub wpe: Param<Tensor<B, 2>>,
    /// Blocks.
    pub blocks: Vec<Gpt2Block<B>>,
    /// Final norm.
    pub ln_f: LayerNorm<B>,
    /// Shape.
    #[module(skip)]
    pub config: Gpt2Config,
}

impl<B: Backend> Gpt2<B> {
    /// Loads `config.json` and `model.safetensors` from a folder (or the safetensors file given
    /// directly, with `config.json` beside it).
    ///
    /// # Errors
    /// A missing or malformed config, a missing tensor or one of the wrong shape (naming the
    /// file and the tensor).
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, WeightError> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.safetensors"))
        } else {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                path.to_path_buf(),
            )
        };
        let cfg_path = dir.join("config.json");
        let bad = |message: String| WeightError::Format {
            path: cfg_path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| WeightError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: Gpt2Config = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if config.activation_function != "gelu_new" {
            return Err(bad(format!(
                "activation_function {:?} is not supported (gelu_new only)",
                config.activation_function
            )));
        }
        Self::load_file(&file, config, device)
    }

    fn load_file(path: &Path, config: Gpt2Config, device: &B::Device) -> Result<Self, WeightError> {
        let f = TensorFile::open(path)?;
        let prefix = if f.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let (d, v, p) = (config.n_embd, config.vocab_size, config.n_positions);
        let inner = config.n_inner.unwrap_or(4 * d);
        let get = |name: &str, shape: &[usize]| f.get_f32(&format!("{prefix}{name}"), shape);
        let vec1 = |name: &str, n: usize| -> Result<Param<Tensor<B, 1>>, WeightError> {
            Ok(Param::from_tensor(tensor(get(name, &[n])?, [n], device)))
        };
        let linear = |name: &str, i: usize, o: usize| -> Result<Linear<B>, WeightError> {
            Ok(Linear {
                kernel: Param::from_tensor(tensor(
                    get(&format!("{name}.weight"), &[i, o])?,
                    [i, o],
                    device,
                )),
                bias: Some(vec1(&format!("{name}.bias"), o)?),
            })
        };
        let norm = |name: &str| -> Result<LayerNorm<B>, WeightError> {
            Ok(LayerNorm {
                weight: vec1(&format!("{name}.weight"), d)?,
                bias: vec1(&format!("{name}.bias"), d)?,
            })
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let b = format!("h.{l}");
            blocks.push(Gpt2Block {
                ln_1: norm(&format!("{b}.ln_1"))?,
                c_attn: linear(&format!("{b}.attn.c_attn"), d, 3 * d)?,
                attn_proj: linear(&format!("{b}.attn.c_proj"), d, d)?,
                ln_2: norm(&format!("{b}.ln_2"))?,
                c_fc: linear(&format!("{b}.mlp.c_fc"), d, inner)?,
                mlp_proj: linear(&format!("{b}.mlp.c_proj"), inner, d)?,
            });
        }
        Ok(Self {
            wte: Param::from_tensor(tensor(get("wte.weight", &[v, d])?, [v, d], device)),
            wpe: Param::from_tensor(tensor(get("wpe.weight", &[p, d])?, [p, d], device)),
            blocks,
            ln_f: norm("ln_f")?,
            config,
        })
    }

    /// The logits of every position.
    ///
    /// ids: `[batch, S]` with `S <= n_positions` -> `[batch, S, vocab]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let c = &self.config;
        let [batch, s] = ids.dims();
        let device = ids.device();
        let (heads, d) = (c.n_head, c.n_embd);
        let dh = d / heads;
        let pos = self.wpe.val().narrow(0, 0, s).unsqueeze_dim::<3>(0);
        let mut h = embedding(self.wte.val(), ids) + pos;
        // Causal: key j is hidden from query i when j > i.
        let future: Vec<bool> = (0..s * s).map(|k| k % s > k / s).collect();
        let future = Tensor::<B, 2, Bool>::from_data(TensorData::new(future, [s, s]), &device)
            .unsqueeze_dims::<4>(&[0, 1]);
        let scale = (dh as f64).powf(-0.5);
        for blk in &self.blocks {
            let x = blk.ln_1.forward(h.clone(), c.layer_norm_epsilon);
            let qkv = blk.c_attn.forward(x).reshape([batch, s, 3, heads, dh]);
            let part = |i: usize| {
                qkv.clone()
                    .slice([0..batch, 0..s, i..i + 1, 0..heads, 0..dh])
                    .reshape([batch, s, heads, dh])
                    .swap_dims(1, 2)
            };
            let (q, k, v) = (part(0), part(1), part(2));
            let scores = q.matmul(k.swap_dims(2, 3)) * scale;
            let scores = scores.mask_fill(future.clone().expand([batch, heads, s, s]), f32::MIN);
            let a = softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([batch, s, d]);
            h = h + blk.attn_proj.forward(a);
            let x = blk.ln_2.forward(h.clone(), c.layer_norm_epsilon);
            h = h + blk.mlp_proj.forward(gelu_approximate(blk.c_fc.forward(x)));
        }
        let h = self.ln_f.forward(h, c.layer_norm_epsilon);
        h.reshape([batch * s, d])
            .matmul(self.wte.val().transpose())
            .reshape([batch, s, c.vocab_size])
    }

    /// The negative log-likelihood of token `j` given tokens `< j`, for `j = 1..S`.
    ///
    /// ids: `[batch, S]` -> `[batch, S - 1]`
    pub fn token_nll(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [batch, s] = ids.dims();
        let logp = log_softmax(self.forward(ids.clone()).slice([0..batch, 0..s - 1]), 2);
        let next = ids.slice([0..batch, 1..s]).unsqueeze_dim::<3>(2);
        logp.gather(2, next).reshape([batch, s - 1]).neg()
    }
}
