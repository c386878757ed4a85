#!/usr/bin/env python3
"""How many cores preprocessing keeps busy over time: tools/preprocess_data.py's process CPU sampled.

  python bench/preprocess_timeline.py [--interval 0.25] [--fresh] -- --input /tmp/text1g/corpus.jsonl \\
      --output-prefix /tmp/t/x --tokenizer-type HuggingFaceTokenizer --tokenizer-model /tmp/text1g/tokenizer \\
      --append-eod --workers 2

Runs the tool in a child process (``RAYON_NUM_THREADS`` = ``--workers``' value, 2 by default) after ``sync``
and prints, per interval, the cores its threads and its span processes used (user + system time from
/proc), then the wall time. ``--fresh`` deletes the outputs a previous run left at the prefix first, so the run writes new
files (BENCHMARKS.md: replacing existing ones costs a wait at the end). Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from preprocess import remove_outputs  # bench/ is not a package: a script's folder is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants (the span processes of --workers N): its own, its reaped
    children's, and each live child's (found through /proc/PID/task/*/children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = sum(int(x) for x in fields[11:15]) / TICK  # utime, stime, cutime, cstime
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for child in children:
            try:
                total += cpu_seconds(child)
            except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile: in cutime next time
                pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--fresh", action="store_true", help="delete the previous outputs at the prefix first")
    ap.add_argument("tool_args", nargs=argparse.REMAINDER, help="-- and the arguments of tools/preprocess_data.py")
    args = ap.parse_args()
    tool_args = args.tool_args[1:] if args.tool_args[:1] == ["--"] else args.tool_args
    if "--output-prefix" not in tool_args:
        ap.error("give the tool's arguments after --, --output-prefix among them")
    if args.fresh:
        remove_outputs(f"{tool_args[tool_args.index('--output-prefix') + 1]}_")
    workers = tool_args[tool_args.index("--workers") + 1] if "--workers" in tool_args else "2"
    os.sync()
    env = {**os.environ, "RAYON_NUM_THREADS": workers}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), *tool_args,
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last_t, last_cpu = 0.0, 0.0
    while proc.poll() is None:
        time.sleep(args.interval)
        try:
            cpu = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):  # it ended between poll and read
            break
        t = time.perf_counter() - start
        print(f"{t:6.2f} s  {(cpu - last_cpu) / (t - last_t):4.2f} cores busy")
        last_t, last_cpu = t, cpu
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"preprocessing failed:\n{proc.stderr.read().decode()[-2000:]}")
    print(f"wall {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
