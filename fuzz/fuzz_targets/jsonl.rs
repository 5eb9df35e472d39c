//! JSONL row reader: `elf_dataset::jsonl::JsonlFile` (via `open_dataset` on a `.jsonl` file):
//! indexing and validating every line at open, then re-reading and tokenising rows.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| elf_fuzz::run(|| {
    elf_fuzz::open_and_read("jsonl", data);
}));
