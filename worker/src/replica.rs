//! A replica: one worker's whole training state (live weights, EMA weights, the frozen encoder,
//! the optimiser) and its two halves of a step: gradients of a rank's micro-batches, then
//! (after the caller has summed gradients across ranks) clipping, the optimiser, and the EMA.
//!
//! Gradients leave the model as one flat host buffer in module order, which is what the
//! collectives reduce and what global-norm clipping needs (burn's clipping is per tensor).

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use elf_model::dims::ElfDims;
use elf_model::elf::Elf;
use elf_model::nn::{tensor, to_vec};
use elf_model::objective::{Branch, ObjectiveParams, decoder_loss, denoiser_loss, encode};
use elf_model::optim::{Optimizer, clip_global_norm, ema_update};
use elf_model::t5::T5Encoder;
use elf_model::weights::{flat_params, map_params, param_infos};
use elf_shared::config::Config;
use sha2::{Digest, Sha256};

use crate::batch::MicroBatch;

/// Loss parts of a rank's share of a step: sums of per-shard losses divided by the shard count,
/// so summing them over ranks gives the reference's means.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossParts {
    /// Mean over shards of the shard loss (this rank's part).
    pub loss: f64,
    /// CE shards' part of `loss`.
    pub ce: f64,
    /// L2 shards' part of `loss`.
    pub l2: f64,
}

impl LossParts {
    /// Adds another rank's parts.
    pub fn add(&mut self, o: &LossParts) {
        self.loss += o.loss;
        self.ce += o.ce;
        self.l2 += o.l2;
    }

    /// Returns `(ce_loss, l2_loss)` rescaled by the nominal branch probabilities (spec §4.9).
    pub fn rescaled(&self, decoder_prob: f64) -> (f64, f64) {
        let ce = if decoder_prob > 0.0 {
            self.ce / decoder_prob
        } else {
            0.0
        };
        let l2 = if decoder_prob < 1.0 {
            self.l2 / (1.0 - decoder_prob)
        } else {
            0.0
        };
        (ce, l2)
    }
}

/// A snapshot that does not fit this replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A tensor of the model is not in the snapshot.
    #[error("checkpoint has no tensor {tensor}")]
    Missing {
        /// Its name.
        tensor: String,
    },
    /// A tensor of the snapshot has another shape.
    #[error("checkpoint tensor {tensor} has shape {got:?}, the model needs {want:?}")]
    Shape {
        /// Its name.
        tensor: String,
        /// The snapshot's shape.
        got: Vec<usize>,
        /// The model's.
        want: Vec<usize>,
    },
    /// A tensor's range lies past the end of the snapshot's data.
    #[error("checkpoint tensor {tensor} ends at element {end} but the state has {len}")]
    Short {
        /// Its name.
        tensor: String,
        /// Where it ends.
        end: usize,
        /// Elements in the data.
        len: usize,
    },
}

/// What applying a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the optimiser step (when one ran).
    pub lr: f64,
    /// Whether an optimiser step ran (false while accumulating `grad_accum_steps`).
    pub stepped: bool,
}

/// A replica: live weights (autodiff), EMA weights, the frozen encoder and the optimiser.
#[derive(Debug)]
pub struct Replica<B: AutodiffBackend> {
    /// The resolved config.
    pub config: Config,
    /// Live weights.
    pub model: Elf<B>,
    /// EMA weights (used for sampling).
    pub ema: Elf<B::InnerBackend>,
    /// The frozen encoder.
    pub encoder: T5Encoder<B::InnerBackend>,
    /// Optimiser state.
    pub optimizer: Optimizer<B::InnerBackend>,
    /// Parameter shapes in module order.
    pub shapes: Vec<Vec<usize>>,
    accum: Vec<f32>,
    accum_count: usize,
    params: ObjectiveParams,
    device: B::Device,
}

