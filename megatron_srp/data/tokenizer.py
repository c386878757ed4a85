"""The target tokenizer of a Hugging Face tokenizer directory, made injection-safe for corpus text.

Megatron-LM's ``tools/preprocess_data.py`` calls the transformers tokenizer with its defaults: the
post-processor's special tokens (BOS for Llama-style tokenizers) are added to each document, and a
literal special-token string in the text (``<|endoftext|>``) becomes the control id. We produce the
same ids except for the second point: with ``guard_special_tokens`` (the default) such strings are
encoded as ordinary text (``tokenizers``' ``encode_special_tokens``), and control ids (end of
document, registered reflection tags) are only ever inserted by id.

Document text goes through gigatoken (``fast_tokenizer``) when it is installed and gives the same
ids on this tokenizer; ``tokenizers`` otherwise (``backend`` says which, ``fallback_reason`` why).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from tokenizers import Tokenizer

from megatron_srp.data.fast_tokenizer import FastEncoder, FastPathUnavailable, SortedStarts, TokenStarts, byte_line
from megatron_srp.errors import SRPError

BACKENDS = ("auto", "gigatoken", "tokenizers")


class TokenizerError(SRPError, ValueError):
    pass


def eod_token_id(path: str, tok: Tokenizer) -> int:
    """The end-of-text id: ``eos_token`` of tokenizer_config.json, else a conventional name."""
    eos = None
    cfg_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            eos = json.load(f).get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
    for candidate in [eos, "<|endoftext|>", "</s>", "<eos>"]:
        if candidate and tok.token_to_id(candidate) is not None:
            return tok.token_to_id(candidate)
    raise TokenizerError(f"{path}: cannot find an end-of-text token (no eos_token in tokenizer_config.json)")


def load_backend(path: str) -> Tokenizer:
    tok_path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tok_path):
        raise TokenizerError(f"{path}: no tokenizer.json there (a Hugging Face fast tokenizer directory is needed)")
    return Tokenizer.from_file(tok_path)


@dataclass
class Encoded:
    ids: np.ndarray
    """Token ids (int64), including the post-processor's special tokens."""
    starts: np.ndarray
    """Character offset where each token starts; special tokens added by the post-processor get -1
    when they lead and ``len(text)`` when they trail, so boundaries never move them."""


