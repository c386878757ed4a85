#!/usr/bin/env python3
"""What gigatoken's ``encode_files`` makes of the rows a real corpus has, beside our reader.

  python bench/encode_files_rows.py TOKENIZER_DIR

The limit column of bench/preprocess.py is ``encode_files`` reading the jsonl itself. It is not a hot
loop we could adopt as is: for each small file below it prints the documents ``encode_files``
returns (decoded) and what ``megatron_srp.data.corpus.read_documents`` does with the same file (the
documents, or the error naming the file and line). Where it meets a row it cannot use it stops
reading the file without an error, keeping the documents before it.
"""

from __future__ import annotations

import os
import sys
import tempfile

CASES = {
    "two good rows": b'{"text": "hello"}\n{"text": "world"}\n',
    "a blank line between rows": b'{"text": "a"}\n\n{"text": "b"}\n',
    "a line of spaces between rows": b'{"text": "a"}\n   \n{"text": "b"}\n',
    "CRLF line ends": b'{"text": "a"}\r\n{"text": "b"}\r\n',
    "a malformed row between rows": b'{"text": "a"}\n{"text": \n{"text": "b"}\n',
    "no text field": b'{"text": "a"}\n{"txt": "x"}\n{"text": "b"}\n',
    "a number as text": b'{"text": "a"}\n{"text": 5}\n{"text": "b"}\n',
    "the text key twice": b'{"text": "first", "text": "second"}\n',
    "NaN in another field": b'{"text": "a", "x": NaN}\n',
    "two objects on a line": b'{"text": "a"}{"text": "b"}\n',
    "a UTF-8 BOM": b'\xef\xbb\xbf{"text": "a"}\n',
    "invalid UTF-8 in the text": b'{"text": "a\xff"}\n',
    "invalid UTF-8 in another field": b'{"text": "a", "u": "\xff"}\n',
    "a trailing comma": b'{"text": "a",}\n',
    "a raw tab inside the string": b'{"text": "a\tb"}\n',
}


def _ours(path: str) -> str:
    from megatron_srp.data.corpus import CorpusError, read_documents

    try:
        return repr([d.text for d in read_documents(path)])
    except CorpusError as e:
        return f"error: {str(e).replace(path, 'FILE')}"


def _encode_files(tok, path: str) -> str:
    import gigatoken as gt

    try:
        rows = tok.encode_files(gt.JsonlFileSource([path]))
    except Exception as e:  # noqa: BLE001 - reported, whatever it is
        return f"error: {type(e).__name__}: {e}"
    return repr([tok.decode(list(r)).decode("utf-8", "replace") for r in rows.tolist()])


def main() -> None:
    import gigatoken as gt

    tok = gt.Tokenizer(sys.argv[1])
    print("| rows | `encode_files` returns | ours (`read_documents`) |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in CASES.items():
            path = os.path.join(tmp, "rows.jsonl")
            with open(path, "wb") as f:
                f.write(data)
            print(f"| {name} | {_encode_files(tok, path)} | {_ours(path)} |")


if __name__ == "__main__":
    main()
