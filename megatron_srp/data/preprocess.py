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
input order.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from megatron_srp.data.classify import (REWRITERS, ClassifierError, RewriteCache, SegmentInput, build_rewriter,
                                        parse_options)
from megatron_srp.data.corpus import CorpusError, ReadStats, expand_inputs, input_size, read_documents, relative_names
from megatron_srp.data.datatrove_steps import add_executor_args
from megatron_srp.data.indexed_writer import IndexedWriter, optimal_dtype
from megatron_srp.data.materialize import VARIANTS, DocInput, DocumentEncoder, MaterializeSettings
from megatron_srp.data.roles import roles_prefix
from megatron_srp.data.tokenizer import BACKENDS, TokenizerError
from megatron_srp.reflection import QWEN3GUARD_CATEGORIES, ReflectionFormat

# Not imported here: torch and Megatron-Core (the .bin/.idx writer is ours, byte-identical), pyarrow
# (annotations, parquet) and the rewriters; --help and the plain hot path start in well under a second.


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Megatron-LM flags")
    g.add_argument("--input", nargs="+", required=True, help="files, globs or directories (jsonl, jsonl.gz, parquet)")
    g.add_argument("--output-prefix", required=True)
    g.add_argument("--tokenizer-type", default="HuggingFaceTokenizer", choices=["HuggingFaceTokenizer"])
    g.add_argument("--tokenizer-model", required=True, help="Hugging Face tokenizer directory (tokenizer.json)")
    g.add_argument("--workers", type=int, default=1,
                   help="CPU cores to tokenize with (gigatoken: threads; tokenizers: processes)")
    g.add_argument("--append-eod", action="store_true")
    g.add_argument("--json-keys", nargs="+", default=["text"])
    g.add_argument("--partitions", type=int, default=1,
                   help="accepted for compatibility; input files are always processed in order as parts")
    g.add_argument("--log-interval", type=int, default=1000, help="accepted for compatibility (a progress bar is shown)")
    s = p.add_argument_group("SRP")
    s.add_argument("--annotations", help="directory written by tools/annotate.py (needed by every variant but plain)")
    s.add_argument("--variant", choices=VARIANTS, default="plain")
    s.add_argument("--filter-granularity", choices=["document", "segment"], default="document")
    s.add_argument("--flagged-labels", default="unsafe",
                   help="comma-separated labels filter drops and rewrite replaces (e.g. unsafe,controversial)")
    s.add_argument("--rewriter", choices=sorted(REWRITERS), help="rewrite: the backend")
    s.add_argument("--rewriter-arg", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--rewrite-cache", help="sqlite cache of rewrites (default: ANNOTATIONS/rewrites.sqlite)")
    s.add_argument("--reflection", action="append", default=[], metavar="KEY=VALUE",
                   help="reflection format option (open_tag, close_tag, safe_word, register_special_tokens, ...)")
    s.add_argument("--no-injection-guard", action="store_true",
                   help="keep tags and special-token strings in source text as they are, as Megatron-LM does. "
                        "With the guard (default) plain differs from Megatron-LM's bytes exactly in the documents "
                        "that contain a special-token string or a reflection tag (--stats: guard_changed_documents)")
    b = p.add_argument_group("input checks and outputs")
    b.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    b.add_argument("--max-doc-chars", type=int, default=10_000_000)
    b.add_argument("--id-key", default="id")
    b.add_argument("--stats", help="write statistics (JSON) here")
    b.add_argument("--chunk-docs", type=int, default=4096, help="at most this many documents per encode call")
    b.add_argument("--chunk-mb", type=float, default=8.0, help="at most this much text (MB) per encode call")
    b.add_argument("--tokenizer-backend", choices=BACKENDS, default="auto",
                   help="auto: gigatoken when installed and equal to tokenizers on this tokenizer, else tokenizers")
    b.add_argument("--keep-parts", action="store_true", help="keep PREFIX.parts/ after the merge")
    b.add_argument("--no-progress", action="store_true")
    add_executor_args(p)
    return p.parse_args(argv)


@dataclass
class Stats:
    documents_in: int = 0
    documents_written: int = 0
    documents_dropped: int = 0
    empty_documents: int = 0
    segments: int = 0
    segments_dropped: int = 0
    segments_rewritten: int = 0
    tokens: int = 0
    guard_changed_documents: int = 0
    reflection_tokens: int = 0
    labels: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)
    skipped_rows: int = 0
    row_errors: dict = field(default_factory=dict)

    def add(self, other: "Stats") -> None:
        for k, v in asdict(other).items():
            if isinstance(v, dict):
                mine = getattr(self, k)
                for kk, vv in v.items():
                    mine[kk] = mine.get(kk, 0) + vv
            else:
                setattr(self, k, getattr(self, k) + v)


