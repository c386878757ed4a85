"""Segment a corpus and classify every segment once: one annotation sidecar (parquet) per input shard.

  python tools/annotate.py --input 'data/fineweb_edu/*.jsonl.gz' --output annotations/ \\
      --tokenizer-model tokenizer/ --classifier qwen3guard --classifier-arg model=Qwen3Guard-Gen-0.6B

Rerunning the same command skips finished shards and reuses every cached verdict.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass

from tqdm import tqdm

from megatron_srp.data import annotations as ann
from megatron_srp.data import verdict_log
from megatron_srp.data.classify import BACKENDS, ClassifierError, build_classifier, parse_options
from megatron_srp.data.datatrove_steps import add_executor_args
from megatron_srp.data.corpus import CorpusError, expand_inputs, read_documents, relative_names
from megatron_srp.data.segment import punkt_to_json, train_punkt
from megatron_srp.data.tokenizer import TextTokenizer, TokenizerError


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="files, globs or directories (jsonl, jsonl.gz, parquet)")
    p.add_argument("--output", required=True, help="annotation directory (sidecars, manifest, verdict cache)")
    p.add_argument("--tokenizer-model", required=True, help="target HF tokenizer directory (segment budget)")
    p.add_argument("--classifier", default="qwen3guard", choices=sorted(BACKENDS))
    p.add_argument("--classifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, repeatable (e.g. model=DIR, batch_size=16, world=world.json)")
    p.add_argument("--segment-tokens", type=int, default=256, help="token budget of a segment")
    p.add_argument("--context-chars", type=int, default=1000, help="preceding text shown to the classifier")
    p.add_argument("--json-key", default="text")
    p.add_argument("--id-key", default="id")
    p.add_argument("--punkt-train-docs", type=int, default=0,
                   help="train Punkt on the first N documents (offline) instead of the untrained splitter")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail", help="bad rows: stop, or skip and count")
    p.add_argument("--max-doc-chars", type=int, default=10_000_000)
    p.add_argument("--workers", type=int, default=1, help="shards annotated in parallel (one classifier each)")
    p.add_argument("--batch-docs", type=int, default=64, help="documents segmented and classified together")
    p.add_argument("--no-progress", action="store_true")
    add_executor_args(p)
    return p.parse_args(argv)


def _punkt(args, inputs) -> str:
    if args.punkt_train_docs <= 0:
        return "untrained"
    path = os.path.join(args.output, ann.PUNKT)
    if not os.path.exists(path):
        def sample():
            n = 0
            for f in inputs:
                for doc in read_documents(f, (args.json_key,), args.id_key, args.on_error, args.max_doc_chars):
                    yield doc.text
                    n += 1
                    if n >= args.punkt_train_docs:
                        return
        params = punkt_to_json(train_punkt(sample()))
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(params, f)
        os.replace(tmp, path)
    return os.path.abspath(path)


def _shard_cache(backend: str, out_dir: str, output_path: str, rank):
    """The shard's own verdict log over the merged cache (None for the column backend, which classifies nothing)."""
    if backend == "column":
        return None
    shard_name = os.path.relpath(output_path, out_dir)[:-len(ann.SUFFIX)]
    return verdict_log.ShardVerdictCache(out_dir, shard_name, rank)


def _annotate_one(input_path, output_path, classifier, segmenter, settings, backend, out_dir, rank, progress,
                  batch_docs):
    cache = _shard_cache(backend, out_dir, output_path, rank)
    try:
        return ann.annotate_shard(input_path, output_path, classifier, segmenter, settings, cache, progress,
                                  batch_docs)
    finally:
        if cache is not None:
            cache.close()


def _worker(job):
    input_path, output_path, settings, backend, options, out_dir, rank, batch_docs, progress_q = job
    classifier = build_classifier(backend, **options)
    segmenter = ann.build_segmenter(settings, TextTokenizer(settings.tokenizer_model)._text)
    return _annotate_one(input_path, output_path, classifier, segmenter, settings, backend, out_dir, rank,
                         lambda d, s: progress_q.put((d, s)), batch_docs)


_SAMPLE_BYTES = 1 << 20


def _gzip_uncompressed_size(path: str, compressed: int) -> int:
    """gzip's trailer holds the uncompressed size modulo 2**32; the smallest value at least the compressed
    size is taken (exact below 4 GiB for a single-member file)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        size = int.from_bytes(f.read(4), "little")
    while size < compressed:
        size += 1 << 32
    return size


def estimate_rows(path: str) -> int:
    """Rows in a corpus file, for the progress bar's total: parquet metadata (exact), or for jsonl(.gz)
    the newlines in the first MiB scaled to the (uncompressed) file size (exact when it fits in the MiB)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        sample = f.read(_SAMPLE_BYTES)
        at_end = not f.read(1)
    lines = sample.count(b"\n") + (1 if sample and not sample.endswith(b"\n") else 0)
    if at_end or not sample:
        return lines
    size = os.path.getsize(path)
    total = _gzip_uncompressed_size(path, size) if path.endswith(".gz") else size
    return round(lines * total / len(sample))


@dataclass
class Plan:
    args: argparse.Namespace
    settings: ann.AnnotateSettings
    options: dict
    classifier: object
    inputs: list
    outputs: list


