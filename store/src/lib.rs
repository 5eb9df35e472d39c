//! Storage for ELF runs: local paths and object stores (`file://`, `s3://`, `gs://`, `az://`,
//! `memory://`) behind one [`Location`], and checkpoint folders on them (manifests, commit,
//! `latest`, verification, discovery, retention). No tensors, no network stack of its own
//! beyond the object-store clients' (which the hub client shares).
//!
//! # Layout
//! - [`location`]: [`Location`] and byte-range reads ([`ByteSource`]).
//! - [`checkpoints`]: checkpoint folders: manifest IO, commit, `latest`, verify, retention.
//! - [`hub`]: Hugging Face hub ids resolved to the hub's cache (`HF_ENDPOINT`, `HF_HOME`,
//!   `HF_TOKEN`, `HF_HUB_OFFLINE`).
//! - [`error`]: [`StoreError`], the one error type, with honest "not found" vs "unknown".

pub mod checkpoints;
pub mod error;
pub mod hub;
pub mod location;

pub use error::StoreError;
pub use location::{ByteSource, Location};
