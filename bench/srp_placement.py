#!/usr/bin/env python3
"""srp's reflection placement on real chunks: every token start built, then searched, against ``TokenStarts``
(token ends kept per block of 64 tokens, ``BlockedEnds``; a start is worked out only for the tokens next to a
segment end). Run it from two trees to compare revisions (BENCHMARKS.md).

  python bench/srp_placement.py --corpus /tmp/text1g --mb 80 --repeat 5

Encodes the first ``--mb`` of ``corpus.jsonl`` with gigatoken as one chunk, draws one segment end per
200 tokens (about the real-text corpora's density: 1.5 M segments over 309 M tokens), checks that both
ways find the same tokens, and prints the best of ``--repeat`` timings of each (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import orjson

from megatron_srp.data.fast_tokenizer import TokenStarts
from megatron_srp.data.tokenizer import TextTokenizer


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="a folder with corpus.jsonl and tokenizer/")
    ap.add_argument("--mb", type=float, default=80)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    fast = TextTokenizer(os.path.join(args.corpus, "tokenizer"))._fast
    if fast is None:
        raise SystemExit("gigatoken does not stand in for tokenizers on this tokenizer")
    texts, size = [], 0
    with open(os.path.join(args.corpus, "corpus.jsonl"), "rb") as f:
        for line in f:
            texts.append(orjson.loads(line)["text"])
            size += len(texts[-1])
            if size >= args.mb * 1e6:
                break
    ids, offsets = fast._batch(texts)
    total = int(fast._byte_ends(ids, offsets)[0].at(np.array([len(ids) - 1]))[0])
    rng = np.random.default_rng(0)
    positions = np.sort(rng.integers(0, total, size=max(1, len(ids) // 200))).astype(np.int64)

    def built():
        starts, _ = fast._byte_starts(ids, offsets)
        return np.searchsorted(starts, positions.astype(starts.dtype), side="left")

    def searched():
        e, _, kept = fast._byte_ends(ids, offsets)
        return TokenStarts(fast, ids, e, kept).first_at_or_after(positions)

    if not np.array_equal(built(), searched()):
        raise SystemExit("the two ways place reflections differently")
    out = {"documents": len(texts), "tokens": int(len(ids)), "segment_ends": int(len(positions)),
           "built_then_searched_s": round(best_of(built, args.repeat), 4),
           "token_starts_s": round(best_of(searched, args.repeat), 4)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
