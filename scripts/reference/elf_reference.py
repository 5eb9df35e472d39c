#!/usr/bin/env python3
"""Golden values for the Rust ELF core, from an independent fp32 PyTorch implementation.

Written from `elf-spec.md` (not from the Rust code): the ELF network (complex-pair RoPE,
`scaled_dot_product_attention`), HuggingFace `transformers.T5EncoderModel` for the frozen
encoder, the denoiser objective *as the reference writes it* (four forward passes), the decoder
objective, optax 0.2.5's real `contrib.muon` / `adamw` / `clip_by_global_norm`, and one ODE and
one SDE sampler step.

Versions used for the committed fixture (see README.md beside this file):
  torch 2.5.1 (CPU, fp32), transformers 4.40.2 (the last T5 with 3-D encoder masks), numpy 1.26.4, jax/jaxlib 0.4.38, optax 0.2.5,
  safetensors 0.4+.

Usage:
  python scripts/reference/elf_reference.py --out model/tests/fixtures
Writes golden.safetensors (inputs, parameters, outputs) and golden.json (scalars, dimensions).
"""
import argparse
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float32)
torch.backends.cuda.matmul.allow_tf32 = False

# ----------------------------------------------------------------------------------------------
# dimensions (small, with the awkward cases: odd SwiGLU width, V < encoder vocab)
# ----------------------------------------------------------------------------------------------
DIMS = dict(
    hidden=32, depth=2, heads=4, ffn=int(int(32 * 4) * 2 / 3), latent=32, bottleneck=16,
    vocab=100, seq_len=16, n_time=4, n_sc=4, n_mode=4,
)
ENC = dict(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
           relative_attention_num_buckets=32, relative_attention_max_distance=128)
OBJ = dict(latent_mean=0.1, latent_std=0.2, noise_scale=2.0, decoder_noise_scale=5.0, t_eps=0.05,
           p_mean=-1.5, p_std=0.8)
B = 4


def elf_param_shapes(d):
    H, E, b, F_, V = d["hidden"], d["latent"], d["bottleneck"], d["ffn"], d["vocab"]
    hd = H // d["heads"]
    s = {
        "self_cond_proj/kernel": (2 * E, E), "self_cond_proj/bias": (E,),
        "text_proj/proj1/kernel": (E, b),
        "text_proj/proj2/kernel": (b, H), "text_proj/proj2/bias": (H,),
        "mode_tokens": (1, d["n_mode"], H),
        "t_embedder/mlp_0/kernel": (256, H), "t_embedder/mlp_0/bias": (H,),
        "t_embedder/mlp_2/kernel": (H, H), "t_embedder/mlp_2/bias": (H,),
        "t_emb_tokens": (1, d["n_time"], H),
        "self_cond_cfg_embedder/mlp_0/kernel": (256, H), "self_cond_cfg_embedder/mlp_0/bias": (H,),
        "self_cond_cfg_embedder/mlp_2/kernel": (H, H), "self_cond_cfg_embedder/mlp_2/bias": (H,),
        "self_cond_cfg_tokens": (1, d["n_sc"], H),
        "proj_kernel": (H, E), "proj_bias": (E,),
        "unembed_kernel": (E, V), "unembed_bias": (V,),
        "final_layer/norm_final/weight": (H,),
        "final_layer/linear/kernel": (H, E), "final_layer/linear/bias": (E,),
    }
    for i in range(d["depth"]):
        p = f"blocks_{i}"
        s.update({
            f"{p}/norm1/weight": (H,), f"{p}/norm2/weight": (H,),
            f"{p}/attn/qkv/kernel": (H, 3 * H), f"{p}/attn/qkv/bias": (3 * H,),
            f"{p}/attn/q_norm/weight": (hd,), f"{p}/attn/k_norm/weight": (hd,),
            f"{p}/attn/proj/kernel": (H, H), f"{p}/attn/proj/bias": (H,),
            f"{p}/mlp/w12/kernel": (H, 2 * F_), f"{p}/mlp/w12/bias": (2 * F_,),
            f"{p}/mlp/w3/kernel": (F_, H), f"{p}/mlp/w3/bias": (H,),
        })
    return s