def plan(args) -> Plan:
    inputs = expand_inputs(args.input)
    os.makedirs(args.output, exist_ok=True)
    options = parse_options(args.classifier_arg, "--classifier-arg")
    settings = ann.AnnotateSettings(
        tokenizer_model=os.path.abspath(args.tokenizer_model), segment_tokens=args.segment_tokens,
        context_chars=args.context_chars, json_key=args.json_key, id_key=args.id_key,
        punkt=_punkt(args, inputs), max_doc_chars=args.max_doc_chars, on_error=args.on_error)
    TextTokenizer(settings.tokenizer_model)  # fail early on a bad tokenizer directory
    classifier = build_classifier(args.classifier, **options)
    outputs = [ann.sidecar_path(args.output, n) for n in relative_names(inputs)]
    return Plan(args, settings, options, classifier, inputs, outputs)


class _Progress:
    """A bar over documents with a total (estimated from file sizes, exact from parquet metadata) and an ETA;
    each finished shard replaces its estimate by its true count."""

    def __init__(self, inputs: list, disable: bool):
        self.estimates = {i: estimate_rows(i) for i in inputs}
        self.bar = tqdm(total=sum(self.estimates.values()), unit="doc", disable=disable, dynamic_ncols=True,
                        desc="annotate")
        self.segments = 0

    def update(self, docs: int, segs: int) -> None:
        self.segments += segs
        self.bar.update(docs)
        self.bar.set_postfix(seg=self.segments, refresh=False)

    def shard_done(self, summary: ann.ShardSummary) -> None:
        self.bar.total += summary.documents - self.estimates[summary.input]
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def annotate_files(p: Plan, indices, rank=None) -> list:
    """Annotate the given input files (finished sidecars are skipped); returns their summaries."""
    args = p.args
    indices = list(indices)
    todo = [(p.inputs[i], p.outputs[i]) for i in indices
            if not ann.check_reusable(p.outputs[i], p.settings, p.classifier)]
    print(f"{len(indices)} shard(s), {len(indices) - len(todo)} already annotated; classifier "
          f"{p.classifier.name} ({p.classifier.version})", file=sys.stderr)
    summaries = []
    progress = _Progress([i for i, _ in todo], args.no_progress)
    try:
        if args.workers <= 1 or len(todo) <= 1:
            segmenter = ann.build_segmenter(p.settings, TextTokenizer(p.settings.tokenizer_model)._text)
            for inp, out in todo:
                summaries.append(_annotate_one(inp, out, p.classifier, segmenter, p.settings, args.classifier,
                                               args.output, rank, progress.update, args.batch_docs))
                progress.shard_done(summaries[-1])
        else:
            ctx = mp.get_context("spawn")
            with ctx.Manager() as manager:
                q = manager.Queue()
                with ctx.Pool(min(args.workers, len(todo))) as pool:
                    jobs = [(i, o, p.settings, args.classifier, p.options, args.output, rank, args.batch_docs, q)
                            for i, o in todo]
                    results = pool.imap_unordered(_worker, jobs)
                    while len(summaries) < len(jobs):
                        try:
                            summaries.append(results.next(timeout=0.2))
                            progress.shard_done(summaries[-1])
                        except mp.TimeoutError:
                            pass
                        while not q.empty():
                            progress.update(*q.get())
                    while not q.empty():
                        progress.update(*q.get())
            order = {i: k for k, (i, _) in enumerate(todo)}
            summaries.sort(key=lambda s: order[s.input])
    finally:
        progress.close()
    return summaries


def write_manifest(p: Plan) -> None:
    ann.write_manifest(p.args.output, {
        "format_version": ann.FORMAT_VERSION,
        "classifier": p.classifier.name,
        "classifier_version": p.classifier.version,
        "categories": list(p.classifier.categories),
        "settings": asdict(p.settings),
        "shards": [{"input": os.path.abspath(i), "output": os.path.relpath(o, p.args.output)}
                   for i, o in zip(p.inputs, p.outputs)],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })


def finish(p: Plan) -> dict:
    """Every shard annotated: fold the shards' verdict logs into the merged cache, then write the manifest."""
    missing = [i for i, o in zip(p.inputs, p.outputs) if not os.path.exists(o)]
    if missing:
        raise ann.AnnotationError(f"{len(missing)} shard(s) not annotated yet (first: {missing[0]})")
    merged = verdict_log.merge_logs(p.args.output)
    write_manifest(p)
    return merged


def run_task(argv, rank: int, world_size: int) -> None:
    """datatrove task ``rank``: annotate files[rank::world_size]."""
    p = plan(get_args(argv))
    annotate_files(p, range(rank, len(p.inputs), world_size), rank)


def finish_task(argv) -> None:
    """datatrove's last step: check every sidecar exists, merge the verdict logs, write the manifest."""
    finish(plan(get_args(argv)))


ERRORS = (CorpusError, ClassifierError, TokenizerError, ann.AnnotationError, verdict_log.VerdictLogError, TypeError,
          ValueError)


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        p = plan(args)
        if args.executor != "none":
            from megatron_srp.data.datatrove_steps import run_with_datatrove

            return run_with_datatrove("annotate", argv if argv is not None else sys.argv[1:], args, len(p.inputs))
        summaries = annotate_files(p, range(len(p.inputs)))
        merged = finish(p)
    except ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    totals = {"shards": len(p.inputs), "annotated_now": len(summaries),
              "documents": sum(s.documents for s in summaries), "segments": sum(s.segments for s in summaries),
              "classified": sum(s.classified for s in summaries), "skipped_rows": sum(s.skipped for s in summaries)}
    labels: dict = {}
    for s in summaries:
        for k, v in s.labels.items():
            labels[k] = labels.get(k, 0) + v
    totals["labels"] = labels
    totals["verdict_cache"] = merged
    print(json.dumps(totals))
    return 0
