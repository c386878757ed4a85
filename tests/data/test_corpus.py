"""The corpus reader (megatron_srp/data/corpus.py): lines across read blocks, and the rows it refuses."""

from __future__ import annotations

import io
import random

import pytest

from megatron_srp.data.corpus import CorpusError, _lines, read_documents


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_lines_are_the_same_whatever_the_block_size(block):
    rng = random.Random(block)
    parts = [b"x" * rng.choice([0, 1, 2, 5, 40, 200]) for _ in range(300)] + [b"end"]  # some span many blocks
    data = b"\n".join(parts)  # no newline at the end: the last line still comes out
    # a line is a view valid until the next is read: copied as it comes
    assert [bytes(x) for x in _lines(io.BytesIO(data), block=block)] == data.split(b"\n")
    assert [bytes(x) for x in _lines(io.BytesIO(data + b"\n"), block=block)] == data.split(b"\n")


class _ShortReads(io.RawIOBase):
    """A stream that returns at most ``most`` bytes per read, as pipes and some decompressors do."""

    def __init__(self, data: bytes, most: int):
        self._data, self._pos, self._most = data, 0, most

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self._most, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize("most", [1, 5, 64])
def test_lines_survive_short_reads(most):
    data = b"\n".join([b"a" * 30, b"", b"b" * 3, b"c" * 100, b"d"])
    assert [bytes(x) for x in _lines(_ShortReads(data, most), block=8)] == data.split(b"\n")


@pytest.mark.parametrize("value, what", [(5, "an int"), ([1], "a list"), (None, "missing"), (1.5, "a float")])
def test_a_text_that_is_not_a_string_is_named_with_its_line(tmp_path, value, what):
    import json

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps({"text": value}) + "\n")
    with pytest.raises(CorpusError) as e:
        list(read_documents(str(path)))
    assert str(e.value).startswith(f"{path}:3: field 'text' is {what}")
