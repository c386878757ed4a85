"""Tokenize a corpus into Megatron indexed datasets (.bin/.idx): plain, or an SRP variant from annotations.

Megatron-LM's flags work as in its tools/preprocess_data.py:

  python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model tokenizer/ --append-eod --workers 2

``plain`` output is byte-identical to Megatron-LM's (same tokenizer and flags) when no document
contains a special-token string (``<|endoftext|>``, ...) or a reflection tag, or with
``--no-injection-guard``. Otherwise the guard encodes those strings as text and breaks the tags
with U+200B, so exactly those documents differ; --stats counts them (guard_changed_documents).

SRP and the baselines, from the sidecars of tools/annotate.py:

  ... --annotations annotations/ --variant srp       # + data/corpus_text_document.roles.bin/.idx
  ... --annotations annotations/ --variant filter --filter-granularity document
  ... --annotations annotations/ --variant rewrite --rewriter hf --rewriter-arg model=Qwen2.5-7B-Instruct

Document text is encoded by gigatoken when it is installed and gives tokenizers' ids on the
tokenizer (checked at start; otherwise tokenizers, and the statistics say which). Outputs appear
only when complete (temporary names, then renames; the .idx comes last). Several input files are
tokenized into per-file parts under PREFIX.parts/ (a rerun skips finished parts), then merged in
input order. With --workers N a large file is read in N spans, a forked process each (byte ranges of
whole lines; parquet: row groups), whose parts are concatenated: the same bytes as one process.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Iterator, Optional, Sequence

import numpy as np

from megatron_srp.data.classify import REWRITERS, RewriteCache, SegmentInput, build_rewriter
from megatron_srp.data.corpus import ReadStats, Span, count_lines, expand_inputs, read_documents, relative_names, spans
from megatron_srp.data.materialize import DocInput, DocumentEncoder, MaterializeSettings
from megatron_srp.data.preprocess_output import Progress, Stats, Writer, merge, output_prefixes, remove_dataset
from megatron_srp.data.roles import roles_prefix
from megatron_srp.data.settings import PreprocessConfig, preprocess_config, preprocess_parser
from megatron_srp.data.tokenizer import TokenizerError
from megatron_srp.errors import SRPError
from megatron_srp.io import atomic_write_json
from megatron_srp.reflection import QWEN3GUARD_CATEGORIES, ReflectionFormat

# Not imported here: torch and Megatron-Core (the .bin/.idx writer is ours, byte-identical), pyarrow
# (annotations, parquet: imported in the functions that read them), datatrove (executors only) and the
# rewriters; --help and the plain hot path start in well under a second (tests/data/test_fast_tokenizer.py
# checks).


def settings_from_argv(argv: Optional[Sequence[str]] = None) -> PreprocessConfig:
    """The run's settings from the command line (parsed once; tasks receive the object)."""
    return preprocess_config(preprocess_parser(__doc__).parse_args(argv))


# -- worker side ------------------------------------------------------------------------------

_ENCODER = None


def _init_worker(tokenizer_model, settings, backend):
    global _ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENCODER = DocumentEncoder(tokenizer_model, settings, backend)


def _encode_chunk(chunk):
    return _encode_checked(_ENCODER.encode, chunk)


def _encode_checked(encode, chunk):
    """A chunk is (documents, the text-hash checks the reading thread deferred, srp's flat annotations):
    checked, then encoded."""
    docs, checks, segments = chunk
    if checks:
        from megatron_srp.data.annotations import check_texts

        check_texts(checks)
    return encode(docs, segments)


# -- main side --------------------------------------------------------------------------------

class UsageError(SRPError, ValueError):
    """A flag combination or input that cannot work; reported before any output is touched."""