class TextTokenizer:
    """Batch encoding of document text with offsets, plus text-as-control-id encoding for inserts."""

    def __init__(self, path: str, guard_special_tokens: bool = True, backend: str = "auto"):
        if backend not in BACKENDS:
            raise TokenizerError(f"unknown tokenizer backend {backend!r} (expected one of {', '.join(BACKENDS)})")
        self.path = path
        self._text = load_backend(path)
        self._text.encode_special_tokens = guard_special_tokens
        self.eod = eod_token_id(path, self._text)
        self.vocab_size = self._text.get_vocab_size(with_added_tokens=True)
        self.special_strings = sorted({t.content for t in self._text.get_added_tokens_decoder().values() if t.special})
        self._fast, self.fallback_reason = None, None
        if backend != "tokenizers":
            try:
                self._fast = FastEncoder(path, self._text, guard_special_tokens)
            except FastPathUnavailable as e:
                if backend == "gigatoken":
                    raise TokenizerError(f"{path}: the gigatoken backend cannot be used: {e}") from None
                self.fallback_reason = str(e)

    @property
    def backend(self) -> str:
        """Which library encodes document text: ``gigatoken`` or ``tokenizers``."""
        return "gigatoken" if self._fast is not None else "tokenizers"

    @property
    def reference_documents(self) -> int:
        """Documents gigatoken handed to ``tokenizers`` so far (a character the libraries may classify apart)."""
        return self._fast.reference_documents if self._fast is not None else 0

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        if self._fast is not None and self._fast.offsets_exact:
            return [Encoded(ids, starts) for ids, starts in self._fast.encode_with_starts(texts)]
        out = []
        for text, enc in zip(texts, self._text.encode_batch(list(texts), add_special_tokens=True)):
            ids = np.asarray(enc.ids, dtype=np.int64)
            starts = np.fromiter((s for s, _ in enc.offsets), dtype=np.int64, count=len(ids))
            special = np.asarray(enc.special_tokens_mask, dtype=bool)
            if special.any():
                # Post-processor tokens: before the text if they precede every text token, else after.
                first_text = int(np.argmin(special)) if not special.all() else len(ids)
                idx = np.nonzero(special)[0]
                starts[idx] = np.where(idx < first_text, -1, len(text))
            out.append(Encoded(ids, starts))
        return out

    def encode_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids only (the plain variant's fast path)."""
        if self._fast is not None:
            return self._fast.encode_ids(texts)
        return [np.asarray(e.ids, dtype=np.int64)
                for e in self._text.encode_batch(list(texts), add_special_tokens=True)]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids in one array (unsigned, as gigatoken gives them, or int64), and each text's length
        (no per-document arrays)."""
        if self._fast is not None:
            return self._fast.encode_flat(texts)
        ids = self.encode_ids(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return (np.concatenate(ids) if ids else np.zeros(0, np.int64)), lengths

    def watch(self, strings: Sequence[str]) -> bool:
        """Whether ``encode_flat_watched`` can find the texts spelling one of ``strings`` as it encodes them
        (gigatoken, guarding special tokens, no added token overlapping one: ``FastEncoder.watch``)."""
        return self._fast is not None and self._fast.offsets_exact and self._fast.watch(strings)

    def encode_flat_watched(self, texts: Sequence[str], rewrite) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``encode_flat`` of each text, or of ``rewrite(text)`` for those spelling a watched string (``watch``
        first), and which those were."""
        return self._fast.encode_flat_watched(texts, rewrite)

    def encode_flat_with_token_starts_watched(self, texts: Sequence[str], rewrite):
        """``encode_flat_with_token_starts`` of each text, or of ``rewrite(text)`` for those spelling a watched
        string (``watch`` first), and which those were."""
        return self._fast.encode_flat_with_token_starts_watched(texts, rewrite)

    def encode_flat_with_byte_starts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``encode_batch`` on one byte line (``fast_tokenizer.byte_line``): all ids, each token's start on
        it, each text's length, and where each text's UTF-8 bytes begin (srp places reflections by these)."""
        ids, starts, lengths, bases = self.encode_flat_with_token_starts(texts)
        return ids, starts.all(), lengths, bases

    def encode_flat_with_token_starts(self, texts: Sequence[str]) -> tuple[np.ndarray, TokenStarts | SortedStarts, np.ndarray, np.ndarray]:
        """As ``encode_flat_with_byte_starts``, with the starts searched (``first_at_or_after``), not built."""
        if self._fast is not None and self._fast.offsets_exact:
            return self._fast.encode_flat_with_token_starts(texts)
        ids, starts, lengths, bases = byte_line(texts, [(e.ids, e.starts) for e in self.encode_batch(texts)])
        return ids, SortedStarts(starts), lengths, bases

    def token_offsets(self):
        """The segmenter's ``TokenOffsets`` (``segment.py``): each text's tokens without the post-processor's,
        guarded as document text is; gigatoken counts them when it is the backend (the same counts and
        starts: tests/data/test_fast_tokenizer.py)."""
        if self._fast is not None:
            return self._fast.piece_offsets
        from megatron_srp.data.segment import hf_token_offsets  # nltk: imported only by the segmenter's users

        return hf_token_offsets(self._text)

    @functools.cached_property
    def _control(self) -> Tokenizer:
        """A copy without the guard, for text we insert that spells a special token, loaded when first needed
        (a copy takes 0.25 s to load with 128k tokens)."""
        return load_backend(self.path)

    def encode_control(self, text: str) -> np.ndarray:
        """Ids of text we insert ourselves (a reflection): registered special tokens map to their ids. The guard
        only makes special tokens text, so text that spells none is encoded by the guarded tokenizer (the same
        ids: tested), and the unguarded copy is loaded only for text that spells one (as written or normalized: a
        special token may match the normalized text). Without the guard the tokenizer is that copy already."""
        tok = self._control if self._text.encode_special_tokens and self._spells_special(text) else self._text
        return np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def _spells_special(self, text: str) -> bool:
        norm = self._text.normalizer
        forms = (text, norm.normalize_str(text)) if norm is not None else (text,)
        return any(s in form for s in self.special_strings for form in forms)

    def decode(self, ids) -> str:
        return self._text.decode(list(map(int, ids)), skip_special_tokens=False)  # (the guard is the encoder's)

    def token_id(self, token: str) -> Optional[int]:
        return self._text.token_to_id(token)
