//! Config loader: `elf_shared::config::Config::from_yaml` on arbitrary UTF-8 (YAML parse,
//! typed decode, path resolution, validation), then what the system does with an accepted
//! config: its canonical YAML and hashes, a worker re-reading that YAML, a resume check
//! against it, and the run facts derived from it.
#![no_main]

use std::path::Path;

use elf_shared::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| elf_fuzz::run(|| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rc) = Config::from_yaml(text, "fuzz.yaml", Path::new("/nonexistent"), &[]) else {
        return;
    };
    let c = &rc.config;
    // Workers receive `to_yaml()`; a resumed run re-reads it from the manifest and compares
    // training hashes. A config the loader accepted must survive both.
    let yaml = c.to_yaml();
    let _ = (c.hash(), c.training_hash(), c.peak_lr(), c.pad_id());
    if let Err(e) = c.check_resumable(&yaml, "fuzz") {
        panic!("an accepted config does not resume from its own canonical YAML: {e}\n{yaml}");
    }
    // Dataset sizes a run could have; a row count near u64::MAX (a corrupt data file's
    // header) overflows `RunFacts::derive` at once, which would hide every other finding here.
    for rows in [1u64, 1 << 20, 1 << 40] {
        if let Ok(facts) = elf_shared::run::RunFacts::derive(c, rows) {
            let _ = facts.valid_world(64);
            for step in [0u64, 1, facts.total_steps / 2, facts.total_steps] {
                let _ = facts.lr(elf_shared::ids::Step(step));
            }
        }
    }
}));
