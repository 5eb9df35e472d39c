//! Parquet row reader: `elf_dataset::parquet::ParquetFile` (via `open_dataset` on a `.parquet`
//! file): footer and schema checks at open, then row-group decoding and row extraction.
//!
//! The `parquet` crate panics on some malformed files; the reader catches those panics and
//! returns an error naming the file (`elf_dataset::parquet`, `contained`). libFuzzer's panic
//! hook would abort on the caught ones too, so this target puts the default hook back: a
//! caught panic is an error, and one that escapes still aborts (it cannot unwind into
//! libFuzzer), which libFuzzer reports as a crash.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    });
    elf_fuzz::open_and_read("parquet", data);
});
