#!/usr/bin/env python3
"""Peak RSS of plain preprocessing as the input grows to >= 1 GB: bounded, because the tokenizer is renewed.

  python bench/make_text_corpus.py --out /tmp/text_corpus --mb 100
  python bench/preprocess_rss.py --corpus /tmp/text_corpus --gb 1.0 --workers 2
  python bench/preprocess_rss.py --corpus /tmp/text_corpus --gb 1.0 --parts 8 4 2 1 --repeat 3 --refresh default

Builds /tmp/rss_corpus.jsonl (deleted at the end) from the real-text corpus, copy after copy, each
copy with its letters permuted (a fixed permutation per copy) so that every copy brings new words
and gigatoken's pretoken cache keeps growing, as it would on a real web crawl. Runs ours plain
(fresh processes, one at a time) on the first 1/PART of the file for each ``--parts`` value (1: the
whole file), ``--repeat`` times each, with the default tokenizer renewal (once resident memory has
grown by 256 MiB over its lowest level since the last one, freed pages handed back with malloc_trim)
and without it (SRP_GIGATOKEN_REFRESH_MB=0; 64: every 64 MB of text, the rule before 12-05). With
``--workers N`` the span processes hold the tokenizers, so the whole process tree is sampled every 0.1 s
from /proc (Linux): the largest process's high-water mark (VmHWM) and the tree's summed proportional memory
(Pss: a page a fork shares with its parent counts once), reported as its highest sample in each quarter of
the run: a bounded run shows the same ceiling in every quarter and at every input size, a leak a rising one.
(Before 12-05 only the launched process was sampled, which since the spans is the parent, not the spans.)
Prints JSON.
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


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the span processes of ``--workers N``), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += parents.get(found[-1], [])
    return found


def _memory_mib(pid: int) -> tuple:
    """(resident, peak resident, proportional) memory of a running process in MiB, from /proc (Nones once it
    ended). Proportional (Pss) shares a page among the processes that map it, so a tree's sum counts the
    pages a fork inherited once."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS:", "VmHWM:")))
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pss = next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024, pss // 1024
    except (OSError, KeyError, StopIteration):
        return None, None, None


def run(cmd, env):
    """Run ``cmd``, sampling its process tree every 0.1 s: the largest process's peak (VmHWM) and the tree's
    summed proportional memory, highest sample per quarter of the run."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    samples, peak = [], 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        total = 0
        for p in _tree(proc.pid):
            rss, hwm, pss = _memory_mib(p)
            if rss is not None:
                total += pss
                peak = max(peak, hwm)
        samples.append(total)
        time.sleep(0.1)
    # The kernel's maxrss is kept across exec, so a child forked from this (large) process would report this
    # process's size: the peak is the children's own high-water marks, read while they run.
    peak = peak or round(usage.ru_maxrss / 1024)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-3000:]}")
    quarters = [max(q, default=None) for q in np.array_split(np.asarray(samples, dtype=np.int64), 4)] \
        if len(samples) >= 4 else []
    return {"wall_s": round(time.time() - start, 1), "largest_process_peak_rss_mib": peak,
            "peak_pss_sum_mib": max(samples, default=0),
            "pss_sum_max_per_quarter_mib": [int(q) for q in quarters]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="output of bench/make_text_corpus.py")
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refresh", nargs="+", default=["default", "0"],
                    help="SRP_GIGATOKEN_REFRESH_MB values to run (default: the tool's own, and 0: never)")
    ap.add_argument("--parts", type=int, nargs="+", default=[8, 1],
                    help="run on the first 1/PART of the file for each value (1: the whole file)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per input size (the peak varies by tens of MiB)")
    ap.add_argument("--tmp", default="/tmp/rss_corpus")
    args = ap.parse_args()
    big = f"{args.tmp}.jsonl"
    parts = {n: (big if n == 1 else f"{args.tmp}_1_{n}.jsonl") for n in args.parts}
    tok = os.path.join(args.corpus, "tokenizer")
    try:
        sizes = build(os.path.join(args.corpus, "corpus.jsonl"), big, args.gb)
        for n, path in parts.items():
            if n != 1:
                with open(big, "rb") as f, open(path, "wb") as g:
                    g.write(f.read(sizes[-1] // n).rsplit(b"\n", 1)[0] + b"\n")
        report = {"input_bytes": {f"1/{n}": os.path.getsize(p) for n, p in parts.items()}, "runs": {}}
        for refresh in args.refresh:
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            env.pop("SRP_GIGATOKEN_REFRESH_MB", None)
            if refresh != "default":
                env["SRP_GIGATOKEN_REFRESH_MB"] = refresh
            for n, path in parts.items():
                cmd = [sys.executable, f"{ROOT}/tools/preprocess_data.py", "--input", path, "--tokenizer-model", tok,
                       "--append-eod", "--workers", str(args.workers), "--no-progress",
                       "--output-prefix", f"{args.tmp}_out"]
                name = "whole" if n == 1 else f"first_1_{n}"
                key = f"refresh_{refresh}_{name}" if refresh != "0" else f"no_refresh_{name}"
                report["runs"][key] = [run(cmd, env) for _ in range(args.repeat)]
                print(key, report["runs"][key], file=sys.stderr)
        print(json.dumps(report, indent=2))
    finally:
        for p in (*parts.values(), big, f"{args.tmp}_out_text_document.bin", f"{args.tmp}_out_text_document.idx"):
            if os.path.exists(p):
                os.remove(p)


if __name__ == "__main__":
    main()
