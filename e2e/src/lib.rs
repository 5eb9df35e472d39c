//! Harness for the end-to-end tests in `cli/tests/` (Cargo hands the `elf` binary's path only
//! to the tests of its own package, so the tests live there and their tools here): real `elf`
//! processes on loopback, their events and logs, the run artifacts they leave, and a real S3
//! endpoint.
//!
//! # Layout
//! - [`process`]: [`Proc`], a child with its JSON events and the tail of its stderr; one-shot
//!   commands and their single error line; `GET`s.
//! - [`cluster`]: [`Elf`], which starts a coordinator and workers ([`Run`]) or `elf train`.
//! - [`artifacts`]: what a run leaves: metrics lines, final parameters, and the assertion that
//!   two runs trained the same model.
//! - [`s3`]: moto's S3 server on loopback.
//! - [`browser`]: headless chromium on a loopback page: its DOM, its requests, a screenshot.
//! - [`netns`]: several hosts on one machine ([`Net`], [`Host`]): network namespaces on one
//!   switch, each with its own address and private directory, links that can be cut or capped.

pub mod artifacts;
pub mod browser;
pub mod cluster;
pub mod netns;
pub mod process;
pub mod s3;

pub use artifacts::{assert_same_run, lines, params, promtool, wait_for};
pub use cluster::{Elf, FT, Run, T, serial};
pub use netns::{Host, Net};
pub use process::{Proc, err_line, http_get, ok, repo_root, run_in_repo};
pub use s3::S3;
