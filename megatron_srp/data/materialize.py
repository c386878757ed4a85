"""Materialize many: the plain / srp / filter / rewrite token streams of documents and their annotations.

One document in, at most one token sequence out (plus a role sequence for ``srp``):

- ``plain``: the document's tokens (+ end of document), as Megatron-LM's preprocess_data.py makes them.
- ``srp``: the same tokens with each segment's reflection inserted by id after the segment's last
  token. The document is tokenized once, so srp tokens are exactly the plain tokens plus the
  reflection tokens; the role sequence marks the inserted tokens (and only them) as reflection.
- ``filter``: documents with a flagged segment dropped (``document`` granularity), or flagged
  segments cut out of the text (``segment`` granularity, the rest retokenized).
- ``rewrite``: flagged segments replaced by a rewriter's safe text, the document retokenized.

Injection guard (on by default, every variant): occurrences of the reflection tags in source text
are neutralized (``ReflectionFormat.neutralize``) and special-token strings are encoded as text,
so only inserted reflections can ever look like one. ``ChunkOutput.guard_changed`` counts the
documents where it did something (a tag or a special-token string in the text): the only documents
whose tokens differ from Megatron-LM's.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import numpy as np

from megatron_srp.data.roles import ROLE_REFLECTION, ROLE_TEXT
from megatron_srp.data.fast_tokenizer import char_to_byte
from megatron_srp.data.indexed_writer import optimal_dtype
from megatron_srp.data.tokenizer import TextTokenizer
from megatron_srp.reflection import ZERO_WIDTH_SPACE, ReflectionFormat, Verdict

_ZWSP_BYTES = len(ZERO_WIDTH_SPACE.encode("utf-8"))  # what the guard inserts, in UTF-8 bytes
assert (ROLE_TEXT, ROLE_REFLECTION) == (0, 1)  # srp's roles are "not kept" as bytes (``DocumentEncoder._insert``)

Variant = Literal["plain", "srp", "filter", "rewrite"]
VARIANTS = ("plain", "srp", "filter", "rewrite")


@dataclass
class MaterializeSettings:
    variant: Variant = "plain"
    """Which corpus to build from the annotations."""
    append_eod: bool = True
    """End every non-empty document with the tokenizer's end-of-text id (Megatron-LM's --append-eod)."""
    filter_granularity: Literal["document", "segment"] = "document"
    """filter: drop whole documents with a flagged segment, or only the flagged segments."""
    flagged_labels: tuple[str, ...] = ("unsafe",)
    """Labels that filter drops and rewrite replaces (add ``controversial`` to treat it as unsafe)."""
    injection_guard: bool = True
    """Neutralize reflection tags in source text and encode special-token strings as text."""
    reflection: ReflectionFormat = field(default_factory=ReflectionFormat)
    """The reflection format (srp)."""


@dataclass
class DocInput:
    texts: list
    """One text per json key."""
    spans: Optional[list] = None
    """Segment spans into the original text (first json key), from the annotations."""
    verdicts: Optional[list] = None
    replacements: Optional[dict] = None
    """rewrite: segment index -> replacement text."""
    verdict_codes: Optional[np.ndarray] = None
    """Optional: each verdict's index into ``verdict_table`` (the sidecar's distinct verdicts, shared by
    the documents of a file), so srp looks up reflections per distinct verdict, not per segment."""
    verdict_table: Optional[list] = None
    byte_ends: Optional[np.ndarray] = None
    """Optional: the spans' ends in UTF-8 bytes of the original text (the sidecar's), so srp converts none."""


@dataclass
class DocOutput:
    tokens: list
    """One int64 array per json key; None when the document is dropped."""
    roles: Optional[np.ndarray] = None
    reflection_tokens: int = 0
    segments_dropped: int = 0
    segments_rewritten: int = 0


@dataclass
class PlainBatch:
    """plain: a chunk's documents per json key as one flat id array and each document's length."""

    flats: list
    lengths: list
    roles: Optional[np.ndarray] = None
    """srp: the role of every token of ``flats[0]``."""


@dataclass
class ChunkOutput:
    """What one chunk of documents became: a ``PlainBatch`` (plain) or one ``DocOutput`` per document."""

    plain: Optional[PlainBatch] = None
    docs: Optional[list] = None
    reflection_tokens: int = 0
    guard_changed: int = 0
    """Documents the injection guard changed (a reflection tag or a special-token string in the text)."""


def _insert_at(ids: np.ndarray, new_pos: np.ndarray, values, dtype) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` with ``values`` inserted so that they land at ``new_pos`` (their places in the result), as ``dtype``;
    and where the ids went (a mask over the result). Written straight in the output's dtype: no widened copy, none
    for the writer to narrow."""
    out = np.empty(len(ids) + len(new_pos), dtype=dtype)
    keep = np.ones(len(out), dtype=bool)
    keep[new_pos] = False
    out[keep] = ids
    out[new_pos] = values
    return out, keep


