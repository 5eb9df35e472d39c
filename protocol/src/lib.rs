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

/// The largest gRPC message either side decodes or encodes (set deliberately on both, not
/// left to a library default): a shard report carries the state's tensor index, a few hundred
/// KiB for the largest ELF; anything near this bound is hostile.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How long an HTTP connection may take to send its request head before it is closed.
pub const HTTP_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/2 keep-alive pings on the gRPC connections: a peer that answers none within
/// [`GRPC_KEEPALIVE_TIMEOUT`] is dropped, so dead or idle-forever connections do not pile up.
pub const GRPC_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// See [`GRPC_KEEPALIVE_INTERVAL`].
pub const GRPC_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
