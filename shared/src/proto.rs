//! The generated gRPC types of `proto/elf/v1/coordinator.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The protocol version both sides must speak.
pub const PROTOCOL_VERSION: u32 = 1;

tonic::include_proto!("elf.v1");