@dataclass
class Job:
    """Everything a run (or one datatrove task of it) needs, resolved from its settings once."""

    config: PreprocessConfig
    inputs: list
    names: list
    settings: MaterializeSettings
    encoder: DocumentEncoder
    rewriter: object = None
    rewrite_cache: object = None
    annotations: dict = field(default_factory=dict)
    """Input index -> its annotations being read (a future of ``_read_annotations``)."""
    reader: Optional[ThreadPoolExecutor] = None

    @property
    def finals(self) -> list[str]:
        return output_prefixes(self.config.output_prefix, self.config.json_keys)

    @property
    def dtype(self):
        return self.encoder.out_dtype

    def part(self, i: int) -> list[str]:
        return output_prefixes(os.path.join(f"{self.config.output_prefix}.parts", f"{i:05d}"), self.config.json_keys)

    def prefetch(self, i: int) -> None:
        """Start reading input ``i``'s annotations (sidecar and file digest) on a thread: parquet, file reads
        and xxhash release the GIL, so this overlaps start-up or the previous file."""
        if self.settings.variant == "plain" or i in self.annotations or not 0 <= i < len(self.inputs):
            return
        from megatron_srp.data import annotations  # noqa: F401  (imported here, not mid-import at a fork)

        if self.reader is None:
            self.reader = ThreadPoolExecutor(1, thread_name_prefix="annotations")
        self.annotations[i] = self.reader.submit(_read_annotations, self.config.annotations, self.inputs[i],
                                                 self.names[i])

    def settle(self) -> None:
        """Wait until no annotations are being read (before forking worker processes)."""
        wait(list(self.annotations.values()))

    def sidecar(self, i: int):
        """Input ``i``'s ``ShardAnnotations`` (``verify_input`` done)."""
        self.prefetch(i)
        return self.annotations.pop(i).result()

    def close(self) -> None:
        if self.rewrite_cache is not None:
            self.rewrite_cache.close()
        if self.reader is not None:
            self.reader.shutdown(wait=True, cancel_futures=True)


def _read_annotations(annotations_dir: str, path: str, shard_name: str):
    """A file's sidecar, with ``verify_input`` done: the file's digest, when the sidecar recorded one for a
    file of its size, is computed on a second thread meanwhile."""
    from megatron_srp.data import annotations as ann  # pyarrow: only variants that read annotations

    sidecar_path = ann.find_sidecar(annotations_dir, path, shard_name)
    meta = ann.read_metadata(sidecar_path)
    if not ann.digest_may_match(meta, path):  # an older sidecar, or another file: checked text by text
        sidecar = ann.ShardAnnotations.read(sidecar_path, meta)
        sidecar.verify_input(path)
        return sidecar
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(ann.InputDigest.of, path)
        sidecar = ann.ShardAnnotations.read(sidecar_path, meta)
        sidecar.verify_input(path, digest.result())
    return sidecar


def _inputs_of(job: Job, i: int, stats: Stats, read_stats: ReadStats, next_input: Optional[int] = None,
               span: Optional[Span] = None, sidecar=None) -> Iterator[tuple]:
    """Chunks of input ``i`` (or of one of its ``spans``, with the file's ``sidecar`` read already):
    (DocInput list with annotations matched and rewrites filled in, the text-hash checks left to the encoding
    step, and for srp the chunk's annotations as flat arrays). The annotations of ``next_input`` are read
    meanwhile."""
    cfg, path = job.config, job.inputs[i]
    limit = int(cfg.chunk_mb * 1e6)
    if cfg.variant != "plain":
        if sidecar is None:
            sidecar = job.sidecar(i)
        if span is None or span.start == 0:  # counted once per file
            stats.inputs_verified_by_digest += sidecar.texts_verified  # then no text is hashed
        if next_input is not None:
            job.prefetch(next_input)
    flat = cfg.variant == "srp"  # srp matches a chunk at once; filter and rewrite need per-document spans
    chunk, docs, checks, chars = [], [], [], 0

    def finished():
        segments = None
        if flat:
            segments = sidecar.chunk_segments(docs, path, checks)
            stats.segments += len(segments.spans)
        stats.texts_hash_checked += len(checks)
        return _fill_rewrites(job, chunk, checks) + (segments,)

    for doc in read_documents(path, cfg.json_keys, cfg.id_key, cfg.on_error, cfg.max_doc_chars, read_stats, span):
        stats.documents_in += 1
        item = DocInput([doc.texts[k] for k in cfg.json_keys])
        if flat:
            docs.append(doc)
        elif sidecar is not None:
            item.spans, item.verdicts, item.verdict_codes, item.verdict_table, item.byte_ends = sidecar.segments(
                doc, path, checks)
            stats.segments += len(item.spans)
        chunk.append(item)
        chars += sum(map(len, item.texts))
        if len(chunk) == cfg.chunk_docs or chars >= limit:
            yield finished()
            chunk, docs, checks, chars = [], [], [], 0
    last = finished() if chunk else None  # (matched before the counts below)
    if sidecar is not None:
        sidecar.check_unchanged(path)  # a file rewritten since its digest: its texts were never checked
        for v, n in sidecar.verdict_counts().items():  # label and category counts of the documents read here
            stats.labels[v.label] = stats.labels.get(v.label, 0) + n
            for c in v.categories:
                stats.categories[c] = stats.categories.get(c, 0) + n
    if last is not None:
        yield last


