#!/usr/bin/env python3
"""How busy preprocessing keeps the cores: per-thread CPU from /proc while tools/preprocess_data.py runs.

  python bench/preprocess_threads.py -- --input /tmp/text1g/corpus.jsonl --output-prefix /tmp/t/x \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model /tmp/text1g/tokenizer --append-eod --workers 2

Runs the tool's ``main`` in this process (Linux only) and samples every thread's user and system time
from /proc/self/task every 50 ms. Prints (JSON) the wall time, the CPU seconds of each thread (the main
thread reads and parses, ``encode_*`` are the encoding threads, the native ones gigatoken's pool), and
utilization: all CPU seconds over wall x cores. One process only: with --workers N a file of 32 MiB or
more is read in N span processes, which are not sampled here (bench/preprocess_timeline.py counts them);
give a smaller file or --workers 1 to see the threads of one process.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")
THREADS: dict = {}


def _name(tid: str, comm: str, python_names: dict) -> str:
    if int(tid) == os.getpid():
        return "main (reading)"
    return python_names.get(int(tid)) or f"native ({comm}: gigatoken's pool)"


def _sample_once() -> None:
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended between listing and reading
            continue
        THREADS[tid] = (_name(tid, name, python_names), int(fields[11]) / TICK, int(fields[12]) / TICK)  # utime, stime


def _sample(stop: threading.Event) -> None:
    while not stop.wait(0.05):
        _sample_once()


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    from megatron_srp.cli.preprocess_data import main as preprocess

    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(stop,), daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        preprocess(argv)
    except SystemExit:
        pass
    wall = time.perf_counter() - start
    _sample_once()
    stop.set()
    rows = sorted(((n, u, s) for tid, (n, u, s) in THREADS.items() if tid != str(sampler.native_id)),
                  key=lambda r: -(r[1] + r[2]))
    cpu = sum(u + s for _, u, s in rows)
    print(json.dumps({"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cores": os.cpu_count(),
                      "utilization": round(cpu / (wall * os.cpu_count()), 3),
                      "threads": [{"name": n, "user_s": u, "system_s": s} for n, u, s in rows if u + s > 0]},
                     indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
