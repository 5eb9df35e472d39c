#!/usr/bin/env python3
"""The reference's T5 encoder pickle -> HF `T5EncoderModel` safetensors, for `encoder_checkpoint`.

The reference loads `t5_small_encoder_jax.pkl` (hub repo `embedded-language-flows/
t5_small_encoder_jax`): a Python pickle of a nested dict of arrays, optionally wrapped as
`{"params": ...}`, applied to its Flax T5 encoder. Spec §2.5 gives the tree; this script maps
every leaf to its HF name, transposing the `(in, out)` Flax kernels to PyTorch's `(out, in)`,
and fails naming any leaf it does not know or any HF tensor it did not fill, so a converted file
holds exactly the pickle's weights. Loading the pickle needs the libraries its arrays were
pickled with (numpy; jax for jax arrays).

  shared/embedding                                      -> shared.weight (and encoder.embed_tokens.weight)
  encoder/block_{l}/layer_0/layer_norm/weight           -> encoder.block.{l}.layer.0.layer_norm.weight
  encoder/block_{l}/layer_0/SelfAttention/{q,k,v,o}/kernel -> ...SelfAttention.{q,k,v,o}.weight (T)
  encoder/block_0/layer_0/SelfAttention/relative_attention_bias/rel_embedding
                                                        -> ...relative_attention_bias.weight
  encoder/block_{l}/layer_1/layer_norm/weight           -> encoder.block.{l}.layer.1.layer_norm.weight
  encoder/block_{l}/layer_1/DenseReluDense/{wi,wo}/kernel -> ...DenseReluDense.{wi,wo}.weight (T)
  encoder/final_layer_norm/weight                       -> encoder.final_layer_norm.weight

Usage: python scripts/reference/t5_pickle_to_hf.py t5_small_encoder_jax.pkl model.safetensors
Tested by cli/tests/import.rs with numpy and safetensors 0.4.5.
"""
import pickle
import re
import sys

import numpy as np
from safetensors.numpy import save_file


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flat(v, p))
        else:
            out[p] = v
    return out


RULES = [
    (r"shared/embedding", lambda m: ["shared.weight", "encoder.embed_tokens.weight"], False),
    (r"encoder/block_(\d+)/layer_0/layer_norm/weight",
     lambda m: [f"encoder.block.{m[1]}.layer.0.layer_norm.weight"], False),
    (r"encoder/block_(\d+)/layer_0/SelfAttention/([qkvo])/kernel",
     lambda m: [f"encoder.block.{m[1]}.layer.0.SelfAttention.{m[2]}.weight"], True),
    (r"encoder/block_0/layer_0/SelfAttention/relative_attention_bias/rel_embedding",
     lambda m: ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], False),
    (r"encoder/block_(\d+)/layer_1/layer_norm/weight",
     lambda m: [f"encoder.block.{m[1]}.layer.1.layer_norm.weight"], False),
    (r"encoder/block_(\d+)/layer_1/DenseReluDense/(wi|wo)/kernel",
     lambda m: [f"encoder.block.{m[1]}.layer.1.DenseReluDense.{m[2]}.weight"], True),
    (r"encoder/final_layer_norm/weight", lambda m: ["encoder.final_layer_norm.weight"], False),
]


def convert(tree):
    if set(tree) == {"params"}:
        tree = tree["params"]
    out = {}
    for path, v in sorted(flat(tree).items()):
        a = np.asarray(v, dtype=np.float32)
        for pat, names, transpose in RULES:
            m = re.fullmatch(pat, path)
            if m:
                if transpose:
                    if a.ndim != 2:
                        raise SystemExit(f"{path}: a kernel must be 2-D, got shape {a.shape}")
                    a = a.T
                for n in names(m):
                    out[n] = np.ascontiguousarray(a).copy()
                break
        else:
            raise SystemExit(f"{path}: not a T5 encoder weight of spec §2.5")
    # Every HF tensor of the encoder is filled: the same layers in both sublayers, and the
    # relative bias of block 0.
    blocks = sorted({int(n.split(".")[2]) for n in out if n.startswith("encoder.block.")})
    if blocks != list(range(len(blocks))):
        raise SystemExit(f"encoder blocks {blocks} are not 0..{len(blocks) - 1}")
    want = {"shared.weight", "encoder.embed_tokens.weight", "encoder.final_layer_norm.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    for b in blocks:
        want |= {f"encoder.block.{b}.layer.0.layer_norm.weight",
                 f"encoder.block.{b}.layer.1.layer_norm.weight"}
        want |= {f"encoder.block.{b}.layer.0.SelfAttention.{x}.weight" for x in "qkvo"}
        want |= {f"encoder.block.{b}.layer.1.DenseReluDense.{x}.weight" for x in ("wi", "wo")}
    missing = sorted(want - set(out))
    if missing:
        raise SystemExit(f"the pickle has no {missing[0]} (nor {len(missing) - 1} more)")
    return out


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: t5_pickle_to_hf.py ENCODER.pkl OUT.safetensors")
    with open(sys.argv[1], "rb") as f:
        tree = pickle.load(f)
    if not isinstance(tree, dict):
        raise SystemExit(f"{sys.argv[1]}: a pickle of {type(tree).__name__}, not a dict of arrays")
    out = convert(tree)
    save_file(out, sys.argv[2])
    print(f"{sys.argv[2]}: {len(out)} tensors (HF T5EncoderModel names)")


if __name__ == "__main__":
    main()
