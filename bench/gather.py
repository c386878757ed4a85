#!/usr/bin/env python3
"""srp's per-token byte lengths: numpy fancy indexing against Arrow's ``take`` (what _byte_ends uses).

  python bench/gather.py                                  # synthetic: 30 M uniform ids over an 8k vocabulary
  python bench/gather.py --corpus /tmp/text1g --mb 100    # the ids of the first 100 MB of a real corpus

Prints milliseconds per call (best of 5) and per 100 M tokens for each way, and checks they agree.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from megatron_srp.data.fast_tokenizer import _gather


def best_ms(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def corpus_ids(corpus: str, mb: float) -> tuple[np.ndarray, int]:
    import gigatoken
    import orjson

    with open(os.path.join(corpus, "tokenizer", "tokenizer.json")) as f:
        tok = gigatoken.Tokenizer.from_json(f.read())
    texts, size = [], 0
    with open(os.path.join(corpus, "corpus.jsonl"), "rb") as f:
        for line in f:
            texts.append(orjson.loads(line)["text"])
            size += len(line)
            if size >= mb * 1e6:
                break
    ids = np.concatenate([np.asarray(x, dtype=np.uint32) for x in tok.encode_batch(texts)])
    return ids, int(ids.max()) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a folder with corpus.jsonl and tokenizer/ (bench/make_text_corpus.py)")
    ap.add_argument("--mb", type=float, default=100.0, help="with --corpus: how much of it to encode")
    args = ap.parse_args()
    if args.corpus:
        ids, vocab = corpus_ids(args.corpus, args.mb)
    else:
        vocab = 8192
        ids = np.random.default_rng(0).integers(0, vocab, 30_000_000).astype(np.uint32)
    table = np.random.default_rng(1).integers(1, 16, vocab).astype(np.int32)
    arrow_table = pa.array(table)

    assert np.array_equal(_gather(table, ids), table[ids])
    ways = {"numpy table[ids] (uint32 ids)": lambda: table[ids],
            "arrow take + max() bounds check (fast_tokenizer._gather)": lambda: _gather(table, ids),
            "arrow take, Arrow's own boundscheck": lambda: pc.take(arrow_table, pa.array(ids), boundscheck=True)}
    out = {"tokens": len(ids), "source": args.corpus or "synthetic", "ms": {}, "ms_per_100M_tokens": {}}
    for name, fn in ways.items():
        ms = best_ms(fn)
        out["ms"][name] = round(ms, 1)
        out["ms_per_100M_tokens"][name] = round(ms * 1e8 / len(ids), 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
