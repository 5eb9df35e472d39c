"""Golden values for the GPT-2 scorer (spec §6.2, §6.3): a small randomly initialised GPT-2 made
by HuggingFace transformers, a byte-level BPE tokenizer trained on the committed text corpus,
and the reference's perplexity and entropy computed with them.

Produced with torch 2.5.1, transformers 4.40.2, tokenizers 0.19.1 (CPU, float32):
    python scripts/reference/gpt2_reference.py model/tests/fixtures/gpt2
Writes model.safetensors + config.json (HF `save_pretrained`, names `transformer.h.{i}...`,
lm_head tied and omitted), tokenizer.json, and golden.json.
"""
import json
import math
import os
import sys

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel

out = sys.argv[1]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.makedirs(out, exist_ok=True)
texts = [json.loads(l)["text"] for l in open(f"{root}/data/text/train.jsonl", encoding="utf-8")][:2000]

tok = ByteLevelBPETokenizer()
tok.train_from_iterator(texts, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"])
tok.save(f"{out}/tokenizer.json")
eos = tok.token_to_id("<|endoftext|>")

torch.manual_seed(0)
cfg = GPT2Config(
    vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
    bos_token_id=eos, eos_token_id=eos, initializer_range=0.2,
)
model = GPT2LMHeadModel(cfg).eval()
model.save_pretrained(out, safe_serialization=True)
os.remove(f"{out}/generation_config.json")

val = [json.loads(l)["text"] for l in open(f"{root}/data/text/validation.jsonl", encoding="utf-8")]
samples = [val[0][:120], val[1][:40], "", "   \n ", val[2][:300], "short one", val[3][:80] + "<|endoftext|> after"]
max_len = cfg.n_positions  # the spec's 1024 is gpt2's n_positions; the tiny model has 64

# Spec §6.2: drop empty/whitespace samples; tokenise all, truncate, right-pad with EOS to the
# longest; NLL of token j given < j for j >= 1; count j iff token j is not EOS or it is the
# row's first EOS; PPL = exp(total NLL / total count).
kept = [s for s in samples if s.strip()]
ids = [tok.encode(s).ids[:max_len] for s in kept]
L = max(len(x) for x in ids)
batch = torch.tensor([x + [eos] * (L - len(x)) for x in ids])
with torch.no_grad():
    logits = model(batch).logits.float()
logp = torch.log_softmax(logits, -1)
nll = -logp[:, :-1].gather(-1, batch[:, 1:, None])[..., 0]
is_eos = batch == eos
valid = (~is_eos) | (is_eos.cumsum(1) == 1)
valid = valid[:, 1:].float()
ppl = math.exp(float((nll * valid).sum() / valid.sum()))

ents = []
for x in ids:
    arr = torch.tensor(x)
    _, counts = torch.unique(arr, return_counts=True)
    p = counts.float() / len(x)
    ents.append(float(-(p * torch.log(p + 1e-10)).sum()))

json.dump({
    "eos": eos,
    "max_len": max_len,
    "samples": samples,
    "ids": ids,
    "logits0": logits[0, :16].flatten().tolist(),
    "logits0_shape": list(logits[0, :16].shape),
    "nll": nll.tolist(),
    "valid": valid.tolist(),
    "ppl": ppl,
    "entropies": ents,
    "mean_entropy": sum(ents) / len(ents),
}, open(f"{out}/golden.json", "w"))
print("ppl", ppl, "mean entropy", sum(ents) / len(ents), "vocab", cfg.vocab_size)
