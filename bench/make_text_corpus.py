#!/usr/bin/env python3
"""A real-text jsonl corpus (id, text) from the documentation and source files of installed packages.

  python bench/make_text_corpus.py --out /tmp/text_corpus --mb 100
  python bench/make_text_corpus.py --out /tmp/text_corpus_1g --mb 1000 --distinct \
      --site-packages ENV1/lib/python3.11/site-packages ENV2/lib/python3.12/site-packages ...

Every ``.py .md .rst .txt .pyi .c .h .cpp .rs .toml .cfg .json .yaml`` file under the given
site-packages folders (default: this interpreter's) that decodes as UTF-8 and has 200 B to 1 MB of
text becomes one document, in sorted path order, until ``--mb`` MB of text are written (text the
project never generated: prose, code, licences, unicode, and now and then a special-token string
or a reflection tag). Rows carry a ``label`` for the column annotator (one document in 12, chosen
by a hash of its id, is ``unsafe``/``Violent``: stand-in verdicts so the srp variant can be timed).
An 8k byte-level BPE is trained on a 20 MB sample (``--vocab``). The same environment gives the
same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import site
import zlib
from pathlib import Path

from make_corpus import train_bpe_tokenizer  # bench/ is not a package: a script's folder is on sys.path

SUFFIXES = (".py", ".md", ".rst", ".txt", ".pyi", ".c", ".h", ".cpp", ".rs", ".toml", ".cfg", ".json", ".yaml")


def source_files(roots):
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SUFFIXES):
                    yield os.path.join(dirpath, name)


def documents(roots, min_bytes=200, max_bytes=1 << 20):
    for path in source_files(roots):
        try:
            size = os.path.getsize(path)
            if not min_bytes <= size <= max_bytes:
                continue
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield path, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--site-packages", nargs="+", default=site.getsitepackages())
    ap.add_argument("--distinct", action="store_true",
                    help="skip a file whose text is already in the corpus (several environments hold the same packages)")
    args = ap.parse_args()
    args.site_packages = [os.path.abspath(p) for p in args.site_packages]  # ids are paths below their common root
    seen = set()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "corpus.jsonl")
    sample, sampled, written, n = [], 0, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        for src, text in documents(args.site_packages):
            if args.distinct:
                digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
                if digest in seen:
                    continue
                seen.add(digest)
            rel = os.path.relpath(src, os.path.commonpath(args.site_packages + [src]))
            unsafe = zlib.crc32(rel.encode()) % 12 == 0
            row = {"id": rel, "text": text, "label": "unsafe" if unsafe else "safe",
                   "categories": ["Violent"] if unsafe else []}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
            written += len(text.encode("utf-8"))
            if n % 5 == 0 and sampled < 20e6:
                sample.append(text)
                sampled += len(text)
            if written >= args.mb * 1e6:
                break
    train_bpe_tokenizer(Path(args.out) / "tokenizer", sample, vocab_size=args.vocab)
    print(f"{path}: {n} documents, {os.path.getsize(path) / 1e6:.1f} MB; tokenizer in {args.out}/tokenizer")


if __name__ == "__main__":
    main()
