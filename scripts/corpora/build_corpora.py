#!/usr/bin/env python3
"""Builds the small real corpora under data/ from Debian's package-description indexes.

Sources (Debian bookworm, main): `dists/bookworm/main/i18n/Translation-en` (English short and long
package descriptions) and `Translation-de` (their German translations by the Debian Description
Translation Project), paired by `Description-md5`. Obtain them with

    curl -O http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-de.bz2
    curl -O http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-en.bz2
    bunzip2 Translation-*.bz2

(or from /var/lib/apt/lists after `apt-get -o Acquire::Languages=en update`).

Writes (JSONL, one object per line):
  data/text/train.jsonl        {"text": ...}            English description paragraphs
  data/text/validation.jsonl
  data/de-en/train.jsonl       {"input": de, "output": en}  aligned short descriptions and paragraphs
  data/de-en/validation.jsonl
  data/summ/train.jsonl        {"input": long, "output": short}  description -> one-line summary
  data/summ/validation.jsonl

Deterministic: fixed seed, sorted inputs.
"""
import argparse
import json
import os
import random
import re


def parse(path, lang):
    """Yields (md5, short, [paragraphs]) for each entry."""
    key = f"Description-{lang}: "
    with open(path, encoding="utf-8") as f:
        entry = {}
        lines = []
        for raw in f:
            line = raw.rstrip("\n")
            if not line:
                if entry.get("md5") and entry.get("short"):
                    yield entry["md5"], entry["short"], paragraphs(lines)
                entry, lines = {}, []
            elif line.startswith("Description-md5: "):
                entry["md5"] = line.split(": ", 1)[1]
            elif line.startswith(key):
                entry["short"] = line[len(key):].strip()
            elif line.startswith(" "):
                lines.append(line[1:])
        if entry.get("md5") and entry.get("short"):
            yield entry["md5"], entry["short"], paragraphs(lines)


def paragraphs(lines):
    out, cur = [], []
    for l in lines:
        if l.strip() == ".":
            if cur:
                out.append(" ".join(cur))
            cur = []
        elif l.startswith(" "):  # verbatim lines (lists, code): keep the paragraph but flatten
            cur.append(l.strip())
        else:
            cur.append(l.strip())
    if cur:
        out.append(" ".join(cur))
    return [re.sub(r"\s+", " ", p).strip() for p in out if p.strip()]


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def split(rows, n_val, rng):
    rows = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))
    rng.shuffle(rows)
    return rows[n_val:], rows[:n_val]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--en", required=True)
    ap.add_argument("--de", required=True)
    ap.add_argument("--out", default="data")
    ap.add_argument("--text-rows", type=int, default=12000)
    ap.add_argument("--pair-rows", type=int, default=10000)
    ap.add_argument("--summ-rows", type=int, default=4000)
    args = ap.parse_args()
    rng = random.Random(0)

    en = {}
    for md5, short, paras in parse(args.en, "en"):
        en.setdefault(md5, (short, paras))
    de = {}
    for md5, short, paras in parse(args.de, "de"):
        de.setdefault(md5, (short, paras))

    # English prose: description paragraphs of 120..600 characters, deduplicated.
    seen, text = set(), []
    for md5 in sorted(en):
        for p in en[md5][1]:
            if 120 <= len(p) <= 600 and p not in seen and not p.startswith(("*", "-")):
                seen.add(p)
                text.append({"text": p})
    rng.shuffle(text)
    text = text[: args.text_rows]
    tr, va = split(text, 500, rng)
    write(f"{args.out}/text/train.jsonl", tr)
    write(f"{args.out}/text/validation.jsonl", va)

    # German -> English: short descriptions, and paragraphs when both sides have the same count.
    pairs, seen = [], set()
    for md5 in sorted(set(en) & set(de)):
        (es, ep), (ds, dp) = en[md5], de[md5]
        cand = [(ds, es)]
        if len(ep) == len(dp):
            cand += [(d, e) for d, e in zip(dp, ep) if len(e) <= 400 and len(d) <= 500]
        for d, e in cand:
            if len(d) >= 12 and (d, e) not in seen and d != e:
                seen.add((d, e))
                pairs.append({"input": d, "output": e})
    rng.shuffle(pairs)
    pairs = pairs[: args.pair_rows]
    tr, va = split(pairs, 500, rng)
    write(f"{args.out}/de-en/train.jsonl", tr)
    write(f"{args.out}/de-en/validation.jsonl", va)

    # Summarisation: the whole long description -> the one-line short description.
    summ, seen = [], set()
    for md5 in sorted(en):
        short, paras = en[md5]
        doc = "\n".join(paras)
        if 200 <= len(doc) <= 1500 and len(short) >= 15 and doc not in seen:
            seen.add(doc)
            summ.append({"input": doc, "output": short})
    rng.shuffle(summ)
    summ = summ[: args.summ_rows]
    tr, va = split(summ, 200, rng)
    write(f"{args.out}/summ/train.jsonl", tr)
    write(f"{args.out}/summ/validation.jsonl", va)


if __name__ == "__main__":
    main()
