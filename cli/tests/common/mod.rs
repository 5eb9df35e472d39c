//! Helpers shared by the test binaries that need a reference train state or a small corpus.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use elf_model::dims::{ElfDims, T5_VOCAB};
use elf_shared::config::Config;

/// Writes `state.msgpack` and `expected.safetensors` (and with `--orbax` an Orbax folder) for
/// the model of `configs/tiny.yaml` into `dir`, through `scripts/reference/flax_state.py`
/// (flax 0.10.2, optax 0.2.5), with `extra` script flags; returns the msgpack bytes.
pub fn flax_state(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let root = elf_e2e::repo_root();
    let rc = Config::load(&root.join("configs/tiny.yaml"), &[]).unwrap();
    let d = ElfDims::from_config(&rc.config, T5_VOCAB);
    let dims = serde_json::json!({
        "hidden": d.hidden, "depth": d.depth, "heads": d.heads, "ffn": d.ffn,
        "latent": d.latent, "bottleneck": d.bottleneck, "vocab": d.vocab,
        "n_time": d.n_time, "n_sc": d.n_sc, "n_mode": d.n_mode,
    });
    let out = Command::new("python3")
        .arg(root.join("scripts/reference/flax_state.py"))
        .args(["--dims", &dims.to_string(), "--out", dir.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "flax_state.py failed (pip install -r scripts/requirements-test.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join("state.msgpack")).unwrap()
}

/// The first `n` lines of the committed English corpus, as a JSONL text.
pub fn corpus_rows(n: usize) -> String {
    std::fs::read_to_string(elf_e2e::repo_root().join("data/text/train.jsonl"))
        .unwrap()
        .lines()
        .take(n)
        .map(|l| format!("{l}\n"))
        .collect()
}
