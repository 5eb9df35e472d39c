//! Parquet row reader: `elf_dataset::parquet::ParquetFile` (via `open_dataset` on a `.parquet`
//! file): footer and schema checks at open, then row-group decoding and row extraction.
//!
//! The `parquet` crate panics on some malformed files; the reader catches those panics and
//! returns an error naming the file (`contained` in `dataset/src/parquet.rs`). `elf_fuzz::run`
//! lets such a caught panic pass and aborts on one that escapes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    elf_fuzz::run(|| elf_fuzz::open_and_read("parquet", data));
});
