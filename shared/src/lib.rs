//! Types every ELF crate needs: the run config and its validation, the facts derived from it,
//! the keyed random streams every process draws from, the sample plan, and the messages of the
//! control plane as domain types. No burn, no network stack (the wire form of the messages is
//! `elf-protocol`'s).
//!
//! # Layout
//! - [`config`]: the reference's flat YAML plus our sections; load, override, validate, hash.
//! - [`events`]: JSON event lines on stdout.
//! - [`flax`]: the reference's flax msgpack checkpoints (`to_bytes`), read natively.
//! - [`failpoint`]: fault injection for the crash tests (`ELF_FAILPOINT_*`).
//! - [`ids`]: [`ids::Step`] and the step vocabulary, [`ids::WorkerId`], [`ids::QuorumId`].
//! - [`manifest`]: the checkpoint manifest and shard layout.
//! - [`messages`]: registrations, directives, reports and the run status, as domain types.
//! - [`plan`]: the world-size-invariant sample plan (which rows each step and rank train).
//! - [`run`]: [`run::RunFacts`], what a run is, derived once from the config and the data size.
//! - [`schedule`]: the learning-rate schedule (warmup, constant or cosine).
//! - [`seed`]: counter-based random streams keyed by (seed, purpose, step, sample), and the
//!   pointwise data permutation.

pub mod config;
pub mod events;
pub mod failpoint;
pub mod flax;
pub mod frames;
pub mod ids;
pub mod manifest;
pub mod messages;
pub mod plan;
pub mod run;
pub mod schedule;
pub mod seed;
