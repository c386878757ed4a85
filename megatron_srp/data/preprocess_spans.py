"""One input file tokenized in spans, a forked process each (``--workers N``), the parts then concatenated.

Reading (the JSON parse into Python strings, or parquet rows into Python objects) holds a process's GIL, so
one process reads on one core however many threads encode. A span is a byte range of whole lines of a jsonl
file or a range of row groups of a parquet file (``corpus.spans``); each span's process runs preprocess's
``_process`` on its span into a part, and the parts are concatenated into the output: the same bytes and
statistics as one process. Spans of equal size are not equal work (srp's first half of the 1 GB real-text
corpus took 0.6 s longer than its second, a core idle meanwhile): a process that is done takes over the second
half of what another has not yet claimed (``_Pieces``), so the processes end together. A span that fails or
dies fails the run and leaves nothing; span processes die with their parent (Linux's parent-death signal).
"""

from __future__ import annotations

import gc
import glob
import multiprocessing as mp
import os
import sys
import time
from dataclasses import replace
from functools import partial
from typing import Optional

from megatron_srp.data.corpus import Span, count_lines, line_start, spans
from megatron_srp.data.fast_tokenizer import encode_a_text_at_a_time
from megatron_srp.data.preprocess_output import Stats, merge
from megatron_srp.errors import SRPError

SPAN_MIN_BYTES = 16 << 20
"""A file is split into spans of at least this size (``spans_of``)."""

CLAIM_BYTES = 1 << 20
"""How far past where it reads a span's process claims its jsonl input (no other process takes that part)."""

TAKE_MIN_BYTES = 2 << 20
"""The least unclaimed rest of a jsonl piece that a process that is done takes half of (parquet: two row groups):
a piece costs a part to concatenate and, for jsonl, a count of the lines before it."""


def spans_of(job, i: int) -> list:
    """Spans of input ``i`` (``corpus.spans``: byte ranges of a jsonl file, row groups of a parquet file) to
    tokenize in as many forked processes: --workers of them where gigatoken encodes. Reading (the JSON parse
    or the parquet rows into Python objects) holds a process's GIL: in one process it runs on one core, in
    spans on every core. [None] (the whole file, in this process) otherwise, and off Linux (forking a process
    that has loaded the tokenizers is Linux's safe case; macOS warns against it)."""
    if not may_fork_spans(job.config) or job.encoder.tok.backend != "gigatoken":
        return [None]
    found = spans(job.inputs[i], job.config.workers, SPAN_MIN_BYTES)
    return found if len(found) > 1 else [None]


def may_fork_spans(cfg) -> bool:
    """Whether a run with these settings (preprocess's ``PreprocessConfig``) may tokenize a file in span
    processes: ``spans_of`` decides per file once the tokenizer is loaded (gigatoken) and the size is known."""
    return cfg.workers > 1 and cfg.variant != "rewrite" and cfg.tokenizer_backend != "tokenizers" \
        and sys.platform.startswith("linux") and not mp.current_process().daemon  # (fork; a daemon has no children)


class SpanProcessDied(SRPError, RuntimeError):
    """A span's process ended without a result (killed: out of memory, a signal)."""


class _SpanProgress:
    """A span process's side of the progress bar: how far it has read, in memory the parent reads."""

    def __init__(self, shared):
        self.shared = shared
        self.done = 0  # (the pieces finished before this one)

    def advance(self, position: int) -> None:
        self.shared.value = self.done + position

    def file_done(self, path: str) -> None:
        self.done = self.shared.value


