//! State-copy head decoder: `elf_shared::frames::read_state_head`, which a joining worker runs
//! on what a donor sends after the authenticated hello (optimiser count, index length, index
//! JSON, element count), against a fixed model index. Whatever the bytes announce, nothing of
//! that size may be allocated before it is checked against the index.
#![no_main]

use elf_shared::frames::read_state_head;
use elf_shared::manifest::TensorEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| elf_fuzz::run(|| {
    let index = [
        TensorEntry {
            name: "params/w".into(),
            shape: vec![2, 3],
            offset: 0,
        },
        TensorEntry {
            name: "ema/w".into(),
            shape: vec![2, 3],
            offset: 6,
        },
    ];
    if let Ok((_, n)) = read_state_head(&mut &data[..], &index) {
        assert_eq!(n, 12, "a head announcing another size was accepted");
    }
}));
