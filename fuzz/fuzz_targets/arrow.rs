//! Arrow IPC stream row reader: `elf_dataset::arrow::ArrowStream` (via `open_dataset` on an
//! `.arrow` file): the header scan at open (schema, record-batch buffer offsets), then row reads
//! through list offsets, validity bitmaps and value buffers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| elf_fuzz::run(|| {
    elf_fuzz::open_and_read("arrow", data);
}));
