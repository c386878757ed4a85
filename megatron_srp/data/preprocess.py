"""Tokenize a corpus into Megatron indexed datasets (.bin/.idx): plain, or an SRP variant from annotations.

Megatron-LM's flags work as in its tools/preprocess_data.py (``plain`` output is byte-identical):

  python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model tokenizer/ --append-eod --workers 2

SRP and the baselines, from the sidecars of tools/annotate.py:

  ... --annotations annotations/ --variant srp       # + data/corpus_text_document.roles.bin/.idx
  ... --annotations annotations/ --variant filter --filter-granularity document
  ... --annotations annotations/ --variant rewrite --rewriter hf --rewriter-arg model=Qwen2.5-7B-Instruct

Outputs appear only when complete (temporary names, then renames; the .idx comes last). Several
input files are tokenized into per-file parts under PREFIX.parts/ (a rerun skips finished parts),
then merged in input order.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tqdm import tqdm

from megatron_srp.data import annotations as ann
from megatron_srp.data.classify import (REWRITERS, ClassifierError, RewriteCache, SegmentInput, build_rewriter,
                                        parse_options)
from megatron_srp.data.datatrove_steps import add_executor_args
from megatron_srp.data.corpus import CorpusError, ReadStats, expand_inputs, read_documents, relative_names
from megatron_srp.data.roles import roles_prefix
from megatron_srp.data.materialize import VARIANTS, DocInput, DocumentEncoder, MaterializeSettings
from megatron_srp.data.tokenizer import TextTokenizer, TokenizerError
from megatron_srp.reflection import QWEN3GUARD_CATEGORIES, ReflectionFormat


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Megatron-LM flags")
    g.add_argument("--input", nargs="+", required=True, help="files, globs or directories (jsonl, jsonl.gz, parquet)")
    g.add_argument("--output-prefix", required=True)
    g.add_argument("--tokenizer-type", default="HuggingFaceTokenizer", choices=["HuggingFaceTokenizer"])
    g.add_argument("--tokenizer-model", required=True, help="Hugging Face tokenizer directory (tokenizer.json)")
    g.add_argument("--workers", type=int, default=1, help="tokenizer processes")
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
                   help="keep tags and special-token strings in source text as they are (as Megatron-LM does)")
    b = p.add_argument_group("input checks and outputs")
    b.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    b.add_argument("--max-doc-chars", type=int, default=10_000_000)
    b.add_argument("--id-key", default="id")
    b.add_argument("--stats", help="write statistics (JSON) here")
    b.add_argument("--chunk-docs", type=int, default=256, help="documents per worker task")
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


def _init_worker(tokenizer_model, settings):
    global _ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _ENCODER = DocumentEncoder(tokenizer_model, settings)


def _encode_chunk(chunk):
    return _ENCODER.encode(chunk)


# -- main side --------------------------------------------------------------------------------

def output_prefixes(prefix: str, keys) -> list[str]:
    return [f"{prefix}_{key}_document" for key in keys]


class Writer:
    """IndexedDatasetBuilders on temporary names; ``commit`` renames them (each .idx last)."""

    def __init__(self, prefixes: list[str], dtype, with_roles: bool):
        self.prefixes = prefixes
        self.tmp = [f"{p}.tmp-{os.getpid()}" for p in prefixes]
        for p in prefixes:
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        self.builders = [IndexedDatasetBuilder(f"{t}.bin", dtype=dtype) for t in self.tmp]
        self.roles = IndexedDatasetBuilder(f"{roles_prefix(self.tmp[0])}.bin", dtype=np.uint8) if with_roles else None

    def add(self, out) -> None:
        for builder, ids in zip(self.builders, out.tokens):
            builder.add_document(torch.from_numpy(ids), [len(ids)] if len(ids) else [])
        if self.roles is not None:
            self.roles.add_document(torch.from_numpy(out.roles.astype(np.int64)), [len(out.roles)] if len(out.roles) else [])

    def abort(self) -> None:
        """Remove the temporary files of an unfinished output."""
        for b in self.builders + ([self.roles] if self.roles is not None else []):
            b.data_file.close()
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
    sidecar = None
    if settings.variant != "plain":
        sidecar = ann.ShardAnnotations.read(ann.find_sidecar(annotations_dir, path, shard_name))
    chunk = []
    docs = read_documents(path, args.json_keys, args.id_key, args.on_error, args.max_doc_chars, read_stats)
    for doc in docs:
        stats.documents_in += 1
        item = DocInput([doc.texts[k] for k in args.json_keys])
        if sidecar is not None:
            item.spans, item.verdicts = sidecar.for_document(doc, path)
            stats.segments += len(item.spans)
            for v in item.verdicts:
                stats.labels[v.label] = stats.labels.get(v.label, 0) + 1
                for c in v.categories:
                    stats.categories[c] = stats.categories.get(c, 0) + 1
        chunk.append(item)
        if len(chunk) == args.chunk_docs:
            yield _fill_rewrites(chunk, settings, rewriter, rewrite_cache)
            chunk = []
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


def _process(path, shard_name, prefixes, args, settings, annotations_dir, rewriter, rewrite_cache, pool, encoder,
             bar, dtype) -> Stats:
    stats, read_stats = Stats(), ReadStats()
    writer = Writer(prefixes, dtype, with_roles=settings.variant == "srp")
    chunks = _inputs_of(path, shard_name, args, settings, annotations_dir, rewriter, rewrite_cache, stats, read_stats)
    results = pool.imap(_encode_chunk, chunks) if pool is not None else map(encoder.encode, chunks)
    try:
        _write(results, writer, stats, bar)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    stats.skipped_rows, stats.row_errors = read_stats.skipped, dict(read_stats.errors)
    return stats


def _write(results, writer, stats, bar) -> None:
    for outs in results:
        for out in outs:
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
        bar.update(sum(len(o.tokens[0]) for o in outs if o.tokens[0] is not None))
        bar.set_postfix(docs=bar_docs(bar, len(outs)), refresh=False)


def bar_docs(bar, n):
    bar.docs = getattr(bar, "docs", 0) + n
    return bar.docs


def _merge(part_prefixes: list[list[str]], final_prefixes: list[str], dtype, with_roles: bool) -> None:
    """Concatenate per-file parts in order (byte-identical to tokenizing them as one stream)."""
    writer = Writer(final_prefixes, dtype, with_roles)
    for parts in part_prefixes:
        for builder, part in zip(writer.builders, parts):
            builder.add_index(part)
        if with_roles:
            writer.roles.add_index(roles_prefix(parts[0]))
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
        return DType.optimal_dtype(self.encoder.tok.vocab_size)

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
    manifest = ann.read_manifest(args.annotations) if args.variant != "plain" else {}
    if manifest and manifest["settings"]["json_key"] != args.json_keys[0]:
        raise UsageError(f"annotations were made on field {manifest['settings']['json_key']!r}, "
                         f"but --json-keys is {args.json_keys[0]!r}")
    categories = tuple(manifest.get("categories") or QWEN3GUARD_CATEGORIES)
    reflection = ReflectionFormat(**{"categories": categories, **parse_options(args.reflection, "--reflection")})
    settings = MaterializeSettings(
        variant=args.variant, append_eod=args.append_eod, filter_granularity=args.filter_granularity,
        flagged_labels=tuple(x.strip() for x in args.flagged_labels.split(",") if x.strip()),
        injection_guard=not args.no_injection_guard, reflection=reflection)
    encoder = DocumentEncoder(args.tokenizer_model, settings)
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
    if args.workers > 1 and args.variant != "rewrite":
        # fork, as Megatron-LM does: workers start at once (nothing to re-import).
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(args.workers, initializer=_init_worker, initargs=(args.tokenizer_model, job.settings))
    bar = tqdm(unit="tok", unit_scale=True, disable=args.no_progress, dynamic_ncols=True, desc=args.variant)
    per_file = []
    try:
        for i in indices:
            path = job.inputs[i]
            prefixes = job.part(i) if use_parts else job.finals
            done = f"{prefixes[0]}.stats.json"
            if use_parts and os.path.exists(done) and all(os.path.exists(f"{p}.idx") for p in prefixes):
                with open(done) as f:
                    per_file.append({"input": path, "reused": True, **json.load(f)})
                continue
            s = asdict(_process(path, job.names[i], prefixes, args, job.settings, args.annotations, job.rewriter,
                                job.rewrite_cache, pool, job.encoder, bar, job.dtype))
            if use_parts:
                with open(f"{done}.tmp", "w") as f:
                    json.dump(s, f)
                os.replace(f"{done}.tmp", done)
            per_file.append({"input": path, **s})
    finally:
        bar.close()
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


ERRORS = (CorpusError, ClassifierError, TokenizerError, ann.AnnotationError, UsageError, TypeError, ValueError)


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
