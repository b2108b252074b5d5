#!/usr/bin/env python3
"""Checks that a folder written by `decodex prepare` agrees with Hugging Face `tokenizers` (Python).

For each folder: loads tokenizer.json with `tokenizers.Tokenizer.from_file`, re-reads the source
text named in meta.json, splits it as prepare does (nanoGPT's `data[:int(n*0.9)]` on characters, or
the separate validation file), encodes both parts without special tokens and compares the ids with
train.bin / val.bin, then checks that decoding val gives the text back. Needs only `tokenizers`.

    python3 scripts/check_tokenizer_json.py OUT_DIR [OUT_DIR ...] [--val-fraction 0.1]

Not run in CI: it is the by-hand check that the files decodex writes are real tokenizer.json files.
"""

import argparse
import array
import gzip
import json
import os
import sys

from tokenizers import Tokenizer


def read_text(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def read_ids(path, dtype):
    ids = array.array({"u16": "H", "u32": "I"}[dtype])
    assert ids.itemsize == {"u16": 2, "u32": 4}[dtype]
    with open(path, "rb") as f:
        ids.frombytes(f.read())
    if sys.byteorder != "little":
        ids.byteswap()
    return ids.tolist()


def check(out_dir, val_fraction):
    with open(os.path.join(out_dir, "meta.json")) as f:
        meta = json.load(f)
    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    text = read_text(meta["source"])
    if meta.get("val_source"):
        train_text, val_text = text, read_text(meta["val_source"])
    else:
        n = int(len(text) * (1.0 - val_fraction))
        train_text, val_text = text[:n], text[n:]
    ok = True
    for name, part in (("train.bin", train_text), ("val.bin", val_text)):
        want = tok.encode(part, add_special_tokens=False).ids
        got = read_ids(os.path.join(out_dir, name), meta["dtype"])
        same = want == got
        first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        print(f"{'TOKENS OK' if same else 'TOKENS MISMATCH'} {out_dir}/{name}: "
              f"{len(got)} ids from Rust, {len(want)} from Python"
              + ("" if same else f", first difference at {first}"))
        ok &= same
    decoded = tok.decode(read_ids(os.path.join(out_dir, "val.bin"), meta["dtype"]),
                         skip_special_tokens=False)
    same = decoded == val_text
    print(f"{'DECODE OK' if same else 'DECODE MISMATCH'} {out_dir}/val.bin "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']}, python vocab {tok.get_vocab_size()})")
    return ok and same


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dirs", nargs="+")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    results = [check(d, args.val_fraction) for d in args.out_dirs]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
