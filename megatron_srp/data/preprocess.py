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
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Iterator, Optional, Sequence

import numpy as np

from megatron_srp.data.classify import REWRITERS, RewriteCache, SegmentInput, build_rewriter
from megatron_srp.data.corpus import ReadStats, Span, expand_inputs, read_documents, relative_names
from megatron_srp.data.materialize import DocInput, DocumentEncoder, MaterializeSettings
from megatron_srp.data.preprocess_output import Progress, Stats, Writer, merge, output_prefixes
from megatron_srp.data.preprocess_spans import may_fork_spans, process_spans, spans_of
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

    def prefetch(self, i: int, digest: bool = True) -> None:
        """Start reading input ``i``'s annotations (sidecar and file digest) on a thread: parquet, file reads
        and xxhash release the GIL, so this overlaps start-up or the previous file. ``digest=False``: the
        digest is left to the caller of ``sidecar`` (``ShardAnnotations.assume_input``)."""
        if self.settings.variant == "plain" or i in self.annotations or not 0 <= i < len(self.inputs):
            return
        from megatron_srp.data import annotations  # noqa: F401  (imported here, not mid-import at a fork)

        if self.reader is None:
            self.reader = ThreadPoolExecutor(1, thread_name_prefix="annotations")
        self.annotations[i] = self.reader.submit(_read_annotations, self.config.annotations, self.inputs[i],
                                                 self.names[i], digest)

    def settle(self) -> None:
        """Wait until no annotations are being read (before forking worker processes)."""
        wait(list(self.annotations.values()))

    def sidecar(self, i: int, defer_digest: bool = False):
        """Input ``i``'s ``ShardAnnotations`` with ``verify_input`` done; ``defer_digest``: or, where the digest
        was not taken yet, ``assume_input`` (the caller calls ``confirm_input`` before it publishes anything)."""
        self.prefetch(i)
        sidecar = self.annotations.pop(i).result()
        if sidecar.digest_pending and not defer_digest:
            sidecar.confirm_input(self.inputs[i])
        return sidecar

    def close(self) -> None:
        if self.rewrite_cache is not None:
            self.rewrite_cache.close()
        if self.reader is not None:
            self.reader.shutdown(wait=True, cancel_futures=True)


def _read_annotations(annotations_dir: str, path: str, shard_name: str, digest: bool = True):
    """A file's sidecar, with ``verify_input`` done: the file's digest, when the sidecar recorded one for a
    file of its size, is computed on a second thread meanwhile. ``digest=False``: ``assume_input`` instead."""
    from megatron_srp.data import annotations as ann  # pyarrow: only variants that read annotations

    sidecar_path = ann.find_sidecar(annotations_dir, path, shard_name)
    meta = ann.read_metadata(sidecar_path)
    if not digest or not ann.digest_may_match(meta, path):  # (no digest: an older sidecar, or another file)
        sidecar = ann.ShardAnnotations.read(sidecar_path, meta)
        if digest:
            sidecar.verify_input(path)
        else:
            sidecar.assume_input(path)
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
            stats.segments += len(segments.ends)
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
        elif span is not None:  # a span's process: gigatoken encodes a text at a time, holding the GIL, so a
            # thread of its own would only take turns with the reading (-3% to -7% in this order, BENCHMARKS.md)
            results = map(partial(_encode_checked, job.encoder.encode), chunks)
        else:
            results = _overlapped(partial(_encode_checked, job.encoder.encode), chunks,
                                  threads=min(job.config.workers, 2))
        _write(results, writer, stats, lambda: progress.advance(read_stats.position - read_stats.origin))
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    stats.tokenizers_fallback_documents = job.encoder.tok.reference_documents - fallback_before
    progress.file_done(path)
    stats.skipped_rows, stats.row_errors = read_stats.skipped, dict(read_stats.errors)
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
        job.prefetch(first_input, digest=not may_fork_spans(cfg))  # span processes start before the digest
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
            found = spans_of(job, i) if pool is None else [None]
            if len(found) > 1:
                s = asdict(process_spans(job, i, prefixes, found, progress, _process, later[0] if later else None))
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
