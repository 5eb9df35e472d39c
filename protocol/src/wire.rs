//! The generated gRPC types of `proto/elf/v2/coordinator.proto`. Code outside this crate uses
//! the domain types of `elf_shared::messages`; [`crate::convert`] maps between the two.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("elf.v2");
