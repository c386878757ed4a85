#!/usr/bin/env python3
"""The machine's limit for tokenizing a jsonl: gigatoken's ``encode_files`` reading the file itself.

  RAYON_NUM_THREADS=2 python bench/gigatoken_limit.py corpus.jsonl tokenizer/ [--reader]

No guard, no end-of-document ids, nothing written: what is left when Python does nothing. Prints
JSON: documents, tokens and the seconds inside ``encode_files`` (bench/preprocess.py times the
whole process, start-up included, as it does for every other run). ``--reader`` also times our
reader (``read_documents``: every row parsed and checked, errors naming the file and line) over the
same file afterwards: the work ``encode_files`` skips (bench/encode_files_rows.py shows what it
skips), which preprocessing does on the same two cores.
"""

import json
import sys
import time

import gigatoken as gt


def main():
    path, tokenizer = sys.argv[1], sys.argv[2]
    tok = gt.Tokenizer(tokenizer)
    start = time.perf_counter()
    rows = tok.encode_files(gt.JsonlFileSource([path], field="text"))
    seconds = time.perf_counter() - start
    layout = rows.layout
    out = {"documents": len(rows), "tokens": int(layout.offsets.data[-1] - layout.offsets.data[0]),
           "encode_files_s": round(seconds, 3)}
    if "--reader" in sys.argv[3:]:
        from megatron_srp.data.corpus import read_documents

        start = time.perf_counter()
        out["reader_documents"] = sum(1 for _ in read_documents(path))
        out["reader_s"] = round(time.perf_counter() - start, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
