//! Safetensors shard reader: `elf_shared::manifest::decode_shard`, which
//! `elf_worker::checkpoint::read_state` and `elf_store::checkpoints` run on every checkpoint
//! shard (safetensors header parse, piece names `<name>@<first>:<end>`, each piece checked
//! against the tensor index), against fixed checked manifests of the seeds' tensor layout at
//! world sizes 1 and 2; then the placement `read_state` does with what it gets. Also every
//! tensor view of the file as `elf_model::weights::TensorFile` reads them (elf-model itself
//! pulls burn, too heavy for this build).
#![no_main]

use std::sync::OnceLock;

use elf_shared::manifest::{Manifest, TensorEntry, decode_shard, shard_file, shard_range};
use libfuzzer_sys::fuzz_target;
use safetensors::SafeTensors;

/// The seeds' layout (`fuzz/corpus/safetensors_shard/`): 22 elements in three tensors.
fn manifest(world: u32) -> Manifest {
    let tensors = vec![
        TensorEntry {
            name: "params/blocks_0/attn/qkv/kernel".into(),
            shape: vec![3, 4],
            offset: 0,
        },
        TensorEntry {
            name: "params/norm/weight".into(),
            shape: vec![4],
            offset: 12,
        },
        TensorEntry {
            name: "ema/norm/weight".into(),
            shape: vec![6],
            offset: 16,
        },
    ];
    let numel = 22;
    let shards = (0..world)
        .map(|r| {
            let (a, b) = shard_range(numel, r as u64, world as u64);
            elf_shared::manifest::ShardEntry {
                file: shard_file(r, world),
                sha256: String::new(),
                size: 4 * (b - a) + 8 + 512,
                start: a,
                len: b - a,
            }
        })
        .collect();
    let m = Manifest {
        format: 1,
        step: 20,
        next_step: 21,
        optimizer_count: 20,
        config_hash: String::new(),
        config_yaml: String::new(),
        world_size: world,
        numel,
        tensors,
        shards,
        seed: 0,
        metrics: serde_json::Value::Null,
        eval: serde_json::Value::Null,
        param_digest: String::new(),
        manifest_sha256: String::new(),
    }
    .sealed();
    m.check(None)
        .expect("the fuzz target's manifest passes the check");
    m
}

fuzz_target!(|data: &[u8]| elf_fuzz::run(|| {
    static MANIFESTS: OnceLock<[Manifest; 2]> = OnceLock::new();
    let manifests = MANIFESTS.get_or_init(|| [manifest(1), manifest(2)]);
    for m in manifests {
        let mut out = vec![0u8; 4 * m.numel as usize];
        for s in &m.shards {
            let mut placed = 0u64;
            let got = decode_shard(m, s, data, &mut |at, bytes| {
                // As `read_state` does: copy into the flat state at element `at`.
                let at = 4 * at as usize;
                out[at..at + bytes.len()].copy_from_slice(bytes);
                placed += bytes.len() as u64 / 4;
            });
            if got.is_ok() {
                assert_eq!(
                    placed, s.len,
                    "decode_shard accepted a shard it did not fill"
                );
            }
        }
    }
    // The raw views, as `TensorFile::{names, shape, get_f32, get_i64}` read them.
    let _ = SafeTensors::read_metadata(data);
    let Ok(st) = SafeTensors::deserialize(data) else {
        return;
    };
    for (_, view) in st.tensors() {
        let numel = view
            .shape()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        let width = (view.dtype().bitsize() / 8).max(1);
        let sum: u64 = view.data().chunks_exact(width).map(|c| c[0] as u64).sum();
        std::hint::black_box((numel, sum));
    }
}));