def random_params(d, gen):
    """Non-trivial values everywhere (the zero-initialised final layer would hide bugs)."""
    out = {}
    for name, shape in elf_param_shapes(d).items():
        fan_in = shape[0] if len(shape) == 2 else 1
        if name.endswith("weight"):  # norm gains around 1
            v = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 2:
            v = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:
            v = 0.05 * torch.randn(shape, generator=gen)
        out[name] = v.float().requires_grad_(True)
    return out


# ----------------------------------------------------------------------------------------------
# the ELF network (spec §1), written independently of the Rust code
# ----------------------------------------------------------------------------------------------
def rms(x, g, eps=1e-6):
    return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def dense(x, p, name, bias=True):
    y = x @ p[name + "/kernel"]
    return y + p[name + "/bias"] if bias else y


def scalar_embed(v, p, name):
    k = torch.arange(128, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / 128)
    a = v[:, None] * freqs[None]
    phi = torch.cat([torch.cos(a), torch.sin(a)], -1)
    return dense(F.silu(dense(phi, p, name + "/mlp_0")), p, name + "/mlp_2")


def rope(x, n_prefix, S):
    """Interleaved ('complex pair') RoPE, identity on the prefix. x: [B, nh, L, hd]."""
    hd = x.shape[-1]
    pos = (torch.arange(S, dtype=torch.float32) / S) * S
    theta = 10000.0 ** (-2.0 * torch.arange(hd // 2, dtype=torch.float32) / hd)
    ang = pos[:, None] * theta[None]
    rot = torch.polar(torch.ones_like(ang), ang)
    rot = torch.cat([torch.ones(n_prefix, hd // 2, dtype=torch.complex64), rot], 0)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], hd // 2, 2).contiguous())
    return torch.view_as_real(xc * rot).reshape(x.shape)


def elf_forward(p, d, u, t, w, mode):
    """mode: None (denoiser) or True (decoder). Returns (x_pred, logits or None)."""
    H, nh = d["hidden"], d["heads"]
    hd = H // nh
    Bn, S, _ = u.shape
    a = dense(u, p, "self_cond_proj")
    h = dense(dense(a, p, "text_proj/proj1", bias=False), p, "text_proj/proj2")
    g = 1.0 if mode else 0.0
    mode_tok = (p["mode_tokens"] * g).expand(Bn, -1, -1)
    e_t = scalar_embed(t, p, "t_embedder")[:, None]
    e_w = scalar_embed(w, p, "self_cond_cfg_embedder")[:, None]
    prefix = torch.cat([p["t_emb_tokens"] + e_t, p["self_cond_cfg_tokens"] + e_w, mode_tok], 1)
    x = torch.cat([prefix, h], 1)
    P = prefix.shape[1]
    L = x.shape[1]
    for i in range(d["depth"]):
        b = f"blocks_{i}"
        y = rms(x, p[f"{b}/norm1/weight"])
        qkv = dense(y, p, f"{b}/attn/qkv")
        q, k, v = (qkv[..., j * H:(j + 1) * H].reshape(Bn, L, nh, hd).transpose(1, 2) for j in range(3))
        q = rope(rms(q, p[f"{b}/attn/q_norm/weight"]), P, S)
        k = rope(rms(k, p[f"{b}/attn/k_norm/weight"]), P, S)
        o = F.scaled_dot_product_attention(q, k, v)
        x = x + dense(o.transpose(1, 2).reshape(Bn, L, H), p, f"{b}/attn/proj")
        y = rms(x, p[f"{b}/norm2/weight"])
        x12 = dense(y, p, f"{b}/mlp/w12")
        Fw = x12.shape[-1] // 2
        x = x + dense(F.silu(x12[..., :Fw]) * x12[..., Fw:], p, f"{b}/mlp/w3")
    y = x[:, P:]
    logits = None
    if mode:
        hp = F.gelu(y @ p["proj_kernel"] + p["proj_bias"], approximate="tanh")
        logits = hp @ p["unembed_kernel"] + p["unembed_bias"]
    xp = dense(rms(y, p["final_layer/norm_final/weight"]), p, "final_layer/linear")
    return xp, logits


# ----------------------------------------------------------------------------------------------
# data: a padded conditional batch and its masks (spec §2.4, §3.3)
# ----------------------------------------------------------------------------------------------
def make_batch(gen):
    S = DIMS["seq_len"]
    cond_len = [5, 3, 6, 0]
    total_len = [12, 16, 9, 10]
    drop = [0.0, 0.0, 1.0, 0.0]
    ids = torch.full((B, S), 1, dtype=torch.long)  # pad_token = eos
    for i in range(B):
        ids[i, :total_len[i]] = torch.randint(2, DIMS["vocab"], (total_len[i],), generator=gen)
    j = torch.arange(S)
    is_cond = j[None] < torch.tensor(cond_len)[:, None]
    is_valid = j[None] < torch.tensor(total_len)[:, None]
    m = (is_cond[:, :, None] & is_cond[:, None, :]) | (~is_cond[:, :, None] & is_valid[:, None, :])
    m = m.float()
    drop_t = torch.tensor(drop)
    # label drop: non-condition rows lose sight of condition columns (spec §4.3)
    m = m * (1 - drop_t[:, None, None] * ((~is_cond[:, :, None]) & is_cond[:, None, :]).float())
    return dict(ids=ids, enc_mask=m, cond=is_cond.float(), valid=is_valid.float(), label_drop=drop_t)


def t5_encoder(gen_seed):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(gen_seed)
    cfg = T5Config(vocab_size=ENC["vocab_size"], d_model=ENC["d_model"], d_kv=ENC["d_kv"],
                   num_heads=ENC["num_heads"], d_ff=ENC["d_ff"], num_layers=ENC["num_layers"],
                   relative_attention_num_buckets=ENC["relative_attention_num_buckets"],
                   relative_attention_max_distance=ENC["relative_attention_max_distance"],
                   feed_forward_proj="relu", dropout_rate=0.1, layer_norm_epsilon=1e-6)
    model = T5EncoderModel(cfg).eval()
    return model


def encode(model, batch):
    with torch.no_grad():
        lat = model(input_ids=batch["ids"], attention_mask=batch["enc_mask"]).last_hidden_state
    x0 = (lat - OBJ["latent_mean"]) / OBJ["latent_std"]
    keep = 1 - batch["cond"] * batch["label_drop"][:, None]
    return lat, x0 * keep[..., None]


# ----------------------------------------------------------------------------------------------
# objective (spec §4), the denoiser exactly as written: four forward passes
# ----------------------------------------------------------------------------------------------
def reduce(per_pos, m):
    return (per_pos * m).sum() / m.sum().clamp_min(1.0)


def denoiser_loss(p, x0, batch, dr):
    c = batch["cond"][..., None]
    t = dr["t"][:, None, None]
    z = t * x0 + (1 - t) * OBJ["noise_scale"] * dr["noise"]
    z = z * (1 - c) + x0 * c
    inv = 1.0 / (1 - t).clamp_min(OBJ["t_eps"])
    v_star = (x0 - z) * inv
    zero_c = x0 * c
    restore = lambda X: X * (1 - c) + x0 * c
    f = lambda xsc: elf_forward(p, DIMS, torch.cat([z, xsc], -1), dr["t"], dr["w"], None)[0]
    with torch.no_grad():
        x_u = restore(f(zero_c))
    m_sc = dr["m_sc"][:, None, None]
    x_sc = restore(m_sc * x_u)
    x_hat = f(x_sc)
    v_hat = (x_hat - z) * inv
    with torch.no_grad():
        v_u = (f(zero_c) - z) * inv
        v_c = (f(x_u) - z) * inv
        v_tgt = v_star + m_sc * (1 - 1 / dr["w"])[:, None, None] * (v_c - v_u)
    m_loss = 1 - batch["cond"]  # pad_token = eos: padding counts, condition never does
    return reduce((v_hat - v_tgt).pow(2).mean(-1), m_loss)


def decoder_loss(p, x0, batch, dr):
    lam = dr["lambda"][..., None]
    z = lam * x0 + (1 - lam) * OBJ["decoder_noise_scale"] * dr["dec_noise"]
    u = torch.cat([z, torch.zeros_like(z)], -1)
    _, logits = elf_forward(p, DIMS, u, torch.ones(B), dr["w"], True)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["ids"].reshape(-1), reduction="none")
    return reduce(ce.reshape(B, -1), 1 - batch["cond"])


# ----------------------------------------------------------------------------------------------
# sampler steps (spec §5.3–5.4) on fixed inputs
# ----------------------------------------------------------------------------------------------
def eval_step(p, z, t, x_prev, c_lat, c_mask, w_sc, cfg):
    inv = 1.0 / max(1 - t, OBJ["t_eps"])
    Bn = z.shape[0]

    def run(zz, xp):
        x = elf_forward(p, DIMS, torch.cat([zz, xp], -1), torch.full((Bn,), t), torch.full((Bn,), w_sc), None)[0]
        return (x - zz) * inv, x

    v_c, x_c = run(z, x_prev)
    x_c = x_c * (1 - c_mask) + c_lat * c_mask
    v_c = v_c * (1 - c_mask)
    if cfg == 1.0:
        return v_c, x_c
    v_u, x_u = run(z * (1 - c_mask), x_prev * (1 - c_mask))
    v_u, x_u = v_u * (1 - c_mask), x_u * (1 - c_mask)
    v = v_u + cfg * (v_c - v_u)
    x = x_u + cfg * (x_c - x_u)
    return v * (1 - c_mask), x * (1 - c_mask) + c_lat * c_mask


def optax_golden(gen):
    """One clipped Muon and one AdamW update (twice, to exercise the counts) with real optax."""
    import jax
    import jax.numpy as jnp
    import optax
    jax.config.update("jax_default_matmul_precision", "highest")
    shapes = {"w_wide": (8, 24), "w_tall": (24, 8), "bias": (24,), "tok": (1, 4, 8)}
    params = {k: torch.randn(s, generator=gen).numpy() for k, s in shapes.items()}
    grads = [{k: (3.0 * torch.randn(s, generator=gen)).numpy() for k, s in shapes.items()} for _ in range(2)]
    lr = 0.02
    out = {}
    for kind, tx in [("muon", optax.contrib.muon(learning_rate=lr)),
                     ("adamw", optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1))]:
        tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
        pj = {k: jnp.asarray(v) for k, v in params.items()}
        st = tx.init(pj)
        for step, g in enumerate(grads):
            upd, st = tx.update({k: jnp.asarray(v) for k, v in g.items()}, st, pj)
            pj = optax.apply_updates(pj, upd)
            for k in shapes:
                out[f"optim/{kind}/step{step}/{k}"] = torch.from_numpy(np.asarray(pj[k]).copy())
    for k in shapes:
        out[f"optim/param/{k}"] = torch.from_numpy(params[k])
        for i, g in enumerate(grads):
            out[f"optim/grad{i}/{k}"] = torch.from_numpy(g[k])
    return out, {"optim_lr": lr, "optax": optax.__version__, "jax": jax.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="model/tests/fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    S, E = DIMS["seq_len"], DIMS["latent"]
    tensors, meta = {}, {"dims": DIMS, "encoder": ENC, "objective": OBJ, "batch": B}

    p = random_params(DIMS, gen)
    for k, v in p.items():
        tensors[f"params/{k}"] = v.detach().clone()

    # forward, both modes
    u = torch.randn(B, S, 2 * E, generator=gen)
    t = torch.tensor([0.0, 0.3, 0.97, 1.0])
    w = torch.tensor([0.5, 1.0, 2.5, 5.0])
    with torch.no_grad():
        x_den, _ = elf_forward(p, DIMS, u, t, w, None)
        x_dec, logits = elf_forward(p, DIMS, u, t, w, True)
    tensors.update({"fwd/u": u, "fwd/t": t, "fwd/w": w, "fwd/x_denoise": x_den,
                    "fwd/x_decode": x_dec, "fwd/logits": logits})

    # T5 encoder on a padded conditional batch with a 3-D mask
    enc = t5_encoder(99)
    sd = {k: v.detach().clone().contiguous() for k, v in enc.state_dict().items()}
    save_file(sd, os.path.join(args.out, "t5_encoder.safetensors"))
    batch = make_batch(gen)
    lat, x0 = encode(enc, batch)
    tensors.update({"batch/ids": batch["ids"].to(torch.float32), "batch/enc_mask": batch["enc_mask"],
                    "batch/cond": batch["cond"], "batch/valid": batch["valid"], "batch/label_drop": batch["label_drop"],
                    "t5/latent": lat, "t5/x0": x0})

    # objective with fixed draws
    n_t = torch.randn(B, generator=gen)
    n_t[2] = 3.5  # t close to 1 exercises the t_eps floor
    dr = {
        "t": torch.sigmoid(OBJ["p_mean"] + OBJ["p_std"] * n_t),
        "w": torch.tensor([0.5, 2.0, 4.7, 1.3]),
        "m_sc": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "noise": torch.randn(B, S, E, generator=gen),
        "lambda": torch.sigmoid(0.8 + 0.8 * torch.randn(B, S, generator=gen)),
        "dec_noise": torch.randn(B, S, E, generator=gen),
    }
    for k, v in dr.items():
        tensors[f"draws/{k}"] = v
    l2 = denoiser_loss(p, x0, batch, dr)
    grads = torch.autograd.grad(l2, list(p.values()), allow_unused=True)
    for (k, v), g in zip(p.items(), grads):
        tensors[f"grad_denoiser/{k}"] = torch.zeros_like(v) if g is None else g
    ce = decoder_loss(p, x0, batch, dr)
    grads = torch.autograd.grad(ce, list(p.values()), allow_unused=True)
    for (k, v), g in zip(p.items(), grads):
        tensors[f"grad_decoder/{k}"] = torch.zeros_like(v) if g is None else g
    meta["l2_loss"] = float(l2)
    meta["ce_loss"] = float(ce)

    # sampler: logit-normal grid from fixed normals, one ODE and one SDE step with label CFG
    normals = torch.randn(7, generator=gen)
    inner = torch.sort(torch.sigmoid(OBJ["p_mean"] + OBJ["p_std"] * normals)).values
    grid = torch.cat([torch.zeros(1), inner, torch.ones(1)])
    tensors["sampler/grid_normals"] = normals
    tensors["sampler/grid"] = grid
    c_mask = batch["cond"][..., None]
    c_lat = x0 * c_mask
    z = torch.randn(B, S, E, generator=gen) * OBJ["noise_scale"] * (1 - c_mask) + c_lat
    x_prev = c_lat.clone()
    eps = torch.randn(B, S, E, generator=gen)
    t0, t1, gamma, w_sc, cfg = float(grid[2]), float(grid[3]), 1.5, 3.0, 2.0
    with torch.no_grad():
        v, x = eval_step(p, z, t0, x_prev, c_lat, c_mask, w_sc, cfg)
        z_ode = z + (t1 - t0) * v
        alpha = min(max(1 - gamma * (t1 - t0), 0.0), 1.0)
        tb = alpha * t0
        zb = (alpha * z + (1 - alpha) * OBJ["noise_scale"] * eps) * (1 - c_mask) + c_lat * c_mask
        v2, x2 = eval_step(p, zb, tb, x, c_lat, c_mask, w_sc, cfg)
        z_sde = zb + (t1 - tb) * v2
    tensors.update({"sampler/z": z, "sampler/x_prev": x_prev, "sampler/eps": eps,
                    "sampler/z_ode": z_ode, "sampler/x_ode": x,
                    "sampler/z_sde": z_sde, "sampler/x_sde": x2})
    meta["sampler"] = dict(t0=t0, t1=t1, gamma=gamma, w_sc=w_sc, cfg=cfg)

    # optimiser with real optax
    opt, opt_meta = optax_golden(gen)
    tensors.update(opt)
    meta.update(opt_meta)

    import transformers
    meta["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                        "numpy": np.__version__}
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(args.out, "golden.safetensors"))
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    print(json.dumps({"l2_loss": meta["l2_loss"], "ce_loss": meta["ce_loss"]}))


if __name__ == "__main__":
    main()
