#!/usr/bin/env python3
"""A FineWeb-Edu-like jsonl corpus (id, text, url, score) and an 8k byte-level BPE trained on it, offline.

  python bench/make_corpus.py --out /tmp/bench_corpus --mb 100

Text is generated from an English word list with Zipf-like frequencies, sentences of 5-35 words,
paragraphs, abbreviations and numbers, documents of a few hundred to several thousand words (like
FineWeb-Edu's); about 8% of documents carry a 'label' of unsafe (for the column classifier).
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

WORDS = ("the of and to a in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no its more other what some time "
         "into only could new these two may first then do any like my now over such our man me even most made after "
         "also did many before must through back years where much your way well down should because each just those "
         "people how too little state good very make world still own see men work long get here between both life "
         "being under never day same another know while last might us great old year off come since against go came "
         "right used take three cell energy water plant student teacher history science river climate protein "
         "equation fraction molecule history government economy culture language reading writing learning school "
         "children research study data evidence system process example important different small large number "
         "result example development human natural social public health disease treatment patient doctor dose "
         "photosynthesis chlorophyll mitochondria enzyme reaction temperature pressure volume density gravity").split()


def make_docs(n_bytes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, len(WORDS) + 1)
    p = 1.0 / ranks ** 1.05
    p /= p.sum()
    total, i = 0, 0
    while total < n_bytes:
        n_par = int(rng.integers(1, 9))
        pars = []
        for _ in range(n_par):
            sents = []
            for _ in range(int(rng.integers(2, 9))):
                words = list(rng.choice(WORDS, size=int(rng.integers(5, 36)), p=p))
                if rng.random() < 0.1:
                    words.insert(int(rng.integers(0, len(words))), f"{int(rng.integers(1, 2000))}")
                if rng.random() < 0.05:
                    words.insert(0, "Dr. Smith said")
                s = " ".join(words)
                sents.append(s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!"]))
            pars.append(" ".join(sents))
        text = "\n\n".join(pars)
        doc = {"id": f"<urn:uuid:{i:08d}>", "text": text, "url": f"https://example.org/{i}",
               "score": round(float(rng.uniform(2.5, 5)), 3), "label": "unsafe" if rng.random() < 0.08 else "safe",
               "categories": ["Violent"] if rng.random() < 0.08 else []}
        if doc["label"] == "safe":
            doc["categories"] = []
        yield doc
        total += len(text)
        i += 1


def train_bpe_tokenizer(out_dir: Path, texts, vocab_size: int = 8192) -> Path:
    """A byte-level BPE trained offline on ``texts``, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    return out_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "corpus.jsonl")
    sample = []
    with open(path, "w") as f:
        for doc in make_docs(int(args.mb * 1e6)):
            f.write(json.dumps(doc) + "\n")
            if len(sample) < 3000:
                sample.append(doc["text"])
    train_bpe_tokenizer(Path(args.out) / "tokenizer", sample, vocab_size=args.vocab)
    print(f"{path}: {os.path.getsize(path) / 1e6:.1f} MB; tokenizer in {args.out}/tokenizer")


if __name__ == "__main__":
    main()
