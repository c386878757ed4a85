"""Annotate once: segment every document and classify every segment; one parquet sidecar per shard.

A sidecar has one row per document (``line``, ``id``, ``text_sha``, segment character spans into
the original text, one label and category list per segment) and its settings in the parquet
metadata (classifier name and version, taxonomy, tokenizer, budget, context window). Every data
variant is later built from these files, so the classifier runs once per corpus.

Resumable at two levels: a finished sidecar (renamed into place only when complete) is skipped,
and inside an interrupted shard every verdict already computed is in that shard's verdict log
(``megatron_srp.data.verdict_log``: one writer per file, so tasks may run on any number of nodes).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from megatron_srp.data.classify import (Classifier, ClassifierError, ColumnClassifier, SegmentInput, VerdictCache,
                                        classify_cached)
from megatron_srp.data.fast_tokenizer import char_to_byte
from megatron_srp.data.verdict_log import MERGED, ShardVerdictCache
from megatron_srp.data.corpus import FILE_DIGEST, CorpusError, Document, ReadStats, file_digest, read_documents, text_hash
from megatron_srp.errors import SRPError
if TYPE_CHECKING:
    from megatron_srp.data.segment import Segmenter
from megatron_srp.reflection import Verdict

FORMAT_VERSION = 1
SUFFIX = ".annotations.parquet"
MANIFEST = "annotations.json"
CACHE = MERGED
PUNKT = "punkt.json"
_META_KEY = b"megatron_srp"

SCHEMA = pa.schema([
    ("line", pa.int64()),
    ("id", pa.string()),
    ("text_sha", pa.string()),
    ("seg_start", pa.list_(pa.int64())),
    ("seg_end", pa.list_(pa.int64())),
    # Each segment end in UTF-8 bytes: srp places reflections on a byte line, and converting character ends of
    # non-ASCII texts cost as much as the rest of placement. Optional: sidecars before it are converted on read.
    ("seg_end_byte", pa.list_(pa.int64())),
    ("label", pa.list_(pa.string())),
    ("categories", pa.list_(pa.list_(pa.string()))),
])


class AnnotationError(SRPError, ValueError):
    pass


@dataclass
class AnnotateSettings:
    """What a sidecar depends on; a rerun with different settings refuses to mix outputs."""

    tokenizer_model: str
    """Target tokenizer directory: the segment budget counts its tokens."""
    segment_tokens: int = 256
    """Token budget of a segment (sentences are packed up to it; longer sentences are cut)."""
    context_chars: int = 1000
    """Characters of preceding document text the classifier sees with each segment."""
    json_key: str = "text"
    """Field holding the document text."""
    id_key: str = "id"
    """Field holding the document id."""
    punkt: str = "untrained"
    """``untrained`` or the path of a Punkt model trained on the corpus (JSON)."""
    max_doc_chars: Optional[int] = 10_000_000
    """Longer documents are an input error (or skipped with on_error=skip)."""
    on_error: str = "fail"
    """``fail`` or ``skip`` on a bad row (malformed JSON, missing text, too long, invalid UTF-8)."""


@dataclass
class ShardSummary:
    input: str
    output: str
    documents: int = 0
    segments: int = 0
    classified: int = 0
    """Segments the backend actually ran on (the rest came from the cache)."""
    skipped: int = 0
    errors: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False


def sidecar_path(out_dir: str, shard_name: str) -> str:
    return os.path.join(out_dir, shard_name + SUFFIX)


def _metadata(settings: AnnotateSettings, classifier: Classifier, input_path: str, summary: dict,
              digest: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "input": os.path.abspath(input_path),
        "input_digest": {"algorithm": FILE_DIGEST, "hex": digest, "bytes": os.path.getsize(input_path)},
        "classifier": classifier.name,
        "classifier_version": classifier.version,
        "categories": list(classifier.categories),
        "settings": asdict(settings),
        "summary": summary,
    }


def read_metadata(path: str) -> dict:
    meta = pq.read_schema(path).metadata or {}
    if _META_KEY not in meta:
        raise AnnotationError(f"{path}: not an annotation sidecar of this tool (no {_META_KEY.decode()} metadata)")
    return json.loads(meta[_META_KEY])


def _comparable(meta: dict) -> dict:
    keep = dict(meta["settings"])
    keep.pop("on_error", None)
    return {"classifier": meta["classifier"], "classifier_version": meta["classifier_version"], **keep}


def build_segmenter(settings: AnnotateSettings, tokenizer) -> Segmenter:
    """The annotator's segmenter; ``tokenizer`` is the corpus's ``TextTokenizer``."""
    # here, not at the top: NLTK takes seconds to import, and preprocessing reads sidecars without it
    from megatron_srp.data.segment import Segmenter, punkt_from_json

    splitter = None
    if settings.punkt != "untrained":
        with open(settings.punkt) as f:
            splitter = punkt_from_json(json.load(f))
    return Segmenter(tokenizer.token_offsets(), budget=settings.segment_tokens, splitter=splitter)


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _column_segments(classifier: ColumnClassifier, doc: Document, path: str) -> tuple[list[tuple[int, int]], list[Verdict]]:
    """Spans and verdicts carried by the row itself (column backend)."""
    where = f"{path}:{doc.line}"
    rows = doc.row.get(classifier.segments_key)
    if rows is not None:
        if not isinstance(rows, list):
            raise CorpusError(f"{where}: field {classifier.segments_key!r} must be a list of segments")
        spans, verdicts, pos = [], [], 0
        for i, seg in enumerate(rows):
            if not isinstance(seg, dict) or not isinstance(seg.get("text"), str):
                raise CorpusError(f"{where}: {classifier.segments_key}[{i}] needs a string 'text'")
            spans.append((pos, pos + len(seg["text"])))
            pos += len(seg["text"])
            verdicts.append(classifier.verdict(seg.get("label"), seg.get("categories"), f"{where} segment {i}"))
        if "".join(s["text"] for s in rows) != doc.text:
            raise CorpusError(f"{where}: the texts of {classifier.segments_key!r} do not concatenate to the document text")
        return spans, verdicts
    return None, [classifier.verdict(doc.row.get(classifier.label_key), doc.row.get(classifier.categories_key), where)]


def annotate_shard(input_path: str, output_path: str, classifier: Classifier, segmenter: Segmenter,
                   settings: AnnotateSettings, cache: Optional[ShardVerdictCache | VerdictCache],
                   on_progress: Callable[[int, int], None] = lambda docs, segs: None,
                   batch_docs: int = 64) -> ShardSummary:
    """Annotate one input file into ``output_path`` (written to a temp name, renamed when complete)."""
    start = time.time()
    summary = ShardSummary(input=input_path, output=output_path)
    digest = file_digest(input_path)
    read_stats = ReadStats()
    docs = read_documents(input_path, (settings.json_key,), settings.id_key, settings.on_error,
                          settings.max_doc_chars, read_stats)
    columns = {name: [] for name in SCHEMA.names}
    for batch in _batches(docs, batch_docs):
        texts = [d.text for d in batch]
        if isinstance(classifier, ColumnClassifier):
            all_spans, all_verdicts = [], []
            auto = [i for i, d in enumerate(batch) if d.row.get(classifier.segments_key) is None]
            auto_spans = dict(zip(auto, segmenter.spans([texts[i] for i in auto]))) if auto else {}
            for i, doc in enumerate(batch):
                spans, verdicts = _column_segments(classifier, doc, input_path)
                if spans is None:
                    spans = auto_spans[i]
                    verdicts = verdicts * len(spans)
                all_spans.append(spans)
                all_verdicts.append(verdicts)
        else:
            all_spans = segmenter.spans(texts)
            items = [SegmentInput(text[a:b], text[max(0, a - settings.context_chars):a])
                     for text, spans in zip(texts, all_spans) for a, b in spans]
            flat, new = classify_cached(classifier, items, cache)
            summary.classified += new
            all_verdicts, k = [], 0
            for spans in all_spans:
                all_verdicts.append(flat[k:k + len(spans)])
                k += len(spans)
        for doc, text, spans, verdicts in zip(batch, texts, all_spans, all_verdicts):
            columns["line"].append(doc.line)
            columns["id"].append(doc.id)
            columns["text_sha"].append(text_hash(text))
            columns["seg_start"].append([a for a, _ in spans])
            columns["seg_end"].append([b for _, b in spans])
            columns["seg_end_byte"].append(char_to_byte(text, columns["seg_end"][-1]).tolist())
            columns["label"].append([v.label for v in verdicts])
            columns["categories"].append([list(v.categories) for v in verdicts])
            for v in verdicts:
                summary.labels[v.label] = summary.labels.get(v.label, 0) + 1
            summary.segments += len(spans)
        summary.documents += len(batch)
        on_progress(len(batch), sum(len(s) for s in all_spans))
    summary.skipped, summary.errors = read_stats.skipped, dict(read_stats.errors)
    if file_digest(input_path) != digest:  # the digest must be that of the texts annotated
        raise AnnotationError(f"{input_path} changed while it was annotated; annotate it again")
    summary.seconds = round(time.time() - start, 3)
    meta = _metadata(settings, classifier, input_path,
                     {k: getattr(summary, k) for k in ("documents", "segments", "skipped", "errors", "labels")}, digest)
    table = pa.Table.from_pydict(columns, schema=SCHEMA.with_metadata({_META_KEY: json.dumps(meta)}))
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    tmp = f"{output_path}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, output_path)
    return summary


def check_reusable(path: str, settings: AnnotateSettings, classifier: Classifier) -> bool:
    """True when a finished sidecar with the same settings exists; an incompatible one is an error."""
    if not os.path.exists(path):
        return False
    have = _comparable(read_metadata(path))
    want = _comparable({"classifier": classifier.name, "classifier_version": classifier.version,
                        "settings": asdict(settings)})
    diff = {k: (have.get(k), want.get(k)) for k in want if have.get(k) != want.get(k)}
    if diff:
        detail = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise AnnotationError(f"{path} was made with other settings ({detail}); use another --output "
                              f"or delete it")
    return True


class DocumentSegments(NamedTuple):
    """One document's annotation: spans (n, 2), verdicts, each verdict's code into ``table``, and the spans'
    ends in UTF-8 bytes (None for a sidecar without them)."""

    spans: np.ndarray
    verdicts: list
    codes: np.ndarray
    table: list
    byte_ends: Optional[np.ndarray] = None


class InputDigest(NamedTuple):
    """An input file's digest, and its size and modification time when the digest was taken."""

    hex: str
    size: int
    mtime_ns: int

    @staticmethod
    def stat(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    @classmethod
    def of(cls, path: str) -> "InputDigest":
        size, mtime_ns = cls.stat(path)  # before reading: a write during the digest shows in check_unchanged
        return cls(file_digest(path), size, mtime_ns)


def digest_may_match(meta: dict, input_path: str) -> bool:
    """Whether a sidecar's metadata records a digest for a file of ``input_path``'s size (worth computing its
    digest)."""
    recorded = meta.get("input_digest") or {}
    return recorded.get("algorithm") == FILE_DIGEST and recorded.get("bytes") == os.path.getsize(input_path)


class ChunkSegments(NamedTuple):
    """The annotations of a chunk's documents as flat arrays: each document's segment count, then every
    segment's end in characters, verdict code into ``table`` and end in UTF-8 bytes (None for a sidecar without
    them)."""

    counts: np.ndarray
    ends: np.ndarray
    codes: np.ndarray
    table: list
    byte_ends: Optional[np.ndarray] = None


_NUMPY_TYPES = {pa.int32(): np.int32, pa.int64(): np.int64}
DICTIONARY_COLUMNS = ["label.list.element", "categories.list.element.list.element"]


def _numpy(arr: pa.Array, what: str, path: str) -> np.ndarray:
    """An integer array without nulls as numpy, without a copy (``Array.to_numpy`` imports pandas: 0.3 s)."""
    dtype = _NUMPY_TYPES.get(arr.type)
    if dtype is None or arr.null_count:
        raise AnnotationError(f"{path}: damaged sidecar ({what} is {arr.type} with {arr.null_count} missing values)")
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * np.dtype(dtype).itemsize)


