"""The corpus reader (megatron_srp/data/corpus.py): lines across read blocks, and the rows it refuses."""

from __future__ import annotations

import io
import random

import pytest

from megatron_srp.data.corpus import CorpusError, Span, _lines, count_lines, file_digest, read_documents, spans


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


@pytest.mark.parametrize("block", [4, 64, 16 << 20])
def test_lines_stop_at_the_limit(block):
    data = b"\n".join(b"x" * n for n in range(40))
    f = io.BytesIO(data)
    f.seek(10)
    want = data[10:10 + 300].split(b"\n")
    assert [bytes(x) for x in _lines(f, block=block, limit=300)] == want


@pytest.mark.parametrize("count, min_bytes", [(1, 1), (2, 1), (3, 500), (8, 1), (64, 1), (4, 10 ** 9)])
def test_spans_read_every_document_once_with_its_line(tmp_path, count, min_bytes):
    """Ranges cover the file in whole lines (blank lines, a line longer than a range, no final newline) and
    give each document the line number and id it has when the file is read whole; a bad row names its line."""
    import json

    rng = random.Random(count)
    rows = [json.dumps({"text": "y" * rng.choice([0, 3, 40, 900])}) if i % 13 else "" for i in range(200)]
    rows[57] = json.dumps({"text": "z" * 5000})  # spans several split points when ranges are small
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(rows))  # no newline at the end
    whole = [(d.line, d.id, d.text) for d in read_documents(str(path))]
    found = spans(str(path), count, min_bytes)
    ranges = [(sp.start, sp.end) for sp in found]
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
    assert all(a < b for a, b in ranges) and all(b == a2 for (_, b), (a2, _) in zip(ranges, ranges[1:]))
    assert len(ranges) <= count and (len(ranges) > 1) == (count > 1 and path.stat().st_size >= 2 * min_bytes)
    data = path.read_bytes()
    assert all(a == 0 or data[a - 1:a] == b"\n" for a, _ in ranges)
    want = [data[a:b].count(b"\n") for a, b in ranges]
    assert [count_lines(str(path), a, b) for a, b in ranges] == want
    assert [count_lines(str(path), a, b, block=7) for a, b in ranges] == want  # (a partly filled last block)
    assert found[0].lines_before == 0 and all(sp.lines_before is None for sp in found[1:])
    counted = [(d.line, d.id, d.text) for sp in found for d in read_documents(str(path), span=sp)]
    before = [data[:a].count(b"\n") for a, _ in ranges]  # given, as the span processes share their counts
    given = [(d.line, d.id, d.text) for (a, b), n in zip(ranges, before)
             for d in read_documents(str(path), span=Span(a, b, n))]
    assert counted == given == whole
    rows[150] = "{broken"
    path.write_text("\n".join(rows))
    last = next(sp for sp in spans(str(path), count, min_bytes) if sp.start <= len("\n".join(rows[:150])) < sp.end)
    with pytest.raises(CorpusError, match=rf"^{path}:151: malformed JSON"):
        list(read_documents(str(path), span=last))


def test_parquet_spans_are_row_groups_read_with_their_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "w" * (i % 50)} for i in range(230)]), path, row_group_size=20)
    whole = [(d.line, d.id, d.text) for d in read_documents(str(path))]
    for count in (1, 2, 5, 12, 40):
        found = spans(str(path), count, 1)
        assert found[0].start == 0 and found[-1].end == 12 and (len(found) > 1) == (count > 1) and len(found) <= count
        assert all(a.start < a.end == b.start for a, b in zip(found, found[1:]))
        assert [(d.line, d.id, d.text) for s in found for d in read_documents(str(path), span=s)] == whole


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 10_000])
def test_file_digest_is_xxh3_of_the_bytes_whatever_the_block(tmp_path, size):
    """Annotation records the digest and preprocessing compares it: the same bytes give the same digest read in
    any block size (a file of a block exactly, and one byte past it, included)."""
    import xxhash

    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    want = xxhash.xxh3_128(data).hexdigest()
    assert {file_digest(str(path), block) for block in (1, 4096, 1 << 20)} == {want}