# -- worker side ------------------------------------------------------------------------------

_ENCODER = None


def _init_worker(tokenizer_model, settings, backend):
    global _ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENCODER = DocumentEncoder(tokenizer_model, settings, backend)


def _encode_chunk(chunk):
    return _ENCODER.encode(chunk)


# -- main side --------------------------------------------------------------------------------

def output_prefixes(prefix: str, keys) -> list[str]:
    return [f"{prefix}_{key}_document" for key in keys]


class Writer:
    """IndexedWriters on temporary names; ``commit`` renames them (each .idx last)."""

    def __init__(self, prefixes: list[str], dtype, with_roles: bool):
        self.prefixes = prefixes
        self.tmp = [f"{p}.tmp-{os.getpid()}" for p in prefixes]
        for p in prefixes:
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        self.builders = [IndexedWriter(f"{t}.bin", dtype) for t in self.tmp]
        self.roles = IndexedWriter(f"{roles_prefix(self.tmp[0])}.bin", np.uint8) if with_roles else None

    def add_batch(self, batch) -> None:
        for builder, flat, lengths in zip(self.builders, batch.flats, batch.lengths):
            builder.add_documents(flat, lengths)
        if self.roles is not None:
            self.roles.add_documents(batch.roles, batch.lengths[0])

    def add(self, out) -> None:
        for builder, ids in zip(self.builders, out.tokens):
            builder.add_documents(ids, [len(ids)])
        if self.roles is not None:
            self.roles.add_documents(out.roles, [len(out.roles)])

    def abort(self) -> None:
        """Remove the temporary files of an unfinished output."""
        for b in self.builders + ([self.roles] if self.roles is not None else []):
            b.close()
        for t in self.tmp:
            for path in (f"{t}.bin", f"{t}.idx", f"{roles_prefix(t)}.bin", f"{roles_prefix(t)}.idx"):
                if os.path.exists(path):
                    os.remove(path)

    def commit(self) -> None:
        if self.roles is not None:
            self.roles.finalize(f"{roles_prefix(self.tmp[0])}.idx")
            os.replace(f"{roles_prefix(self.tmp[0])}.bin", f"{roles_prefix(self.prefixes[0])}.bin")
            os.replace(f"{roles_prefix(self.tmp[0])}.idx", f"{roles_prefix(self.prefixes[0])}.idx")
        for builder, tmp, final in zip(self.builders, self.tmp, self.prefixes):
            builder.finalize(f"{tmp}.idx")
            os.replace(f"{tmp}.bin", f"{final}.bin")
            os.replace(f"{tmp}.idx", f"{final}.idx")


def _inputs_of(path, shard_name, args, settings, annotations_dir, rewriter, rewrite_cache, stats, read_stats):
    """Chunks of DocInput for one file (annotations matched and rewrites filled in)."""
    sidecar, limit = None, int(args.chunk_mb * 1e6)
    if settings.variant != "plain":
        from megatron_srp.data import annotations as ann  # pyarrow: only variants that read annotations

        sidecar = ann.ShardAnnotations.read(ann.find_sidecar(annotations_dir, path, shard_name))
    chunk, chars = [], 0
    docs = read_documents(path, args.json_keys, args.id_key, args.on_error, args.max_doc_chars, read_stats)
    for doc in docs:
        stats.documents_in += 1
        item = DocInput([doc.texts[k] for k in args.json_keys])
        if sidecar is not None:
            item.spans, item.verdicts, item.verdict_codes, item.verdict_table = sidecar.segments(doc, path)
            stats.segments += len(item.spans)
        chunk.append(item)
        chars += sum(map(len, item.texts))
        if len(chunk) == args.chunk_docs or chars >= limit:
            yield _fill_rewrites(chunk, settings, rewriter, rewrite_cache)
            chunk, chars = [], 0
    if sidecar is not None:  # label and category counts per distinct verdict, not per segment
        for v, n in sidecar.verdict_counts().items():
            stats.labels[v.label] = stats.labels.get(v.label, 0) + n
            for c in v.categories:
                stats.categories[c] = stats.categories.get(c, 0) + n
    if chunk:
        yield _fill_rewrites(chunk, settings, rewriter, rewrite_cache)


def _fill_rewrites(chunk, settings, rewriter, rewrite_cache):
    if settings.variant != "rewrite":
        return chunk
    items, verdicts, where = [], [], []
    for d, doc in enumerate(chunk):
        text = doc.texts[0]
        for i, ((a, b), v) in enumerate(zip(doc.spans, doc.verdicts)):
            if v.label in settings.flagged_labels:
                items.append(SegmentInput(text[a:b], text[max(0, a - 1000):a]))
                verdicts.append(v)
                where.append((d, i))
    if items:
        for (d, i), new in zip(where, rewrite_cache.rewrite(rewriter, items, verdicts)):
            chunk[d].replacements = chunk[d].replacements or {}
            chunk[d].replacements[i] = new
    return chunk


