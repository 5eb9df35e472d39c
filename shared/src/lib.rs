//! Types both ELF binaries need: the run config and its validation, and the keyed random
//! streams every process draws from, the sample plan and the wire protocol. No burn.
//!
//! # Layout
//! - [`config`]: the reference's flat YAML plus our sections; load, override, validate, hash.
//! - [`events`]: JSON event lines on stdout.
//! - [`http`]: the small `/metrics` and `/status` endpoint.
//! - [`manifest`]: the checkpoint manifest and shard layout.
//! - [`plan`]: the world-size-invariant sample plan (which rows each step and rank train).
//! - [`proto`]: the gRPC wire protocol (generated from `proto/elf/v1/coordinator.proto`).
//! - [`schedule`]: the learning-rate schedule (warmup, constant or cosine).
//! - [`seed`]: counter-based random streams keyed by (seed, purpose, step, sample), and the
//!   pointwise data permutation.

pub mod config;
pub mod events;
pub mod failpoint;
pub mod http;
pub mod manifest;
pub mod plan;
pub mod proto;
pub mod schedule;
pub mod seed;
