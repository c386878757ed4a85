#!/usr/bin/env python3
"""Two revisions of our preprocessing on the same file, alternated: wall, user and system seconds, minor faults.

  git worktree add /tmp/before HEAD~1
  python bench/preprocess_ab.py --corpus /tmp/text1g --before /tmp/before --after . --variant srp \
      --annotations /tmp/b1g/annotations --rounds 5

Each run is a fresh process of tools/preprocess_data.py (``--workers 2``, ``--append-eod``) with
``PYTHONPATH`` set to one tree, so the package of that tree is imported; the order of the two
alternates every round and dirty pages are synced before each run. Reports per revision the median
and range of wall seconds and the medians of user and system CPU seconds, minor page faults and peak
RSS (from wait4). Prints JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from preprocess import compile_sources, remove_outputs  # bench/ is not a package: a script's folder is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(tree: str, args) -> dict:
    out = os.path.join(args.out, "ab")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input",
           os.path.join(args.corpus, "corpus.jsonl"), "--tokenizer-type", "HuggingFaceTokenizer",
           "--tokenizer-model", os.path.join(args.corpus, "tokenizer"), "--append-eod", "--workers", "2",
           "--no-progress", "--output-prefix", out, "--variant", args.variant]
    if args.variant != "plain":
        cmd += ["--annotations", args.annotations]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree), "RAYON_NUM_THREADS": "2"}
    remove_outputs(f"{out}_")  # new files, as a first run writes
    os.sync()
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    if status != 0:
        raise SystemExit(f"{tree}: preprocessing failed: {proc.stderr.read().decode()[-2000:]}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "minor_faults": usage.ru_minflt,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a folder with corpus.jsonl and tokenizer/")
    p.add_argument("--before", required=True, help="the tree of the first revision (a git worktree)")
    p.add_argument("--after", required=True, help="the tree of the second revision")
    p.add_argument("--variant", default="plain", choices=["plain", "srp", "filter"])
    p.add_argument("--annotations", help="the annotations folder (srp, filter)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="/tmp/preprocess_ab", help="where the outputs go (overwritten)")
    args = p.parse_args()
    if args.variant != "plain" and not args.annotations:
        p.error(f"--variant {args.variant} needs --annotations")
    os.makedirs(args.out, exist_ok=True)
    trees = {"before": args.before, "after": args.after}
    compile_sources(*(os.path.join(t, "megatron_srp") for t in trees.values()))
    runs = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
            runs[name].append(run_once(trees[name], args))
            print(f"round {r + 1} {name}: {runs[name][-1]['wall_s']:.2f} s", file=sys.stderr)
    report = {}
    for name, rs in runs.items():
        walls = [x["wall_s"] for x in rs]
        report[name] = {"tree": trees[name], "walls_s": [round(w, 2) for w in walls],
                        "median_wall_s": round(statistics.median(walls), 2),
                        **{f"median_{k}": round(statistics.median(x[k] for x in rs), 2)
                           for k in ("user_s", "sys_s", "minor_faults", "peak_rss_mib")}}
    print(json.dumps({"corpus": args.corpus, "variant": args.variant, "rounds": args.rounds, **report}, indent=1))


if __name__ == "__main__":
    main()
