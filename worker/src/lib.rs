//! The ELF worker: data loading, the training step and generation, on top of `elf-model`.
//!
//! # Layout
//! - [`batch`]: a rank's share of a global batch: rows, branch coins, draws, loss weights.
//! - [`checkpoint`]: checkpoint shards in and out of object storage.
//! - [`collective`]: the collective trait and the TCP ring all-reduce.
//! - [`node`]: the worker process loop (register, train directives, report).
//! - [`trainer`]: a replica's state; gradients, then clip/optimiser/EMA.
//! - [`generate`]: sampling and post-processing from the EMA weights.
//! - [`setup`]: building a replica and its data from a resolved config.

pub mod batch;
pub mod checkpoint;
pub mod collective;
pub mod eval;
pub mod generate;
pub mod node;
pub mod setup;
pub mod trainer;
pub mod transfer;
