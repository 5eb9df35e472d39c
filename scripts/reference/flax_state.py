#!/usr/bin/env python3
"""A reference-shaped ELF train state written by `flax.serialization.to_bytes`.

The reference checkpoints `{params, ema_params1, opt_state, step, epoch, dropout_rng}` (spec §7)
with the parameter tree of spec §1.4 and the optimiser of spec §4.10:
`optax.chain(optax.clip_by_global_norm(1.0), optax.contrib.muon(lr))`. This script builds that
tree for the given dimensions (names and shapes written out here from the spec table, not taken
from the Rust code), fills it from a seeded numpy generator, takes two real optax updates with
random gradients (so the Muon momenta and the Adam moments are non-zero and the counts are 2),
makes an EMA copy, and writes:

* `state.msgpack`: `flax.serialization.to_bytes(state)`, what `elf import` reads;
* with `--orbax`, `orbax/checkpoint_2/`: the same state through
  `flax.training.checkpoints.save_checkpoint`, an Orbax folder as the reference writes them;
* `expected.safetensors`: the same numbers under our checkpoint names (`params/<flax path>`,
  `ema/...`, `opt_mu/...` for every tensor, `opt_nu/...` for the Adam ones), extracted from
  optax's typed states (`MuonState.mu`, `ScaleByAdamState.mu/nu`), and `count`.

Versions used by the tests: jax 0.4.38, jaxlib 0.4.38, flax 0.10.2, optax 0.2.5,
orbax-checkpoint 0.11.5, numpy,
safetensors 0.4.5 (CPU). The reference's pinned jax 0.4.38 admits optax <= 0.2.5 (spec §4.10).

Usage:
  python scripts/reference/flax_state.py --dims '{"hidden":32,...}' --out DIR [--no-opt] [--no-ema]
"""
import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors.numpy import save_file


def tree_for(d):
    """Spec §1.4: path -> shape."""
    H, F, E, Bn, V = d["hidden"], d["ffn"], d["latent"], d["bottleneck"], d["vocab"]
    hd = H // d["heads"]
    s = {
        "self_cond_proj/kernel": (2 * E, E),
        "self_cond_proj/bias": (E,),
        "text_proj/proj1/kernel": (E, Bn),
        "text_proj/proj2/kernel": (Bn, H),
        "text_proj/proj2/bias": (H,),
        "mode_tokens": (1, d["n_mode"], H),
        "t_embedder/mlp_0/kernel": (256, H),
        "t_embedder/mlp_0/bias": (H,),
        "t_embedder/mlp_2/kernel": (H, H),
        "t_embedder/mlp_2/bias": (H,),
        "t_emb_tokens": (1, d["n_time"], H),
        "self_cond_cfg_embedder/mlp_0/kernel": (256, H),
        "self_cond_cfg_embedder/mlp_0/bias": (H,),
        "self_cond_cfg_embedder/mlp_2/kernel": (H, H),
        "self_cond_cfg_embedder/mlp_2/bias": (H,),
        "self_cond_cfg_tokens": (1, d["n_sc"], H),
        "proj_kernel": (H, E),
        "proj_bias": (E,),
        "unembed_kernel": (E, V),
        "unembed_bias": (V,),
        "final_layer/norm_final/weight": (H,),
        "final_layer/linear/kernel": (H, E),
        "final_layer/linear/bias": (E,),
    }
    for i in range(d["depth"]):
        b = f"blocks_{i}"
        s.update({
            f"{b}/norm1/weight": (H,),
            f"{b}/attn/qkv/kernel": (H, 3 * H),
            f"{b}/attn/qkv/bias": (3 * H,),
            f"{b}/attn/q_norm/weight": (hd,),
            f"{b}/attn/k_norm/weight": (hd,),
            f"{b}/attn/proj/kernel": (H, H),
            f"{b}/attn/proj/bias": (H,),
            f"{b}/norm2/weight": (H,),
            f"{b}/mlp/w12/kernel": (H, 2 * F),
            f"{b}/mlp/w12/bias": (2 * F,),
            f"{b}/mlp/w3/kernel": (F, H),
            f"{b}/mlp/w3/bias": (H,),
        })
    return s


def nest(flat):
    out = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        p = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flat(v, p))
        else:
            out[p] = v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", required=True, help="JSON object of ELF dimensions")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-opt", action="store_true", help="leave opt_state out")
    ap.add_argument("--no-ema", action="store_true", help="leave ema_params1 out")
    ap.add_argument("--orbax", action="store_true",
                    help="also write the state as the reference's writer does: an Orbax folder orbax/checkpoint_2")
    a = ap.parse_args()
    d = json.loads(a.dims)
    rng = np.random.default_rng(a.seed)
    shapes = tree_for(d)
    params = nest({k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()})

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.contrib.muon(learning_rate=0.01))
    opt_state = tx.init(params)
    for _ in range(2):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    params = jax.tree.map(np.asarray, params)
    ema = jax.tree.map(lambda p: (0.9 * p + 0.01).astype(np.float32), params)

    state = {"params": params, "step": 2, "epoch": 0, "dropout_rng": jax.random.PRNGKey(a.seed)}
    if not a.no_ema:
        state["ema_params1"] = ema
    if not a.no_opt:
        state["opt_state"] = opt_state
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "state.msgpack"), "wb") as f:
        f.write(flax.serialization.to_bytes(state))
    if a.orbax:
        from flax.training import checkpoints

        checkpoints.save_checkpoint(os.path.abspath(os.path.join(a.out, "orbax")), state, 2, overwrite=True)

    # The same numbers under our names, from optax's typed states (not from the msgpack paths).
    expected = {f"params/{k}": np.asarray(v) for k, v in flat(params).items()}
    expected.update({f"ema/{k}": np.asarray(v) for k, v in flat(ema if not a.no_ema else params).items()})
    count = 0
    if not a.no_opt:
        inner = opt_state[1].inner_states
        muon_state = inner["muon"].inner_state[0]  # chain(scale_by_muon, ...)[0]: MuonState
        adam_state = inner["adam"].inner_state[0]  # adamw's chain[0]: ScaleByAdamState
        is_leaf = lambda x: isinstance(x, optax.MaskedNode)
        for name, v in flat(jax.tree.map(lambda x: x, muon_state.mu, is_leaf=is_leaf)).items():
            if not isinstance(v, optax.MaskedNode):
                expected[f"opt_mu/{name}"] = np.asarray(v)
        for name, v in flat(adam_state.mu).items():
            if not isinstance(v, optax.MaskedNode):
                expected[f"opt_mu/{name}"] = np.asarray(v)
        for name, v in flat(adam_state.nu).items():
            if not isinstance(v, optax.MaskedNode):
                expected[f"opt_nu/{name}"] = np.asarray(v)
        count = int(muon_state.count)
        assert count == int(adam_state.count) == 2
    expected["count"] = np.asarray([count], dtype=np.int64)
    save_file(expected, os.path.join(a.out, "expected.safetensors"))


if __name__ == "__main__":
    main()
