"""Segment a corpus and classify every segment once: one annotation sidecar (parquet) per input shard.

  python tools/annotate.py --input 'data/fineweb_edu/*.jsonl.gz' --output annotations/ \\
      --tokenizer-model tokenizer/ --classifier qwen3guard --classifier-arg model=Qwen3Guard-Gen-0.6B

Rerunning the same command skips finished shards and reuses every cached verdict.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from tqdm import tqdm

from megatron_srp.data import annotations as ann
from megatron_srp.data import verdict_log
from megatron_srp.data.classify import build_classifier, registered, restore_registered
from megatron_srp.data.corpus import expand_inputs, read_documents, relative_names
from megatron_srp.data.datatrove_steps import run_with_datatrove
from megatron_srp.data.segment import punkt_to_json, train_punkt
from megatron_srp.data.settings import AnnotateConfig, annotate_config, annotate_parser
from megatron_srp.data.tokenizer import TextTokenizer
from megatron_srp.errors import SRPError
from megatron_srp.io import atomic_write_json


def settings_from_argv(argv: Optional[Sequence[str]] = None) -> AnnotateConfig:
    """The run's settings from the command line (parsed once; tasks receive the object)."""
    return annotate_config(annotate_parser(__doc__).parse_args(argv))


def _punkt(cfg: AnnotateConfig, inputs) -> str:
    if cfg.punkt_train_docs <= 0:
        return "untrained"
    path = os.path.join(cfg.output, ann.PUNKT)
    if not os.path.exists(path):
        def sample():
            n = 0
            for f in inputs:
                for doc in read_documents(f, (cfg.json_key,), cfg.id_key, cfg.on_error, cfg.max_doc_chars):
                    yield doc.text
                    n += 1
                    if n >= cfg.punkt_train_docs:
                        return
        atomic_write_json(path, punkt_to_json(train_punkt(sample())))
    return os.path.abspath(path)


@dataclass
class ShardJob:
    """One input file to annotate (picklable: what a worker process receives)."""

    config: AnnotateConfig
    settings: ann.AnnotateSettings
    input_path: str
    output_path: str
    rank: Optional[int]


def _shard_cache(job: ShardJob):
    """The shard's own verdict log over the merged cache (None for the column backend, which classifies nothing)."""
    if job.config.classifier == "column":
        return None
    shard_name = os.path.relpath(job.output_path, job.config.output)[:-len(ann.SUFFIX)]
    return verdict_log.ShardVerdictCache(job.config.output, shard_name, job.rank)


def _segmenter(settings: ann.AnnotateSettings):
    return ann.build_segmenter(settings, TextTokenizer(settings.tokenizer_model))


def _annotate_one(job: ShardJob, classifier, segmenter, progress) -> ann.ShardSummary:
    cache = _shard_cache(job)
    try:
        return ann.annotate_shard(job.input_path, job.output_path, classifier, segmenter, job.settings, cache,
                                  progress, job.config.batch_docs)
    finally:
        if cache is not None:
            cache.close()


_progress_q = None  # a pool process's queue to the parent's progress bar


def _init_worker(progress_q, backends) -> None:
    """A spawned pool process: the parent's progress queue and its registered backends (plugins)."""
    global _progress_q
    _progress_q = progress_q
    restore_registered(backends)


def _worker(job: ShardJob) -> ann.ShardSummary:
    classifier = build_classifier(job.config.classifier, **job.config.classifier_options)
    return _annotate_one(job, classifier, _segmenter(job.settings), lambda d, s: _progress_q.put((d, s)))


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
    config: AnnotateConfig
    settings: ann.AnnotateSettings
    classifier: object
    inputs: list
    outputs: list