class _Pieces:
    """What each span process reads, in memory the processes share: its piece's end (which a process that is done
    may move forward, taking the rest), how far it has claimed (what nobody takes from it: ``CLAIM_BYTES`` past
    where it reads a jsonl file, the row group it reads of a parquet file), and a position it has reached with the
    lines before it (to number the lines of a piece taken from it). One lock: a claim or a take is a few
    compares, a few times a MB."""

    def __init__(self, ctx, path: str, found: list[Span]):
        self.path, self.parquet = path, path.endswith(".parquet")
        self.window, self.least = (1, 2) if self.parquet else (CLAIM_BYTES, TAKE_MIN_BYTES)
        self.lock = ctx.Lock()
        self.end = ctx.Array("q", [s.end for s in found], lock=False)
        self.claimed = ctx.Array("q", [s.start for s in found], lock=False)
        self.known_at = ctx.Array("q", [s.start for s in found], lock=False)
        # the lines before known_at; -1: not known yet (nothing is taken from such a piece). The first span's are
        # known (none), a parquet file's rows come from its metadata.
        known = [0 if self.parquet else -1 if s.lines_before is None else s.lines_before for s in found]
        self.lines_at = ctx.Array("q", known, lock=False)

    def claim(self, k: int, position: int, lines_before: int) -> int:
        """``Span.claim`` for process ``k``."""
        with self.lock:
            self.known_at[k], self.lines_at[k] = position, lines_before
            self.claimed[k] = min(self.end[k], max(self.claimed[k], position + self.window))
            return self.claimed[k]

    def take(self, k: int) -> Optional[Span]:
        """For process ``k``, whose piece is read: the second half of the largest unclaimed rest of another
        process's piece (that one's end moved to where it starts), or None when every rest is below the least."""
        with self.lock:
            self.claimed[k] = self.end[k]
            rests = [(self.end[v] - self.claimed[v], v) for v in range(len(self.end))
                     if v != k and self.lines_at[v] >= 0]
            left, v = max(rests, default=(0, -1))
            if left < self.least:
                return None
            cut = self._cut(self.claimed[v] + left // 2)
            if not self.claimed[v] <= cut < self.end[v]:  # (one jsonl line to the end)
                return None
            end = self.end[k] = self.end[v]
            self.end[v] = self.claimed[k] = cut
            self.lines_at[k] = -1
            at, lines = self.known_at[v], self.lines_at[v]
        if self.parquet:  # (rows before a group: from the metadata)
            return Span(cut, end, claim=partial(self.claim, k))
        return Span(cut, end, lines + count_lines(self.path, at, cut), claim=partial(self.claim, k))

    def _cut(self, near: int) -> int:
        """Where a piece taken near ``near`` starts: that row group, or the first jsonl line that starts there or
        after."""
        if self.parquet:
            return near
        with open(self.path, "rb") as f:
            return line_start(f, near)


def _part_names(prefixes: list[str], start: int) -> list[str]:
    """The part of the piece that starts at ``start`` (a byte or a row group), per output prefix."""
    return [f"{p}.span{start:015d}" for p in prefixes]


def _span_task(job, i: int, prefixes: list[str], found: list[Span], k: int, pieces: _Pieces, sidecar, shared,
               lines, process, conn) -> None:
    """A forked process: tokenize span ``k`` of input ``i``, then the pieces it takes from the others, each into
    its part; send back each piece's start and statistics, or the error."""
    _die_with_parent()
    encode_a_text_at_a_time()  # (one thread reads and encodes here)
    try:
        span, done, progress = _with_lines_before(job.inputs[i], found, k, lines), [], _SpanProgress(shared[k])
        span = replace(span, claim=partial(pieces.claim, k))
        while span is not None:
            done.append((span.start, process(job, i, _part_names(prefixes, span.start), None, progress, None, span,
                                             sidecar)))
            span = pieces.take(k)
        conn.send(("ok", done))
    except BaseException as e:  # noqa: BLE001 - every error goes to the parent, which raises it
        try:
            conn.send(("error", e))
        except Exception:  # an error that does not pickle: its text
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
    finally:
        conn.close()


def _with_lines_before(path: str, found: list[Span], k: int, lines: list) -> Span:
    """Span ``k`` of a jsonl file with the count of the lines before it. The process of span k counts the lines
    of span k - 1 and shares the count (``lines``, -1 until then), then adds up the counts before its span: the
    file is counted once in all, in parallel, and span 0 starts at once (counting from the file's start in
    every process would read the file N/2 times)."""
    if path.endswith(".parquet"):  # its rows are counted in the metadata
        return found[k]
    if k > 0:
        lines[k - 1].value = count_lines(path, found[k - 1].start, found[k - 1].end)
    while any(n.value < 0 for n in lines[:k]):  # (a span that dies fails the run: the parent kills this one)
        time.sleep(0.002)
    return replace(found[k], lines_before=sum(n.value for n in lines[:k]))


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a killed job leaves no span running)."""
    try:
        import ctypes  # here: only a span process needs it

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def process_spans(job, i: int, prefixes: list[str], found: list[Span], progress, process,
                  next_input: Optional[int] = None) -> Stats:
    """Input ``i`` of ``job`` (preprocess's Job) tokenized in spans, one forked process each running
    ``process`` (preprocess's ``_process``) on its span, into parts that are then concatenated into
    ``prefixes``: the same bytes and statistics as one process (tests). The spans start before the input's
    digest is taken (``ShardAnnotations.assume_input``): this process takes it meanwhile, and where it is not
    the annotated file's, the spans are stopped and run again checking every text."""
    sidecar = job.sidecar(i, defer_digest=True) if job.settings.variant != "plain" else None  # inherited by the forks
    job.settle()  # no thread of ours mid-read at the fork
    results = _run_spans(job, i, prefixes, found, sidecar, progress, process, next_input)
    if results is None:  # another file than the annotated one: sidecar.texts_verified is off now
        results = _run_spans(job, i, prefixes, found, sidecar, progress, process, next_input)
    stats = Stats()
    for piece in results:
        stats.add(piece)
    progress.file_done(job.inputs[i])
    return stats


def _run_spans(job, i: int, prefixes: list[str], found: list[Span], sidecar, progress, process,
               next_input: Optional[int]) -> Optional[list]:
    """Fork the span processes, concatenate their pieces' parts into ``prefixes``; the pieces' statistics in
    order. None (and nothing written) when ``sidecar``'s pending digest is not the input's."""
    from multiprocessing.connection import wait as wait_for

    ctx = mp.get_context("fork")
    with_roles = job.settings.variant == "srp"
    shared = [ctx.Value("q", 0, lock=False) for _ in found]  # bytes read, per span
    lines = [ctx.Value("q", -1, lock=False) for _ in found]  # lines in each span, as counted (``_with_lines_before``)
    pieces = _Pieces(ctx, job.inputs[i], found)
    procs, pipes, results = [], {}, {}
    # What the forks inherit (the sidecar: 1.5 M segments per GB) stays out of their garbage collections: srp
    # spent 0.3 s of CPU per GB walking it (perf). Unfrozen here once the span processes are done.
    gc.freeze()
    try:
        for k in range(len(found)):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_span_task, name=f"srp-preprocess-span{k}", daemon=True,
                               args=(job, i, prefixes, found, k, pieces, sidecar, shared, lines, process, send))
            proc.start()
            send.close()
            procs.append(proc)
            pipes[recv] = k
        if next_input is not None:
            job.prefetch(next_input)
        if sidecar is not None and sidecar.digest_pending and not sidecar.confirm_input(job.inputs[i]):
            return None  # (the spans are stopped below)
        while pipes:
            for conn in wait_for(list(pipes), timeout=0.5):
                k = pipes.pop(conn)
                try:
                    kind, value = conn.recv()
                except EOFError:
                    procs[k].join()
                    raise SpanProcessDied(f"{job.inputs[i]}: the process tokenizing {found[k]} died "
                                          f"(exit code {procs[k].exitcode}; out of memory?)") from None
                finally:
                    conn.close()
                if kind == "error":
                    raise value
                results.update(value)
            progress.advance(sum(v.value for v in shared))
        starts = sorted(results)
        merge([_part_names(prefixes, a) for a in starts], prefixes, job.dtype, with_roles, consume=True)
    finally:
        gc.unfreeze()
        for conn in pipes:  # (those of spans not heard from)
            conn.close()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for p in prefixes:  # a failed run's parts, finished or not (a killed span's temporary names, roles too)
            for name in glob.glob(f"{glob.escape(p)}.span[0-9]*"):
                os.remove(name)
    return [results[a] for a in starts]
