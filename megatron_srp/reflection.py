"""THE reflection format: how a safety verdict is written into text, and read back.

Defaults follow the paper's authors: after each segment, `` <think> Safe </think>`` or
`` <think> Unsafe, CATEGORY </think>`` (also ``Controversial``); a Safe reflection carries no
category; categories come from the classifier's taxonomy (Qwen3Guard's by default). Everything
that writes or reads reflections (preprocessing, post-training data, guarded generation,
evaluation) calls this module, so a recipe that changes the tags or label words changes them
everywhere.

Injection safety: text from a corpus must never contain a reflection. ``neutralize`` rewrites
every occurrence of the open and close tags in source text by inserting U+200B (zero-width space)
after the ``<``; the text reads the same, no longer matches a tag, and the rule is idempotent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Optional

from megatron_srp.errors import SRPError

SAFE, UNSAFE, CONTROVERSIAL = "safe", "unsafe", "controversial"
Label = Literal["safe", "unsafe", "controversial"]

# Qwen3Guard's safety categories, in its own spelling ("Jailbreak" is prompt-side only).
QWEN3GUARD_CATEGORIES = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)

ZERO_WIDTH_SPACE = "\u200b"


class ReflectionFormatError(SRPError, ValueError):
    """A reflection format, verdict or segment list that cannot be rendered (a flag or annotation error)."""


class ReflectionParseError(SRPError, ValueError):
    """Text that looks like a reflection but does not follow the format."""


@dataclass(frozen=True)
class Verdict:
    """A safety judgement of one segment."""

    label: Label
    categories: tuple[str, ...] = ()

    @property
    def is_safe(self) -> bool:
        return self.label == SAFE

    @property
    def is_flagged(self) -> bool:
        """Unsafe or controversial: post-training stops the answer after such a reflection."""
        return self.label != SAFE


@dataclass(frozen=True)
class ReflectionFormat:
    """The reflection syntax; recipe options of the data pipeline."""

    open_tag: str = "<think>"
    """Opening tag."""
    close_tag: str = "</think>"
    """Closing tag."""
    safe_word: str = "Safe"
    """Label word of a safe verdict."""
    unsafe_word: str = "Unsafe"
    """Label word of an unsafe verdict."""
    controversial_word: str = "Controversial"
    """Label word of a controversial verdict."""
    categories: tuple[str, ...] = QWEN3GUARD_CATEGORIES
    """Allowed category names (the classifier's taxonomy)."""
    category_separator: str = ", "
    """Between the label word and each category."""
    leading_space: bool = True
    """Write a space before the open tag (the reflection follows the segment's last word)."""
    register_special_tokens: bool = False
    """Register the tags as tokenizer special tokens (the authors use plain text)."""

    def __post_init__(self):
        if not self.open_tag or not self.close_tag or self.open_tag == self.close_tag:
            raise ReflectionFormatError("reflection tags must be non-empty and different")
        words = [self.safe_word, self.unsafe_word, self.controversial_word]
        if len(set(words)) != 3 or any(not w.strip() for w in words):
            raise ReflectionFormatError(f"label words must be distinct and non-empty: {words}")
        bad = [c for c in self.categories if self.category_separator.strip() and self.category_separator.strip() in c]
        if bad:
            raise ReflectionFormatError(f"categories contain the separator {self.category_separator!r}: {bad}")

    # -- writing -----------------------------------------------------------------------------

    # Derived once per format (cached_property writes to __dict__, which frozen allows).
    @cached_property
    def _word_of(self) -> dict[str, str]:
        return {SAFE: self.safe_word, UNSAFE: self.unsafe_word, CONTROVERSIAL: self.controversial_word}

    @cached_property
    def _label_of(self) -> dict[str, str]:
        return {word: label for label, word in self._word_of.items()}

    def render(self, verdict: Verdict) -> str:
        """`` <think> Unsafe, Violent </think>`` for Verdict("unsafe", ("Violent",))."""
        if verdict.label not in (SAFE, UNSAFE, CONTROVERSIAL):
            raise ReflectionFormatError(f"unknown label {verdict.label!r}")
        unknown = [c for c in verdict.categories if c not in self.categories]
        if unknown:
            raise ReflectionFormatError(f"categories not in the taxonomy: {unknown}")
        body = self._word_of[verdict.label]
        if verdict.label != SAFE:  # a Safe reflection carries no category
            body = self.category_separator.join([body, *verdict.categories])
        return f"{' ' if self.leading_space else ''}{self.open_tag} {body} {self.close_tag}"

    # -- reading -----------------------------------------------------------------------------

    @cached_property
    def _pattern(self) -> re.Pattern:
        lead = r" ?" if self.leading_space else ""
        return re.compile(lead + re.escape(self.open_tag) + r" (.*?) " + re.escape(self.close_tag), re.S)

    def parse_body(self, body: str) -> Verdict:
        parts = body.split(self.category_separator)
        word, cats = parts[0].strip(), tuple(p.strip() for p in parts[1:])
        if word not in self._label_of:
            raise ReflectionParseError(f"unknown label word {word!r} in reflection {body!r}")
        label = self._label_of[word]
        if label == SAFE and cats:
            raise ReflectionParseError(f"a Safe reflection carries no category: {body!r}")
        unknown = [c for c in cats if c not in self.categories]
        if unknown:
            raise ReflectionParseError(f"unknown categories {unknown} in reflection {body!r}")
        return Verdict(label, cats)

    def find(self, text: str) -> list[tuple[int, int, Verdict]]:
        """Every reflection in ``text`` as (start, end, verdict), start including the lead space."""
        return [(m.start(), m.end(), self.parse_body(m.group(1))) for m in self._pattern.finditer(text)]

    def spans(self, text: str) -> list[tuple[int, int, Optional[Verdict]]]:
        """Every reflection-like span, as ``find``, with None for a malformed one: for model output,
        which may write either."""
        out = []
        for m in self._pattern.finditer(text):
            try:
                out.append((m.start(), m.end(), self.parse_body(m.group(1))))
            except ReflectionParseError:
                out.append((m.start(), m.end(), None))
        return out

    def parse(self, text: str) -> Verdict:
        """The verdict of a text that is exactly one rendered reflection."""
        found = self.find(text)
        if len(found) != 1 or found[0][0] != 0 or found[0][1] != len(text):
            raise ReflectionParseError(f"not a single reflection: {text!r}")
        return found[0][2]

    def split(self, text: str) -> tuple[list[str], list[Verdict]]:
        """Interleaved text -> (segments, verdicts); inverse of ``interleave``."""
        segments, verdicts, pos = [], [], 0
        for start, end, verdict in self.find(text):
            segments.append(text[pos:start])
            verdicts.append(verdict)
            pos = end
        if pos < len(text):
            segments.append(text[pos:])
        return segments, verdicts

    def interleave(self, segments: list[str], verdicts: list[Verdict]) -> str:
        """Each segment followed by its reflection."""
        if len(segments) != len(verdicts):
            raise ReflectionFormatError(f"{len(segments)} segments but {len(verdicts)} verdicts")
        return "".join(s + self.render(v) for s, v in zip(segments, verdicts))

    def first_flag(self, text: str) -> Optional[tuple[int, Verdict]]:
        """End offset and verdict of the first Unsafe/Controversial reflection, or None."""
        for _, end, verdict in self.find(text):
            if verdict.is_flagged:
                return end, verdict
        return None

    # -- injection safety --------------------------------------------------------------------

    @cached_property
    def _tag_pattern(self) -> re.Pattern:
        tags = sorted({self.open_tag, self.close_tag}, key=len, reverse=True)
        return re.compile("|".join(re.escape(t) for t in tags))

    def neutralize_points(self, text: str) -> list[int]:
        """Offsets in ``text`` where ``neutralize`` inserts U+200B (one per tag occurrence)."""
        return [m.start() + 1 for m in self._tag_pattern.finditer(text)]

    def neutralize(self, text: str) -> str:
        """Break every tag occurrence in source text (insert U+200B after its first character)."""
        points = self.neutralize_points(text)
        if not points:
            return text
        bounds = [0, *points, len(text)]
        return ZERO_WIDTH_SPACE.join(text[a:b] for a, b in zip(bounds, bounds[1:]))

    def special_tokens(self) -> list[str]:
        """Strings to register with the tokenizer when ``register_special_tokens`` is on."""
        return [self.open_tag, self.close_tag] if self.register_special_tokens else []


DEFAULT = ReflectionFormat()
