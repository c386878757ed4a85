"""Characters the two tokenizer libraries may classify apart, and the stretches of a text they can change.

gigatoken classifies characters (letter, number, space: the classes of the pretokenizer's regular expression) by
a newer Unicode than ``tokenizers``' Oniguruma. A character this Python's Unicode tables leave unassigned (U+16EBB,
assigned in Unicode 17, is a letter to gigatoken and punctuation to tokenizers 0.23) may be pretokenized apart;
every other character carries the same class in both (``has_unassigned`` finds the texts that have one).

Such a character changes pretokens only between the nearest cuts around it (``unsure_stretches``): a cut is a
space followed by a printable ASCII character (not by an added token), and for the pretokenizers ``cut_pattern``
accepts, a pretoken starts there in both libraries and the pretokens before it are those of the text cut there.
A space ends no letter, number or punctuation run and starts no line-break run (``\\s*[\\r\\n]+`` ends at a line break);
a run of spaces before a non-space gives its last space to the next pretoken (``\\s+(?!\\S)``) and keeps all of
them at the end of a cut text: the same pretokens. Byte-level BPE works within a pretoken, so gigatoken's ids
outside those stretches are ``tokenizers``' ids, and only the stretches need ``tokenizers``: a 227,000-character
file with 75 such characters took it 0.15 s whole, 30 times gigatoken's time (BENCHMARKS.md "Balanced spans").
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Optional

import numpy as np

FIRST_UNASSIGNED = 0x378
"""No code point below this is unassigned (``tests/data/test_unassigned.py`` checks it against Python's tables)."""

SAME, UNASSIGNED, NOT_LOOKED_UP = 0, 1, 2
"""A code point's class in ``_classes``: the same in both libraries, unassigned, not looked up yet."""

CUT = re.compile(r" (?=[!-~])")
"""Where ``unsure_stretches`` may cut a text: at a space followed by a printable ASCII character."""

CUT_SAFE_PATTERNS = (
    # Llama 3 (and GPT-4's cl100k)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+",
    # Qwen2, Qwen2.5, Qwen3 (Qwen3Guard)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
"""Split patterns (tokenizer.json, before a ByteLevel without its own expression) whose pretokens ``CUT`` never
splits; GPT-2's, built into ByteLevel, is the third."""


@lru_cache(maxsize=1)
def _classes() -> np.ndarray:
    """Per code point, filled in as texts bring new ones: a whole table up front (260,000 ``unicodedata``
    calls) cost 0.03-0.05 s of every start-up, and real text has a few thousand distinct characters. Planes
    4-13 are unassigned throughout; above U+E0FFF (the rest of plane 14, private use) no character is checked."""
    table = np.full(0x110000, NOT_LOOKED_UP, dtype=np.uint8)
    table[:FIRST_UNASSIGNED] = SAME
    table[0x40000:0xE0000] = UNASSIGNED
    table[0xE1000:] = SAME
    return table


def _look_up(points: np.ndarray) -> None:
    """Fill in ``points``' classes (threads racing here write the same answers)."""
    table = _classes()
    for c in np.unique(points).tolist():
        table[c] = UNASSIGNED if unicodedata.category(chr(c)) == "Cn" else SAME


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def has_unassigned(text: str) -> bool:
    """Whether ``text`` has a character this Python's Unicode tables leave unassigned: a table lookup per code
    point from U+0378 up (three times faster than a regular expression over the unassigned ranges, and mostly
    without the GIL). Most non-ASCII text is Latin with a few symbols: one vectorized comparison leaves
    little or nothing to look up (0.61 -> 0.22 s per GB of the real-text corpus, BENCHMARKS.md)."""
    if text.isascii():
        return False
    points = _code_points(text)
    high = points[points >= FIRST_UNASSIGNED]
    if not len(high):
        return False
    found = _classes()[high]
    worst = found.max()
    if worst == NOT_LOOKED_UP:
        _look_up(high[found == NOT_LOOKED_UP])
        worst = _classes()[high].max()
    return bool(worst == UNASSIGNED)


def cut_pattern(config: dict, splitting: tuple = ()) -> Optional[re.Pattern]:
    """Where ``unsure_stretches`` may cut texts of the tokenizer with this tokenizer.json (``config``): ``CUT``,
    but not before an added token or one of the strings ``splitting`` the text like one (the text the
    pretokenizer sees ends there, and a run of spaces at its end stays whole). None where no cut is sure to fall
    between pretokens: a normalizer other than NFC (which composes nothing across a space); a pretokenizer other
    than ByteLevel with GPT-2's expression or a Split by one of ``CUT_SAFE_PATTERNS``; an added token (or a string
    ``splitting``) holding a space or taking the spaces around it."""
    if config.get("normalizer") not in (None, {"type": "NFC"}):
        return None
    pre = config.get("pre_tokenizer") or {}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False}
    if pre.get("type") == "ByteLevel":
        known = _has(pre, byte_level) and pre.get("use_regex", True)
    elif pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, level = pre["pretokenizers"]
        known = _has(split, {"type": "Split", "behavior": "Isolated", "invert": False}) \
            and (split.get("pattern") or {}).get("Regex") in CUT_SAFE_PATTERNS \
            and _has(level, {**byte_level, "use_regex": False})
    else:
        known = False
    added = config.get("added_tokens") or []
    if not known or any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None
    strings = {t["content"] for t in added} | set(splitting)
    if any(" " in s for s in strings):
        return None
    before = "".join(f"(?!{re.escape(s)})" for s in sorted(strings))
    return re.compile(CUT.pattern + before)


def _has(node: dict, fields: dict) -> bool:
    return all(node.get(k) == v for k, v in fields.items())


def unsure_stretches(text: str, cut: re.Pattern = CUT) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The stretches of ``text`` (character ranges from one ``cut`` to the next, or to an end: ``cut_pattern``)
    that hold an unassigned character, in order, those that touch joined; and each character's start in the
    text's UTF-8, then its length in bytes."""
    points = _code_points(text)
    table = _classes()
    if (table[points] == NOT_LOOKED_UP).any():  # (``has_unassigned`` looked them up: a text not seen there)
        _look_up(points[table[points] == NOT_LOOKED_UP])
    bounds = np.asarray([0, *(m.start() for m in cut.finditer(text)), len(text)])  # (a cut at 0: 0 twice)
    after = np.unique(np.searchsorted(bounds, np.flatnonzero(table[points] == UNASSIGNED), side="right"))
    first = np.flatnonzero(np.diff(after, prepend=-1) != 1)  # stretches that touch are one
    last = np.append(first[1:], len(after)) - 1
    stretches = list(zip(bounds[after[first] - 1].tolist(), bounds[after[last]].tolist()))
    width = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    return stretches, np.concatenate([[0], np.cumsum(width)])