def _fill_rewrites(job: Job, chunk: list, checks: list) -> tuple[list, list]:
    if job.settings.variant != "rewrite":
        return chunk, checks
    from megatron_srp.data.annotations import check_texts

    check_texts(checks)  # before the rewriter spends anything on a changed document
    items, verdicts, where = [], [], []
    for d, doc in enumerate(chunk):
        text = doc.texts[0]
        for i, ((a, b), v) in enumerate(zip(doc.spans, doc.verdicts)):
            if v.label in job.settings.flagged_labels:
                items.append(SegmentInput(text[a:b], text[max(0, a - 1000):a]))
                verdicts.append(v)
                where.append((d, i))
    if items:
        for (d, i), new in zip(where, job.rewrite_cache.rewrite(job.rewriter, items, verdicts)):
            chunk[d].replacements = chunk[d].replacements or {}
            chunk[d].replacements[i] = new
    return chunk, []


def _process(job: Job, i: int, prefixes: list[str], pool, progress: Progress, next_input: Optional[int] = None,
             span: Optional[Span] = None, sidecar=None) -> Stats:
    """Tokenize input file ``i`` (or one of its ``spans``) into ``prefixes`` (published only when
    complete); read ``next_input``'s annotations meanwhile."""
    path = job.inputs[i]
    stats, read_stats = Stats(), ReadStats()
    writer = Writer(prefixes, job.dtype, with_roles=job.settings.variant == "srp")
    chunks = _inputs_of(job, i, stats, read_stats, next_input, span, sidecar)
    fallback_before = job.encoder.tok.reference_documents
    try:
        if pool is not None:
            results = pool.imap(_encode_chunk, chunks)
        else:  # one encoding thread per span's process: its gigatoken encodes on the calling thread
            results = _overlapped(partial(_encode_checked, job.encoder.encode), chunks,
                                  threads=1 if span is not None else min(job.config.workers, 2))
        _write(results, writer, stats, lambda: progress.advance(read_stats.position - read_stats.origin))
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    stats.tokenizers_fallback_documents = job.encoder.tok.reference_documents - fallback_before
    progress.file_done(path)
    stats.skipped_rows, stats.row_errors = read_stats.skipped, dict(read_stats.errors)
    return stats


# -- one file in spans, a process each ---------------------------------------------------------

SPAN_MIN_BYTES = 16 << 20
"""A file is split into spans of at least this size (``_spans_of``)."""


def _spans_of(job: Job, i: int) -> list:
    """Spans of input ``i`` (``corpus.spans``: byte ranges of a jsonl file, row groups of a parquet file) to
    tokenize in as many forked processes: --workers of them where gigatoken encodes. Reading (the JSON parse
    or the parquet rows into Python objects) holds a process's GIL: in one process it runs on one core, in
    spans on every core. [None] (the whole file, in this process) otherwise, and off Linux (forking a process
    that has loaded the tokenizers is Linux's safe case; macOS warns against it)."""
    cfg = job.config
    if cfg.workers <= 1 or cfg.variant == "rewrite" or job.encoder.tok.backend != "gigatoken" \
            or not sys.platform.startswith("linux") or mp.current_process().daemon:  # (fork; a daemon has no children)
        return [None]
    found = spans(job.inputs[i], cfg.workers, SPAN_MIN_BYTES)
    return found if len(found) > 1 else [None]


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


