//! Checkpoint manifest reader: `manifest.json` bytes as `elf_store::checkpoints::read_manifest`
//! takes them (`serde_json::from_slice::<Manifest>`, then `Manifest::check`), then what readers
//! compute from a manifest that passed the check before touching any shard.
#![no_main]

use elf_shared::manifest::{Manifest, tensor_at};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| elf_fuzz::run(|| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    // `read_manifest` checks against the folder's step; `read_state` without one.
    let _ = m.check(Some(m.step.wrapping_add(1)));
    if m.check(None).is_err() {
        return;
    }
    // Everything below runs only on manifests `check` accepted, as in the readers.
    let _ = m.params_len();
    for t in &m.tensors {
        let _ = t.numel();
    }
    for at in [0, m.numel / 2, m.numel.saturating_sub(1), m.numel] {
        let _ = tensor_at(&m.tensors, at);
    }
    // `rewrite_manifest` re-serialises a manifest it read (with `expect`), and a re-sealed
    // manifest must still pass its own check.
    let _ = serde_json::to_vec_pretty(&m).expect("a parsed manifest serialises");
    if let Err(e) = m.clone().sealed().check(None) {
        panic!("a checked manifest fails the check once re-sealed: {e}");
    }
}));