struct GradCollector<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: Vec<Tensor<B::InnerBackend, 1>>,
    device: B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCollector<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        let g = match t.grad(self.grads) {
            Some(g) => g.reshape([n]),
            None => Tensor::zeros([n], &self.device),
        };
        self.out.push(g);
    }
}

impl<B: AutodiffBackend> Replica<B> {
    /// Builds a fresh replica: seeded ELF initialisation and the frozen encoder (`encoder` from
    /// the config's checkpoint or a seeded random one).
    pub fn new(
        config: Config,
        encoder: T5Encoder<B::InnerBackend>,
        vocab: usize,
        device: B::Device,
    ) -> Self {
        let dims = ElfDims::from_config(&config, vocab);
        let model = Elf::<B>::init(&dims, config.seed, &device);
        let ema = model.valid();
        let shapes: Vec<Vec<usize>> = param_infos::<B, _>(&model)
            .into_iter()
            .map(|p| p.shape)
            .collect();
        let optimizer = Optimizer::new(&config, &shapes, &device);
        let params = ObjectiveParams::from_config(&config);
        Self {
            config,
            model,
            ema,
            encoder,
            optimizer,
            shapes,
            accum: vec![],
            accum_count: 0,
            params,
            device,
        }
    }

    /// Returns the number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// Computes the summed gradient and loss parts of this rank's micro-batches.
    pub fn gradients(&self, micro: &[MicroBatch]) -> (Vec<f32>, LossParts) {
        let mut total: Option<Vec<f32>> = None;
        let mut parts = LossParts::default();
        for mb in micro {
            let x0 = encode(&self.encoder, &mb.batch, &self.params, &self.device);
            let loss = match mb.branch {
                Branch::Denoiser => {
                    denoiser_loss(&self.model, x0, &mb.batch, &mb.draws, &self.params)
                }
                Branch::Decoder => {
                    decoder_loss(&self.model, x0, &mb.batch, &mb.draws, &self.params)
                }
            };
            let sum: f64 = loss.per_sample.iter().map(|&x| x as f64).sum();
            parts.loss += sum;
            match mb.branch {
                Branch::Denoiser => parts.l2 += sum,
                Branch::Decoder => parts.ce += sum,
            }
            let grads = loss.total.backward();
            let mut col = GradCollector::<B> {
                grads: &grads,
                out: vec![],
                device: self.device.clone(),
            };
            self.model.visit(&mut col);
            let flat = to_vec(Tensor::cat(col.out, 0));
            match &mut total {
                Some(t) => t.iter_mut().zip(&flat).for_each(|(a, b)| *a += b),
                None => total = Some(flat),
            }
        }
        let total = total.unwrap_or_else(|| vec![0.0; self.num_params()]);
        (total, parts)
    }

