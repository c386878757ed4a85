"""Reading corpus shards: jsonl, jsonl.gz and parquet files, globs or directories (FineWeb-Edu layout).

Every document keeps its position in the shard (``line``: 1-based line of a jsonl file, 1-based row of
a parquet file), so errors name the file and line, and annotations can be matched back to documents.
Bad rows raise ``CorpusError`` or, with ``on_error="skip"``, are counted and left out; both the
annotator and the preprocessor read through here, so they skip exactly the same rows.
"""

from __future__ import annotations

import bisect
import glob
import gzip
import hashlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import orjson

from megatron_srp.errors import SRPError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
OnError = Literal["fail", "skip"]


class CorpusError(SRPError, ValueError):
    """A corpus row or file that cannot be used; the message names the file and line."""


@dataclass
class Document:
    line: int
    """1-based line (jsonl) or row (parquet) in its file."""
    id: str
    """The row's ``id`` field, or ``<file stem>:<line>`` when there is none."""
    texts: dict
    """json key -> text, for every requested key."""
    row: dict
    """The whole row (other fields: labels for the column backend, metadata)."""

    @property
    def text(self) -> str:
        return next(iter(self.texts.values()))


@dataclass
class ReadStats:
    documents: int = 0
    skipped: int = 0
    errors: dict = field(default_factory=dict)
    """error kind -> count (only with on_error=skip)."""
    position: int = 0
    """How far into the file reading is, in bytes of the file on disk (progress against ``input_size``)."""
    origin: int = 0
    """Where reading began (a span's start), in the units of ``position``."""

    def count(self, kind: str) -> None:
        self.skipped += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True)
class Span:
    """A part of a file read apart (``spans``): bytes [start, end) of whole lines of a jsonl file, or row groups
    [start, end) of a parquet file."""

    start: int
    end: int
    lines_before: Optional[int] = None
    """jsonl: the lines before ``start`` (the line numbers continue from there); None: counted when read."""
    claim: Optional[Callable[[int, int], int]] = field(default=None, compare=False, repr=False)
    """For a span whose end another process may move forward (``preprocess_spans``): called with where the next
    line (parquet: row group) starts and the lines (rows) before it, first at the start and then whenever reading
    reaches the limit it returned last; returns how far reading may go now. Reading stops where that is no
    further than the position: the rest was taken."""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


FILE_DIGEST = "xxh3_128"


def file_digest(path: str, block: int = 1 << 20) -> str:
    """xxh3-128 of a file's bytes as stored (compressed files compressed). Equal digests mean the annotated
    texts are the texts, so preprocessing skips its per-document hash checks: about 0.2 s per GB from the page
    cache against 1 s for sha256 over every text (xxhash reads at ~14 GB/s and releases the GIL). A block of
    1 MiB stays in the core's cache between the read and the hash (0.21 -> 0.18 s per GB against 16 MiB)."""
    import xxhash  # here: only the readers of annotations need it

    h, buf = xxhash.xxh3_128(), bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def is_corpus_file(path: str) -> bool:
    return path.endswith(SUFFIXES)


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, globs or directories (searched recursively), sorted, without duplicates."""
    found: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matches = [str(p) for p in sorted(Path(pattern).rglob("*")) if p.is_file() and is_corpus_file(str(p))]
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(pattern):
            matches = [pattern]
        else:
            raise CorpusError(f"input {pattern!r}: no such file or directory")
        if not matches:
            raise CorpusError(f"input {pattern!r} matches no {'/'.join(SUFFIXES)} file")
        found.extend(matches)
    unknown = [p for p in found if not is_corpus_file(p)]
    if unknown:
        raise CorpusError(f"unsupported input file type: {unknown[0]} (expected {', '.join(SUFFIXES)})")
    seen, out = set(), []
    for p in found:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def relative_names(paths: Sequence[str]) -> list[str]:
    """Shard names relative to the inputs' common folder (used to name per-shard outputs)."""
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def input_size(path: str) -> int:
    """Bytes of a corpus file on disk: the unit of ``ReadStats.position`` (progress totals)."""
    return os.path.getsize(path)


