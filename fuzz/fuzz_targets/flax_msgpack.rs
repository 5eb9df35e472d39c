//! Flax msgpack reader: `elf_shared::flax::read_state`, which `elf import` runs on a reference
//! checkpoint file. Whatever lengths and counts the bytes claim, nothing of that size may be
//! allocated before the bytes are there, nesting is bounded, and every float leaf holds exactly
//! its shape's elements.
#![no_main]

use elf_shared::flax::{Leaf, read_state};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| elf_fuzz::run(|| {
    if let Ok(leaves) = read_state(data) {
        for (path, leaf) in leaves {
            assert!(!path.is_empty());
            if let Leaf::Float { shape, data, .. } = leaf {
                assert_eq!(shape.iter().product::<usize>(), data.len(), "{path}");
            }
        }
    }
}));
