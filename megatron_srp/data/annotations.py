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
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from megatron_srp.data.classify import (Classifier, ClassifierError, ColumnClassifier, SegmentInput, VerdictCache,
                                        classify_cached)
from megatron_srp.data.verdict_log import MERGED, ShardVerdictCache
from megatron_srp.data.corpus import CorpusError, Document, ReadStats, read_documents, text_hash
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


def _metadata(settings: AnnotateSettings, classifier: Classifier, input_path: str, summary: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "input": os.path.abspath(input_path),
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


def build_segmenter(settings: AnnotateSettings, backend_tokenizer) -> Segmenter:
    # here, not at the top: NLTK takes seconds to import, and preprocessing reads sidecars without it
    from megatron_srp.data.segment import Segmenter, hf_token_offsets, punkt_from_json

    splitter = None
    if settings.punkt != "untrained":
        with open(settings.punkt) as f:
            splitter = punkt_from_json(json.load(f))
    return Segmenter(hf_token_offsets(backend_tokenizer), budget=settings.segment_tokens, splitter=splitter)


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
            columns["label"].append([v.label for v in verdicts])
            columns["categories"].append([list(v.categories) for v in verdicts])
            for v in verdicts:
                summary.labels[v.label] = summary.labels.get(v.label, 0) + 1
            summary.segments += len(spans)
        summary.documents += len(batch)
        on_progress(len(batch), sum(len(s) for s in all_spans))
    summary.skipped, summary.errors = read_stats.skipped, dict(read_stats.errors)
    summary.seconds = round(time.time() - start, 3)
    meta = _metadata(settings, classifier, input_path,
                     {k: getattr(summary, k) for k in ("documents", "segments", "skipped", "errors", "labels")})
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


@dataclass
class ShardAnnotations:
    """A sidecar read back, indexed by input line."""

    path: str
    meta: dict
    by_line: dict

    @classmethod
    def read(cls, path: str) -> "ShardAnnotations":
        meta = read_metadata(path)
        table = pq.read_table(path).to_pydict()
        by_line = {}
        for i, line in enumerate(table["line"]):
            by_line[line] = {k: table[k][i] for k in table}
        return cls(path, meta, by_line)

    def for_document(self, doc: Document, input_path: str) -> tuple[list[tuple[int, int]], list[Verdict]]:
        row = self.by_line.get(doc.line)
        where = f"{input_path}:{doc.line} (id {doc.id!r})"
        if row is None:
            raise AnnotationError(f"{where}: no annotation in {self.path}; the input changed since annotation")
        if row["id"] != doc.id:
            raise AnnotationError(f"{where}: annotation {self.path} has id {row['id']!r} on that line")
        if row["text_sha"] != text_hash(doc.text):
            raise AnnotationError(f"{where}: the text differs from the annotated text (hash mismatch with {self.path})")
        spans = list(zip(row["seg_start"], row["seg_end"]))
        verdicts = [Verdict(l, tuple(c)) for l, c in zip(row["label"], row["categories"])]
        return spans, verdicts


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


__all__ = ["AnnotateSettings", "AnnotationError", "ShardAnnotations", "ShardSummary", "annotate_shard",
           "build_segmenter", "check_reusable", "find_sidecar", "read_manifest", "read_metadata",
           "sidecar_path", "write_manifest", "CACHE", "PUNKT", "MANIFEST", "ClassifierError"]
