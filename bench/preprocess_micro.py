#!/usr/bin/env python3
"""The small timings behind the span processes' design (BENCHMARKS.md "Span processes without awkward"):

  .venv/bin/python bench/preprocess_micro.py --corpus /tmp/text_corpus

- importing awkward (gigatoken's batches return awkward Arrays), ``pyarrow.compute`` and ``pyarrow._compute``,
  each in a fresh interpreter that has numpy (and pyarrow) loaded;
- loading the corpus's tokenizer: gigatoken once and twice on two threads, ``tokenizers`` once (run it with the
  128k-token corpus for the start-up of large vocabularies);
- gigatoken's ``encode`` per call (a one-character text) and over 6,000 documents on one thread and on two
  (it holds the GIL);
- srp's insertion of 52,000 tokens into 1.2 M (the masked copy and the forms tried instead);
- ``BlockedEnds``: finding 6,000 positions by the per-block walk against a cumulative sum of the blocks.

Best of ``--rounds`` where a step is repeated; prints JSON (milliseconds unless the key says seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np


def fresh_import_s(setup: str, module: str, rounds: int) -> float:
    """Seconds to import ``module`` in a fresh interpreter after ``setup`` (best of ``rounds``)."""
    code = f"import time; {setup}; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(rounds))


def best_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(min(times) * 1e3, 3)


def encode_figures(corpus: str, rounds: int) -> dict:
    import gigatoken
    import orjson

    with open(os.path.join(corpus, "tokenizer", "tokenizer.json"), "rb") as f:
        tok = gigatoken.Tokenizer.from_json(f.read())
    with open(os.path.join(corpus, "corpus.jsonl"), "rb") as f:
        texts = [orjson.loads(line)["text"] for line, _ in zip(f, range(6000))]
    encode = tok.backend.encode
    calls = 100_000
    t = time.perf_counter()
    for _ in range(calls):
        encode("a")
    per_call_us = (time.perf_counter() - t) / calls * 1e6

    def run(part):
        for text in part:
            encode(text)

    def two_threads():
        threads = [threading.Thread(target=run, args=(texts[i::2],)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    path = os.path.join(corpus, "tokenizer", "tokenizer.json")
    with open(path, "rb") as f:
        config = f.read()

    def load_two_gigatoken():
        threads = [threading.Thread(target=gigatoken.Tokenizer.from_json, args=(config,)) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    from tokenizers import Tokenizer

    return {"gigatoken_load_ms": best_ms(lambda: gigatoken.Tokenizer.from_json(config), rounds),
            "gigatoken_load_two_on_threads_ms": best_ms(load_two_gigatoken, rounds),
            "tokenizers_load_ms": best_ms(lambda: Tokenizer.from_file(path), rounds),
            "encode_per_call_us": round(per_call_us, 3),
            "encode_6000_documents_one_thread_ms": best_ms(lambda: run(texts), rounds),
            "encode_6000_documents_two_threads_ms": best_ms(two_threads, rounds)}


def insertion_figures(rounds: int) -> dict:
    from megatron_srp.data.materialize import _insert_at

    rng = np.random.default_rng(0)
    n, inserted = 1_200_000, 52_000
    ids = rng.integers(0, 8000, size=n).astype(np.uint32)
    new_pos = np.sort(rng.choice(n + inserted, size=inserted, replace=False))
    values = rng.integers(0, 8000, size=inserted).astype(np.uint16)
    out = np.empty(n + inserted, np.uint16)
    keep = np.ones(n + inserted, bool)
    keep[new_pos] = False
    ids16 = ids.astype(np.uint16)
    return {
        "insert_at_ms": best_ms(lambda: _insert_at(ids, new_pos, values, np.uint16), rounds),
        "masked_copy_casting_ms": best_ms(lambda: out.__setitem__(keep, ids), rounds),
        "cast_to_uint16_ms": best_ms(lambda: ids.astype(np.uint16), rounds),
        "masked_copy_cast_first_ms": best_ms(lambda: out.__setitem__(keep, ids16), rounds),
        "np_place_ms": best_ms(lambda: np.place(out, keep, ids16), rounds),
        "scatter_to_flatnonzero_ms": best_ms(lambda: out.__setitem__(np.flatnonzero(keep), ids), rounds),
    }


def blocked_ends_figures(rounds: int) -> dict:
    from megatron_srp.data.fast_tokenizer import BlockedEnds

    rng = np.random.default_rng(0)
    ends = BlockedEnds(rng.integers(1, 12, size=1_200_000).astype(np.uint8))
    positions = np.sort(rng.integers(0, int(ends._block_ends[-1]), size=6000))
    blocks = np.searchsorted(ends._block_ends, positions, side="left")
    rest = positions - ends._before(blocks)

    def by_cumsum():
        sums = np.cumsum(ends._rows[blocks], axis=1, dtype=np.int32)
        within = (sums < rest[:, None]).sum(axis=1)
        return within, sums[np.arange(len(blocks)), within]

    walked, cumulated = ends._walk(blocks, rest), by_cumsum()
    assert all(np.array_equal(a, b) for a, b in zip(walked, cumulated))
    return {"blocked_ends_walk_ms": best_ms(lambda: ends._walk(blocks, rest), rounds),
            "blocked_ends_cumsum_ms": best_ms(by_cumsum, rounds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="a folder with corpus.jsonl and tokenizer/")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    out = {
        "import_awkward_s": fresh_import_s("import numpy", "awkward", args.rounds),
        "import_pyarrow_compute_s": fresh_import_s("import numpy, pyarrow", "pyarrow.compute", args.rounds),
        "import_pyarrow__compute_s": fresh_import_s("import numpy, pyarrow", "pyarrow._compute", args.rounds),
        **encode_figures(args.corpus, args.rounds),
        **insertion_figures(args.rounds * 10),
        **blocked_ends_figures(args.rounds * 10),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