def _one_array(table: pa.Table, name: str):
    """A column as one array: its only chunk as it is (``combine_chunks`` copies even one chunk: 30 ms per GB of
    text across srp's columns), several combined."""
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _list_column(table: pa.Table, name: str, path: str) -> pa.ListArray:
    col = _one_array(table, name)
    if col.null_count:
        raise AnnotationError(f"{path}: damaged sidecar (column {name!r} has {col.null_count} missing rows)")
    return col


def _flat_values(col: pa.ListArray, name: str, path: str):
    """The list column's values for rows 0..n (its offsets index into them)."""
    if col.values.null_count:
        raise AnnotationError(f"{path}: damaged sidecar (column {name!r} has missing values)")
    return col.values


def _where(input_path: str, doc: Document) -> str:
    return f"{input_path}:{doc.line} (id {doc.id!r})"


def check_texts(checks) -> None:
    """Each (recorded hash, document, input path, sidecar) of ``ShardAnnotations.segments``: the text is the
    annotated one."""
    for sha, doc, input_path, sidecar in checks:
        if sha != text_hash(doc.text):
            raise AnnotationError(f"{_where(input_path, doc)}: the text differs from the annotated text (hash "
                                  f"mismatch with {sidecar})")


class ShardAnnotations:
    """A sidecar read back as flat columns (numpy offsets and values), indexed by input line.

    Reading builds no per-row objects: a document's spans are a slice of one (segments, 2) array, its
    verdicts a slice of one list of shared ``Verdict`` objects (one per distinct label and categories).
    """

    def __init__(self, path: str, meta: dict, table: pa.Table):
        self.path, self.meta = path, meta
        lines = _numpy(_one_array(table, "line"), "column 'line'", path)
        self.row_of_line = dict(zip(lines.tolist(), range(len(lines))))
        self.ids = table.column("id").to_pylist()
        self._text_sha_column = table.column("text_sha")
        self._text_shas: Optional[list] = None
        with_bytes = "seg_end_byte" in table.column_names
        cols = {k: _list_column(table, k, path) for k in ("seg_start", "seg_end", "label", "categories",
                                                          *(["seg_end_byte"] if with_bytes else []))}
        offsets = {k: _numpy(c.offsets, f"the offsets of {k!r}", path) for k, c in cols.items()}
        self.offsets = offsets["seg_start"].astype(np.int64)
        for k, o in offsets.items():
            if not np.array_equal(o, self.offsets):
                raise AnnotationError(f"{path}: damaged sidecar (column {k!r} has other segment counts than "
                                      f"'seg_start')")
        self._starts = _numpy(cols["seg_start"].values, "column 'seg_start'", path)
        self.ends = _numpy(cols["seg_end"].values, "column 'seg_end'", path)
        """Every segment's end in characters (srp reads these; ``spans`` pairs them with the starts)."""
        self._spans: Optional[np.ndarray] = None
        self.byte_ends = _numpy(cols["seg_end_byte"].values, "column 'seg_end_byte'", path) if with_bytes else None
        self.codes, self.table = self._verdict_codes(_flat_values(cols["label"], "label", path),
                                                     _flat_values(cols["categories"], "categories", path), path)
        self._verdicts: Optional[list] = None
        self._bounds = self.offsets.tolist()
        self._used: list[int] = []
        self.texts_verified = False
        """Set by ``verify_input``: the input is the annotated file byte for byte, so no text is hashed again."""
        self._digest: Optional[InputDigest] = None

    @property
    def spans(self) -> np.ndarray:
        """Every segment's (start, end) in characters, built when first asked for (filter and rewrite): srp reads
        ``ends`` only, and the pairs cost its start-up 60 ms per GB of text."""
        if self._spans is None:
            spans = np.empty((len(self.ends), 2), dtype=np.int64)
            spans[:, 0], spans[:, 1] = self._starts, self.ends
            self._spans = spans
        return self._spans

    @property
    def text_shas(self) -> list:
        """Every row's text hash, decoded when first asked for (a verified input never asks)."""
        if self._text_shas is None:
            self._text_shas = self._text_sha_column.to_pylist()
        return self._text_shas

    @property
    def verdicts(self) -> list:
        """Every segment's ``Verdict`` (shared objects), built when first asked for: srp reads codes only."""
        if self._verdicts is None:
            self._verdicts = [self.table[c] for c in self.codes.tolist()]
        return self._verdicts

    def verify_input(self, input_path: str, digest: Optional["InputDigest"] = None) -> bool:
        """Whether ``input_path`` has the digest recorded at annotation (``digest``: its ``InputDigest``, taken
        here when not given and the sizes agree). When it has, ``segments`` skips the per-document text hash;
        otherwise (another file, or a sidecar from before digests) every text is checked."""
        self.texts_verified = False
        if not digest_may_match(self.meta, input_path):
            return False
        recorded = self.meta["input_digest"]
        self._digest = digest or InputDigest.of(input_path)
        self.texts_verified = (self._digest.hex, self._digest.size) == (recorded.get("hex"), recorded["bytes"])
        return self.texts_verified

    def assume_input(self, input_path: str) -> bool:
        """``verify_input`` ahead of the digest: when the sidecar recorded a digest for a file of ``input_path``'s
        size, take the file as the annotated one (no text is hashed) until ``confirm_input`` has its digest.
        Preprocessing's span processes start on this while their parent takes the digest: it is a pass over the
        whole file, and before them it kept a core idle (0.2 s per GB)."""
        self.texts_verified = False
        if not digest_may_match(self.meta, input_path):
            return False
        self._digest = InputDigest(None, *InputDigest.stat(input_path))
        self.texts_verified = True
        return True

    @property
    def digest_pending(self) -> bool:
        """``assume_input`` took the input as verified and ``confirm_input`` has not checked it yet."""
        return self._digest is not None and self._digest.hex is None

    def confirm_input(self, input_path: str) -> bool:
        """After ``assume_input``: whether the file has the recorded digest and is the file assumed then (same size
        and modification time). When not, ``texts_verified`` is off: what was read on the assumption is void."""
        assumed = self._digest
        digest = InputDigest.of(input_path)
        same_file = (digest.size, digest.mtime_ns) == (assumed.size, assumed.mtime_ns)
        if self.verify_input(input_path, digest) and same_file:
            return True
        self.texts_verified = False
        return False

    def check_unchanged(self, input_path: str) -> None:
        """After reading a verified input: it is still the file the digest was taken of (size and mtime)."""
        if self.texts_verified and InputDigest.stat(input_path) != (self._digest.size, self._digest.mtime_ns):
            raise AnnotationError(f"{input_path} changed while it was read (after its digest matched {self.path}); "
                                  f"run again on a file that is not being written")

    @staticmethod
    def _verdict_codes(labels: pa.Array, categories: pa.ListArray, path: str) -> tuple[np.ndarray, list[Verdict]]:
        """Each segment's index into the list of distinct verdicts, in order of first appearance. Read with
        dictionary-encoded strings (``read``), a segment's label and single category are two small integers:
        one numpy pass keys every segment; only segments with several categories go through Python."""
        cat_off = _numpy(categories.offsets, "the offsets of 'categories'", path)
        names = categories.values
        coded = isinstance(labels, pa.DictionaryArray) and isinstance(names, pa.DictionaryArray)
        label_of = labels.dictionary.to_pylist() if coded else []
        category_of = names.dictionary.to_pylist() if coded else []
        if not coded or len(set(label_of)) < len(label_of) or len(set(category_of)) < len(category_of):
            # plain strings, or a dictionary that spells one string twice (two codes, one verdict)
            return ShardAnnotations._verdict_codes_python(labels, categories, cat_off, path)
        label_idx = _numpy(labels.indices, "column 'label'", path).astype(np.int32, copy=False)  # (keys fit)
        cat_idx = _numpy(names.indices, "column 'categories'", path)
        n_cats = np.diff(cat_off)
        # key: label * (C + 1) + (its one category + 1, or 0 for none); several categories: keys past them all
        width = len(category_of) + 1
        keys = label_idx * width
        one = np.nonzero(n_cats == 1)[0]
        keys[one] += cat_idx[cat_off[one]] + 1
        several: dict = {}
        base = len(label_of) * width
        for j in np.nonzero(n_cats > 1)[0].tolist():
            combo = (int(label_idx[j]), tuple(cat_idx[cat_off[j]:cat_off[j + 1]].tolist()))
            keys[j] = base + several.setdefault(combo, len(several))
        distinct = np.flatnonzero(np.bincount(keys, minlength=base + len(several)))
        if len(distinct) <= 64:  # the usual case: a comparison per distinct verdict beats sorting every segment
            first = np.asarray([int(np.argmax(keys == k)) for k in distinct.tolist()], dtype=np.int64)
        else:
            first = np.unique(keys, return_index=True)[1]
        order = distinct[np.argsort(first, kind="stable")]  # first appearance, as the sidecar lists them
        code_of = np.empty(base + len(several), dtype=np.int32)  # codes: half the bytes of int64
        code_of[order] = np.arange(len(order))
        combos = {v: k for k, v in several.items()}
        table = []
        for key in order.tolist():
            if key >= base:
                label, cats = combos[key - base]
            else:
                label, cat = divmod(key, width)
                cats = (cat - 1,) if cat else ()
            table.append(Verdict(label_of[label], tuple(category_of[c] for c in cats)))
        return code_of[keys], table

    @staticmethod
    def _verdict_codes_python(labels: pa.Array, categories: pa.ListArray, cat_off: np.ndarray,
                              path: str) -> tuple[np.ndarray, list[Verdict]]:
        """``_verdict_codes`` keyed by the strings themselves (``to_pylist`` decodes dictionaries): a dict over
        every segment."""
        keys = labels.to_pylist()
        with_cats = np.nonzero(np.diff(cat_off))[0]
        if len(with_cats):
            names = categories.values.to_pylist()
            for j in with_cats.tolist():
                keys[j] = (keys[j], tuple(names[cat_off[j]:cat_off[j + 1]]))
        index: dict = {}
        codes = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))
        table = [Verdict(k[0], k[1]) if isinstance(k, tuple) else Verdict(k, ()) for k in index]
        return codes, table

    @classmethod
    def read(cls, path: str, meta: Optional[dict] = None) -> "ShardAnnotations":
        """``meta``: the sidecar's metadata when the caller has read it already (``read_metadata``)."""
        meta = read_metadata(path) if meta is None else meta
        # ParquetFile, not pq.read_table: the latter imports pyarrow.dataset and pandas (about 0.4 s). Labels and
        # categories come dictionary-encoded: no Python string per segment (1.5 M of them per GB of text).
        # pyarrow reads nested dictionaries from one row group only (tools/annotate.py writes one per shard up
        # to a million documents); a sidecar of several is read as strings.
        try:
            table = pq.ParquetFile(path, read_dictionary=DICTIONARY_COLUMNS).read()
        except pa.ArrowNotImplementedError:
            table = pq.ParquetFile(path).read()
        return cls(path, meta, table)

    def segments(self, doc: Document, input_path: str, deferred: Optional[list] = None) -> DocumentSegments:
        """The document's annotation, after checking it is the annotated document (line, id, and text hash
        unless ``verify_input`` found the file unchanged). With ``deferred``, the text-hash check is appended
        there for ``check_texts`` instead (preprocessing runs it on its encoding threads: hashing releases the
        GIL, the reading thread is the busiest)."""
        row = self.row_of_line.get(doc.line)
        if row is None:
            raise AnnotationError(f"{_where(input_path, doc)}: no annotation in {self.path}; the input changed "
                                  f"since annotation")
        if self.ids[row] != doc.id:
            raise AnnotationError(f"{_where(input_path, doc)}: annotation {self.path} has id {self.ids[row]!r} on "
                                  f"that line")
        if not self.texts_verified:
            check = (self.text_shas[row], doc, input_path, self.path)  # the message is built only for a mismatch
            if deferred is None:
                check_texts([check])
            else:
                deferred.append(check)
        self._used.append(row)
        a, b = self._bounds[row], self._bounds[row + 1]  # Python ints: numpy scalars cost more per document
        return DocumentSegments(self.spans[a:b], self.verdicts[a:b], self.codes[a:b], self.table,
                                None if self.byte_ends is None else self.byte_ends[a:b])

    def chunk_segments(self, docs: list[Document], input_path: str, deferred: Optional[list] = None) -> "ChunkSegments":
        """``segments`` of consecutive documents at once, as flat arrays: the same checks, with per-document
        work only in list operations (srp reads a sidecar this way; per-document calls cost it 0.5 s per GB)."""
        get = self.row_of_line.get
        rows = [get(d.line) for d in docs]
        ids = [self.ids[r] for r in rows] if None not in rows else None
        if ids is None or ids != [d.id for d in docs]:
            for d in docs:  # the first document that fails, named as ``segments`` names it
                self.segments(d, input_path, [])
        if not self.texts_verified:
            checks = [(self.text_shas[r], d, input_path, self.path) for r, d in zip(rows, docs)]
            if deferred is None:
                check_texts(checks)
            else:
                deferred.extend(checks)
        self._used.extend(rows)
        r = np.asarray(rows, dtype=np.int64)
        starts, counts = self.offsets[r], self.offsets[r + 1] - self.offsets[r]
        total = int(counts.sum())
        if len(r) and r[-1] - r[0] == len(r) - 1 and (np.diff(r) == 1).all():  # consecutive rows: one slice
            seg = slice(int(starts[0]), int(starts[0]) + total)
        else:
            seg = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
        return ChunkSegments(counts, self.ends[seg], self.codes[seg], self.table,
                             None if self.byte_ends is None else self.byte_ends[seg])

    def for_document(self, doc: Document, input_path: str) -> tuple[np.ndarray, list[Verdict]]:
        """(spans, verdicts) of the document; see ``segments``."""
        seg = self.segments(doc, input_path)
        return seg.spans, seg.verdicts

    def verdict_counts(self) -> dict[Verdict, int]:
        """How often each verdict occurs in the documents returned since the last call (a span process counts
        each piece it reads apart)."""
        rows = np.asarray(self._used, dtype=np.int64)
        self._used = []
        counts = np.diff(self.offsets)[rows]
        seg = np.repeat(self.offsets[rows] - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        per_code = np.bincount(self.codes[seg], minlength=len(self.table))
        return {v: int(n) for v, n in zip(self.table, per_code.tolist()) if n}


def write_manifest(out_dir: str, data: dict) -> None:
    path = os.path.join(out_dir, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise AnnotationError(f"--annotations {out_dir}: no {MANIFEST} there (not an output of tools/annotate.py, "
                              f"or the run did not finish)")
    with open(path) as f:
        return json.load(f)


def find_sidecar(annotations_dir: str, input_path: str, shard_name: str) -> str:
    """The sidecar of an input file: by its absolute path in the manifest, else by its shard name."""
    manifest = read_manifest(annotations_dir)
    by_input = {s["input"]: s["output"] for s in manifest.get("shards", [])}
    rel = by_input.get(os.path.abspath(input_path))
    path = os.path.join(annotations_dir, rel) if rel else sidecar_path(annotations_dir, shard_name)
    if not os.path.isfile(path):
        raise AnnotationError(f"{input_path}: no annotation sidecar in {annotations_dir} (looked for {path}); "
                              f"run tools/annotate.py on this input first")
    return path


__all__ = ["AnnotateSettings", "AnnotationError", "ChunkSegments", "DocumentSegments", "InputDigest", "digest_may_match", "ShardAnnotations", "ShardSummary", "annotate_shard",
           "build_segmenter", "check_reusable", "check_texts", "find_sidecar", "read_manifest", "read_metadata",
           "sidecar_path", "write_manifest", "CACHE", "PUNKT", "MANIFEST", "ClassifierError"]
