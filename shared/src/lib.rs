//! Types both ELF binaries need: the run config and its validation, and the keyed random
//! streams every process draws from. No burn, no tokio.
//!
//! # Layout
//! - [`config`]: the reference's flat YAML plus our sections; load, override, validate, hash.
//! - [`plan`]: the world-size-invariant sample plan (which rows each step and rank train).
//! - [`seed`]: counter-based random streams keyed by (seed, purpose, step, sample), and the
//!   pointwise data permutation.

pub mod config;
pub mod plan;
pub mod seed;