def _process(path, shard_name, prefixes, job, pool, progress) -> Stats:
    args, settings = job.args, job.settings
    stats, read_stats = Stats(), ReadStats()
    writer = Writer(prefixes, job.dtype, with_roles=settings.variant == "srp")
    chunks = _inputs_of(path, shard_name, args, settings, args.annotations, job.rewriter, job.rewrite_cache, stats,
                        read_stats)
    try:
        if pool is not None:
            results = pool.imap(_encode_chunk, chunks)
        else:
            results = _overlapped(job.encoder.encode, chunks)
        _write(results, writer, stats, lambda: progress.advance(read_stats.position))
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    progress.file_done(path)
    stats.skipped_rows, stats.row_errors = read_stats.skipped, dict(read_stats.errors)
    return stats


def _overlapped(encode, chunks, ahead: int = 2):
    """encode(chunk) in a thread, in order, while the next chunks are read (the encoders release the GIL)."""
    with ThreadPoolExecutor(1, thread_name_prefix="encode") as ex:
        pending = deque()
        for chunk in chunks:
            pending.append(ex.submit(encode, chunk))
            if len(pending) > ahead:
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


class Progress:
    """A bar over the input files' bytes on disk (parquet: rows from its metadata), so it has a total and ETA."""

    def __init__(self, paths, disable: bool, desc: str):
        self.bar = tqdm(total=sum(input_size(p) for p in paths), unit="B", unit_scale=True, unit_divisor=1024,
                        disable=disable, dynamic_ncols=True, desc=desc)
        self.current = 0  # position in the file being read

    def advance(self, position: int) -> None:
        self.bar.update(position - self.current)
        self.current = position

    def file_done(self, path: str) -> None:
        self.bar.update(input_size(path) - self.current)
        self.current = 0

    def close(self) -> None:
        self.bar.close()


def _merge(part_prefixes: list[list[str]], final_prefixes: list[str], dtype, with_roles: bool) -> None:
    """Concatenate per-file parts in order (byte-identical to tokenizing them as one stream)."""
    writer = Writer(final_prefixes, dtype, with_roles)
    try:
        for parts in part_prefixes:
            for builder, part in zip(writer.builders, parts):
                builder.add_index(part)
            if with_roles:
                writer.roles.add_index(roles_prefix(parts[0]))
    except BaseException:
        writer.abort()
        raise
    writer.commit()


class UsageError(ValueError):
    """A flag combination or input that cannot work; reported before any output is touched."""


@dataclass
class Job:
    """Everything a run (or one datatrove task of it) needs, resolved from the command line once."""

    args: argparse.Namespace
    inputs: list
    names: list
    settings: MaterializeSettings
    encoder: DocumentEncoder
    rewriter: object = None
    rewrite_cache: object = None

    @property
    def finals(self) -> list[str]:
        return output_prefixes(self.args.output_prefix, self.args.json_keys)

    @property
    def dtype(self):
        return optimal_dtype(self.encoder.tok.vocab_size)

    def part(self, i: int) -> list[str]:
        return output_prefixes(os.path.join(f"{self.args.output_prefix}.parts", f"{i:05d}"), self.args.json_keys)


def setup(args) -> Job:
    if args.variant != "plain" and len(args.json_keys) != 1:
        raise UsageError(f"--variant {args.variant} works on one text field; got --json-keys {args.json_keys}")
    if args.variant != "plain" and not args.annotations:
        raise UsageError(f"--variant {args.variant} needs --annotations DIR (from tools/annotate.py)")
    if args.variant == "rewrite" and not args.rewriter:
        raise UsageError("--variant rewrite needs --rewriter (e.g. template, medsafetyworld, hf)")
    inputs = expand_inputs(args.input)
    manifest = {}
    if args.variant != "plain":
        from megatron_srp.data import annotations as ann  # pyarrow: only variants that read annotations

        manifest = ann.read_manifest(args.annotations)
    if manifest and manifest["settings"]["json_key"] != args.json_keys[0]:
        raise UsageError(f"annotations were made on field {manifest['settings']['json_key']!r}, "
                         f"but --json-keys is {args.json_keys[0]!r}")
    categories = tuple(manifest.get("categories") or QWEN3GUARD_CATEGORIES)
    reflection = ReflectionFormat(**{"categories": categories, **parse_options(args.reflection, "--reflection")})
    settings = MaterializeSettings(
        variant=args.variant, append_eod=args.append_eod, filter_granularity=args.filter_granularity,
        flagged_labels=tuple(x.strip() for x in args.flagged_labels.split(",") if x.strip()),
        injection_guard=not args.no_injection_guard, reflection=reflection)
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    # gigatoken's thread pool reads this when it first starts (before any encode call).
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.workers))
    encoder = DocumentEncoder(args.tokenizer_model, settings, args.tokenizer_backend)
    for tag in reflection.special_tokens():
        if encoder.tok.token_id(tag) is None:
            raise TokenizerError(f"--reflection register_special_tokens=true but {tag!r} is not a token of "
                                 f"{args.tokenizer_model}; add it to the tokenizer first")
    job = Job(args, inputs, relative_names(inputs), settings, encoder)
    if args.variant == "rewrite":
        job.rewriter = build_rewriter(args.rewriter, **parse_options(args.rewriter_arg, "--rewriter-arg"))
        job.rewrite_cache = RewriteCache(args.rewrite_cache or os.path.join(args.annotations, "rewrites.sqlite"))
    return job