def _span_task(job: Job, i: int, parts: list[str], found: list[Span], k: int, sidecar, shared, lines, conn) -> None:
    """A forked process: tokenize span ``k`` of input ``i`` into ``parts``; send back the statistics or the
    error."""
    _die_with_parent()
    try:
        span = _with_lines_before(job.inputs[i], found, k, lines)
        conn.send(("ok", _process(job, i, parts, None, _SpanProgress(shared[k]), None, span, sidecar)))
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
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def _process_spans(job: Job, i: int, prefixes: list[str], found: list, progress: Progress,
                   next_input: Optional[int] = None) -> Stats:
    """Input ``i`` tokenized in spans, one forked process each, into parts that are then concatenated into
    ``prefixes``: the same bytes and statistics as one process (tests)."""
    from multiprocessing.connection import wait as wait_for

    sidecar = job.sidecar(i) if job.settings.variant != "plain" else None  # read once, inherited by the forks
    job.settle()  # no thread of ours mid-read at the fork
    ctx = mp.get_context("fork")
    parts = [[f"{p}.span{k:03d}" for p in prefixes] for k in range(len(found))]
    with_roles = job.settings.variant == "srp"
    shared = [ctx.Value("q", 0, lock=False) for _ in found]  # bytes read, per span
    lines = [ctx.Value("q", -1, lock=False) for _ in found]  # lines in each span, as counted (``_with_lines_before``)
    procs, pipes, results = [], {}, {}
    try:
        for k in range(len(found)):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_span_task, name=f"srp-preprocess-span{k}", daemon=True,
                               args=(job, i, parts[k], found, k, sidecar, shared, lines, send))
            proc.start()
            send.close()
            procs.append(proc)
            pipes[recv] = k
        if next_input is not None:
            job.prefetch(next_input)
        while pipes:
            for conn in wait_for(list(pipes), timeout=0.5):
                k = pipes.pop(conn)
                try:
                    kind, value = conn.recv()
                except EOFError:
                    procs[k].join()
                    raise SpanProcessDied(f"{job.inputs[i]}: the process tokenizing {found[k]} died "
                                          f"(exit code {procs[k].exitcode}; out of memory?)") from None
                if kind == "error":
                    raise value
                results[k] = value
            progress.advance(sum(v.value for v in shared))
        merge(parts, prefixes, job.dtype, with_roles, consume=True)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for k, proc in enumerate(procs):  # a failed run's parts, finished or not (a killed span's temp names)
            names = parts[k] + ([roles_prefix(parts[k][0])] if with_roles else [])
            remove_dataset(names + [f"{n}.tmp-{proc.pid}" for n in names])
    stats = Stats()
    for k in range(len(found)):
        stats.add(results[k])
    progress.file_done(job.inputs[i])
    return stats


def _overlapped(encode, chunks, threads: int = 1):
    """encode(chunk) on ``threads`` threads, results in order, while the next chunks are read. The encoders
    release the GIL (gigatoken, numpy), so with two threads one chunk's Python and numpy work overlaps the
    other's tokenization: about 15% of the wall time on 2 cores (BENCHMARKS.md)."""
    with ThreadPoolExecutor(threads, thread_name_prefix="encode") as ex:
        pending = deque()
        for chunk in chunks:
            pending.append(ex.submit(encode, chunk))
            if len(pending) > threads + 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write(results, writer, stats, advance) -> None:
    for res in results:
        stats.guard_changed_documents += res.guard_changed
        if res.plain is not None:
            writer.add_batch(res.plain)
            lengths = res.plain.lengths[0]
            stats.documents_written += len(lengths)
            stats.empty_documents += int(np.sum(lengths == 0))
            stats.tokens += int(np.sum(lengths))
            stats.reflection_tokens += res.reflection_tokens
            advance()
            continue
        for out in res.docs:
            if out.tokens[0] is None:
                stats.documents_dropped += 1
                stats.segments_dropped += out.segments_dropped
                continue
            writer.add(out)
            n = len(out.tokens[0])
            stats.documents_written += 1
            stats.empty_documents += n == 0
            stats.tokens += n
            stats.reflection_tokens += out.reflection_tokens
            stats.segments_dropped += out.segments_dropped
            stats.segments_rewritten += out.segments_rewritten
        advance()


