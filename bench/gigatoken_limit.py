#!/usr/bin/env python3
"""The machine's limit for tokenizing a jsonl: gigatoken's ``encode_files`` reading the file itself.

  RAYON_NUM_THREADS=2 python bench/gigatoken_limit.py corpus.jsonl tokenizer/

No guard, no end-of-document ids, nothing written: what is left when Python does nothing. Prints
JSON: documents, tokens and the seconds inside ``encode_files`` (bench/preprocess.py times the
whole process, start-up included, as it does for every other run).
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
    print(json.dumps({"documents": len(rows), "tokens": int(layout.offsets.data[-1] - layout.offsets.data[0]),
                      "encode_files_s": round(seconds, 3)}))


if __name__ == "__main__":
    main()