def process_files(job: Job, indices, use_parts: bool) -> list[dict]:
    """Tokenize the given input files; with ``use_parts`` each goes to its own part (finished parts are kept)."""
    args, pool = job.args, None
    if args.workers > 1 and args.variant != "rewrite" and job.encoder.tok.backend == "tokenizers":
        # fork, as Megatron-LM does: workers start at once (nothing to re-import). gigatoken needs no
        # processes: it encodes on --workers threads without the GIL.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(args.workers, initializer=_init_worker,
                        initargs=(args.tokenizer_model, job.settings, job.encoder.tok.backend))
    progress = Progress([job.inputs[i] for i in indices], args.no_progress, args.variant)
    per_file = []
    try:
        for i in indices:
            path = job.inputs[i]
            prefixes = job.part(i) if use_parts else job.finals
            done = f"{prefixes[0]}.stats.json"
            if use_parts and os.path.exists(done) and all(os.path.exists(f"{p}.idx") for p in prefixes):
                with open(done) as f:
                    per_file.append({"input": path, "reused": True, **json.load(f)})
                progress.file_done(path)
                continue
            s = asdict(_process(path, job.names[i], prefixes, job, pool, progress))
            if use_parts:
                with open(f"{done}.tmp", "w") as f:
                    json.dump(s, f)
                os.replace(f"{done}.tmp", done)
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
    _merge([job.part(i) for i in range(len(job.inputs))], job.finals, job.dtype, job.settings.variant == "srp")
    per_file = []
    for i, path in enumerate(job.inputs):
        with open(f"{job.part(i)[0]}.stats.json") as f:
            per_file.append({"input": path, **json.load(f)})
    if not job.args.keep_parts:
        shutil.rmtree(f"{job.args.output_prefix}.parts", ignore_errors=True)
    return per_file


def report(job: Job, per_file: list[dict], seconds: float) -> dict:
    total = Stats()
    for f in per_file:
        total.add(Stats(**{k: v for k, v in f.items() if k in Stats.__dataclass_fields__}))
    out = {
        "variant": job.args.variant,
        "outputs": job.finals,
        **asdict(total),
        "reflection_token_share": round(total.reflection_tokens / total.tokens, 6) if total.tokens else 0.0,
        "tokenizer_backend": job.encoder.tok.backend,
        "tokenizer_backend_fallback_reason": job.encoder.tok.fallback_reason,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(total.tokens / seconds, 1) if seconds > 0 else None,
        "files": per_file,
    }
    if job.args.stats:
        tmp = f"{job.args.stats}.tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, job.args.stats)
    print(json.dumps({k: v for k, v in out.items() if k != "files"}))
    return out


def run_task(argv, rank: int, world_size: int) -> None:
    """datatrove task ``rank``: tokenize files[rank::world_size] into parts."""
    job = setup(get_args(argv))
    try:
        process_files(job, range(rank, len(job.inputs), world_size), use_parts=True)
    finally:
        if job.rewrite_cache is not None:
            job.rewrite_cache.close()


def finish_task(argv) -> None:
    """datatrove's last step: merge the parts, write the statistics."""
    start = time.time()
    job = setup(get_args(argv))
    report(job, merge_parts(job), time.time() - start)


ERRORS = (CorpusError, ClassifierError, TokenizerError, UsageError, TypeError, ValueError)  # AnnotationError: a ValueError


def main(argv=None) -> int:
    args = get_args(argv)
    start = time.time()
    try:
        job = setup(args)
        if args.executor != "none":
            from megatron_srp.data.datatrove_steps import run_with_datatrove

            return run_with_datatrove("preprocess", argv if argv is not None else sys.argv[1:], args,
                                      len(job.inputs))
        single = len(job.inputs) == 1
        per_file = process_files(job, range(len(job.inputs)), use_parts=not single)
        if not single:
            merge_parts(job)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if "job" in locals() and job.rewrite_cache is not None:
            job.rewrite_cache.close()
    report(job, per_file, time.time() - start)
    return 0