def setup(cfg: PreprocessConfig, first_input: Optional[int] = None) -> Job:
    """The run's Job; the annotations of ``first_input`` (the first file this process will tokenize) are read
    on a thread while the tokenizer loads."""
    if cfg.variant != "plain" and len(cfg.json_keys) != 1:
        raise UsageError(f"--variant {cfg.variant} works on one text field; got --json-keys {cfg.json_keys}")
    if cfg.variant != "plain" and not cfg.annotations:
        raise UsageError(f"--variant {cfg.variant} needs --annotations DIR (from tools/annotate.py)")
    if cfg.variant == "rewrite" and not cfg.rewriter:
        raise UsageError(f"--variant rewrite needs --rewriter (one of {sorted(REWRITERS)})")
    inputs = expand_inputs(cfg.input)
    manifest = {}
    if cfg.variant != "plain":
        from megatron_srp.data import annotations as ann  # pyarrow: only variants that read annotations

        manifest = ann.read_manifest(cfg.annotations)
    if manifest and manifest["settings"]["json_key"] != cfg.json_keys[0]:
        raise UsageError(f"annotations were made on field {manifest['settings']['json_key']!r}, "
                         f"but --json-keys is {cfg.json_keys[0]!r}")
    categories = tuple(manifest.get("categories") or QWEN3GUARD_CATEGORIES)
    reflection = ReflectionFormat(**{"categories": categories, **cfg.reflection_options})
    settings = MaterializeSettings(
        variant=cfg.variant, append_eod=cfg.append_eod, filter_granularity=cfg.filter_granularity,
        flagged_labels=tuple(cfg.flagged_labels), injection_guard=cfg.injection_guard, reflection=reflection)
    if cfg.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {cfg.workers}")
    # gigatoken's thread pool reads this when it first starts (before any encode call).
    os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.workers))
    job = Job(cfg, inputs, relative_names(inputs), settings, None)
    if first_input is not None and not _part_done(job.part(first_input)):  # (a rerun reuses finished parts)
        job.prefetch(first_input)
    try:
        job.encoder = DocumentEncoder(cfg.tokenizer_model, settings, cfg.tokenizer_backend)
        for tag in reflection.special_tokens():
            if job.encoder.tok.token_id(tag) is None:
                raise TokenizerError(f"--reflection register_special_tokens=true but {tag!r} is not a token of "
                                     f"{cfg.tokenizer_model}; add it to the tokenizer first")
        if cfg.variant == "rewrite":
            job.rewriter = build_rewriter(cfg.rewriter, **cfg.rewriter_options)
            job.rewrite_cache = RewriteCache(cfg.rewrite_cache or os.path.join(cfg.annotations, "rewrites.sqlite"))
    except BaseException:
        job.close()  # the annotations' thread too
        raise
    return job


def _worker_pool(job: Job):
    """Processes for the tokenizers backend (None otherwise): fork, as Megatron-LM does, so workers start
    at once (nothing to re-import). gigatoken needs no processes: it encodes on --workers threads without
    the GIL."""
    cfg = job.config
    if cfg.workers <= 1 or cfg.variant == "rewrite" or job.encoder.tok.backend != "tokenizers":
        return None
    job.settle()  # no thread of ours mid-read when the workers fork
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ctx.Pool(cfg.workers, initializer=_init_worker,
                    initargs=(cfg.tokenizer_model, job.settings, job.encoder.tok.backend))


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _part_done(prefixes: list[str]) -> bool:
    return os.path.exists(f"{prefixes[0]}.stats.json") and all(os.path.exists(f"{p}.idx") for p in prefixes)


