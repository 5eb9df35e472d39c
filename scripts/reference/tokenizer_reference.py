#!/usr/bin/env python3
"""Reference token ids for the bundled t5-small tokenizer, from Python `tokenizers`.

The reference tokenises with `AutoTokenizer.from_pretrained("t5-small")(text,
add_special_tokens=False)`, i.e. the fast tokenizer in the `tokenizers` library; this script
applies the same `tokenizer.json` through that library to ~300 real sentences from data/ and a
few edge cases. Versions for the committed fixture: tokenizers 0.19.1 (Python).

Usage: python scripts/reference/tokenizer_reference.py > worker/tests/fixtures/tokenizer_ids.jsonl
"""
import json
import random

import tokenizers

tok = tokenizers.Tokenizer.from_file("assets/t5/tokenizer.json")


def lines(path, key):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l)[key] for l in f if l.strip()]


rng = random.Random(0)
texts = rng.sample(lines("data/text/validation.jsonl", "text"), 150)
texts += rng.sample(lines("data/de-en/validation.jsonl", "input"), 100)
texts += rng.sample(lines("data/summ/validation.jsonl", "input"), 50)
texts += ["", "   ", "Hello world", "naïve café – “quoted” 😀", "a\tb\nc", "1,5 km/h ≥ 3"]
for t in texts:
    print(json.dumps({"text": t, "ids": tok.encode(t, add_special_tokens=False).ids}, ensure_ascii=False))
