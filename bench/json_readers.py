#!/usr/bin/env python3
"""What reading a jsonl costs beside tokenizing it: orjson (our reader's parser) against Arrow's C++ JSON
reader (``pyarrow.json``, which gives one flat UTF-8 buffer instead of Python strings), and gigatoken's
``encode_batch`` on the same texts, with a fresh tokenizer (empty pretoken cache), again (warm), and with a
second fresh tokenizer once the first is dropped (an empty cache in memory the process already has).

  RAYON_NUM_THREADS=2 .venv/bin/python bench/json_readers.py /tmp/text_corpus/corpus.jsonl /tmp/text_corpus/tokenizer

The file is read into memory first (no disk in the timings); best of ``--rounds`` (wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import time


def best(fn, rounds: int) -> dict:
    walls, cpus = [], []
    for _ in range(rounds):
        c, w = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": round(min(walls), 3), "cpu_s": round(min(cpus), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    ap.add_argument("tokenizer", help="a Hugging Face tokenizer folder")
    ap.add_argument("--field", default="text")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import gigatoken
    import orjson
    import pyarrow as pa
    import pyarrow.json as pj

    with open(args.jsonl, "rb") as f:
        data = f.read()
    lines = data.splitlines()
    out = {"mb": round(len(data) / 1e6, 1), "documents": len(lines)}
    out["orjson_per_line_to_str"] = best(lambda: [orjson.loads(line)[args.field] for line in lines], args.rounds)
    for threads in (False, True):
        opts = pj.ReadOptions(use_threads=threads, block_size=16 << 20)
        out[f"pyarrow_read_json_threads_{str(threads).lower()}"] = best(
            lambda: pj.read_json(pa.BufferReader(data), read_options=opts).column(args.field), args.rounds)
    texts = [orjson.loads(line)[args.field] for line in lines]
    gigatoken.Tokenizer(args.tokenizer).encode_batch(["warm up"])  # the process's one-time set-up, not timed

    def fresh_then_warm():  # the tokenizer and its cache are freed on return
        tok = gigatoken.Tokenizer(args.tokenizer)
        return best(lambda: tok.encode_batch(texts), 1), best(lambda: tok.encode_batch(texts), args.rounds)

    out["gigatoken_encode_batch_fresh"], out["gigatoken_encode_batch_warm"] = fresh_then_warm()
    # the next fresh tokenizer's cache grows into the pages the first one freed, not new ones
    again = gigatoken.Tokenizer(args.tokenizer)
    out["gigatoken_encode_batch_second_fresh"] = best(lambda: again.encode_batch(texts), 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