    /// Clips the (rank-summed) gradient, accumulates `grad_accum_steps` of them, and when due
    /// runs the optimiser with learning rate `lr` and the EMA.
    ///
    /// # Errors
    /// A non-finite gradient norm (returned): nothing is changed, not even the accumulator.
    pub fn apply(&mut self, mut grads: Vec<f32>, lr: f64) -> Result<Applied, f64> {
        let grad_norm = clip_global_norm(&mut grads, 1.0);
        if !grad_norm.is_finite() {
            return Err(grad_norm);
        }
        let k = self.config.grad_accum_steps;
        if k > 1 {
            if self.accum.is_empty() {
                self.accum = vec![0.0; grads.len()];
            }
            let inv = 1.0 / k as f32;
            self.accum
                .iter_mut()
                .zip(&grads)
                .for_each(|(a, g)| *a += g * inv);
            self.accum_count += 1;
            if self.accum_count < k {
                return Ok(Applied {
                    grad_norm,
                    lr,
                    stepped: false,
                });
            }
            grads = std::mem::take(&mut self.accum);
            self.accum_count = 0;
        }
        let mut off = 0;
        let g: Vec<Tensor<B::InnerBackend, 1>> = self
            .shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                off += n;
                tensor(grads[off - n..off].to_vec(), [n], &self.device)
            })
            .collect();
        let live = flat_params::<B::InnerBackend, _>(&self.model.valid());
        let new = self.optimizer.step(live, g, lr);
        let mut i = 0;
        self.model = map_params(self.model.clone(), &mut |_, _, _| {
            i += 1;
            Tensor::from_inner(new[i - 1].clone())
        });
        let decay = self.config.ema_decay1;
        let mut j = 0;
        self.ema = map_params(self.ema.clone(), &mut |_, _, old| {
            j += 1;
            ema_update(old, new[j - 1].clone(), decay)
        });
        Ok(Applied {
            grad_norm,
            lr,
            stepped: true,
        })
    }

    /// Copies the whole training state to host memory as one flat vector with its index:
    /// parameters, EMA, then the optimiser moments, each in module order.
    pub fn snapshot(&self) -> (Vec<elf_shared::manifest::TensorEntry>, Vec<f32>) {
        self.snapshot_range(0, u64::MAX, Vec::new())
    }

    /// The number of elements of the flat training state (parameters, EMA, optimiser moments).
    pub fn state_numel(&self) -> u64 {
        let params: usize = param_infos::<B, _>(&self.model)
            .iter()
            .map(|i| i.shape.iter().product::<usize>())
            .sum();
        let moments: usize = self
            .optimizer
            .states
            .iter()
            .map(|st| st.mu.dims()[0] + st.nu.as_ref().map_or(0, |nu| nu.dims()[0]))
            .sum();
        (2 * params + moments) as u64
    }

    /// The index of the whole flat state and a copy of its elements `[start, end)` (clamped to
    /// the state's size): what one rank of a sharded save needs, and nothing more. The copy
    /// goes into `buf` (cleared first): recycling the buffer of the previous save spares the
    /// page faults of a fresh allocation, which cost far more than the copy itself.
    pub fn snapshot_range(
        &self,
        start: u64,
        end: u64,
        mut buf: Vec<f32>,
    ) -> (Vec<elf_shared::manifest::TensorEntry>, Vec<f32>) {
        use elf_shared::manifest::TensorEntry;
        let infos = param_infos::<B, _>(&self.model);
        let model = self.model.valid();
        type Named<'a, I> = (String, &'a [usize], Option<burn::Tensor<I, 1>>);
        let mut tensors: Vec<Named<'_, B::InnerBackend>> = Vec::new();
        let params = flat_params::<B::InnerBackend, _>(&model);
        let ema = flat_params::<B::InnerBackend, _>(&self.ema);
        for (info, t) in infos.iter().zip(params) {
            tensors.push((format!("params/{}", info.name), &info.shape, Some(t)));
        }
        for (info, t) in infos.iter().zip(ema) {
            tensors.push((format!("ema/{}", info.name), &info.shape, Some(t)));
        }
        for (info, st) in infos.iter().zip(&self.optimizer.states) {
            let mu = st.mu.clone();
            tensors.push((format!("opt_mu/{}", info.name), &info.shape, Some(mu)));
            if let Some(nu) = &st.nu {
                let nu = nu.clone();
                tensors.push((format!("opt_nu/{}", info.name), &info.shape, Some(nu)));
            }
        }
        let mut entries = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for (name, shape, _) in &tensors {
            entries.push(TensorEntry {
                name: name.clone(),
                shape: shape.to_vec(),
                offset,
            });
            offset += shape.iter().product::<usize>() as u64;
        }
        let (start, end) = (start.min(offset), end.min(offset));
        // One exact allocation, one copy per tensor straight from the backend's buffer.
        buf.clear();
        buf.reserve_exact((end - start) as usize);
        let mut data = buf;
        for (e, (_, _, t)) in entries.iter().zip(&mut tensors) {
            let (a, b) = (e.offset, e.offset + e.numel());
            let (lo, hi) = (a.max(start), b.min(end));
            if lo >= hi {
                continue;
            }
            let host = t.take().expect("each tensor is copied once").into_data();
            let v = host.as_slice::<f32>().expect("float state is f32");
            data.extend_from_slice(&v[(lo - a) as usize..(hi - a) as usize]);
        }
        (entries, data)
    }

    /// Replaces the training state by a snapshot (possibly written at another world size).
    ///
    /// # Errors
    /// A tensor of this model missing from the snapshot, of another shape, or past its end.
    pub fn restore(
        &mut self,
        entries: &[elf_shared::manifest::TensorEntry],
        data: &[f32],
        optimizer_count: u64,
    ) -> Result<(), StateError> {
        let index: std::collections::HashMap<&str, &elf_shared::manifest::TensorEntry> =
            entries.iter().map(|e| (e.name.as_str(), e)).collect();
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, StateError> {
            let e = index.get(name).ok_or_else(|| StateError::Missing {
                tensor: name.to_string(),
            })?;
            if e.shape != shape {
                return Err(StateError::Shape {
                    tensor: name.to_string(),
                    got: e.shape.clone(),
                    want: shape.to_vec(),
                });
            }
            let (a, b) = (e.offset as usize, (e.offset + e.numel()) as usize);
            if b > data.len() {
                return Err(StateError::Short {
                    tensor: name.to_string(),
                    end: b,
                    len: data.len(),
                });
            }
            Ok(data[a..b].to_vec())
        };
        let infos = param_infos::<B, _>(&self.model);
        let mut live = Vec::with_capacity(infos.len());
        let mut ema = Vec::with_capacity(infos.len());
        for info in &infos {
            live.push(get(&format!("params/{}", info.name), &info.shape)?);
            ema.push(get(&format!("ema/{}", info.name), &info.shape)?);
        }
        for (info, st) in infos.iter().zip(self.optimizer.states.iter_mut()) {
            let n = st.mu.dims()[0];
            st.mu = tensor(
                get(&format!("opt_mu/{}", info.name), &info.shape)?,
                [n],
                &self.device,
            );
            if st.nu.is_some() {
                st.nu = Some(tensor(
                    get(&format!("opt_nu/{}", info.name), &info.shape)?,
                    [n],
                    &self.device,
                ));
            }
        }
        self.optimizer.count = optimizer_count;
        let mut i = 0;
        self.model = map_params(self.model.clone(), &mut |_, _, _| {
            i += 1;
            let v = live[i - 1].clone();
            let n = v.len();
            Tensor::from_inner(tensor(v, [n], &self.device))
        });
        let mut j = 0;
        self.ema = map_params(self.ema.clone(), &mut |_, _, _| {
            j += 1;
            let v = ema[j - 1].clone();
            let n = v.len();
            tensor(v, [n], &self.device)
        });
        Ok(())
    }

    /// Loads a committed checkpoint folder `dir` with its (checked) manifest `m`: its index must
    /// be this model's, every shard must verify, and (format 2) the loaded parameters must hash
    /// to the digest recorded at commit.
    ///
    /// # Errors
    /// The first of those that fails, naming the file.
    pub fn load(
        &mut self,
        dir: &elf_store::Location,
        m: &elf_shared::manifest::Manifest,
    ) -> anyhow::Result<()> {
        let index = self.snapshot_range(0, 0, Vec::new()).0;
        let state = crate::checkpoint::read_state(dir, m, &index)?;
        self.restore(&m.tensors, &state, m.optimizer_count)?;
        let got = self.param_digest();
        if m.format >= 2 && got != m.param_digest {
            anyhow::bail!(
                "{}: the loaded parameters of step {} hash to {got} but the manifest recorded {:?} at commit",
                dir.join("manifest.json").display(),
                m.step,
                m.param_digest
            );
        }
        Ok(())
    }

    /// Returns the sha256 of the live parameters' bytes (equal on every replica at every step).
    pub fn param_digest(&self) -> String {
        digest::<B::InnerBackend, _>(&self.model.valid())
    }
}

