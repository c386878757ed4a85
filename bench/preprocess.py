#!/usr/bin/env python3
"""Preprocessing throughput, side by side with Megatron-LM's own tools/preprocess_data.py.

  python bench/make_corpus.py --out /tmp/bench_corpus --mb 100
  git clone --branch core_v0.16.1 --depth 1 https://github.com/NVIDIA/Megatron-LM /tmp/Megatron-LM
  # the peer's own venv: Megatron-LM's tool also imports six and triton (kept out of ours)
  python3.11 -m venv /tmp/mlm-venv && /tmp/mlm-venv/bin/pip install torch==2.13.0 megatron-core==0.16.1 \
      transformers tokenizers six triton numpy psutil
  .venv/bin/python bench/preprocess.py --corpus /tmp/bench_corpus --megatron-lm /tmp/Megatron-LM \
      --megatron-lm-python /tmp/mlm-venv/bin/python --workers 2 --rounds 3

Runs, alternately and one at a time: Megatron-LM plain, ours plain, ours srp (from annotations made
once beforehand with the column backend, not timed). Each run is a fresh process; wall time includes
start-up, as a user sees it. Reports tokens/s (median over rounds), the ratio to Megatron-LM, and
peak RSS (largest process of the run's tree, from wait4). Checks that plain is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env, cwd):
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # MiB (ru_maxrss is KiB on Linux; max over waited-for children)


def tokens_of(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)  # keep it alive: its __del__ closes the mmap under sequence_lengths
    return int(np.sum(ds.sequence_lengths))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="output of bench/make_corpus.py")
    ap.add_argument("--megatron-lm", required=True, help="a Megatron-LM checkout (core_v0.16.1 runs on Python 3.11)")
    ap.add_argument("--megatron-lm-python", default=sys.executable, help="python that runs Megatron-LM's tool")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/bench_preprocess")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    py = sys.executable
    corpus, tok = os.path.join(args.corpus, "corpus.jsonl"), os.path.join(args.corpus, "tokenizer")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    common = ["--input", corpus, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok,
              "--append-eod", "--workers", str(args.workers)]
    ann = os.path.join(args.out, "annotations")
    if not os.path.exists(os.path.join(ann, "annotations.json")):
        print("annotating once (column backend, not timed) ...", file=sys.stderr)
        subprocess.run([py, f"{ROOT}/tools/annotate.py", "--input", corpus, "--output", ann, "--tokenizer-model", tok,
                        "--classifier", "column", "--no-progress"], env=env, check=True)
    commands = {
        "megatron_lm_plain": ([args.megatron_lm_python, "tools/preprocess_data.py", *common, "--output-prefix", f"{args.out}/mlm"],
                              {**env, "PYTHONPATH": args.megatron_lm}, args.megatron_lm, f"{args.out}/mlm_text_document"),
        "ours_plain": ([py, f"{ROOT}/tools/preprocess_data.py", *common, "--no-progress", "--output-prefix",
                        f"{args.out}/plain"], env, ROOT, f"{args.out}/plain_text_document"),
        "ours_srp": ([py, f"{ROOT}/tools/preprocess_data.py", *common, "--no-progress", "--annotations", ann,
                      "--variant", "srp", "--output-prefix", f"{args.out}/srp"], env, ROOT, f"{args.out}/srp_text_document"),
    }
    walls = {k: [] for k in commands}
    rss = {k: 0.0 for k in commands}
    for r in range(args.rounds):
        for name, (cmd, e, cwd, _) in commands.items():
            wall, peak = run(cmd, e, cwd)
            walls[name].append(wall)
            rss[name] = max(rss[name], peak)
            print(f"round {r + 1} {name}: {wall:.1f} s, peak RSS {peak:.0f} MiB", file=sys.stderr)
    identical = all(open(f"{commands['megatron_lm_plain'][3]}{ext}", "rb").read() ==
                    open(f"{commands['ours_plain'][3]}{ext}", "rb").read() for ext in (".bin", ".idx"))
    ref = None
    report = {"corpus_mb": round(os.path.getsize(corpus) / 1e6, 1), "workers": args.workers, "rounds": args.rounds,
              "plain_byte_identical": identical, "runs": {}}
    for name, (_, _, _, prefix) in commands.items():
        toks = tokens_of(prefix)
        med = statistics.median(walls[name])
        tps = toks / med
        ref = ref or tps
        report["runs"][name] = {"tokens": toks, "median_s": round(med, 2), "min_s": round(min(walls[name]), 2),
                                "max_s": round(max(walls[name]), 2), "tokens_per_s": round(tps),
                                "vs_megatron_lm": round(tps / ref, 3), "peak_rss_mib": round(rss[name])}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
