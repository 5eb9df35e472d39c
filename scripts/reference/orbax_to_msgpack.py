#!/usr/bin/env python3
"""An Orbax checkpoint of the reference -> the flax msgpack file `elf import` reads.

With flax 0.10.2 (the reference's pin) `flax.training.checkpoints.save_checkpoint_multiprocess`
writes each checkpoint as an Orbax PyTree folder `output_dir/checkpoint_<step>/` (spec §7).
Its format (OCDBT, tensorstore) is not reasonable to read outside Orbax, so this script restores
it with Orbax itself, exactly as the reference's loader does
(`flax.training.checkpoints.restore_checkpoint(dir, target=None)`), and writes the restored
state dict with `flax.serialization.msgpack_serialize`, the bytes `to_bytes` would have written.
Optax's masked nodes and empty states, which Orbax restores as `None`, are left out (to_bytes
writes them as empty maps, which hold nothing).

Usage:
  python scripts/reference/orbax_to_msgpack.py OUTPUT_DIR_OR_CHECKPOINT_DIR STATE.msgpack
  elf import STATE.msgpack --config CONFIG --out CHECKPOINT_ROOT

A folder holding `checkpoint_<step>` entries is resolved to the highest step, as the reference
does. Tested by cli/tests/import.rs with flax 0.10.2 and orbax-checkpoint 0.11.5.
"""
import os
import re
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
from flax import serialization
from flax.training import checkpoints


def latest(path):
    steps = [(int(m[1]), e) for e in os.listdir(path) if (m := re.fullmatch(r"checkpoint_(\d+)", e))]
    return os.path.join(path, max(steps)[1]) if steps else path


def clean(tree):
    if isinstance(tree, dict):
        return {str(k): clean(v) for k, v in tree.items() if v is not None}
    if isinstance(tree, (int, float, bool, str)):
        return tree
    return np.asarray(tree)


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: orbax_to_msgpack.py CHECKPOINT_DIR STATE.msgpack")
    src = latest(sys.argv[1])
    state = checkpoints.restore_checkpoint(src, target=None)
    if not isinstance(state, dict) or "params" not in state:
        raise SystemExit(f"{src}: restored {type(state).__name__} without params: not a train state")
    with open(sys.argv[2], "wb") as f:
        f.write(serialization.msgpack_serialize(clean(state)))
    print(f"{sys.argv[2]}: the train state of {src}")


if __name__ == "__main__":
    main()