def plan(cfg: AnnotateConfig) -> Plan:
    inputs = expand_inputs(cfg.input)
    os.makedirs(cfg.output, exist_ok=True)
    settings = ann.AnnotateSettings(
        tokenizer_model=os.path.abspath(cfg.tokenizer_model), segment_tokens=cfg.segment_tokens,
        context_chars=cfg.context_chars, json_key=cfg.json_key, id_key=cfg.id_key,
        punkt=_punkt(cfg, inputs), max_doc_chars=cfg.max_doc_chars, on_error=cfg.on_error)
    TextTokenizer(settings.tokenizer_model)  # fail early on a bad tokenizer directory
    classifier = build_classifier(cfg.classifier, **cfg.classifier_options)
    outputs = [ann.sidecar_path(cfg.output, n) for n in relative_names(inputs)]
    return Plan(cfg, settings, classifier, inputs, outputs)


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
    cfg = p.config
    indices = list(indices)
    todo = [ShardJob(cfg, p.settings, p.inputs[i], p.outputs[i], rank) for i in indices
            if not ann.check_reusable(p.outputs[i], p.settings, p.classifier)]
    print(f"{len(indices)} shard(s), {len(indices) - len(todo)} already annotated; classifier "
          f"{p.classifier.name} ({p.classifier.version})", file=sys.stderr)
    summaries = []
    progress = _Progress([j.input_path for j in todo], not cfg.progress)
    try:
        if cfg.workers <= 1 or len(todo) <= 1:
            segmenter = _segmenter(p.settings)
            for job in todo:
                summaries.append(_annotate_one(job, p.classifier, segmenter, progress.update))
                progress.shard_done(summaries[-1])
        else:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()  # not a Manager: its server process would outlive a kill -9 of this one
            with ctx.Pool(min(cfg.workers, len(todo)), initializer=_init_worker,
                          initargs=(q, registered())) as pool:
                results = pool.imap_unordered(_worker, todo)
                while len(summaries) < len(todo):
                    try:
                        summaries.append(results.next(timeout=0.2))
                        progress.shard_done(summaries[-1])
                    except mp.TimeoutError:
                        pass
                    _drain(q, progress)
                _drain(q, progress)
            order = {job.input_path: k for k, job in enumerate(todo)}
            summaries.sort(key=lambda s: order[s.input])
    finally:
        progress.close()
    return summaries


def _drain(q, progress: "_Progress") -> None:
    while True:
        try:
            progress.update(*q.get_nowait())
        except queue.Empty:
            return


def write_manifest(p: Plan) -> None:
    ann.write_manifest(p.config.output, {
        "format_version": ann.FORMAT_VERSION,
        "classifier": p.classifier.name,
        "classifier_version": p.classifier.version,
        "categories": list(p.classifier.categories),
        "settings": asdict(p.settings),
        "shards": [{"input": os.path.abspath(i), "output": os.path.relpath(o, p.config.output)}
                   for i, o in zip(p.inputs, p.outputs)],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })


def finish(p: Plan) -> dict:
    """Every shard annotated: fold the shards' verdict logs into the merged cache, then write the manifest."""
    missing = [i for i, o in zip(p.inputs, p.outputs) if not os.path.exists(o)]
    if missing:
        raise ann.AnnotationError(f"{len(missing)} shard(s) not annotated yet (first: {missing[0]})")
    merged = verdict_log.merge_logs(p.config.output)
    write_manifest(p)
    return merged


def run_task(cfg: AnnotateConfig, rank: int, world_size: int) -> None:
    """datatrove task ``rank``: annotate files[rank::world_size]."""
    p = plan(cfg)
    annotate_files(p, range(rank, len(p.inputs), world_size), rank)


def finish_task(cfg: AnnotateConfig) -> None:
    """datatrove's last step: check every sidecar exists, merge the verdict logs, write the manifest."""
    finish(plan(cfg))


ERRORS = (SRPError,)  # user errors: bad input, flags, annotations (exit 2); anything else is a bug


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        cfg = settings_from_argv(argv)
        p = plan(cfg)
        if cfg.executor.executor != "none":
            return run_with_datatrove("annotate", cfg, cfg.output, len(p.inputs))
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
