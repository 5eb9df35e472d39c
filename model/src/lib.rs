//! The machine-learning heart of ELF on burn: the network, the frozen T5 encoder, the
//! objective, the optimiser and the sampler, exactly as `elf-spec.md` describes them.
//! Pure math on tensors: no tokio, no network, no files beyond safetensors weights.
//!
//! # Layout
//! - [`dims`]: presets ELF-B/M/L/T and the encoder shape.
//! - [`nn`]: `(in, out)` linear, RMS norm, tanh GELU, seeded initialisers.
//! - [`elf`]: the ELF denoiser/decoder network (spec §1).
//! - [`t5`]: the frozen T5 encoder and its HF safetensors loader (spec §2).
//! - [`objective`]: denoiser and decoder losses and the keyed draws (spec §4).
//! - [`optim`]: clipping, Muon/Adam/AdamW, schedule, EMA (spec §4.10–4.11).
//! - [`sampler`]: time grids, ODE/SDE steps, CFG, decoding (spec §5).
//! - [`weights`]: named parameters in and out of safetensors files.
//! - [`backend`]: the backend types the binaries use.
//! - [`cpu`]: host kernels for the CPU backend (fused cross-entropy).

pub mod backend;
pub mod cpu;
pub mod dims;
pub mod elf;
pub mod flops;
pub mod gpt2;
pub mod metrics;
pub mod nn;
pub mod objective;
pub mod optim;
pub mod sampler;
pub mod t5;
pub mod weights;
