//! The ELF worker: data loading, the training step loop and sampling, on top of `elf-model`.
//!
//! # Layout
//! - [`data`]: dataset sources, tokenizer, collator and `elf data prepare`.

pub mod data;
