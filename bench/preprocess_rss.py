#!/usr/bin/env python3
"""Peak RSS of plain preprocessing as the input grows to >= 1 GB: bounded, because the tokenizer is renewed.

  python bench/make_text_corpus.py --out /tmp/text_corpus --mb 100
  python bench/preprocess_rss.py --corpus /tmp/text_corpus --gb 1.0 --workers 2

Builds /tmp/rss_corpus.jsonl (deleted at the end) from the real-text corpus, copy after copy, each
copy with its letters permuted (a fixed permutation per copy) so that every copy brings new words
and gigatoken's pretoken cache keeps growing, as it would on a real web crawl. Runs ours plain
(fresh processes, one at a time) on the first 1/8 and on the whole file, with the default tokenizer
renewal (every 64 MB of text, freed pages handed back with malloc_trim) and without it
(SRP_GIGATOKEN_REFRESH_MB=0). Prints JSON.
"""

import argparse
import json
import os
import string
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(src: str, dst: str, gb: float) -> list[int]:
    """Write copies of ``src`` with permuted letters until ``gb`` GB; return the byte size after each copy."""
    rng, sizes, total = np.random.default_rng(0), [], 0
    letters = string.ascii_lowercase
    with open(src, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    with open(dst, "w", encoding="utf-8") as out:
        copy = 0
        while total < gb * 1e9:
            perm = "".join(rng.permutation(list(letters))) if copy else letters
            table = str.maketrans(letters + letters.upper(), perm + perm.upper())
            for row in rows:
                line = json.dumps({"text": row["text"].translate(table)}, ensure_ascii=False) + "\n"
                out.write(line)
                total += len(line.encode("utf-8"))
            sizes.append(total)
            copy += 1
    return sizes


def run(cmd, env):
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-3000:]}")
    return {"wall_s": round(time.time() - start, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="output of bench/make_text_corpus.py")
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refresh", nargs="+", default=["default", "0"],
                    help="SRP_GIGATOKEN_REFRESH_MB values to run (default: the tool's own, and 0: never)")
    ap.add_argument("--part", type=int, default=8, help="the smaller run reads the first 1/PART of the file")
    ap.add_argument("--tmp", default="/tmp/rss_corpus")
    args = ap.parse_args()
    big, small = f"{args.tmp}.jsonl", f"{args.tmp}_part.jsonl"
    tok = os.path.join(args.corpus, "tokenizer")
    try:
        sizes = build(os.path.join(args.corpus, "corpus.jsonl"), big, args.gb)
        with open(big, "rb") as f, open(small, "wb") as g:
            g.write(f.read(sizes[-1] // args.part).rsplit(b"\n", 1)[0] + b"\n")
        report = {"input_bytes": {"part": os.path.getsize(small), "whole": os.path.getsize(big)}, "runs": {}}
        for refresh in args.refresh:
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            env.pop("SRP_GIGATOKEN_REFRESH_MB", None)
            if refresh != "default":
                env["SRP_GIGATOKEN_REFRESH_MB"] = refresh
            for name, path in ((f"first_1_{args.part}", small), ("whole", big)):
                cmd = [sys.executable, f"{ROOT}/tools/preprocess_data.py", "--input", path, "--tokenizer-model", tok,
                       "--append-eod", "--workers", str(args.workers), "--no-progress",
                       "--output-prefix", f"{args.tmp}_out"]
                key = f"refresh_{refresh}_{name}" if refresh != "0" else f"no_refresh_{name}"
                report["runs"][key] = run(cmd, env)
                print(key, report["runs"][key], file=sys.stderr)
        print(json.dumps(report, indent=2))
    finally:
        for p in (big, small, f"{args.tmp}_out_text_document.bin", f"{args.tmp}_out_text_document.idx"):
            if os.path.exists(p):
                os.remove(p)


if __name__ == "__main__":
    main()
