#!/usr/bin/env python3
"""Where preprocessing's CPU goes, stage by stage: one chunk after another on one thread, a timer around each.

  python bench/preprocess_stages.py --corpus /tmp/text1g                         # plain, default flags
  python bench/preprocess_stages.py --corpus /tmp/text1g --variant srp --annotations /tmp/b1g/annotations

Runs the preprocessing pipeline of ``megatron_srp.data.preprocess`` (same reader, encoder and writer, the
output written under a temporary folder) without its two encoding threads, so each stage's seconds add
up to the run and no stage hides behind another; gigatoken encodes a text at a time, as in each span process
of ``--workers N`` (``--batches``: in batches on its threads, as one process does). Prints seconds per stage
(JSON). The real run overlaps the stages on two threads: ``bench/preprocess_threads.py`` shows how busy that
keeps the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # as --workers 2 sets it, before gigatoken starts

from megatron_srp.data import annotations, corpus, fast_tokenizer, materialize  # noqa: E402
from megatron_srp.data import preprocess as pp  # noqa: E402
from megatron_srp.data.corpus import ReadStats  # noqa: E402
from megatron_srp.data.preprocess_output import Stats, Writer  # noqa: E402

SECONDS: Counter = Counter()


def timed(name, fn):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[name] += time.perf_counter() - start
    return run


class TimedTokenizer:
    """gigatoken's tokenizer with its native tokenization timed: ``encode_batch``, and ``encode`` (a text at a
    time, as span processes encode)."""

    def __init__(self, tok):
        self._tok = tok
        self.backend = TimedBackend(tok.backend)

    def encode_batch(self, texts):
        return timed("gigatoken encode_batch", self._tok.encode_batch)(texts)


class TimedBackend:
    def __init__(self, backend):
        self.encode = timed("gigatoken encode (a text at a time)", backend.encode)


class TimedOrjson:
    JSONDecodeError = corpus.orjson.JSONDecodeError

    def __init__(self, module):
        self.loads = timed("orjson (JSON parse)", module.loads)


def instrument(job) -> None:
    fast = getattr(job.encoder.tok, "_fast", None)
    if fast is None:
        raise SystemExit(f"the tokenizer runs on {job.encoder.tok.backend}, not gigatoken: nothing to break down")
    load = timed("gigatoken renewals (load)", fast._load)
    fast._load = lambda config=None: TimedTokenizer(load(config))
    fast._tok = TimedTokenizer(fast._tok)
    if fast._watch_tok is not None:  # (loaded at start-up by the guard's watch)
        fast._watch_tok = TimedTokenizer(fast._watch_tok)
    fast._release = timed("malloc_trim", fast._release)
    if hasattr(fast, "_reference_ids"):  # trees before it encoded such texts whole, untimed
        fast._reference_ids = timed("tokenizers (texts with unassigned characters)", fast._reference_ids)
    fast._byte_ends = timed("srp: token byte ends", fast._byte_ends)
    fast_tokenizer.has_unassigned = timed("Unicode check (has_unassigned)", fast_tokenizer.has_unassigned)
    job.encoder._guard_all = timed("injection guard scan", job.encoder._guard_all)
    job.encoder._segment_ends = timed("srp: segment ends", job.encoder._segment_ends)
    if hasattr(materialize, "_insert_at"):  # plain's ends of document and srp's insertion (the masked writes)
        materialize._insert_at = timed("EOD / reflection scatter", materialize._insert_at)
    else:  # trees before it
        materialize._scatter_insert = timed("EOD / reflection scatter", materialize._scatter_insert)
    if hasattr(job.encoder, "_insert"):  # srp: its runs merged and placed, the scatter above included
        job.encoder._insert = timed("srp: reflection runs (scatter included)", job.encoder._insert)
    annotations.check_texts = timed("srp: text hash checks", annotations.check_texts)
    corpus.orjson = TimedOrjson(corpus.orjson)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a folder with corpus.jsonl and tokenizer/")
    ap.add_argument("--input", help="any jsonl (instead of --corpus)")
    ap.add_argument("--tokenizer-model", help="with --input")
    ap.add_argument("--variant", default="plain", choices=["plain", "srp"])
    ap.add_argument("--annotations", help="srp: tools/annotate.py's output for the same file")
    ap.add_argument("--batches", action="store_true",
                    help="encode in gigatoken batches on its threads, as one process does (default: a text at a "
                         "time, as each span process of --workers N does)")
    args = ap.parse_args()
    path = args.input or os.path.join(args.corpus, "corpus.jsonl")
    model = args.tokenizer_model or os.path.join(args.corpus, "tokenizer")
    with tempfile.TemporaryDirectory(prefix="stages-") as out:
        argv = ["--input", path, "--output-prefix", os.path.join(out, "x"), "--tokenizer-type",
                "HuggingFaceTokenizer", "--tokenizer-model", model, "--append-eod", "--workers", "2", "--no-progress"]
        if args.variant == "srp":
            argv += ["--variant", "srp", "--annotations", args.annotations]
        job = pp.setup(pp.settings_from_argv(argv))
        if not args.batches:  # what a span process does (``fast_tokenizer._encode_texts``)
            fast_tokenizer.encode_a_text_at_a_time()
        instrument(job)
        stats, read_stats = Stats(), ReadStats()
        writer = Writer(job.finals, job.dtype, with_roles=args.variant == "srp")
        start = time.perf_counter()
        chunks = pp._inputs_of(job, 0, stats, read_stats)
        while True:
            t = time.perf_counter()
            chunk = next(chunks, None)
            SECONDS["reading (JSON parse included)"] += time.perf_counter() - t
            if chunk is None:
                break
            result = timed("encoding (all of it)", pp._encode_checked)(job.encoder.encode, chunk)
            timed("writing", pp._write)([result], writer, stats, lambda: None)
        writer.commit()
        SECONDS["total"] = time.perf_counter() - start
    print(json.dumps({"input": path, "variant": args.variant, "documents": stats.documents_written,
                      "tokens": stats.tokens, "seconds": {k: round(v, 3) for k, v in SECONDS.most_common()}},
                     indent=1))


if __name__ == "__main__":
    main()