def _lines(f, block: int = 16 << 20, limit: Optional[int] = None) -> Iterator[memoryview]:
    """The lines of a binary file without their newline, as views into one reused buffer: a view is valid
    until the next line is asked for. Read in large blocks and never copied: splitting each block into
    line objects cost as much as parsing the JSON, and fresh blocks cost page faults. ``limit``: read at
    most that many bytes from where ``f`` stands."""
    buf, end, scanned = bytearray(block), 0, 0  # buf[:scanned] is a line's start, searched already
    left = limit if limit is not None else -1
    while left and (n := f.readinto(memoryview(buf)[end:end + left] if left > 0 else memoryview(buf)[end:])):
        end += n
        left = max(0, left - n) if left > 0 else left
        view, start, find = memoryview(buf), 0, buf.find
        while (nl := find(b"\n", scanned, end)) >= 0:
            yield view[start:nl]
            start = scanned = nl + 1
        scanned = end - start  # no newline after the last one: not searched again after the next read
        if start == 0 and end == len(buf):  # one line fills the buffer: a larger one (the views keep the old)
            grown = bytearray(2 * len(buf))
            grown[:end] = buf
            buf = grown
        elif start:  # the line cut by the block boundary moves to the front (same size: allowed under views)
            buf[:end - start] = buf[start:end]
            end -= start
    if end:
        yield memoryview(buf)[:end]


def spans(path: str, count: int, min_bytes: int) -> list[Span]:
    """Up to ``count`` consecutive parts of a file of about equal size, each at least ``min_bytes``, to be
    read apart (``read_documents(span=...)``): byte ranges of whole lines of a jsonl file, ranges of row
    groups of a parquet file; one span for a small (or compressed) file."""
    if path.endswith(".gz"):
        return [Span(0, input_size(path), 0)]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
        return _row_group_ranges(list(itertools.accumulate(sizes, initial=0)), count, min_bytes)
    return _line_ranges(path, count, min_bytes)


