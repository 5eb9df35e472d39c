#!/usr/bin/env python3
"""Reference decodes for the bundled t5-small tokenizer, from `transformers` 4.44.2.

The reference decodes generations with `tokenizer.batch_decode(ids, skip_special_tokens=True)`
of `AutoTokenizer.from_pretrained("t5-small")` under transformers<4.45, whose default
`clean_up_tokenization_spaces=True` removes the spaces before punctuation and English
contractions (" ." -> ".", " 's" -> "'s", ...). This script loads the same tokenizer.json into
transformers' T5TokenizerFast and decodes (a) the ids of real sentences from data/ with spaces
put before their punctuation and contractions, as generations often have them, (b) random id
sequences, (c) edge cases. Versions for the committed fixture: transformers 4.44.2, tokenizers
0.19.1 (Python 3.11).

Usage: python scripts/reference/decode_reference.py > dataset/tests/fixtures/decode_ids.jsonl
"""
import json
import random
import re

from transformers import T5TokenizerFast

tok = T5TokenizerFast(tokenizer_file="assets/t5/tokenizer.json")
assert tok.clean_up_tokenization_spaces, "transformers<4.45 cleans up by default"
rng = random.Random(0)


def lines(path, key):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l)[key] for l in f if l.strip()]


texts = rng.sample(lines("data/text/validation.jsonl", "text"), 100)
texts += rng.sample(lines("data/de-en/validation.jsonl", "output"), 60)
texts += rng.sample(lines("data/summ/validation.jsonl", "output"), 40)
spaced = [re.sub(r"([.,!?])", r" \1", t).replace("'", " '") for t in texts]
cases = [tok.encode(t, add_special_tokens=False) for t in texts + spaced]
cases += [[rng.randrange(2, 32100) for _ in range(rng.randrange(1, 40))] for _ in range(150)]
edge = ["it 's a dog 's life , is n't it ?", "we 're here . you 've seen ' quotes ' !", "I 'm", " . , ! ?", ""]
cases += [tok.encode(t, add_special_tokens=False) for t in edge]
cases += [[1], [0, 0], [8774, 1, 296], [3, 5, 3, 6, 3, 55, 3, 58]]
for ids in cases:
    text = tok.batch_decode([ids], skip_special_tokens=True)[0]
    print(json.dumps({"ids": ids, "text": text}, ensure_ascii=False))
