//! The ELF worker: a replica that trains the steps its coordinator hands it, and evaluates
//! committed checkpoints, on top of `elf-model`.
//!
//! # Layout
//! - [`trainer`]: the worker process: the directive loop (one screen) and reconnection.
//! - [`session`]: registering with a coordinator, the shipped config, heartbeats.
//! - [`client`]: coordinator calls in domain types; the one `Status` -> error mapping.
//! - [`step`]: one training step: the ring per quorum, micro-batches, all-reduce, update.
//! - [`saver`]: background checkpoint uploads with a recycled host buffer.
//! - [`outputs`]: the end of a run (final weights and samples).
//! - [`evaluator`]: eval jobs, and the loop of a dedicated eval worker.
//! - [`replica`]: a replica's state; gradients, then clip/optimiser/EMA; snapshot/restore.
//! - [`batch`]: a rank's share of a global batch: rows, branch coins, draws, loss weights.
//! - [`data`]: the tokenizer, rows and collator a replica reads.
//! - [`collective`]: the collective trait and the TCP ring all-reduce.
//! - [`transfer`]: copying a live peer's state to a joining worker.
//! - [`checkpoint`]: checkpoint shards in and out of a store.
//! - [`generate`]: sampling and post-processing from the EMA weights.
//! - [`eval`]: the paper's evaluation of a checkpoint.
//! - [`metrics`]: the worker's Prometheus metrics.

pub mod batch;
pub mod checkpoint;
pub mod client;
pub mod collective;
pub mod data;
pub mod eval;
pub mod evaluator;
pub mod generate;
pub mod metrics;
pub mod outputs;
pub mod peer_auth;
pub mod replica;
pub mod saver;
pub mod session;
pub mod step;
pub mod trainer;
pub mod transfer;
