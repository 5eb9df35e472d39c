//! Small layers shared by the ELF network and the T5 encoder, and seeded initialisers.
//!
//! Kernels are stored `(in, out)` as in Flax (spec §1.4), so reference parameter trees load
//! without transposes. Initial values are drawn on the host from the keyed stream, so every
//! rank and every backend starts from the same numbers without a broadcast.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use elf_shared::seed::{Purpose, Stream};

/// A dense layer `y = x W + b` with `W: (in, out)`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// Kernel `(in, out)`.
    pub kernel: Param<Tensor<B, 2>>,
    /// Bias `(out)`, absent for bias-free projections.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Applies the layer to the last axis.
    ///
    /// x: `[.., in]` -> `[.., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let [d_in, d_out] = self.kernel.val().dims();
        debug_assert_eq!(dims[D - 1], d_in);
        let rows = dims[..D - 1].iter().product::<usize>();
        let y = x.reshape([rows, d_in]).matmul(self.kernel.val());
        let y = match &self.bias {
            Some(b) => y + b.val().unsqueeze_dim(0),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

/// Root-mean-square norm `γ ⊙ x / sqrt(mean(x²) + ε)` over the last axis (spec §1.3.2, §2.2).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Gain `γ`.
    pub weight: Param<Tensor<B, 1>>,
}

/// The ε of every RMS norm in ELF and T5.
pub const RMS_EPS: f64 = 1e-6;

impl<B: Backend> RmsNorm<B> {
    /// Normalises the last axis.
    ///
    /// x: `[.., n]` -> `[.., n]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let ms = x.clone().square().mean_dim(D - 1);
        let inv = (ms + RMS_EPS).sqrt().recip();
        let g = self.weight.val();
        let mut shape = [1usize; D];
        shape[D - 1] = g.dims()[0];
        x * inv * g.reshape(shape)
    }
}

/// `GELU` with the tanh approximation (`jax.nn.gelu` default, spec §1.3.7).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::gelu_approximate(x)
}

/// How an initial value is drawn (spec §1.4).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Glorot uniform on an `(in, out)` kernel.
    Xavier,
    /// Plain normal with this std.
    Normal(f64),
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
}

/// Draws initial parameter values from the keyed stream, one sub-stream per parameter.
#[derive(Debug, Clone)]
pub struct Initializer {
    seed: u64,
    purpose: Purpose,
    next: u64,
}

impl Initializer {
    /// Starts an initialiser for `(seed, purpose)`.
    pub fn new(seed: u64, purpose: Purpose) -> Self {
        Self {
            seed,
            purpose,
            next: 0,
        }
    }

    /// Returns `n` values drawn with `init` for a tensor of `shape`.
    pub fn values(&mut self, init: Init, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let index = self.next;
        self.next += 1;
        match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => {
                let mut s = Stream::new(self.seed, self.purpose, index, 0);
                (0..n).map(|_| (s.normal() * std) as f32).collect()
            }
            Init::Xavier => {
                let (fan_in, fan_out) = (shape[0], shape[shape.len() - 1]);
                let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
                let mut s = Stream::new(self.seed, self.purpose, index, 0);
                (0..n)
                    .map(|_| ((2.0 * s.uniform() - 1.0) * a) as f32)
                    .collect()
            }
        }
    }

    /// Builds a parameter of `shape` with `init` on `device`.
    pub fn param<B: Backend, const D: usize>(
        &mut self,
        init: Init,
        shape: [usize; D],
        device: &B::Device,
    ) -> Param<Tensor<B, D>> {
        let v = self.values(init, &shape);
        Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), device))
    }

    /// Builds a linear layer `(d_in, d_out)` with the kernel drawn by `init` and a zero bias.
    pub fn linear<B: Backend>(
        &mut self,
        init: Init,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Linear<B> {
        Linear {
            kernel: self.param(init, [d_in, d_out], device),
            bias: bias.then(|| self.param(Init::Zeros, [d_out], device)),
        }
    }

    /// Builds an RMS norm of width `n` with unit gain.
    pub fn rms_norm<B: Backend>(&mut self, n: usize, device: &B::Device) -> RmsNorm<B> {
        RmsNorm {
            weight: self.param(Init::Ones, [n], device),
        }
    }
}

/// Builds a float tensor of `shape` from host values.
pub fn tensor<B: Backend, const D: usize>(
    v: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Copies a float tensor to the host.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("float tensor converts to f32")
}
