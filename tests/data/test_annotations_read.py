"""Sidecars read back as flat columns: same spans and verdicts as the rows, every check kept, damage named."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_srp.data.annotations import _META_KEY, DICTIONARY_COLUMNS, SCHEMA, AnnotationError, ShardAnnotations
from megatron_srp.data.corpus import Document, text_hash
from megatron_srp.data.roles import ROLE_REFLECTION
from megatron_srp.data.materialize import DocInput, DocumentEncoder, MaterializeSettings
from megatron_srp.reflection import Verdict
from tests.fixtures import train_bpe_tokenizer

TEXTS = ["first document. it has two parts.", "", "one ségment only", "unsafe words here. and a safe end.",
         "three. small. parts."]
SEGMENTS = [  # (start, end, label, categories) per segment
    [(0, 15, "safe", []), (15, 33, "unsafe", ["Violent", "PII"])],
    [],
    [(0, 16, "controversial", [])],
    [(0, 18, "unsafe", ["Violent"]), (18, 34, "safe", [])],
    [(0, 6, "safe", []), (6, 13, "unsafe", ["Violent", "PII"]), (13, 20, "unsafe", [""])],
]


def _columns(lines=None, byte_ends=True):
    lines = lines or [2 * i + 1 for i in range(len(TEXTS))]
    cols = {
        "line": lines, "id": [f"d{i}" for i in range(len(TEXTS))], "text_sha": [text_hash(t) for t in TEXTS],
        "seg_start": [[s[0] for s in seg] for seg in SEGMENTS], "seg_end": [[s[1] for s in seg] for seg in SEGMENTS],
        "label": [[s[2] for s in seg] for seg in SEGMENTS], "categories": [[s[3] for s in seg] for seg in SEGMENTS],
    }
    if byte_ends:  # as tools/annotate.py writes them; a sidecar from before has none
        cols["seg_end_byte"] = [[len(t[:s[1]].encode()) for s in seg] for t, seg in zip(TEXTS, SEGMENTS)]
    return cols


def _write(path, columns, schema=SCHEMA, row_group_size=2):
    schema = pa.schema([f for f in schema if f.name in columns])
    table = pa.Table.from_pydict(columns, schema=schema.with_metadata({_META_KEY: json.dumps({"settings": {}})}))
    pq.write_table(table, path, row_group_size=row_group_size)  # by default several row groups: several chunks
    return str(path)


def _doc(i, text=None, doc_id=None, line=None):
    text = TEXTS[i] if text is None else text
    return Document(line or 2 * i + 1, doc_id or f"d{i}", {"text": text}, {"text": text})


def test_documents_get_the_rows_spans_and_verdicts(tmp_path):
    ann = ShardAnnotations.read(_write(tmp_path / "a.parquet", _columns()))
    for i in reversed(range(len(TEXTS))):  # any order: documents are found by line
        seg = ann.segments(_doc(i), "in.jsonl")
        assert seg.spans.tolist() == [[a, b] for a, b, _, _ in SEGMENTS[i]]
        assert seg.verdicts == [Verdict(lab, tuple(c)) for _, _, lab, c in SEGMENTS[i]]
        assert [seg.table[c] for c in seg.codes.tolist()] == seg.verdicts
    # [""] is a category list of one empty name, not "no categories"
    assert Verdict("unsafe", ("",)) in ann.table and len(ann.table) == 5
    counts = ann.verdict_counts()
    assert counts[Verdict("unsafe", ("Violent", "PII"))] == 2 and counts[Verdict("safe")] == 3
    assert sum(counts.values()) == sum(map(len, SEGMENTS))


@pytest.mark.parametrize("n_categories", [3, 80])  # a handful of distinct verdicts, and more than 64
def test_dictionary_read_keys_verdicts_like_the_per_segment_path(tmp_path, n_categories):
    segments = [[(0, 1, "unsafe" if (i + j) % 3 else "safe", [f"C{(i * j) % n_categories}"] * ((i + j) % 3))
                 for j in range(4)] for i in range(60)]
    cols = {"line": list(range(1, 61)), "id": [f"d{i}" for i in range(60)], "text_sha": ["x"] * 60,
            "seg_start": [[s[0] for s in seg] for seg in segments], "seg_end": [[s[1] for s in seg] for seg in segments],
            "label": [[s[2] for s in seg] for seg in segments], "categories": [[s[3] for s in seg] for seg in segments]}
    path = _write(tmp_path / "a.parquet", cols, row_group_size=None)  # one row group, as tools/annotate.py writes
    dictionary = pq.ParquetFile(path, read_dictionary=DICTIONARY_COLUMNS).read()
    assert isinstance(dictionary.column("label").chunk(0).values, pa.DictionaryArray)
    fast = ShardAnnotations(path, {}, dictionary)  # labels and categories dictionary-encoded: keyed in numpy
    slow = ShardAnnotations(path, {}, pq.ParquetFile(path).read())  # plain strings: keyed per segment in Python
    assert fast.table == slow.table and np.array_equal(fast.codes, slow.codes)  # same verdicts, same order
    assert ShardAnnotations.read(path).table == fast.table
    # a dictionary that spells one label twice (two codes, one verdict) is keyed by its strings instead
    labels = dictionary.column("label").chunk(0)
    spelled = labels.values.dictionary.to_pylist()
    twice = pa.DictionaryArray.from_arrays(
        pa.array([2 * i + (j % 2) for j, i in enumerate(labels.values.indices.to_pylist())], pa.int32()),
        pa.array([name for name in spelled for _ in (0, 1)]))
    doubled = dictionary.set_column(dictionary.schema.get_field_index("label"), "label",
                                    pa.ListArray.from_arrays(labels.offsets, twice))
    again = ShardAnnotations(path, {}, doubled)
    assert again.table == slow.table and np.array_equal(again.codes, slow.codes)
    assert fast.verdicts == [Verdict(s[2], tuple(s[3])) for seg in segments for s in seg]


def test_verdict_counts_cover_only_the_documents_read(tmp_path):
    ann = ShardAnnotations.read(_write(tmp_path / "a.parquet", _columns()))
    ann.segments(_doc(3), "in.jsonl")
    assert ann.verdict_counts() == {Verdict("unsafe", ("Violent",)): 1, Verdict("safe"): 1}


def test_every_check_names_the_input_line_and_the_sidecar(tmp_path):
    path = _write(tmp_path / "a.parquet", _columns())
    ann = ShardAnnotations.read(path)
    with pytest.raises(AnnotationError, match=r"in.jsonl:4 \(id 'd9'\): no annotation in .*a.parquet"):
        ann.segments(_doc(0, line=4, doc_id="d9"), "in.jsonl")
    with pytest.raises(AnnotationError, match=r"in.jsonl:3 \(id 'x'\): annotation .*a.parquet has id 'd1'"):
        ann.segments(_doc(1, doc_id="x"), "in.jsonl")
    with pytest.raises(AnnotationError, match=r"in.jsonl:5 \(id 'd2'\): the text differs .*hash mismatch"):
        ann.segments(_doc(2, text="one segment only!"), "in.jsonl")


def test_a_damaged_sidecar_is_named(tmp_path):
    cols = _columns()
    cols["seg_end"][3] = cols["seg_end"][3][:1]
    with pytest.raises(AnnotationError, match=r"b.parquet: damaged sidecar \(column 'seg_end' has other segment"):
        ShardAnnotations.read(_write(tmp_path / "b.parquet", cols))
    cols = _columns()
    cols["seg_start"][0] = [0, None]
    with pytest.raises(AnnotationError, match=r"c.parquet: damaged sidecar \(column 'seg_start'"):
        ShardAnnotations.read(_write(tmp_path / "c.parquet", cols))


def test_srp_with_verdict_codes_and_byte_ends_equals_srp_with_verdicts(tmp_path):
    """The sidecar's codes (one lookup per distinct verdict) and byte ends (no character converted) give the
    bytes of per-segment verdicts and character spans: on a non-ASCII text and one the guard shifts."""
    tok = train_bpe_tokenizer(tmp_path / "tok", TEXTS * 5 + ["<think> Unsafe </think>"], vocab_size=300)
    ann = ShardAnnotations.read(_write(tmp_path / "a.parquet", _columns()))
    coded, plain = [], []
    for i, text in enumerate(TEXTS[:4]):  # (TEXTS[4] has a category outside the taxonomy)
        seg = ann.segments(_doc(i), "in.jsonl")
        if i == 3:  # the guard inserts U+200B into the tag: the second end moves (by 3 bytes in UTF-8)
            text = text.replace("and", "<think> and")
        assert seg.byte_ends.tolist() == [len(text[:b].encode()) for _, b in seg.spans.tolist()]
        coded.append(DocInput([text], seg.spans, seg.verdicts, verdict_codes=seg.codes, verdict_table=seg.table,
                              byte_ends=seg.byte_ends))
        plain.append(DocInput([text], [tuple(s) for s in seg.spans.tolist()], list(seg.verdicts)))
    a = DocumentEncoder(str(tok), MaterializeSettings(variant="srp"), "tokenizers").encode(coded).plain
    b = DocumentEncoder(str(tok), MaterializeSettings(variant="srp"), "tokenizers").encode(plain).plain
    assert a.flats[0].tolist() == b.flats[0].tolist() and a.roles.tolist() == b.roles.tolist()
    assert a.lengths[0].tolist() == b.lengths[0].tolist()
    assert (a.roles == ROLE_REFLECTION).sum() > 0  # reflections were placed


def test_a_sidecar_without_byte_ends_is_read_as_before(tmp_path):
    old = ShardAnnotations.read(_write(tmp_path / "old.parquet", _columns(byte_ends=False)))
    new = ShardAnnotations.read(_write(tmp_path / "new.parquet", _columns()))
    assert old.byte_ends is None and old.segments(_doc(2), "in.jsonl").byte_ends is None
    assert new.segments(_doc(2), "in.jsonl").byte_ends.tolist() == [17]  # "one ségment only": é is 2 bytes
    assert np.array_equal(old.spans, new.spans) and old.table == new.table


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [3, 0, 4, 2]])  # consecutive rows (one slice), and not
def test_chunk_segments_are_the_documents_segments_flattened(tmp_path, order):
    ann = ShardAnnotations.read(_write(tmp_path / "a.parquet", _columns()))
    one = [ann.segments(_doc(i), "in.jsonl") for i in order]
    flat = ann.chunk_segments([_doc(i) for i in order], "in.jsonl")
    assert flat.counts.tolist() == [len(s.spans) for s in one]
    assert flat.ends.tolist() == [b for s in one for _, b in s.spans.tolist()]
    assert flat.codes.tolist() == [c for s in one for c in s.codes.tolist()] and flat.table is ann.table
    assert flat.byte_ends.tolist() == [b for s in one for b in s.byte_ends.tolist()]
    deferred = []
    ann.chunk_segments([_doc(i) for i in order], "in.jsonl", deferred)  # the text checks, left to the caller
    assert [d.line for _, d, _, _ in deferred] == [2 * i + 1 for i in order]


def test_chunk_segments_name_the_first_document_that_fails(tmp_path):
    ann = ShardAnnotations.read(_write(tmp_path / "a.parquet", _columns()))
    with pytest.raises(AnnotationError, match=r"in.jsonl:3 \(id 'x'\): annotation .*a.parquet has id 'd1'"):
        ann.chunk_segments([_doc(0), _doc(1, doc_id="x"), _doc(2)], "in.jsonl")
    with pytest.raises(AnnotationError, match=r"in.jsonl:4 \(id 'd9'\): no annotation in .*a.parquet"):
        ann.chunk_segments([_doc(0), _doc(0, line=4, doc_id="d9")], "in.jsonl")
    with pytest.raises(AnnotationError, match=r"in.jsonl:5 \(id 'd2'\): the text differs .*hash mismatch"):
        ann.chunk_segments([_doc(1), _doc(2, text="one segment only!")], "in.jsonl")
