"""gigatoken as the hot loop of preprocessing, giving exactly the ids and offsets of ``tokenizers``.

gigatoken (PyPI ``gigatoken``, MIT) encodes byte-level BPE tokenizers one to two orders of magnitude
faster than ``tokenizers``. It is used only where it provably gives the same result:

- The injection guard (``tokenizers``' ``encode_special_tokens``: special-token strings in the text
  are text) is reproduced by loading gigatoken from the tokenizer.json with the *special* added
  tokens taken out of ``added_tokens``; non-special added tokens still split the text, as in
  ``tokenizers``.
- The post-processor's tokens (BOS of Llama-style tokenizers) are added here, as the prefix and
  suffix ``tokenizers`` puts around a probe text; an empty text takes ``tokenizers``' own answer.
- Token start offsets (srp inserts reflections by them) come from each token's byte length, with
  the ByteLevel post-processor's ``trim_offsets`` rule applied, mapped from bytes to characters.
- The guard's search (which documents spell a special-token string or a reflection tag) is done by
  gigatoken as it encodes, for plain and srp: a second tokenizer carries those strings as added tokens with ids
  of their own, so only a document that spells one has such an id; those documents are encoded again,
  rewritten. Not where a kept added token overlaps one of the strings (it could hide it).
- On load, a probe set (unicode, whitespace runs, special-token strings, tags, digits) is encoded
  both ways; any difference in ids or offsets and the caller falls back to ``tokenizers``.
- A normalizer (Qwen's NFC) is applied by both libraries, but gigatoken's tokens then count the
  normalized text's bytes: a text the normalizer changes takes its token starts from ``tokenizers``'
  offsets (``_shifts``).
- The two libraries classify characters (letter, number, space: the pretokenizer's regex) by
  different Unicode versions: gigatoken's is newer than tokenizers' Oniguruma. In a document with a
  character this Python's Unicode tables call unassigned (U+16EBB, assigned in Unicode 17, is a
  letter to gigatoken and punctuation to tokenizers 0.23), the stretches around those characters are
  encoded by ``tokenizers`` instead, or the whole document where the pretokenizer is not one whose
  pretokens the stretches' cuts never split (``unassigned``); all other characters carry the same
  class in both.

gigatoken 0.10.0 caches pretokens without a bound (its issue 36; about 1 MiB per MB of text with new
words): ``FastEncoder`` drops its gigatoken tokenizers once the process's resident memory has grown by 256 MiB
over its lowest level since they were built, hands the freed pages back to the system (glibc's ``malloc_trim``:
gigatoken allocates with the system malloc, whose per-thread arenas otherwise keep them) and builds fresh ones
(15 ms with 8k tokens, 0.27 s with 128k), so peak memory stays within 256 MiB of its working level however long
the input. Off Linux (no /proc) it renews every 64 MB of text; ``SRP_GIGATOKEN_REFRESH_MB`` sets such an
interval (0: never renew; bench/preprocess_rss.py compares).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import threading
import unicodedata
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import orjson

from megatron_srp.data.unassigned import cut_pattern, has_unassigned, unsure_stretches

NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
"""Normalizers that keep ASCII text as it is and are Unicode's normal forms (checked by Python's tables)."""

PROBES = (
    "Hello world", "  leading and trailing  ", "a\n\nb\tc\r\nd", "héllo wörld, naïve café", "日本語のテキスト",
    "emoji 🙂🙂 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "numbers 12345 3.14159 1,000,000", "x  <|endoftext|>  y", "<s>[INST]</s>",
    "a<think> Unsafe, Violent </think>b", "   ", "def f(x):\n    return x ** 2  # note\n", "ÿ\u200b\xa0\u2028z",
    "don't it's we'll THEY'RE", "tab\there", "a" * 300, '    None,\n    "\U00016ebb",', "cafe\u0301 au lait",
)


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere, e.g. musl or macOS: nothing to hand back there). Looked up among
    the symbols the process has loaded: ``ctypes.util.find_library`` ran ``ldconfig -p`` (10 ms in each span)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def resident_bytes() -> Optional[int]:
    """This process's resident memory now (Linux's /proc/self/statm; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_freed_memory() -> None:
    """Return the allocator's free pages to the system (all arenas, the worker threads' included)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


TRIM_SLACK = 4
"""Refresh intervals of growth in resident memory after which freed pages go back to the system (renewing
every ``refresh_bytes`` of text)."""

RENEW_AFTER_GROWTH = 256 << 20
"""Growth of resident memory over its lowest level since the last renewal that renews the tokenizers (the
default rule, where /proc tells the resident size)."""

RENEW_EVERY_BYTES = 64 << 20
"""Text between renewals where the resident size cannot be read (the default rule off Linux)."""


class FastPathUnavailable(Exception):
    """Why gigatoken cannot stand in for ``tokenizers`` on this tokenizer (the caller falls back)."""


def _gigatoken():
    try:  # optional: gigatoken is a fast path, ``tokenizers`` is always there
        import gigatoken
    except ImportError as e:
        raise FastPathUnavailable(f"gigatoken is not installed ({e})") from None
    if importlib.util.find_spec("awkward") is None:  # without it encode_batch returns lists, not the flat layout read here
        raise FastPathUnavailable("awkward (gigatoken's dependency, installed with it by pip) is not installed")
    return gigatoken


def _leading_spaces(token: str) -> int:
    """Characters ``tokenizers``' ByteLevel ``process_offsets`` trims from a token's start."""
    n = 0
    for ch in token:
        if ch != "\u0120" and not ch.isspace():
            break
        n += 1
    return n


def _trim_rule(post_processor: Optional[dict]) -> Optional[bool]:
    """None when no ByteLevel post-processor trims offsets, else its ``add_prefix_space``."""
    if not post_processor:
        return None
    procs = post_processor.get("processors", [post_processor]) if post_processor.get("type") == "Sequence" \
        else [post_processor]
    for p in procs:
        if p.get("type") == "ByteLevel" and p.get("trim_offsets", True):
            return bool(p.get("add_prefix_space", True))
    return None


class FastEncoder:
    """Ids (and token start offsets) of ``hf`` (a ``tokenizers.Tokenizer`` set up as the caller uses it)."""

    def __init__(self, path: str, hf, guard_special_tokens: bool, refresh_bytes: Optional[int] = None):
        self._gt = _gigatoken()
        with open(os.path.join(path, "tokenizer.json"), "rb") as f:
            # orjson: a 128k-token tokenizer.json (9 MB) parsed in 0.09 s and written in 0.01 s, where json took
            # 0.12 and 0.17 s (any file tokenizers loaded is valid UTF-8 JSON, which orjson reads and writes)
            cfg = orjson.loads(f.read())
        for key in ("truncation", "padding"):
            if cfg.get(key):
                raise FastPathUnavailable(f"tokenizer.json sets {key}")
        gt_cfg = dict(cfg)  # shallow: only top-level keys are replaced
        gt_cfg["post_processor"] = None  # its tokens are added here
        if guard_special_tokens:
            gt_cfg["added_tokens"] = [t for t in cfg.get("added_tokens", []) if not t.get("special")]
        self._gt_cfg = gt_cfg
        self._config = cfg
        norm = cfg.get("normalizer")
        self._norm_form = norm.get("type") if norm and norm.get("type") in NORMAL_FORMS else None
        self._normalizer = hf.normalizer if norm else None
        """Texts this changes take their token starts from tokenizers' offsets (``_shifts``)."""
        self._cut = cut_pattern(cfg)
        """Where texts with an unassigned character are cut into stretches for ``tokenizers`` (None: whole)."""
        self._guarding = guard_special_tokens
        self._json_without_added = orjson.dumps({k: v for k, v in gt_cfg.items() if k != "added_tokens"})
        self._json = self._config_json(gt_cfg.get("added_tokens", []))
        self._watch: Optional[_Watch] = None
        """Strings whose texts are found by gigatoken as it encodes (``watch``); None: not watching."""
        self._hf = hf
        if refresh_bytes is None and os.environ.get("SRP_GIGATOKEN_REFRESH_MB"):
            refresh_bytes = int(float(os.environ["SRP_GIGATOKEN_REFRESH_MB"]) * (1 << 20))
        self.refresh_bytes = refresh_bytes
        """Renew every this many bytes of text (0: never); None: once resident memory has grown by
        ``RENEW_AFTER_GROWTH`` (``_renewal_due``)."""
        self._since_refresh = 0
        self._trimmed_at = None
        self._lowest_rss: Optional[int] = None
        self._rss_pid: Optional[int] = None
        self._lock = threading.Lock()
        self._tok = self._load()
        self._watch_tok = None
        self._prefix, self._suffix = self._specials_around_text(hf)
        self._empty = hf.encode("", add_special_tokens=True)
        self._trim = _trim_rule(cfg.get("post_processor"))
        vocab_size = hf.get_vocab_size(with_added_tokens=True)
        vocab = self._tok.vocab
        ids = np.fromiter(vocab.keys(), dtype=np.int64, count=len(vocab))
        known = ids < vocab_size
        lens = np.zeros(vocab_size, dtype=np.int64)
        lens[ids[known]] = np.fromiter(map(len, vocab.values()), dtype=np.int64, count=len(vocab))[known]
        # the narrowest type for the trim tables below (gathered over every token where starts are built)
        longest = int(lens.max(initial=0))
        self._byte_len = lens.astype(np.uint8 if longest < 256 else np.uint16 if longest < 65536 else np.int64)
        """Each token's bytes in the narrowest type: gathered over every token of a chunk (``BlockedEnds``)."""
        lead = np.zeros(vocab_size, dtype=self._byte_len.dtype)
        if self._trim is not None:
            for i in range(vocab_size):
                tok = hf.id_to_token(i)
                lead[i] = _leading_spaces(tok) if tok else 0
        # The trim rule as one table: a token's trimmed start is min(end - bytes + lead, end) = end - back.
        self._lead = lead
        self._trimmed = np.minimum(lead, self._byte_len)
        self._back = self._byte_len - self._trimmed
        self.reference_documents = 0
        """Documents encoded by ``tokenizers`` for a character the libraries may classify differently."""
        self.offsets_exact = True
        self._check(hf)

    def _config_json(self, added_tokens: list) -> bytes:
        """gigatoken's tokenizer.json with these added tokens, the rest (vocabulary, merges) written once for
        both tokenizers."""
        rest = self._json_without_added
        return rest[:-1] + (b"," if len(rest) > 2 else b"") + b'"added_tokens":' + orjson.dumps(added_tokens) + b"}"

    def _load(self, config: Optional[bytes] = None):
        try:
            return self._gt.Tokenizer.from_json(config or self._json)
        except Exception as e:  # a model gigatoken does not implement (WordLevel, Unigram): tokenizers instead
            raise FastPathUnavailable(f"gigatoken cannot load this tokenizer: {str(e).splitlines()[0]}") from None

    @staticmethod
    def _specials_around_text(hf) -> tuple[list[int], list[int]]:
        enc = hf.encode("probe", add_special_tokens=True)
        bare = hf.encode("probe", add_special_tokens=False).ids
        mask = enc.special_tokens_mask
        lead = next((i for i, m in enumerate(mask) if not m), len(mask))
        trail = len(mask) - next((i for i, m in enumerate(reversed(mask)) if not m), len(mask))
        prefix, suffix = enc.ids[:lead], enc.ids[trail:]
        if prefix + bare + suffix != enc.ids:
            raise FastPathUnavailable("the post-processor does more than add tokens around the text")
        return prefix, suffix

    def _check(self, hf) -> None:
        """Refuse (FastPathUnavailable) unless ids agree on the probes; offsets may only downgrade srp."""
        texts = list(PROBES)
        ours = self.encode_ids(texts)
        for text, ids in zip(texts, ours):
            want = hf.encode(text, add_special_tokens=True).ids
            if ids.tolist() != want:
                raise FastPathUnavailable(f"ids differ from tokenizers on {text!r}")
        for text, got in zip(texts, self.encode_with_starts(texts)):
            if got[1].tolist() != self._reference_starts(hf, text):
                self.offsets_exact = False
                break

    @staticmethod
    def _reference_starts(hf, text: str) -> list[int]:
        enc = hf.encode(text, add_special_tokens=True)
        special = np.asarray(enc.special_tokens_mask, dtype=bool)
        starts = np.asarray([s for s, _ in enc.offsets], dtype=np.int64)
        if special.any():
            first_text = int(np.argmin(special)) if not special.all() else len(starts)
            idx = np.nonzero(special)[0]
            starts[idx] = np.where(idx < first_text, -1, len(text))
        return starts.tolist()

    def _renewal_due(self) -> bool:
        """Whether to drop the tokenizers and their pretoken caches now. By default once resident memory has grown
        by ``RENEW_AFTER_GROWTH`` over its lowest level since the last renewal: a renewal reloads the tokenizer
        (15 ms with 8k tokens, 0.27 s with 128k), and the cache grows only with text of new words (every 64 MB
        of text cost a 128k-token tokenizer about 4 s of CPU at 1 GB and bounded nothing on real text,
        BENCHMARKS.md).
        Every ``refresh_bytes`` of text where that is set, or ``RENEW_EVERY_BYTES`` where memory cannot be read."""
        rss = resident_bytes() if self.refresh_bytes is None else None
        if rss is None:
            interval = RENEW_EVERY_BYTES if self.refresh_bytes is None else self.refresh_bytes
            return 0 < interval < self._since_refresh
        if self._rss_pid != os.getpid():  # a span process measures its own level, not the parent's before the fork
            self._lowest_rss, self._rss_pid = None, os.getpid()
        self._lowest_rss = rss if self._lowest_rss is None else min(self._lowest_rss, rss)
        return rss > self._lowest_rss + RENEW_AFTER_GROWTH

    def _release(self) -> None:
        """Hand freed pages back: at every renewal of the default rule (each follows growth), and with
        ``refresh_bytes`` once the process has grown by ``TRIM_SLACK`` intervals since it last did: trimming at
        every 64 MB made the next chunks fault every page in again (on a VM a third of srp's system time at 1 GB,
        BENCHMARKS.md), while the bound on resident memory holds either way."""
        if self.refresh_bytes is None:
            release_freed_memory()
            self._lowest_rss = None  # (measured again once the new tokenizer encodes)
            return
        rss = resident_bytes()
        if rss is None or self._trimmed_at is None or rss > self._trimmed_at + TRIM_SLACK * self.refresh_bytes:
            release_freed_memory()
            self._trimmed_at = resident_bytes()

    def _tokenizer(self, texts: Sequence[str], watching: bool):
        """The gigatoken tokenizer to encode ``texts`` with, renewed when ``_renewal_due`` (the watching one, when
        it is used, and the other are renewed together)."""
        with self._lock:  # preprocessing encodes two chunks at once
            self._since_refresh += sum(map(len, texts))
            if self._renewal_due():  # drop the unbounded pretoken caches
                self._tok, self._watch_tok, self._since_refresh = None, None, 0  # freed once no chunk uses them
                self._release()
            if watching:  # (each loaded when first used: with the guard on, most intervals use only this one)
                if self._watch_tok is None:
                    self._watch_tok = self._load(self._watch.json)
                return self._watch_tok
            if self._tok is None:
                self._tok = self._load()
            return self._tok

    def _batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids (uint32) and per-text offsets into them, without the post-processor's tokens."""
        flat, offsets, _ = self._batch_and_unsure(texts, watching=False)
        return flat, offsets

    def _batch_and_unsure(self, texts: Sequence[str], watching: bool) -> tuple[np.ndarray, np.ndarray, list]:
        """``_batch`` (watching: a watched string gives its watch id, see ``watch``), and the texts that
        ``tokenizers`` encoded instead (a character the two libraries may classify apart)."""
        flat, offsets = _encode_texts(self._tokenizer(texts, watching), texts)
        unsure = [i for i, t in enumerate(texts) if has_unassigned(t)]
        if not unsure:
            return flat, offsets, unsure
        with self._lock:
            self.reference_documents += len(unsure)
        redone = self._reference_ids(texts, unsure, flat, offsets)
        return (*_splice(flat, offsets, unsure, redone), unsure)

    def _reference_ids(self, texts: Sequence[str], unsure: list, flat: np.ndarray, offsets: np.ndarray) -> list:
        """``tokenizers``' ids of the ``unsure`` texts, given gigatoken's (``flat``, ``offsets``): its own for
        the stretches around their unassigned characters, gigatoken's between them (``unassigned``), or its
        own for a whole text where that does not hold."""
        plans, pieces = [], []
        for i in unsure:
            ids = flat[offsets[i]:offsets[i + 1]]
            plan = self._stretch_plan(texts[i], ids) if self._cut is not None and not self._shifts(texts[i]) else None
            plans.append((ids, plan))
            pieces += [texts[i]] if plan is None else [texts[i][a:b] for a, b, _, _ in plan]
        # tokenizers' encode_batch releases the GIL (its encode does not): the other chunk's thread goes on
        encoded = iter(self._hf.encode_batch(pieces, add_special_tokens=False))
        redone = []
        for ids, plan in plans:
            if plan is None:
                redone.append(np.asarray(next(encoded).ids, dtype=flat.dtype))
                continue
            parts, prev = [], 0
            for _, _, first, end in plan:
                parts += [ids[prev:first], np.asarray(next(encoded).ids, dtype=flat.dtype)]
                prev = end
            parts.append(ids[prev:])
            redone.append(np.concatenate(parts))
        return redone

    def _stretch_plan(self, text: str, ids: np.ndarray) -> Optional[list]:
        """(start, end, first token, end token) of each stretch of ``text`` to encode again: its characters and
        gigatoken's tokens (``ids``) over it. None where a stretch's end is not a token's end in ``ids``
        (the text is then encoded whole): a watched string's id, or a pretoken that crosses a cut. (Not for a
        text the normalizer changes: its tokens count other bytes than its characters'.)"""
        if len(ids) and int(ids.max()) >= len(self._byte_len):  # a watched string: the text is encoded again anyway
            return None
        stretches, byte_at = unsure_stretches(text, self._cut)
        ends = np.cumsum(self._byte_len[ids], dtype=np.int64)
        chars = np.asarray(stretches, dtype=np.int64).reshape(-1)
        tokens = _tokens_at(ends, byte_at[chars])
        if tokens is None:
            return None
        return [(a, b, first, end) for (a, b), (first, end) in zip(stretches, tokens.reshape(-1, 2).tolist())]

    def watch(self, strings: Sequence[str]) -> bool:
        """Find the texts that spell one of ``strings`` while encoding them (``encode_flat_watched``), instead
        of searching every text first: gigatoken splits them out as added tokens with ids of their own,
        which are only in texts that spell one. The strings must not overlap a kept added token (one could
        hide the other), and the probes must agree with a search; False (not watching) otherwise."""
        if not self._guarding:  # special tokens are kept added tokens: a text spelling one is not guarded
            return False
        kept = self._gt_cfg.get("added_tokens", [])
        by_content = {t["content"]: t for t in kept}
        for n in strings:
            if n in by_content:
                if by_content[n].get("single_word"):
                    return False
                continue
            if any(_overlap(n, t["content"]) for t in kept):
                return False
        next_id = max([self._hf.get_vocab_size(with_added_tokens=True) - 1, *(t["id"] for t in kept)]) + 1
        added, ids = list(kept), []
        for n in dict.fromkeys(strings):
            if n in by_content:
                ids.append(by_content[n]["id"])
                continue
            added.append({"id": next_id, "content": n, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": False})
            ids.append(next_id)
            next_id += 1
        self._cut = cut_pattern(self._config, tuple(strings))
        pattern = re.compile("|".join(map(re.escape, sorted(set(strings), key=len, reverse=True))))
        watch = _Watch(self._config_json(added), np.asarray(sorted(ids), dtype=np.int64), pattern)
        previous, self._watch = self._watch, watch
        probes = [*PROBES, *(f"a{n}b" for n in strings), *(f"{n[:-1]} {n[-1:]}" for n in strings)]
        _, _, hits = self.encode_flat_watched(probes, lambda t: t)
        if hits.tolist() != [bool(pattern.search(t)) for t in probes]:
            self._watch = previous
            return False
        return True

    def encode_flat_watched(self, texts: Sequence[str], rewrite) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``encode_flat`` of each text, or of ``rewrite(text)`` for the texts that spell a watched string; and
        which texts those were (bool per text)."""
        flat, offsets, hits = self._watched_batch(texts, rewrite)
        flat, lengths = self._with_specials(texts, flat, offsets, rewritten=hits, rewrite=rewrite)
        return flat, lengths, hits

    def encode_flat_with_token_starts_watched(self, texts: Sequence[str], rewrite):
        """``encode_flat_with_token_starts`` of each text, or of ``rewrite(text)`` for the texts that spell a
        watched string (their bytes on the byte line are the rewritten text's), and which texts those were."""
        if self._prefix or self._suffix or self._empty.ids or self._any_shifts(texts):  # rare (as above)
            hits = np.fromiter((self._watch.pattern.search(t) is not None for t in texts), dtype=bool, count=len(texts))
            return (*self.encode_flat_with_token_starts([rewrite(t) if h else t for t, h in zip(texts, hits)]), hits)
        flat, offsets, hits = self._watched_batch(texts, rewrite)
        ends, bases, kept = self._byte_ends(flat, offsets)
        return flat, TokenStarts(self, flat, ends, kept), np.diff(offsets), bases, hits

    def _watched_batch(self, texts: Sequence[str], rewrite) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_batch`` of each text, or of ``rewrite(text)`` for those that spell a watched string; which those were."""
        watch = self._watch
        flat, offsets, unsure = self._batch_and_unsure(texts, watching=True)
        hits = np.zeros(len(texts), dtype=bool)
        found = _watched_at(flat, watch.ids)
        hits[np.searchsorted(offsets, found, side="right") - 1] = True
        for i in unsure:  # tokenizers encoded these: it knows no watch ids, so the text itself is searched
            hits[i] = watch.pattern.search(texts[i]) is not None
        if hits.any():
            which = np.flatnonzero(hits).tolist()
            redone_flat, redone_offsets = self._batch([rewrite(texts[i]) for i in which])
            redone = [redone_flat[a:b] for a, b in zip(redone_offsets[:-1], redone_offsets[1:])]
            flat, offsets = _splice(flat, offsets, which, redone)
        return flat, offsets, hits

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids (post-processor tokens included) in one array, and each text's length. The ids stay
        gigatoken's uint32: widening 30 M tokens per 100 MB to int64 cost plain a tenth of its time."""
        return self._with_specials(texts, *self._batch(texts))

    def _with_specials(self, texts, flat, offsets, rewritten=None, rewrite=None) -> tuple[np.ndarray, np.ndarray]:
        """The post-processor's tokens around each text's ids (``rewritten`` texts: around ``rewrite(text)``'s)."""
        lengths = np.diff(offsets)
        empty = [i for i, t in enumerate(texts) if not t]
        if not (self._prefix or self._suffix or (empty and self._empty.ids)):
            return flat, lengths
        parts = []
        for i, t in enumerate(texts):  # rare: tokenizers that add BOS/EOS around every document
            t = rewrite(t) if rewritten is not None and rewritten[i] else t
            body = self._empty.ids if not t else [*self._prefix, *flat[offsets[i]:offsets[i + 1]], *self._suffix]
            parts.append(np.asarray(body, dtype=np.int64))
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), lengths

    def encode_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        flat, lengths = self.encode_flat(texts)
        return np.split(flat.astype(np.int64), np.cumsum(lengths)[:-1]) if len(texts) else []

    def encode_flat_with_byte_starts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All ids (as gigatoken gives them), each token's start on the chunk's byte line (``byte_line``; here
        texts lie back to back, with no post-processor tokens to make room for), each text's length and
        base. Starts stay in bytes: srp maps only its segment ends, not 30 M token starts, to bytes."""
        flat, starts, lengths, bases = self.encode_flat_with_token_starts(texts)
        return flat, starts.all(), lengths, bases

    def encode_flat_with_token_starts(self, texts: Sequence[str]) -> tuple[np.ndarray, "TokenStarts", np.ndarray, np.ndarray]:
        """As ``encode_flat_with_byte_starts``, the starts as a ``TokenStarts`` (searched, not built)."""
        if self._prefix or self._suffix or self._empty.ids or self._any_shifts(texts):  # rare: BOS/EOS around
            flat, starts, lengths, bases = byte_line(texts, self.encode_with_starts(texts))  # every document, or
            return flat, SortedStarts(starts), lengths, bases  # a text the normalizer changes: text by text
        flat, offsets = self._batch(texts)
        ends, bases, kept = self._byte_ends(flat, offsets)
        return flat, TokenStarts(self, flat, ends, kept), np.diff(offsets), bases

    def _byte_ends(self, ids: np.ndarray, offsets: np.ndarray) -> tuple["BlockedEnds", np.ndarray, np.ndarray]:
        """Each token's end in bytes, counted across the texts ``offsets`` delimit in ``ids`` (``BlockedEnds``);
        each text's base (where the tokens before it end); and ``_kept_firsts``."""
        ends = BlockedEnds(_gather(self._byte_len, ids))
        firsts = offsets[:-1]
        bases = np.zeros(len(firsts), np.int64)
        after = firsts > 0
        bases[after] = ends.at(firsts[after] - 1)
        return ends, bases, self._kept_firsts(ids, offsets)

    def _kept_firsts(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The texts' first tokens whose one leading space the ByteLevel post-processor keeps
        (``add_prefix_space``: their start is their end minus all their bytes)."""
        if not self._trim:
            return np.zeros(0, np.int64)
        firsts = offsets[:-1][np.diff(offsets) > 0]
        return firsts[self._lead[ids[firsts]] == 1]

    def _byte_starts(self, ids: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each token's start in bytes (``tokenizers``' offsets with the ByteLevel trim rule, probed at start)
        across the texts ``offsets`` delimit, and each text's base: every start built, by a running sum (a text at
        a time for the segmenter and BOS tokenizers, where ``BlockedEnds`` would double the cost; srp searches
        the starts instead, ``TokenStarts``)."""
        ends = np.cumsum(_gather(self._byte_len, ids), dtype=np.int64)
        firsts = offsets[:-1]
        bases = np.where(firsts > 0, ends[np.maximum(firsts - 1, 0)], 0) if len(ends) else np.zeros(len(firsts), np.int64)
        return self._starts_from_ends(ids, ends, self._kept_firsts(ids, offsets)), bases

    def _starts_from_ends(self, ids: np.ndarray, ends: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """Where tokens ``ids`` start, given where they end and which of them are ``kept`` (``_kept_firsts``: indices
        or a mask)."""
        starts = ends - self._back[ids]
        starts[kept] -= self._trimmed[ids[kept]]
        return starts

    @staticmethod
    def _byte_to_char(text: str) -> np.ndarray:
        """Character index of every byte of the text's UTF-8, plus len(text) for the end."""
        raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        return np.append(np.cumsum((raw & 0xC0) != 0x80) - 1, len(text))

    def encode_with_starts(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, character offset where each token starts), as ``TextTokenizer.encode_batch`` defines them."""
        flat, offsets = self._batch(texts)
        out = []
        for i, text in enumerate(texts):
            if not text:
                ids = np.asarray(self._empty.ids, dtype=np.int64)
                out.append((ids, np.full(len(ids), -1, dtype=np.int64)))
                continue
            ids = flat[offsets[i]:offsets[i + 1]].astype(np.int64)
            starts = self._starts(text, ids)
            ids = np.concatenate([np.asarray(self._prefix, np.int64), ids, np.asarray(self._suffix, np.int64)])
            starts = np.concatenate([np.full(len(self._prefix), -1, np.int64), starts,
                                     np.full(len(self._suffix), len(text), np.int64)])
            out.append((ids, starts))
        return out

    def piece_offsets(self, texts: Sequence[str]) -> list["PieceTokens"]:
        """Each text's tokens without the post-processor's (a sentence of a document, as the segmenter
        counts it): the count at once, start offsets only when indexed."""
        flat, offsets = self._batch(texts)
        return [PieceTokens(self, text, flat[offsets[i]:offsets[i + 1]]) for i, text in enumerate(texts)]

    def _starts(self, text: str, ids: np.ndarray) -> np.ndarray:
        if self._shifts(text):  # (the ids are tokenizers'; their bytes are the normalized text's)
            return np.asarray([a for a, _ in self._hf.encode(text, add_special_tokens=False).offsets], np.int64)
        starts, _ = self._byte_starts(ids, np.asarray([0, len(ids)]))
        return starts if text.isascii() else self._byte_to_char(text)[starts]

    def _shifts(self, text: str) -> bool:
        """Whether the tokenizer's normalizer changes ``text`` (Qwen's NFC on a decomposed "e" + U+0301): its tokens
        then count the normalized text's bytes, and their starts in ``text`` come from tokenizers' offsets. A
        Unicode normal form is checked by Python's tables (the same answers for every character they assign)."""
        if self._normalizer is None:
            return False
        if self._norm_form is not None:
            if text.isascii():
                return False
            if not has_unassigned(text):
                return not unicodedata.is_normalized(self._norm_form, text)
        return self._normalizer.normalize_str(text) != text

    def _any_shifts(self, texts: Sequence[str]) -> bool:
        return self._normalizer is not None and any(map(self._shifts, texts))


SERIAL_BYTES = 1 << 16
"""A batch with less text than this is encoded a text at a time (the start-up probes)."""

_one_at_a_time = False
"""Whether this process encodes every batch a text at a time (``encode_a_text_at_a_time``)."""


def encode_a_text_at_a_time() -> None:
    """From now on this process encodes each text with gigatoken's ``encode`` (a span process, which encodes on
    its reading thread: gigatoken's batches would run on that thread anyway, its rule after a fork, and ``encode``
    returns numpy arrays where batches return awkward Arrays). Not for a process that encodes on two threads:
    ``encode`` holds the GIL, a batch does not."""
    global _one_at_a_time
    _one_at_a_time = True


def _encode_texts(tok, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """gigatoken's ids of ``texts`` (uint32, back to back) and each text's offset into them, then their total.
    A batch goes to ``encode_batch`` (on gigatoken's threads); in a span process (``encode_a_text_at_a_time``), or
    for a few bytes of text, each text goes to ``encode``: ``encode_batch`` returns an awkward Array, and importing
    awkward took 0.15-0.19 s, a fifth of a plain run over 100 MB, before the spans could fork."""
    if _one_at_a_time or sum(map(len, texts)) < SERIAL_BYTES:
        encode = tok.backend.encode
        parts = [encode(t) for t in texts]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
        return (np.concatenate(parts) if parts else np.zeros(0, np.uint32)), offsets
    layout = tok.encode_batch(list(texts)).layout
    offsets = np.asarray(layout.offsets.data, dtype=np.int64)
    return np.asarray(layout.content.data)[offsets[0]:offsets[-1]], offsets - offsets[0]


class _Watch:
    """The watching tokenizer's config, the watch ids (sorted) and a search for texts ``tokenizers`` encodes."""

    def __init__(self, json_config: bytes, ids: np.ndarray, pattern):
        self.json, self.ids, self.pattern = json_config, ids, pattern


def _watched_at(flat: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Where ``flat`` holds one of the watch ``ids`` (sorted). They are added tokens at the vocabulary's end, so a
    chunk's largest id usually rules them all out (one pass, no comparison array). The bound is a Python int:
    an int64 scalar made numpy widen every uint32 id to int64 before comparing (2% of a plain run's samples, perf)."""
    lowest = int(ids[0])
    if not len(flat) or int(flat.max()) < lowest:
        return np.zeros(0, np.int64)
    maybe = np.flatnonzero(flat >= lowest)
    return maybe[np.isin(flat[maybe], ids)]


def _overlap(a: str, b: str) -> bool:
    """Whether one string contains the other or ends where the other begins (so a match of one can hide one
    of the other)."""
    if a == b or a in b or b in a:
        return True
    return any(b.startswith(a[i:]) for i in range(1, len(a))) or any(a.startswith(b[i:]) for i in range(1, len(b)))


def _tokens_at(ends: np.ndarray, bytes_at: np.ndarray) -> Optional[np.ndarray]:
    """The index of the token that starts at each of ``bytes_at``, given each token's end (None: a token crosses
    one of them)."""
    k = np.searchsorted(ends, bytes_at, side="right")
    before = np.where(k > 0, ends[np.maximum(k - 1, 0)] if len(ends) else 0, 0)
    return k if np.array_equal(before, bytes_at) else None


def _splice(flat: np.ndarray, offsets: np.ndarray, which: list, redone: list) -> tuple[np.ndarray, np.ndarray]:
    """``flat`` with the ids of texts ``which`` (increasing) replaced by ``redone``; the new offsets. The
    untouched runs between them stay whole."""
    parts, lengths, prev = [], np.diff(offsets), 0
    for i, ids in zip(which, redone):
        parts += [flat[offsets[prev]:offsets[i]], ids.astype(flat.dtype, copy=False)]
        lengths[i], prev = len(ids), i + 1
    parts.append(flat[offsets[prev]:])
    return np.concatenate(parts), np.concatenate([[0], np.cumsum(lengths)])


SMALL_GATHER = 1 << 16
"""Below this many ids numpy's indexing gathers (Arrow's pays off on a chunk's millions)."""


def _gather(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``table[ids]`` (read-only) by Arrow's ``take``: about 3.5x numpy's fancy indexing on uint32 ids, which
    widens every index to int64 first (bench/gather.py). Bounds are checked with one ``max`` rather than by
    Arrow per element (which costs more than the gather)."""
    if len(ids) and int(ids.max()) >= len(table):
        raise IndexError(f"token id {int(ids.max())} outside the tokenizer's {len(table)} ids")
    if len(ids) < SMALL_GATHER:  # the start-up probes and short texts: not worth importing Arrow's kernels
        return table[ids]
    import pyarrow as pa  # already loaded where this runs: srp reads its annotations with it

    take, options = _arrow_take()
    out = take("take", [_arrow(pa, table), _arrow(pa, ids)], options)
    return np.frombuffer(out.buffers()[1], dtype=table.dtype, count=len(out), offset=out.offset * table.itemsize)


@lru_cache(maxsize=1)
def _arrow_take():
    """Arrow's ``call_function`` and the options of a take without bounds checks. From ``pyarrow._compute``, the
    kernels' module: importing ``pyarrow.compute`` wraps every kernel in a documented Python function first, 0.02-0.04
    s in each span process against 5 ms."""
    try:
        from pyarrow._compute import TakeOptions, call_function
    except ImportError:  # (a pyarrow that moved it: the public module has both)
        from pyarrow.compute import TakeOptions, call_function
    return call_function, TakeOptions(boundscheck=False)


def _arrow(pa, values: np.ndarray):
    """A numpy integer array as an Arrow array over the same memory. Not ``pa.array``: its first call imports
    pandas (0.14 s of a start-up that is 0.7 s for a small file, BENCHMARKS.md)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def char_to_byte(text: str, positions) -> np.ndarray:
    """UTF-8 byte offsets of increasing character offsets of ``text``."""
    if text.isascii():
        return np.asarray(positions, dtype=np.int64)
    out, pos, prev = [], 0, 0
    for x in np.asarray(positions).tolist():  # C-speed encodes of the pieces between them
        pos += len(text[prev:x].encode("utf-8", "surrogatepass"))
        prev = x
        out.append(pos)
    return np.asarray(out, dtype=np.int64)


def byte_line(texts: Sequence[str], pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Texts laid end to end as UTF-8 bytes, two apart: text i at ``bases[i]``, its leading post-processor
    tokens at ``bases[i] - 1`` and trailing ones at ``bases[i] + its bytes``, so token starts never decrease
    across a chunk and a document's reflections can be placed with one ``searchsorted``. ``pairs`` are each
    text's (ids, character starts) as ``TextTokenizer.encode_batch`` gives them."""
    ids, starts, lengths, bases, base = [], [], [], [], 1
    for text, (i, s) in zip(texts, pairs):
        nbytes = len(text.encode("utf-8", "surrogatepass"))
        inner = (s >= 0) & (s < len(text))
        b = np.where(s < 0, -1, nbytes).astype(np.int64)
        b[inner] = char_to_byte(text, s[inner]) if len(text) else []
        ids.append(np.asarray(i, dtype=np.int64))
        starts.append(b + base)
        lengths.append(len(i))
        bases.append(base)
        base += nbytes + 2
    empty = np.zeros(0, np.int64)
    return (np.concatenate(ids) if ids else empty, np.concatenate(starts) if starts else empty,
            np.asarray(lengths, dtype=np.int64), np.asarray(bases, dtype=np.int64))


class PieceTokens:
    """One text's tokens for the segmenter: ``len`` is the count; ``[i][0]`` is where token i starts (as
    ``tokenizers``' offsets give it), built only when indexed: packing needs just the count, and only
    a sentence over the budget is cut at token starts."""

    __slots__ = ("_enc", "_text", "_ids", "_starts_of")

    def __init__(self, enc: FastEncoder, text: str, ids: np.ndarray):
        self._enc, self._text, self._ids, self._starts_of = enc, text, ids, None

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int) -> tuple[int, int]:
        if self._starts_of is None:
            if self._enc.offsets_exact:
                self._starts_of = self._enc._starts(self._text, self._ids.astype(np.int64)).tolist()
            else:  # the probes found an offset rule we do not reproduce: tokenizers' own
                self._starts_of = [a for a, _ in self._enc._hf.encode(self._text, add_special_tokens=False).offsets]
        start = self._starts_of[i]
        return start, (self._starts_of[i + 1] if i + 1 < len(self._starts_of) else len(self._text))


BLOCK = 64
"""Tokens per block of ``BlockedEnds``."""


class BlockedEnds:
    """Where each token of a byte line ends (the running sum of the tokens' byte lengths), kept as the lengths and
    the end of every block of ``BLOCK`` tokens. srp asks for the ends of about 1 token in 200; summing blocks
    reads the lengths once and writes one sum per block, where a running sum over every token is serial (about
    2 ns a token on the machines of BENCHMARKS.md, 1 s per GB) and writes a wide integer per token."""

    def __init__(self, lengths: np.ndarray):
        self.n = len(lengths)
        pad = -self.n % BLOCK
        padded = np.concatenate([lengths, np.zeros(pad, lengths.dtype)]) if pad else lengths
        self._rows = padded.reshape(-1, BLOCK)  # (zero-length tokens past the end: they move no end)
        narrow = np.uint16 if lengths.dtype == np.uint8 else np.int64  # (a block of uint8 lengths fits uint16)
        self._block_ends = np.cumsum(self._rows.sum(axis=1, dtype=narrow), dtype=np.int64)

    def _before(self, blocks: np.ndarray) -> np.ndarray:
        """Where each of ``blocks`` starts."""
        before = np.zeros(len(blocks), np.int64)
        later = blocks > 0
        before[later] = self._block_ends[blocks[later] - 1]
        return before

    def _walk(self, blocks: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """In each of ``blocks``, the first token that ends ``rest`` or more bytes into it (its index there) and how
        far into the block it ends. One step per token place over all the blocks at once: a running sum per
        block would cost numpy a call per block."""
        columns = self._rows.T[:, blocks]  # (BLOCK, blocks): token i of every block in row i
        wide = np.int64 if columns.dtype == np.int64 else np.int32  # (a block of narrower lengths fits int32)
        rest = np.maximum(rest, 0).astype(wide)  # (no token ends before byte 0 of its block)
        short = rest - columns[0]  # bytes still to go once the block's first token is taken (it always is)
        taken = np.ones(len(blocks), np.int64)
        for lengths in columns[1:]:
            left = short > 0
            taken += left
            short -= lengths * left  # (numpy's ``where=`` takes twice as long)
        return taken - 1, rest - short

    def at(self, k: np.ndarray) -> np.ndarray:
        """The ends of tokens ``k`` (each below ``n``)."""
        blocks, within = np.divmod(np.asarray(k, dtype=np.int64), BLOCK)
        running = np.cumsum(self._rows[blocks], axis=1, dtype=np.int64)  # (a few thousand a chunk: the texts' ends)
        return self._before(blocks) + running[np.arange(len(blocks)), within]

    def first_reaching(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``np.searchsorted(ends, positions, side="left")`` (``n`` where no token ends at or after a position),
        and the end of each token found (where one is)."""
        blocks = np.searchsorted(self._block_ends, positions, side="left")
        k, end = np.full(len(positions), self.n, np.int64), np.zeros(len(positions), np.int64)
        inside = blocks < len(self._block_ends)
        if inside.any():
            b = blocks[inside]
            before = self._before(b)
            # the block ends at or after the position, so a real token of it reaches it (padding adds no bytes)
            within, reach = self._walk(b, positions[inside] - before)
            k[inside] = b * BLOCK + within
            end[inside] = before + reach
        return k, end

    def all(self) -> np.ndarray:
        """Every token's end (tests and the reference path)."""
        return np.cumsum(self._rows.reshape(-1)[:self.n], dtype=np.int64)


class TokenStarts:
    """Where the tokens of a byte line start, searched without being built: srp needs the first token
    starting at or after each segment end (1.5 M of them at 1 GB), not the start of every token (300 M).

    A token starts at its end minus its untrimmed bytes (``back``), or minus all its bytes for a text's
    first token that keeps its leading space. So a start is never after its end and never before the
    previous token's end, and the first token starting at or after ``p`` is the first token ending at or
    after ``p`` (when it starts there) or the one after it."""

    def __init__(self, enc: FastEncoder, ids: np.ndarray, ends: BlockedEnds, kept: np.ndarray):
        self._enc, self._ids, self._ends, self._kept = enc, ids, ends, kept

    def _starts(self, k: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The starts of tokens ``k``, which end at ``ends``."""
        return self._enc._starts_from_ends(self._ids[k], ends, np.isin(k, self._kept))

    def first_at_or_after(self, positions: np.ndarray) -> np.ndarray:
        """``np.searchsorted(starts, positions, side="left")``."""
        positions = np.asarray(positions, dtype=np.int64)
        k, ends = self._ends.first_reaching(positions)
        inside = k < self._ends.n
        late = np.zeros(len(k), dtype=bool)
        late[inside] = self._starts(k[inside], ends[inside]) < positions[inside]
        return k + late

    def all(self) -> np.ndarray:
        """Every start (tests and the reference path)."""
        return self._enc._starts_from_ends(self._ids, self._ends.all(), self._kept)


class SortedStarts:
    """``TokenStarts`` over starts already built (the tokenizers path)."""

    def __init__(self, starts: np.ndarray):
        self._starts = starts

    def first_at_or_after(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._starts, positions, side="left")

    def all(self) -> np.ndarray:
        return self._starts