def process_files(job: Job, indices, use_parts: bool) -> list[dict]:
    """Tokenize the given input files; with ``use_parts`` each goes to its own part (finished parts are kept)."""
    pool = _worker_pool(job)
    progress = Progress([job.inputs[i] for i in indices], not job.config.progress, job.config.variant)
    per_file = []
    try:
        todo = [i for i in indices if not (use_parts and _part_done(job.part(i)))]
        for i in indices:
            path = job.inputs[i]
            prefixes = job.part(i) if use_parts else job.finals
            done = f"{prefixes[0]}.stats.json"
            if use_parts and _part_done(prefixes):
                per_file.append({"input": path, "reused": True, **_read_json(done)})
                progress.file_done(path)
                continue
            later = todo[todo.index(i) + 1:]
            found = _spans_of(job, i) if pool is None else [None]
            if len(found) > 1:
                s = asdict(_process_spans(job, i, prefixes, found, progress, later[0] if later else None))
            else:
                s = asdict(_process(job, i, prefixes, pool, progress, later[0] if later else None))
            if use_parts:
                atomic_write_json(done, s)
            per_file.append({"input": path, **s})
    finally:
        progress.close()
        if pool is not None:
            pool.close()
            pool.join()
    return per_file


def merge_parts(job: Job) -> list[dict]:
    """Merge every finished part in input order into the final prefix; returns the parts' statistics."""
    missing = [i for i in range(len(job.inputs)) if not os.path.exists(f"{job.part(i)[0]}.stats.json")]
    if missing:
        raise UsageError(f"{len(missing)} input file(s) have no finished part (first: {job.inputs[missing[0]]}); "
                         f"rerun the tokenize step")
    merge([job.part(i) for i in range(len(job.inputs))], job.finals, job.dtype, job.settings.variant == "srp")
    per_file = [{"input": path, **_read_json(f"{job.part(i)[0]}.stats.json")} for i, path in enumerate(job.inputs)]
    if not job.config.keep_parts:
        shutil.rmtree(f"{job.config.output_prefix}.parts", ignore_errors=True)
    return per_file


def report(job: Job, per_file: list[dict], seconds: float) -> dict:
    total = Stats()
    for f in per_file:
        total.add(Stats(**{k: v for k, v in f.items() if k in Stats.__dataclass_fields__}))
    out = {
        "variant": job.config.variant,
        "outputs": job.finals,
        **asdict(total),
        "reflection_token_share": round(total.reflection_tokens / total.tokens, 6) if total.tokens else 0.0,
        "tokenizer_backend": job.encoder.tok.backend,
        "tokenizer_backend_fallback_reason": job.encoder.tok.fallback_reason,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(total.tokens / seconds, 1) if seconds > 0 else None,
        "files": per_file,
    }
    if job.config.stats:
        atomic_write_json(job.config.stats, out, indent=2)
    print(json.dumps({k: v for k, v in out.items() if k != "files"}))
    return out


def run_task(cfg: PreprocessConfig, rank: int, world_size: int) -> None:
    """datatrove task ``rank``: tokenize files[rank::world_size] into parts."""
    job = setup(cfg, first_input=rank)
    try:
        process_files(job, range(rank, len(job.inputs), world_size), use_parts=True)
    finally:
        job.close()


def finish_task(cfg: PreprocessConfig) -> None:
    """datatrove's last step: merge the parts, write the statistics."""
    start = time.time()
    job = setup(cfg)
    try:
        report(job, merge_parts(job), time.time() - start)
    finally:
        job.close()


ERRORS = (SRPError,)  # user errors: bad input, flags, annotations (exit 2); anything else is a bug


def main(argv: Optional[Sequence[str]] = None) -> int:
    start = time.time()
    job = None
    try:
        cfg = settings_from_argv(argv)
        job = setup(cfg, first_input=0 if cfg.executor.executor == "none" else None)
        if cfg.executor.executor != "none":
            from megatron_srp.data.datatrove_steps import run_with_datatrove  # datatrove: only for executors

            return run_with_datatrove("preprocess", cfg, cfg.output_prefix, len(job.inputs))
        single = len(job.inputs) == 1
        per_file = process_files(job, range(len(job.inputs)), use_parts=not single)
        if not single:
            merge_parts(job)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if job is not None:
            job.close()
    report(job, per_file, time.time() - start)
    return 0