def _row_group_ranges(before: list[int], count: int, min_bytes: int) -> list[Span]:
    """Ranges of row groups; ``before``: each group's offset (the size of the groups before it), then the total."""
    groups, total = len(before) - 1, before[-1]
    count = max(1, min(count, groups, total // max(1, min_bytes)))
    starts = [0]
    for k in range(1, count):
        g = bisect.bisect_left(before, k * total / count)
        if starts[-1] < g < groups:
            starts.append(g)
    return [Span(a, b) for a, b in zip(starts, starts[1:] + [max(groups, 1)])]


def _line_ranges(path: str, count: int, min_bytes: int) -> list[Span]:
    """Byte ranges of whole lines, in order."""
    size = input_size(path)
    count = max(1, min(count, size // max(1, min_bytes)))
    starts = [0]
    with open(path, "rb") as f:
        for k in range(1, count):
            at = line_start(f, k * size // count)
            if starts[-1] < at < size:  # (a line longer than a range spans several split points)
                starts.append(at)
    return [Span(a, b, 0 if a == 0 else None) for a, b in zip(starts, starts[1:] + [size])]


def line_start(f, near: int) -> int:
    """Where the first line of binary file ``f`` that starts at byte ``near`` (> 0) or after starts; the file's size
    where none does."""
    f.seek(near - 1)  # from the byte before: a line may start exactly at ``near``
    f.readline()
    return f.tell()


def count_lines(path: str, start: int, end: int, block: int = 256 << 10) -> int:
    """Newlines in bytes [start, end) of a file. numpy's vectorized compare and count on a buffer that stays
    in the cache: 0.011 s for 53 MB from the page cache, against 0.025-0.04 s for ``bytearray.count`` on 16 MB
    blocks (a byte at a time, and a fresh process faulted the buffer in)."""
    count, buf, left = 0, bytearray(block), end - start
    view = np.frombuffer(buf, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while left > 0 and (n := f.readinto(memoryview(buf)[:min(block, left)])):
            count += int(np.count_nonzero(view[:n] == 10))  # (10: "\n")
            left -= n
    return count


def _unparsable(path: str, line: int, raw: bytes, error: Exception) -> Optional[CorpusError]:
    """Why a row did not parse, or None for a blank line (skipped, as Megatron-LM's reader does)."""
    if not raw.strip():
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as ue:
        return CorpusError(f"{path}:{line}: invalid UTF-8 at byte {ue.start}")
    return CorpusError(f"{path}:{line}: malformed JSON ({error})")


def _raw_rows(path: str, stats: ReadStats, span: Optional[Span] = None) -> Iterator[tuple[int, object]]:
    """(line, parsed row or exception) for each non-blank row of a file, or of one of its ``spans``;
    advances ``stats.position`` (from ``stats.origin``, where the span starts)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # only for parquet inputs: pyarrow takes seconds to import

        pf = pq.ParquetFile(path)
        groups = list(range(span.start, span.end) if span is not None else range(pf.num_row_groups))
        line = sum(pf.metadata.row_group(g).num_rows for g in range(groups[0] if groups else 0))
        size, rows = input_size(path), max(1, pf.metadata.num_rows)
        stats.origin = stats.position = size * line // rows
        claim = span.claim if span is not None else None
        for run in ([groups] if claim is None else _claimed_groups(groups, claim, pf.metadata, line)):
            for batch in pf.iter_batches(batch_size=1024, row_groups=run):
                for row in batch.to_pylist():
                    line += 1
                    yield line, row
                stats.position = size * line // rows
        return
    gz, start, first, limit = path.endswith(".gz"), 0, 1, None
    if span is not None and (span.start, span.end) != (0, input_size(path)):
        if gz:
            raise ValueError(f"{path}: a compressed file is read whole")
        before = span.lines_before if span.lines_before is not None else count_lines(path, 0, span.start)
        start, first, limit = span.start, before + 1, span.end - span.start
        stats.origin = stats.position = start
    claim = span.claim if span is not None else None
    allowed = claim(start, first - 1) if claim is not None else None
    with (gzip.open if gz else open)(path, "rb") as f:
        f.seek(start)
        for line, raw in enumerate(_lines(f, limit=limit), start=first):
            if allowed is not None and stats.position >= allowed:  # (the position: where this line starts)
                allowed = claim(stats.position, line - 1)
                if stats.position >= allowed:
                    break
            stats.position = f.fileobj.tell() if gz else stats.position + len(raw) + 1
            try:
                row = orjson.loads(raw)  # a blank line fails too (an empty document): checked only then
            except orjson.JSONDecodeError as e:
                row = _unparsable(path, line, bytes(raw), e)
                if row is None:
                    continue
            yield line, row


def _claimed_groups(groups: list[int], claim, meta, rows_before: int) -> Iterator[list[int]]:
    """A span's row groups one at a time, each claimed before it is read (``Span.claim``)."""
    for g in groups:
        if claim(g, rows_before) <= g:
            return
        yield [g]
        rows_before += meta.row_group(g).num_rows


def read_documents(path: str, json_keys: Sequence[str] = ("text",), id_key: str = "id",
                   on_error: OnError = "fail", max_chars: Optional[int] = None,
                   stats: Optional[ReadStats] = None, span: Optional[Span] = None
                   ) -> Iterator[Document]:
    """Documents of one file (or of one of its ``spans``), in order, with their lines in the whole file. Empty
    texts are documents too (they tokenize to nothing)."""
    stats = stats if stats is not None else ReadStats()
    stem = Path(path).name
    for line, row in _raw_rows(path, stats, span):
        problem, kind = None, None
        if isinstance(row, CorpusError):
            problem, kind = row, ("invalid_utf8" if "UTF-8" in str(row) else "malformed_json")
        elif not isinstance(row, dict):
            problem, kind = CorpusError(f"{path}:{line}: a row must be a JSON object, got {type(row).__name__}"), "not_an_object"
        else:
            texts = {}
            for key in json_keys:
                value = row.get(key)
                if not isinstance(value, str):
                    kind_of = type(value).__name__
                    what = "missing" if value is None else \
                        f"{'an' if kind_of[0] in 'aeiou' else 'a'} {kind_of}, not a string"
                    problem, kind = CorpusError(f"{path}:{line}: field {key!r} is {what}"), "missing_text"
                    break
                if max_chars is not None and len(value) > max_chars:
                    problem = CorpusError(f"{path}:{line}: field {key!r} has {len(value):,} characters, "
                                          f"over the limit of {max_chars:,} (--max-doc-chars)")
                    kind = "too_long"
                    break
                texts[key] = value
        if problem is not None:
            if on_error == "fail":
                raise problem
            stats.count(kind)
            continue
        doc_id = row.get(id_key)
        stats.documents += 1
        yield Document(line, str(doc_id) if doc_id is not None else f"{stem}:{line}", texts, row)
