"""Segment a corpus and classify every segment once: one annotation sidecar (parquet) per input shard.

  python tools/annotate.py --input 'data/fineweb_edu/*.jsonl.gz' --output annotations/ \\
      --tokenizer-model tokenizer/ --classifier qwen3guard --classifier-arg model=Qwen3Guard-Gen-0.6B

Rerunning the same command skips finished shards and reuses every cached verdict.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from dataclasses import asdict

from tqdm import tqdm

from megatron_srp.data import annotations as ann
from megatron_srp.data.classify import BACKENDS, ClassifierError, VerdictCache, build_classifier, parse_options
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


def _worker(job):
    input_path, output_path, settings, backend, options, progress_q = job
    classifier = build_classifier(backend, **options)
    tokenizer = TextTokenizer(settings.tokenizer_model)
    segmenter = ann.build_segmenter(settings, tokenizer._text)
    cache = None if backend == "column" else VerdictCache(os.path.join(os.path.dirname(output_path) or ".", ann.CACHE))
    try:
        return ann.annotate_shard(input_path, output_path, classifier, segmenter, settings, cache,
                                  on_progress=lambda d, s: progress_q.put((d, s)))
    finally:
        if cache is not None:
            cache.close()


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        inputs = expand_inputs(args.input)
        os.makedirs(args.output, exist_ok=True)
        options = parse_options(args.classifier_arg, "--classifier-arg")
        settings = ann.AnnotateSettings(
            tokenizer_model=os.path.abspath(args.tokenizer_model), segment_tokens=args.segment_tokens,
            context_chars=args.context_chars, json_key=args.json_key, id_key=args.id_key,
            punkt=_punkt(args, inputs), max_doc_chars=args.max_doc_chars, on_error=args.on_error)
        TextTokenizer(settings.tokenizer_model)  # fail early on a bad tokenizer directory
        classifier = build_classifier(args.classifier, **options)
        names = relative_names(inputs)
        outputs = [ann.sidecar_path(args.output, n) for n in names]
        todo = [(i, o) for i, o in zip(inputs, outputs) if not ann.check_reusable(o, settings, classifier)]
    except (CorpusError, ClassifierError, TokenizerError, ann.AnnotationError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(inputs)} shard(s), {len(inputs) - len(todo)} already annotated; classifier {classifier.name} "
          f"({classifier.version})", file=sys.stderr)
    summaries = []
    bar = tqdm(total=None, unit="seg", disable=args.no_progress, dynamic_ncols=True, desc="annotate")
    docs_done = 0
    try:
        if args.workers <= 1 or len(todo) <= 1:
            cache = None if args.classifier == "column" else VerdictCache(os.path.join(args.output, ann.CACHE))
            segmenter = ann.build_segmenter(settings, TextTokenizer(settings.tokenizer_model)._text)

            def progress(d, s):
                nonlocal docs_done
                docs_done += d
                bar.update(s)
                bar.set_postfix(docs=docs_done, refresh=False)

            for inp, out in todo:
                summaries.append(ann.annotate_shard(inp, out, classifier, segmenter, settings, cache, progress,
                                                    args.batch_docs))
            if cache is not None:
                cache.close()
        else:
            ctx = mp.get_context("spawn")
            with ctx.Manager() as manager:
                q = manager.Queue()
                with ctx.Pool(min(args.workers, len(todo))) as pool:
                    result = pool.map_async(_worker, [(i, o, settings, args.classifier, options, q) for i, o in todo])
                    while not result.ready() or not q.empty():
                        try:
                            d, s = q.get(timeout=0.2)
                        except queue.Empty:
                            continue
                        docs_done += d
                        bar.update(s)
                        bar.set_postfix(docs=docs_done, refresh=False)
                    summaries = result.get()
    except (CorpusError, ClassifierError, ann.AnnotationError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.close()
    manifest = {
        "format_version": ann.FORMAT_VERSION,
        "classifier": classifier.name,
        "classifier_version": classifier.version,
        "categories": list(classifier.categories),
        "settings": asdict(settings),
        "shards": [{"input": os.path.abspath(i), "output": os.path.relpath(o, args.output)}
                   for i, o in zip(inputs, outputs)],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    ann.write_manifest(args.output, manifest)
    totals = {"shards": len(inputs), "annotated_now": len(summaries),
              "documents": sum(s.documents for s in summaries), "segments": sum(s.segments for s in summaries),
              "classified": sum(s.classified for s in summaries), "skipped_rows": sum(s.skipped for s in summaries)}
    labels: dict = {}
    for s in summaries:
        for k, v in s.labels.items():
            labels[k] = labels.get(k, 0) + v
    totals["labels"] = labels
    print(json.dumps(totals))
    return 0
