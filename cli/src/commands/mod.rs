//! The `elf` subcommands, one file each.
//!
//! # Layout
//! - [`train`]: `elf train`, a run on this machine (embedded coordinator, local workers).
//! - [`cluster`]: `elf coordinator` and `elf worker`, a run across machines.
//! - [`eval`]: `elf sample` and `elf eval` on committed checkpoints.
//! - [`score`]: `elf score`, BLEU and ROUGE of any hypothesis file.
//! - [`import`]: `elf import`, a reference flax checkpoint into a committed one of ours.
//! - [`plot`]: `elf plot`, an SVG of a run's metrics.
//! - [`config`]: `elf config check`.
//! - [`model`]: `elf model params|forward`.
//! - [`data`]: `elf data prepare`.
//! - [`checkpoint`]: `elf checkpoint ls|inspect|verify`.

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod data;
pub mod eval;
pub mod import;
pub mod model;
pub mod plot;
pub mod score;
pub mod train;