/// Loads the frozen encoder of a config: its HF checkpoint, or a seeded random one (with a
/// warning, since latents from random weights only suit tests and demos).
///
/// # Errors
/// A checkpoint that is missing or does not match the configured shape.
pub fn load_encoder<B: Backend>(
    rc: &elf_shared::config::ResolvedConfig,
    device: &B::Device,
) -> anyhow::Result<T5Encoder<B>> {
    let c = &rc.config;
    match &c.encoder_checkpoint {
        Some(p) => {
            let path = rc.resolve(p);
            if path.ends_with(".pkl") {
                anyhow::bail!(
                    "{}: encoder_checkpoint {path}: JAX pickles are not read; convert it once with python scripts/reference/t5_pickle_to_hf.py {path} model.safetensors, or point it at the HF t5-small model.safetensors (see README)",
                    rc.source
                );
            }
            Ok(T5Encoder::load_hf(
                std::path::Path::new(&path),
                &c.encoder,
                device,
            )?)
        }
        None => {
            tracing::warn!(
                seed = c.encoder.init_seed,
                "no encoder_checkpoint: using a seeded random T5 encoder (fine for tests and demos; use the real t5-small for real runs)"
            );
            Ok(T5Encoder::random(&c.encoder, device))
        }
    }
}

/// Returns the sha256 of a module's parameters in module order, as hex.
pub fn digest<B: Backend, M: Module<B>>(m: &M) -> String {
    let mut h = Sha256::new();
    for t in flat_params::<B, M>(m) {
        for v in to_vec(t) {
            h.update(v.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use elf_model::backend::CpuTrain;
    use elf_shared::config::{EncoderDims, ModelDims};

    fn replica(accum: usize) -> Replica<CpuTrain> {
        let c = Config {
            grad_accum_steps: accum,
            max_length: 4,
            bottleneck_dim: 4,
            encoder: EncoderDims {
                vocab_size: 16,
                d_model: 8,
                d_kv: 4,
                num_heads: 2,
                d_ff: 8,
                num_layers: 1,
                ..EncoderDims::default()
            },
            model_dims: Some(ModelDims {
                hidden: 8,
                depth: 1,
                heads: 2,
                mlp_ratio: 4.0,
            }),
            ema_decay1: 0.5,
            ..Config::default()
        };
        let device = Default::default();
        let enc = T5Encoder::random(&c.encoder, &device);
        Replica::new(c, enc, 16, device)
    }

    #[test]
    fn accumulation_averages_gradients_and_steps_optimizer_and_ema_once() {
        let mut a = replica(2);
        let mut b = replica(1);
        let n = a.num_params();
        // Small gradients: clipping (norm < 1) leaves them unchanged.
        let g1: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 1e-5).collect();
        let g2: Vec<f32> = (0..n).map(|i| ((i % 5) as f32 - 2.0) * 2e-5).collect();
        let (p0, e0) = (
            a.param_digest(),
            digest::<elf_model::backend::Cpu, _>(&a.ema),
        );
        let first = a.apply(g1.clone(), 0.01).unwrap();
        assert!(!first.stepped);
        assert_eq!(a.param_digest(), p0, "no update before the k-th micro step");
        assert_eq!(
            digest::<elf_model::backend::Cpu, _>(&a.ema),
            e0,
            "EMA moves on optimiser steps only"
        );
        assert!(a.apply(g2.clone(), 0.01).unwrap().stepped);
        let avg: Vec<f32> = g1.iter().zip(&g2).map(|(x, y)| x * 0.5 + y * 0.5).collect();
        assert!(b.apply(avg, 0.01).unwrap().stepped);
        assert_eq!(a.param_digest(), b.param_digest());
        assert_eq!(
            digest::<elf_model::backend::Cpu, _>(&a.ema),
            digest::<elf_model::backend::Cpu, _>(&b.ema)
        );
        assert_ne!(a.param_digest(), p0);
    }
}
