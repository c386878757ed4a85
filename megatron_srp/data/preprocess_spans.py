"""One input file tokenized in spans, a forked process each (``--workers N``), the parts then concatenated.

Reading (the JSON parse into Python strings, or parquet rows into Python objects) holds a process's GIL, so
one process reads on one core however many threads encode. A span is a byte range of whole lines of a jsonl
file or a range of row groups of a parquet file (``corpus.spans``); each span's process runs preprocess's
``_process`` on its span into a part, and the parts are concatenated into the output: the same bytes and
statistics as one process. A span that fails or dies fails the run and leaves nothing; span processes die
with their parent (Linux's parent-death signal).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from typing import Optional

from megatron_srp.data.corpus import Span, count_lines, spans
from megatron_srp.data.preprocess_output import Stats, merge, remove_dataset
from megatron_srp.data.roles import roles_prefix
from megatron_srp.errors import SRPError

SPAN_MIN_BYTES = 16 << 20
"""A file is split into spans of at least this size (``spans_of``)."""


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

    def advance(self, position: int) -> None:
        self.shared.value = position

    def file_done(self, path: str) -> None:
        pass


def _span_task(job, i: int, parts: list[str], found: list[Span], k: int, sidecar, shared, lines, process, conn) -> None:
    """A forked process: tokenize span ``k`` of input ``i`` into ``parts``; send back the statistics or the
    error."""
    _die_with_parent()
    try:
        span = _with_lines_before(job.inputs[i], found, k, lines)
        conn.send(("ok", process(job, i, parts, None, _SpanProgress(shared[k]), None, span, sidecar)))
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
    for k in range(len(found)):
        stats.add(results[k])
    progress.file_done(job.inputs[i])
    return stats


def _run_spans(job, i: int, prefixes: list[str], found: list[Span], sidecar, progress, process,
               next_input: Optional[int]) -> Optional[dict]:
    """Fork the span processes, concatenate their parts into ``prefixes``; their statistics by span. None (and
    nothing written) when ``sidecar``'s pending digest is not the input's."""
    from multiprocessing.connection import wait as wait_for

    ctx = mp.get_context("fork")
    parts = [[f"{p}.span{k:03d}" for p in prefixes] for k in range(len(found))]
    with_roles = job.settings.variant == "srp"
    shared = [ctx.Value("q", 0, lock=False) for _ in found]  # bytes read, per span
    lines = [ctx.Value("q", -1, lock=False) for _ in found]  # lines in each span, as counted (``_with_lines_before``)
    procs, pipes, results = [], {}, {}
    # What the forks inherit (the sidecar: 1.5 M segments per GB) stays out of their garbage collections: srp
    # spent 0.3 s of CPU per GB walking it (perf). Unfrozen here once the span processes are done.
    gc.freeze()
    try:
        for k in range(len(found)):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_span_task, name=f"srp-preprocess-span{k}", daemon=True,
                               args=(job, i, parts[k], found, k, sidecar, shared, lines, process, send))
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
                results[k] = value
            progress.advance(sum(v.value for v in shared))
        merge(parts, prefixes, job.dtype, with_roles, consume=True)
    finally:
        gc.unfreeze()
        for conn in pipes:  # (those of spans not heard from)
            conn.close()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for k, proc in enumerate(procs):  # a failed run's parts, finished or not (a killed span's temp names)
            names = [n for p in parts[k] for n in (p, f"{p}.tmp-{proc.pid}")]  # (io.temp_name in that process)
            remove_dataset(names + ([roles_prefix(n) for n in names[:2]] if with_roles else []))
    return results
