//! The network contract between ELF processes: the gRPC wire types generated from
//! `proto/elf/v2/coordinator.proto`, their conversions to the domain types of
//! `elf_shared::messages`, and the small HTTP endpoint both processes serve for `/metrics` and
//! `/status`. Kept out of `elf-shared` so that the model crate, which depends on `elf-shared`,
//! has no network stack.
//!
//! # Layout
//! - [`wire`]: the generated gRPC types (client, server, messages).
//! - [`convert`]: wire <-> domain conversions, written once; [`convert::DecodeError`].
//! - [`http`]: the read-only HTTP endpoint.
//! - [`security`]: TLS, the join token and certificate roles of the gRPC channel.

pub mod convert;
pub mod http;
pub mod security;
pub mod wire;

pub use convert::DecodeError;
