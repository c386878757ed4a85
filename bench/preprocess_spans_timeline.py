#!/usr/bin/env python3
"""When each part of a run in span processes happens: set-up, the wait for srp's sidecar, each span process from
its start to its end (with its user and system CPU seconds), each piece a process takes over from a slower one,
the concatenation, and the end of ``main``; seconds since the process started.

  RAYON_NUM_THREADS=2 .venv/bin/python bench/preprocess_spans_timeline.py --input /tmp/text1g/corpus.jsonl \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model /tmp/text1g/tokenizer --append-eod --workers 2 \\
      --no-progress --output-prefix /tmp/tl/x [--variant srp --annotations /tmp/b1g/annotations]

The arguments are tools/preprocess_data.py's; the run is that tool's, with timing wrappers around its functions
(printed to stderr). Delete the outputs of a previous run first (replacing files costs a wait at the end). Linux
only (the start time comes from /proc).
"""

from __future__ import annotations

import os
import resource
import sys
import time


def _seconds_since_start() -> float:
    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        return float(f.read().split()[0]) - started


BASE = time.perf_counter() - _seconds_since_start()


def now() -> float:
    return time.perf_counter() - BASE


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wrap(owner, name: str, label: str, report) -> None:
    real = getattr(owner, name)

    def timed(*args, **kwargs):
        start = now()
        result = None
        try:
            result = real(*args, **kwargs)
            return result
        finally:
            report(label, start, args, result)
    setattr(owner, name, timed)


def span_start(owner, name: str) -> None:
    real = getattr(owner, name)

    def started(*args):
        say(f"span process {args[4]} starts: {now():.3f} s")
        return real(*args)
    setattr(owner, name, started)


def take(label, start, args, result) -> None:
    """Reported before the process sends its result (the parent may end it once every result is in)."""
    if result is not None:
        say(f"  process {args[1]} takes bytes (or row groups) [{result.start}, {result.end}) at {start:.3f} s "
            f"({(now() - start) * 1e3:.1f} ms)")
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    say(f"span process {args[1]} done: {start:.3f} s, user {usage.ru_utime:.2f} s, system {usage.ru_stime:.2f} s "
        f"(nothing left to take)")


def interval(label, start, args, result) -> None:
    say(f"{label}: {start:.3f} -> {now():.3f} s")


def main() -> int:
    say(f"interpreter up: {now():.3f} s")
    from megatron_srp.data import preprocess, preprocess_spans

    say(f"imports done: {now():.3f} s")
    wrap(preprocess, "setup", "set-up", interval)
    wrap(preprocess.Job, "sidecar", "sidecar (srp; waited for)", interval)
    span_start(preprocess_spans, "_span_task")
    wrap(preprocess_spans._Pieces, "take", "take", take)
    wrap(preprocess_spans, "merge", "concatenation", interval)
    rc = preprocess.main(sys.argv[1:])
    say(f"main done: {now():.3f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
