#!/usr/bin/env python3
"""Segmentation throughput on one core (NLTK Punkt sentences packed to a token budget), on real text.

  python bench/annotate_segment.py --make-corpus /tmp/realtext --mb 30      # build the corpus once
  python bench/annotate_segment.py --corpus /tmp/realtext --docs 4000

--make-corpus writes ``corpus.jsonl``: the documentation and source files (.py .md .rst .txt) of the
installed Python packages, one document per file, files sorted by path, until --mb MB, and trains
an 8k byte-level BPE on it (``tokenizer/``, the segment budget's tokenizer). The measurement pins
the process to one CPU and runs the annotator's own segmenter (``annotations.build_segmenter``)
over the first --docs documents, in the annotator's batches of --batch-docs; it prints segments/s
and the share of time in Punkt, in the tokenizer and in packing.
"""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
import time


SUFFIXES = (".py", ".md", ".rst", ".txt")


def make_corpus(out: str, mb: float) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = sysconfig.get_paths()["purelib"]
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(SUFFIXES))
    os.makedirs(out, exist_ok=True)
    budget, written, texts = mb * 1e6, 0, []
    with open(os.path.join(out, "corpus.jsonl"), "w") as f:
        for p in paths:
            try:
                with open(p, encoding="utf-8") as src:
                    text = src.read()
            except (UnicodeDecodeError, OSError):
                continue
            if not text.strip() or len(text) > 2_000_000:
                continue
            f.write(json.dumps({"id": os.path.relpath(p, root), "text": text}) + "\n")
            texts.append(text)
            written += len(text.encode())
            if written >= budget:
                break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    tok.save(os.path.join(out, "tokenizer", "tokenizer.json"))
    with open(os.path.join(out, "tokenizer", "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    print(json.dumps({"corpus": out, "documents": len(texts), "mb": round(written / 1e6, 1)}))


def measure(corpus: str, docs: int, batch_docs: int, segment_tokens: int, backend: str = "auto") -> dict:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core (also bounds the tokenizer's threads)
    os.environ["RAYON_NUM_THREADS"] = "1"  # gigatoken's pool, started at its first encode
    from megatron_srp.data import annotations as ann
    from megatron_srp.data.tokenizer import TextTokenizer

    tok_dir = os.path.join(corpus, "tokenizer")
    tok = TextTokenizer(tok_dir, backend=backend)
    seg = ann.build_segmenter(ann.AnnotateSettings(tokenizer_model=tok_dir, segment_tokens=segment_tokens), tok)
    with open(os.path.join(corpus, "corpus.jsonl")) as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(docs), f)]
    t_punkt = t_tok = t_pack = 0.0
    segments = tokens = 0
    start = time.perf_counter()
    for i in range(0, len(texts), batch_docs):  # what Segmenter.segment_many does, timed by part
        batch = texts[i:i + batch_docs]
        t0 = time.perf_counter()
        pieces = [seg.sentences(t) for t in batch]
        t1 = time.perf_counter()
        flat = [p for ps in pieces for p in ps]
        offsets = seg.token_offsets(flat) if flat else []
        t2 = time.perf_counter()
        k = 0
        for ps in pieces:
            segments += len(seg._pack(ps, offsets[k:k + len(ps)]))
            k += len(ps)
        t3 = time.perf_counter()
        t_punkt, t_tok, t_pack = t_punkt + t1 - t0, t_tok + t2 - t1, t_pack + t3 - t2
        tokens += sum(map(len, offsets))
    wall = time.perf_counter() - start
    return {"backend": tok.backend, "documents": len(texts), "mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1),
            "segments": segments, "tokens": tokens, "segment_tokens": segment_tokens, "wall_s": round(wall, 1),
            "segments_per_s": round(segments / wall), "tokens_per_s": round(tokens / wall),
            "share": {"punkt": round(t_punkt / wall, 2), "tokenizer": round(t_tok / wall, 2),
                      "packing": round(t_pack / wall, 2)}, "cores": len(os.sched_getaffinity(0))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-corpus", metavar="DIR", help="build the real-text corpus and its tokenizer in DIR")
    ap.add_argument("--mb", type=float, default=30)
    ap.add_argument("--corpus", help="a folder made by --make-corpus")
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--batch-docs", type=int, default=64)
    ap.add_argument("--segment-tokens", type=int, default=256)
    ap.add_argument("--backend", default="auto", choices=["auto", "gigatoken", "tokenizers"],
                    help="the token counter: auto (gigatoken when installed, as the annotator runs) or one of them")
    args = ap.parse_args(argv)
    if args.make_corpus:
        make_corpus(args.make_corpus, args.mb)
    if args.corpus:
        print(json.dumps(measure(args.corpus, args.docs, args.batch_docs, args.segment_tokens, args.backend), indent=2))


if __name__ == "__main__":
    main()
