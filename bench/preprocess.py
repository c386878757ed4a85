#!/usr/bin/env python3
"""Preprocessing throughput on any jsonl, beside Megatron-LM's own tools/preprocess_data.py and the limit.

  python bench/make_text_corpus.py --out /tmp/text_corpus --mb 100    # real text (or bench/make_corpus.py)
  git clone --branch core_v0.16.1 --depth 1 https://github.com/NVIDIA/Megatron-LM /tmp/Megatron-LM
  # the peer's own venv: Megatron-LM's tool also imports six and triton (kept out of ours)
  python3.11 -m venv /tmp/mlm-venv && /tmp/mlm-venv/bin/pip install torch==2.13.0 megatron-core==0.16.1 \
      transformers tokenizers six triton numpy psutil
  .venv/bin/python bench/preprocess.py --corpus /tmp/text_corpus --megatron-lm /tmp/Megatron-LM \
      --megatron-lm-python /tmp/mlm-venv/bin/python --workers 2 --rounds 3

``--corpus DIR`` is a folder with corpus.jsonl and tokenizer/; or give ``--input FILE.jsonl
--tokenizer-model DIR``. Runs, alternately and one at a time: Megatron-LM plain, ours plain (default
flags, injection guard on), ours plain ``--no-injection-guard``, ours srp (from annotations made once
beforehand with the column backend, not timed; needs a ``label`` field, skipped without one), and
the limit: gigatoken's ``encode_files`` reading the same jsonl itself (bench/gigatoken_limit.py; no
guard, no end-of-document ids, nothing written). Each run is a fresh process; wall time includes
start-up, as a user sees it. Each round runs Megatron-LM first and the others one place further round
(a different command runs right after Megatron-LM's long one every round), and dirty pages are synced
before every run, after the previous round's outputs of that command are deleted (see
``remove_outputs``). Reports tokens/s (median over rounds), the ratio to Megatron-LM and to the limit,
peak RSS (largest process of the run's tree, from wait4), and srp against plain and plain against the limit
within each round (seconds apart) with their median: on a VM whose speed drifts by the minute, those
ratios move less than the ratio of medians. Checks byte identity of plain with
Megatron-LM, with and without the guard, and counts the documents the guard changed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env, cwd):
    start = time.time()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout  # MiB (ru_maxrss: KiB on Linux; max over waited-for children)


def remove_outputs(start: str) -> None:
    """Delete the files whose path begins with ``start`` (a previous run's outputs), so every run writes new
    files as a first run does: replacing an existing file by rename (ours) or truncation (Megatron-LM's)
    makes the kernel free (and on a ``discard`` mount trim) the old one's blocks and, on ext4, flush the new
    one: about 0.7 s of waiting at 1 GB that a first run does not pay (BENCHMARKS.md). Also used by
    bench/preprocess_ab.py and bench/preprocess_timeline.py."""
    for path in glob.glob(f"{glob.escape(start)}*"):
        os.remove(path)


def tokens_of(prefix):
    from megatron_srp.data.indexed_writer import read_index

    return int(np.sum(read_index(f"{prefix}.idx")[0], dtype=np.int64))


def has_labels(corpus: str) -> bool:
    with open(corpus, "rb") as f:
        return b'"label"' in f.readline()


def same_bytes(a: str, b: str) -> bool:
    return all(open(f"{a}{ext}", "rb").read() == open(f"{b}{ext}", "rb").read() for ext in (".bin", ".idx"))


def compile_sources(*trees: str) -> None:
    """Byte-compile the Python sources of ``trees`` (once, not timed), as an installed package has them: where
    ``PYTHONDONTWRITEBYTECODE`` is set (this project's sandboxes set it), an editable install otherwise compiles
    its modules again in every run (about 40 ms of each of ours)."""
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", tree], check=False, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a folder with corpus.jsonl and tokenizer/ (bench/make_corpus.py, make_text_corpus.py)")
    ap.add_argument("--input", help="any jsonl with a text field (instead of --corpus)")
    ap.add_argument("--tokenizer-model", help="Hugging Face tokenizer folder (with --input)")
    ap.add_argument("--megatron-lm", help="a Megatron-LM checkout (core_v0.16.1 runs on Python 3.11)")
    ap.add_argument("--skip-megatron-lm", action="store_true", help="only ours and the limit (ratios to the limit)")
    ap.add_argument("--megatron-lm-python", default=sys.executable, help="python that runs Megatron-LM's tool")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/bench_preprocess")
    args = ap.parse_args()
    if args.corpus:
        corpus, tok = os.path.join(args.corpus, "corpus.jsonl"), os.path.join(args.corpus, "tokenizer")
    elif args.input and args.tokenizer_model:
        corpus, tok = args.input, args.tokenizer_model
    else:
        ap.error("give --corpus DIR, or --input FILE.jsonl and --tokenizer-model DIR")
    os.makedirs(args.out, exist_ok=True)
    compile_sources(os.path.join(ROOT, "megatron_srp"), *([args.megatron_lm] if args.megatron_lm else []))
    py = sys.executable
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAYON_NUM_THREADS": str(args.workers)}
    common = ["--input", corpus, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok,
              "--append-eod", "--workers", str(args.workers)]
    ours = [py, f"{ROOT}/tools/preprocess_data.py", *common, "--no-progress"]
    if not args.skip_megatron_lm and not args.megatron_lm:
        ap.error("give --megatron-lm CHECKOUT (or --skip-megatron-lm)")
    commands = {
        "megatron_lm_plain": ([args.megatron_lm_python, "tools/preprocess_data.py", *common, "--output-prefix",
                               f"{args.out}/mlm"], {**env, "PYTHONPATH": args.megatron_lm}, args.megatron_lm,
                              f"{args.out}/mlm_text_document"),
        "ours_plain": ([*ours, "--output-prefix", f"{args.out}/plain", "--stats", f"{args.out}/plain.stats.json"],
                       env, ROOT, f"{args.out}/plain_text_document"),
        "ours_plain_no_guard": ([*ours, "--no-injection-guard", "--output-prefix", f"{args.out}/raw"], env, ROOT,
                                f"{args.out}/raw_text_document"),
    }
    if args.skip_megatron_lm:
        del commands["megatron_lm_plain"]
    if has_labels(corpus):
        ann = os.path.join(args.out, "annotations")
        if not os.path.exists(os.path.join(ann, "annotations.json")):
            print("annotating once (column backend, not timed) ...", file=sys.stderr)
            subprocess.run([py, f"{ROOT}/tools/annotate.py", "--input", corpus, "--output", ann, "--tokenizer-model",
                            tok, "--classifier", "column", "--no-progress"], env=env, check=True,
                           stdout=subprocess.DEVNULL)  # (its statistics line would precede the report)
        commands["ours_srp"] = ([*ours, "--annotations", ann, "--variant", "srp", "--output-prefix", f"{args.out}/srp"],
                                env, ROOT, f"{args.out}/srp_text_document")
    commands["limit_gigatoken_encode_files"] = ([py, f"{ROOT}/bench/gigatoken_limit.py", corpus, tok], env, ROOT, None)
    walls = {k: [] for k in commands}
    rss = {k: 0.0 for k in commands}
    limit_tokens = None
    for r in range(args.rounds):
        # Megatron-LM's long run first, the others rotated: the run right after it (which pays for the memory
        # and page cache it leaves behind) changes every round. Rotating the whole list would not change it.
        first, *rest = commands.items()
        order = [first, *rest[r % len(rest):], *rest[:r % len(rest)]]
        for name, (cmd, e, cwd, prefix) in order:
            if prefix:  # the limit writes nothing
                remove_outputs(f"{prefix}.")
            os.sync()  # the previous run's output is written back now, not during this run's timing
            wall, peak, out = run(cmd, e, cwd)
            walls[name].append(wall)
            rss[name] = max(rss[name], peak)
            if name.startswith("limit"):
                limit_tokens = json.loads(out)["tokens"]
            print(f"round {r + 1} {name}: {wall:.1f} s, peak RSS {peak:.0f} MiB", file=sys.stderr)
    with open(f"{args.out}/plain.stats.json") as f:
        guard_changed = json.load(f)["guard_changed_documents"]
    report = {"corpus": corpus, "corpus_mb": round(os.path.getsize(corpus) / 1e6, 1), "workers": args.workers,
              "rounds": args.rounds, "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
              "guard_changed_documents": guard_changed, "runs": {}}
    if not args.skip_megatron_lm:
        mlm = commands["megatron_lm_plain"][3]
        report["plain_no_guard_byte_identical"] = same_bytes(mlm, commands["ours_plain_no_guard"][3])
        report["plain_default_byte_identical"] = same_bytes(mlm, commands["ours_plain"][3])
    ref = None
    for name, (_, _, _, prefix) in commands.items():
        toks = tokens_of(prefix) if prefix else limit_tokens
        med = statistics.median(walls[name])
        tps = toks / med
        ref = ref or tps
        report["runs"][name] = {"tokens": toks, "walls_s": [round(w, 2) for w in walls[name]], "median_s": round(med, 2),
                                "tokens_per_s": round(tps),
                                "vs_megatron_lm": None if args.skip_megatron_lm else round(tps / ref, 2),
                                "peak_rss_mib": round(rss[name])}
    lim = report["runs"]["limit_gigatoken_encode_files"]["tokens_per_s"]
    for run_ in report["runs"].values():
        run_["vs_limit"] = round(run_["tokens_per_s"] / lim, 3)
    # Ratios within a round too: a VM's speed drifts by the minute, and a round's runs are seconds apart.
    runs = report["runs"]
    pairs = {"plain_vs_limit_by_round": ("ours_plain", "limit_gigatoken_encode_files"),
             "srp_vs_plain_by_round": ("ours_srp", "ours_plain")}
    for key, (a, b) in pairs.items():
        if a in runs:
            ratios = [(runs[a]["tokens"] / wa) / (runs[b]["tokens"] / wb) for wa, wb in zip(walls[a], walls[b])]
            report[key] = {"ratios": [round(x, 3) for x in ratios], "median": round(statistics.median(ratios), 3)}
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
