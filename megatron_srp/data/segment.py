"""Sentence-aligned segmentation of a document, packed up to a token budget.

Sentences come from NLTK's Punkt (an untrained ``PunktSentenceTokenizer`` works offline; one
trained on a corpus sample learns its abbreviations). Whitespace between sentences is attached to
the *following* sentence, because byte-level BPE tokens carry their leading space, so each piece
tokenizes as it does inside the whole document. Sentences are packed greedily while the segment
stays within the budget; a sentence longer than the budget is cut at token boundaries every
``budget`` tokens. Concatenating the segments gives back the document exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer

from megatron_srp.errors import SRPError

# (text) -> [(start, end)] character offsets of each token; the tokenizer adapters below build it.
TokenOffsets = Callable[[list[str]], list[list[tuple[int, int]]]]


class _LazyOffsets:
    """An encoding's token offsets, built only when indexed: packing needs just the count, and only a
    sentence over the budget is cut at offsets (building every offset list cost most of the segmenter)."""

    __slots__ = ("_enc", "_offsets")

    def __init__(self, enc):
        self._enc, self._offsets = enc, None

    def __len__(self) -> int:
        return len(self._enc)

    def __getitem__(self, i):
        if self._offsets is None:
            self._offsets = self._enc.offsets
        return self._offsets[i]


def hf_token_offsets(tokenizer) -> TokenOffsets:
    """Offsets from a ``tokenizers.Tokenizer`` (or a transformers fast tokenizer's backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)

    def offsets(texts: list[str]) -> list:
        return [_LazyOffsets(enc) for enc in backend.encode_batch(texts, add_special_tokens=False)]

    return offsets


def train_punkt(sample: Iterable[str]) -> PunktSentenceTokenizer:
    """A Punkt splitter trained on the corpus's own text (offline; learns abbreviations)."""
    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    for text in sample:
        trainer.train(text, finalize=False)
    trainer.finalize_training()
    return PunktSentenceTokenizer(trainer.get_params())


def punkt_to_json(splitter: PunktSentenceTokenizer) -> dict:
    """Punkt's learned parameters as JSON (NLTK refuses to load pickles from disk; we never need to)."""
    p = splitter._params
    return {
        "abbrev_types": sorted(p.abbrev_types),
        "collocations": sorted(list(c) for c in p.collocations),
        "sent_starters": sorted(p.sent_starters),
        "ortho_context": dict(sorted(p.ortho_context.items())),
    }


def punkt_from_json(data: dict) -> PunktSentenceTokenizer:
    params = PunktParameters()
    params.abbrev_types = set(data["abbrev_types"])
    params.collocations = {tuple(c) for c in data["collocations"]}
    params.sent_starters = set(data["sent_starters"])
    for word, flags in data["ortho_context"].items():
        params.ortho_context[word] = int(flags)
    return PunktSentenceTokenizer(params)


class SegmentBudgetError(SRPError, ValueError):
    """A segment budget that cannot work (the --segment-tokens flag)."""


@dataclass
class Segmenter:
    """Cuts documents into sentence-aligned segments of at most ``budget`` tokens."""

    token_offsets: TokenOffsets
    budget: int = 256
    splitter: Optional[PunktSentenceTokenizer] = None

    def __post_init__(self):
        if self.budget < 1:
            raise SegmentBudgetError(f"segment budget must be >= 1 token, got {self.budget}")
        if self.splitter is None:
            self.splitter = PunktSentenceTokenizer()

    def sentences(self, text: str) -> list[str]:
        """Pieces covering ``text`` exactly: leading whitespace + one sentence each."""
        spans = list(self.splitter.span_tokenize(text))
        if not spans:
            return [text] if text else []
        # Each later sentence starts at its span, moved back over the whitespace before it.
        cuts = [0] + [self._back_over_space(text, start) for start, _ in spans[1:]]
        return [text[a:b] for a, b in zip(cuts, cuts[1:] + [len(text)]) if b > a]

    @staticmethod
    def _back_over_space(text: str, i: int) -> int:
        while i > 0 and text[i - 1].isspace():
            i -= 1
        return i

    def spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """(start, end) character spans of each text's segments; they tile the text exactly."""
        out = []
        for segments in self.segment_many(texts):
            bounds, pos = [], 0
            for seg in segments:
                bounds.append((pos, pos + len(seg)))
                pos += len(seg)
            out.append(bounds)
        return out

    def segment(self, text: str) -> list[str]:
        return self.segment_many([text])[0]

    def segment_many(self, texts: Sequence[str]) -> list[list[str]]:
        """Segments of each text (the tokenizer runs once per batch)."""
        pieces = [self.sentences(t) for t in texts]
        flat = [p for ps in pieces for p in ps]
        offsets = self.token_offsets(flat) if flat else []
        out, k = [], 0
        for ps in pieces:
            out.append(self._pack(ps, offsets[k:k + len(ps)]))
            k += len(ps)
        return out

    def _pack(self, pieces: list[str], offsets: list[list[tuple[int, int]]]) -> list[str]:
        segments: list[str] = []
        current, current_tokens = "", 0
        for piece, offs in zip(pieces, offsets):
            n = len(offs)
            if n > self.budget:  # an over-long sentence: flush, then cut it every `budget` tokens
                if current:
                    segments.append(current)
                    current, current_tokens = "", 0
                segments.extend(self._hard_cut(piece, offs))
                continue
            if current and current_tokens + n > self.budget:
                segments.append(current)
                current, current_tokens = "", 0
            current += piece
            current_tokens += n
        if current:
            segments.append(current)
        return segments

    def _hard_cut(self, piece: str, offs: list[tuple[int, int]]) -> list[str]:
        cuts = [offs[i][0] for i in range(self.budget, len(offs), self.budget)]
        bounds = [0, *cuts, len(piece)]
        return [piece[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