class DocumentEncoder:
    """Turns ``DocInput`` into ``DocOutput``; one per worker process, shared by its encoding threads."""

    def __init__(self, tokenizer_model: str, settings: MaterializeSettings, backend: str = "auto"):
        self.settings = settings
        self.tok = TextTokenizer(tokenizer_model, guard_special_tokens=settings.injection_guard, backend=backend)
        self.out_dtype = optimal_dtype(self.tok.vocab_size)
        """The .bin's token type (Megatron-Core's choice): plain and srp build their arrays in it."""
        self._reflection_ids: dict[Verdict, int] = {}
        self._reflections: list[np.ndarray] = []
        self._table_index: dict[int, tuple[list, np.ndarray]] = {}
        self._refl_len = self._refl_start = self._refl_flat = np.zeros(0, np.int64)
        self._lock = threading.RLock()
        fmt = settings.reflection
        # One scan finds the documents the guard touches (most have neither a tag nor a special string).
        needles = sorted({fmt.open_tag, fmt.close_tag, *self.tok.special_strings}, key=len, reverse=True)
        self._guard_scan = re.compile("|".join(map(re.escape, needles)))
        # plain and srp: gigatoken finds those documents as it encodes them (no scan of every character with the GIL
        # held: 0.4-0.9 s per GB of real text, BENCHMARKS.md); the scan above where it cannot
        self._watching = settings.injection_guard and self.tok.watch(needles)

    def reflection_ids(self, verdict: Verdict) -> np.ndarray:
        return self._reflections[self._reflection_index(verdict)]

    def _reflection_index(self, verdict: Verdict) -> int:
        index = self._reflection_ids.get(verdict)
        if index is not None:
            return index
        with self._lock:  # preprocessing encodes two chunks at once; a new verdict is added by one of them
            if verdict not in self._reflection_ids:
                self._reflections.append(self.tok.encode_control(self.settings.reflection.render(verdict)))
                lens = np.fromiter(map(len, self._reflections), dtype=np.int64, count=len(self._reflections))
                self._refl_len, self._refl_start = lens, np.cumsum(lens) - lens
                self._refl_flat = np.concatenate(self._reflections).astype(np.int64)
                self._reflection_ids[verdict] = len(self._reflections) - 1  # last: the tables are ready
            return self._reflection_ids[verdict]

    def _segment_reflections(self, doc: DocInput) -> np.ndarray:
        """Each segment's index into ``self._reflections``: per distinct verdict when the codes are given."""
        if doc.verdict_codes is None:
            return np.fromiter(map(self._reflection_index, doc.verdicts), dtype=np.int64, count=len(doc.verdicts))
        return self._codes_to_reflections(doc.verdict_table, doc.verdict_codes)

    def _codes_to_reflections(self, table: list, codes: np.ndarray) -> np.ndarray:
        """Indices into ``self._reflections`` of verdict ``codes`` into ``table`` (a sidecar's distinct verdicts)."""
        entry = self._table_index.get(id(table))  # (the table is kept alive: its id is never reused)
        if entry is None:
            with self._lock:
                entry = self._table_index.setdefault(id(table), (table, np.full(len(table), -1, dtype=np.int64)))
        mapping = entry[1]
        found = mapping[codes]
        if (found < 0).any():  # rendered when first used
            with self._lock:
                for code in np.unique(codes[found < 0]).tolist():
                    mapping[code] = self._reflection_index(table[code])
            found = mapping[codes]
        return found

    def _guard(self, text: str) -> tuple[str, list[int], bool]:
        """(text as tokenized, offsets where U+200B went in, whether the guard changed the document)."""
        if not self.settings.injection_guard or self._guard_scan.search(text) is None:
            return text, [], False
        points = self.settings.reflection.neutralize_points(text)
        return (self.settings.reflection.neutralize(text) if points else text), points, True

    def _guard_all(self, texts) -> tuple[list[str], list[list[int]], np.ndarray]:
        """Guarded texts, their U+200B offsets, and which documents the guard changed."""
        guarded = [self._guard(t) for t in texts]
        changed = np.fromiter((g[2] for g in guarded), dtype=bool, count=len(guarded))
        return [g[0] for g in guarded], [g[1] for g in guarded], changed

    def _finish(self, ids: np.ndarray) -> np.ndarray:
        if self.settings.append_eod and len(ids):
            ids = np.append(ids, self.tok.eod)
        return ids

    def _flagged(self, verdict: Verdict) -> bool:
        return verdict.label in self.settings.flagged_labels

    def encode(self, docs: Sequence[DocInput], segments=None) -> ChunkOutput:
        """A chunk's outputs. srp's annotations come per document (``DocInput.spans``...) or, from preprocessing,
        as the chunk's flat arrays (``segments``: ``annotations.ChunkSegments``)."""
        variant = self.settings.variant
        if variant == "plain":
            return self._plain(docs)
        if variant == "srp":
            return self._srp(docs, segments)
        return self._edited(docs)

    def _plain(self, docs) -> ChunkOutput:
        keys = len(docs[0].texts) if docs else 0
        flats, lengths, changed = [], [], np.zeros(len(docs), dtype=bool)
        for k in range(keys):
            if self._watching:
                flat, lens, changed_k = self.tok.encode_flat_watched([d.texts[k] for d in docs],
                                                                     self.settings.reflection.neutralize)
            else:
                texts, _, changed_k = self._guard_all([d.texts[k] for d in docs])
                flat, lens = self.tok.encode_flat(texts)
            changed |= changed_k
            if self.settings.append_eod:  # the end of document after every non-empty one, in one pass
                ends = np.cumsum(lens)[lens > 0]  # (increasing: the k-th lands k places later)
                flat, _ = _insert_at(flat, ends + np.arange(len(ends)), self.tok.eod, self.out_dtype)
                lens = lens + (lens > 0)
            flats.append(flat)
            lengths.append(lens)
        return ChunkOutput(plain=PlainBatch(flats, lengths), guard_changed=int(changed.sum()))

    def _srp(self, docs, segments=None) -> ChunkOutput:
        """The chunk's tokens in one array; every reflection and end of document placed with one searchsorted
        and written with one scatter."""
        # Token starts on the chunk's byte line (text i's UTF-8 bytes from bases[i]): increasing across
        # documents, so each segment end finds its token in one search over the whole chunk.
        if self._watching:  # the guard's rewrite (and its insertion points) only for the documents that need it
            fmt, texts = self.settings.reflection, [d.texts[0] for d in docs]
            ids, starts, lengths, bases, changed = self.tok.encode_flat_with_token_starts_watched(texts, fmt.neutralize)
            all_points = [fmt.neutralize_points(t) if hit else [] for t, hit in zip(texts, changed.tolist())]
            texts = [fmt.neutralize(t) if hit else t for t, hit in zip(texts, changed.tolist())]
        else:
            texts, all_points, changed = self._guard_all([d.texts[0] for d in docs])
            ids, starts, lengths, bases = self.tok.encode_flat_with_token_starts(texts)
        if segments is None:
            flat = self._flat_segments(docs)
        else:
            flat = (segments.counts, segments.ends, self._codes_to_reflections(segments.table, segments.codes),
                    segments.byte_ends)
        seg_ends, refl, seg_doc = self._segment_ends(*flat, texts, all_points, lengths, bases)
        # A reflection goes before the first token that starts at or after its segment's end (at a document's
        # end: before the next document's first token, so it ends this document).
        cuts = starts.first_at_or_after(seg_ends)
        refl_len = self._refl_len[refl]
        text_ends = np.cumsum(lengths)  # in ids: where each document's text tokens end
        lengths = lengths + np.bincount(seg_doc, weights=refl_len, minlength=len(docs)).astype(np.int64)
        nonempty = lengths > 0
        eod_at = text_ends[nonempty] if self.settings.append_eod else np.zeros(0, np.int64)
        out, roles = self._insert(ids, cuts, refl, eod_at)
        if self.settings.append_eod:
            lengths = lengths + nonempty
        return ChunkOutput(plain=PlainBatch([out], [lengths], roles), guard_changed=int(changed.sum()),
                           reflection_tokens=int(refl_len.sum()))

    def _insert(self, ids: np.ndarray, cuts: np.ndarray, refl: np.ndarray, eod_at: np.ndarray) -> tuple:
        """``ids`` with reflection ``refl[i]`` inserted before token ``cuts[i]`` and an end of document before each
        of ``eod_at`` (after the reflections inserted there), in the output's dtype; and every token's role.
        Both lists are sorted, so the inserted runs are merged in order by two searches: no sort of every
        inserted token (a stable argsort of every inserted token's place and its gathers were a quarter of srp's
        insertion)."""
        r, m = len(cuts), len(eod_at)
        refl_rank = np.arange(r) + np.searchsorted(eod_at, cuts, "left")  # (an end of document at a cut: after)
        eod_rank = np.arange(m) + np.searchsorted(cuts, eod_at, "right")
        at, run_len, src = np.empty(r + m, np.int64), np.empty(r + m, np.int64), np.empty(r + m, np.int64)
        at[refl_rank], at[eod_rank] = cuts, eod_at
        run_len[refl_rank], run_len[eod_rank] = self._refl_len[refl], 1
        pool = np.append(self._refl_flat, self.tok.eod).astype(self.out_dtype)  # every reflection's ids, then the EOD
        src[refl_rank], src[eod_rank] = self._refl_start[refl], len(pool) - 1
        first = np.cumsum(run_len) - run_len  # inserted tokens before each run
        order = np.arange(int(run_len.sum()))
        new_pos = np.repeat(at, run_len) + order  # token t of run j lands at at[j] + first[j] + t
        out, keep = _insert_at(ids, new_pos, pool[np.repeat(src - first, run_len) + order], self.out_dtype)
        roles = np.logical_not(keep).view(np.uint8)  # ROLE_REFLECTION where a token was inserted,
        roles[new_pos[first[eod_rank]]] = ROLE_TEXT  # except the ends of document
        return out, roles

    def _flat_segments(self, docs) -> tuple:
        """Per-document annotations as ``_segment_ends`` takes them: counts, character ends, reflections, byte
        ends."""
        counts = np.fromiter((len(d.verdicts or ()) for d in docs), dtype=np.int64, count=len(docs))
        spans = np.concatenate([np.zeros((0, 2), np.int64), *(np.asarray(d.spans if d.spans is not None else (),
                                                                          dtype=np.int64).reshape(-1, 2) for d in docs)])
        table = docs[0].verdict_table if docs else None
        if table is not None and all(d.verdict_table is table and d.verdict_codes is not None for d in docs):
            refl = self._codes_to_reflections(table, np.concatenate([d.verdict_codes for d in docs]))
        else:  # one lookup per segment
            refl = np.concatenate([np.zeros(0, np.int64), *(self._segment_reflections(d) for d in docs if d.verdicts)])
        byte_ends = np.concatenate([d.byte_ends for d in docs]) if docs and all(
            d.byte_ends is not None for d in docs) else None
        return counts, spans[:, 1], refl, byte_ends

    def _segment_ends(self, counts, char_ends, refl, byte_ends, texts, all_points, lengths, bases) -> tuple:
        """Every segment end of the chunk on its byte line, the reflection each one gets (an index into
        ``self._reflections``; verdict codes are mapped here) and its document. Documents without tokens get
        none. With the sidecar's byte ends, per-document work only where the guard inserted characters;
        without them, also where a text is not ASCII."""
        owner = np.repeat(np.arange(len(counts)), counts)
        first = np.cumsum(counts) - counts
        if byte_ends is None:  # characters: converted below where a text is not ASCII
            ends = char_ends.astype(np.int64)
            todo = [i for i in np.flatnonzero(counts).tolist() if all_points[i] or not texts[i].isascii()]
        else:
            ends = byte_ends.astype(np.int64)
            todo = [i for i, points in enumerate(all_points) if points and counts[i]]
        for i in todo:
            a, b = first[i], first[i] + counts[i]
            chars = char_ends[a:b]
            # the guard inserted U+200B: a segment end moves right by the insertions before it (3 bytes each)
            moved = np.searchsorted(np.asarray(all_points[i]), chars, "left") if all_points[i] else 0
            if byte_ends is not None:
                ends[a:b] += moved * _ZWSP_BYTES
            else:
                ends[a:b] = char_to_byte(texts[i], chars + moved)
        keep = lengths[owner] > 0  # an empty text has nothing to reflect on
        if not keep.all():
            ends, refl, owner = ends[keep], refl[keep], owner[keep]
        return ends + bases[owner], refl, owner

    def _edited(self, docs):
        """filter and rewrite: build the new text, then tokenize it like plain."""
        texts, results = [], []
        for doc in docs:
            text = doc.texts[0]
            flagged = [i for i, v in enumerate(doc.verdicts) if self._flagged(v)]
            if self.settings.variant == "filter" and self.settings.filter_granularity == "document":
                if flagged:
                    results.append(DocOutput([None], segments_dropped=len(doc.spans)))
                    continue
                texts.append(text)
                results.append(DocOutput([]))
                continue
            pieces, dropped, rewritten = [], 0, 0
            for i, (a, b) in enumerate(doc.spans):
                if i not in flagged:
                    pieces.append(text[a:b])
                elif self.settings.variant == "filter":
                    dropped += 1
                else:
                    pieces.append(doc.replacements[i])
                    rewritten += 1
            new_text = "".join(pieces)
            texts.append(new_text)
            results.append(DocOutput([], segments_dropped=dropped, segments_rewritten=rewritten))
        guarded, _, changed = self._guard_all(texts)
        ids = iter(self.tok.encode_ids(guarded))
        for r in results:
            if r.tokens == []:
                r.tokens = [self._finish(next(ids))]
        return ChunkOutput(docs=results, guard_changed=int(changed.sum()))
