"""Safety classifier backends behind one interface, and a verdict cache.

A backend maps a batch of ``SegmentInput`` (a segment and a bounded window of the text before it)
to ``Verdict`` objects of ``megatron_srp.reflection``. Backends are looked up by name in
``BACKENDS`` and built with keyword options (``build_classifier("qwen3guard", model="DIR")``);
heavy dependencies are imported only by the backend that needs them. Rooms above the data library
add backends with ``register_classifier`` (loaded by ``megatron_srp.plugins``).

Rewriters (the ``rewrite`` variant) follow the same pattern: ``Rewriter.rewrite`` maps unsafe
segments to safe replacements; registry ``REWRITERS``, extended with ``register_rewriter``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import json
import os
import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from megatron_srp.errors import SRPError
from megatron_srp.hf import HFError
from megatron_srp.reflection import SAFE, Verdict


@dataclass(frozen=True)
class SegmentInput:
    """What a classifier sees: one segment and the text before it (already cut to the window)."""

    segment: str
    context: str = ""


class ClassifierError(SRPError, RuntimeError):
    """A backend that cannot be built or that returned something unusable."""


Factory = Union[Callable[..., object], str]
"""What a registry holds: a callable building the backend from options, or "module:attribute"."""


class Classifier(ABC):
    """Batch of (context, segment) -> verdicts. Subclasses set ``name``, ``version``, ``categories``."""

    name: str = ""
    """Backend name as given on the command line."""
    version: str = ""
    """What makes two runs comparable: model id and revision, world hash, label map. Part of the cache key."""
    categories: tuple[str, ...] = ()
    """The taxonomy of unsafe categories this backend can emit (becomes the reflection format's list)."""
    batch_size: int = 32
    """How many segments ``classify`` is given at once."""

    @abstractmethod
    def classify(self, items: Sequence[SegmentInput]) -> list[Verdict]:
        """One verdict per item, in order."""


class Rewriter(ABC):
    """Unsafe segment -> a safe replacement (the ``rewrite`` variant)."""

    name: str = ""
    version: str = ""

    @abstractmethod
    def rewrite(self, items: Sequence[SegmentInput], verdicts: Sequence[Verdict]) -> list[str]:
        """One replacement text per item; it should keep the segment's leading whitespace."""


# name -> factory: a callable, or "module:attribute" imported on demand (heavy dependencies load only
# for the backend that is used). Rooms above the data library add theirs with ``register_classifier``
# and ``register_rewriter`` (``megatron_srp.plugins.load_plugins``); the tools build their --classifier
# and --rewriter choices from these tables.
BACKENDS: dict[str, Factory] = {
    "column": "megatron_srp.data.classify:ColumnClassifier",
    "hf": "megatron_srp.data.classifiers.hf_sequence:HFSequenceClassifier",
    "qwen3guard": "megatron_srp.data.classifiers.qwen3guard:Qwen3GuardClassifier",
    "llamaguard": "megatron_srp.data.classifiers.qwen3guard:LlamaGuardClassifier",
    "wildguard": "megatron_srp.data.classifiers.qwen3guard:WildGuardClassifier",
}
REWRITERS: dict[str, Factory] = {
    "template": "megatron_srp.data.classify:TemplateRewriter",
    "hf": "megatron_srp.data.classifiers.hf_rewriter:HFRewriter",
}


def _register(table: dict, kind: str, name: str, factory: Factory) -> None:
    known = table.get(name)
    if known is not None and known != factory:
        raise ClassifierError(f"{kind} {name!r} is already registered ({known!r}), not replacing it with {factory!r}")
    table[name] = factory


def register_classifier(name: str, factory: Factory) -> None:
    """Make ``--classifier NAME`` build ``factory(**options)``; ``factory`` may be "module:attribute"."""
    _register(BACKENDS, "classifier backend", name, factory)


def register_rewriter(name: str, factory: Factory) -> None:
    """Make ``--rewriter NAME`` build ``factory(**options)``; ``factory`` may be "module:attribute"."""
    _register(REWRITERS, "rewriter", name, factory)


def registered() -> dict[str, dict[str, Factory]]:
    """Both tables, for a task in another process (datatrove workers start without the plugins loaded)."""
    return {"classifier": dict(BACKENDS), "rewriter": dict(REWRITERS)}


def restore_registered(tables: dict[str, dict[str, Factory]]) -> None:
    """Re-register what ``registered()`` returned in the parent process."""
    for name, factory in tables.get("classifier", {}).items():
        BACKENDS.setdefault(name, factory)
    for name, factory in tables.get("rewriter", {}).items():
        REWRITERS.setdefault(name, factory)


def unknown_name(kind: str, name: str, known) -> str:
    """``unknown judge 'orcale' (did you mean 'oracle'?); choose one of [...]``."""
    near = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown {kind} {name!r}{hint}; choose one of {sorted(known)}"


def _resolve(table: dict, kind: str, name: str):
    if name not in table:
        raise ClassifierError(unknown_name(kind, name, table))
    factory = table[name]
    if not isinstance(factory, str):
        return factory
    module, attr = factory.split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:  # a backend's optional dependency (vllm, ...) or a part not installed
        raise ClassifierError(f"{kind} {name!r} cannot be loaded: {e}") from e


def _build(table: dict, kind: str, name: str, options: dict):
    factory = _resolve(table, kind, name)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as e:  # an option the backend does not take: a flag error, not a bug in the backend
        raise ClassifierError(f"{kind} {name!r}: {e} (options given: {sorted(options)})") from None
    try:
        return factory(**options)
    except HFError as e:  # a model, tokenizer, engine or dtype of an HF backend
        raise ClassifierError(str(e)) from e


def build_classifier(name: str, **options) -> Classifier:
    return _build(BACKENDS, "classifier backend", name, options)


def build_rewriter(name: str, **options) -> Rewriter:
    return _build(REWRITERS, "rewriter", name, options)


def parse_options(pairs: Sequence[str], flag: str) -> dict:
    """``["world=w.json", "batch_size=8"]`` -> dict; values parsed as JSON when they are JSON."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClassifierError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


class ColumnClassifier(Classifier):
    """Labels already in the input: the annotator passes them through ``labels_from_row``.

    A document row carries either ``label`` (+ optional ``categories``) for the whole document, or
    ``segments``: a list of ``{"text", "label", "categories"}`` that also fixes the segmentation.
    ``classify`` is never called with raw text: a missing label is an input error.
    """

    name = "column"

    def __init__(self, label_key: str = "label", categories_key: str = "categories",
                 segments_key: str = "segments", taxonomy: Optional[Sequence[str]] = None):
        self.label_key, self.categories_key, self.segments_key = label_key, categories_key, segments_key
        self.categories = tuple(taxonomy) if taxonomy is not None else ()
        self.version = f"column:{label_key}/{categories_key}/{segments_key}"

    def classify(self, items):
        raise ClassifierError("the column backend reads labels from the input rows, it cannot classify text")

    def verdict(self, label, categories, where: str) -> Verdict:
        label = str(label).strip().lower() if label is not None else ""
        if label not in (SAFE, "unsafe", "controversial"):
            raise ClassifierError(f"{where}: label {label!r} is not safe, unsafe or controversial")
        cats = () if label == SAFE else tuple(categories or ())
        if self.categories:
            unknown = [c for c in cats if c not in self.categories]
            if unknown:
                raise ClassifierError(f"{where}: categories {unknown} are not in the taxonomy {list(self.categories)}")
        return Verdict(label, cats)


class TemplateRewriter(Rewriter):
    """Replaces an unsafe segment by a fixed text (``{categories}`` is filled in): a cheap, exact baseline."""

    name = "template"

    def __init__(self, text: str = " [Removed: unsafe content ({categories}).]"):
        self.text = text
        self.version = f"template:{text}"

    def rewrite(self, items, verdicts):
        out = []
        for item, verdict in zip(items, verdicts):
            lead = item.segment[:len(item.segment) - len(item.segment.lstrip())]
            body = self.text.format(categories=", ".join(verdict.categories) or verdict.label)
            out.append(lead + body.lstrip())  # the segment's own leading whitespace, then the text
        return out


def cache_key(classifier: Classifier, item: SegmentInput) -> str:
    h = hashlib.sha256()
    for part in (classifier.name, classifier.version, item.context, item.segment):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class VerdictCache:
    """sqlite table content-hash -> verdict for processes on one host (WAL mode: not on a network file system).

    ``tools/annotate.py`` does not use it: its tasks may span nodes, so each shard has a log of its
    own and the finishing step merges them (``megatron_srp.data.verdict_log``).
    """

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, label TEXT, categories TEXT)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Verdict]:
        found = {}
        for i in range(0, len(keys), 500):
            chunk = list(keys[i:i + 500])
            rows = self._db.execute(
                f"SELECT key, label, categories FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, label, cats in rows:
                found[key] = Verdict(label, tuple(json.loads(cats)))
        return found

    def put_many(self, pairs: Sequence[tuple[str, Verdict]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)",
                             [(k, v.label, json.dumps(list(v.categories))) for k, v in pairs])
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def classify_cached(classifier: Classifier, items: Sequence[SegmentInput],
                    cache: Optional[VerdictCache]) -> tuple[list[Verdict], int]:
    """Verdicts for ``items``, asking the backend only for those not cached. Returns (verdicts, n_new)."""
    keys = [cache_key(classifier, it) for it in items]
    known = cache.get_many(keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    # Identical segments in one batch are classified once.
    unique: dict[str, int] = {}
    for i in todo:
        unique.setdefault(keys[i], i)
    order = list(unique.values())
    fresh: dict[str, Verdict] = {}
    for start in range(0, len(order), max(1, classifier.batch_size)):
        chunk = order[start:start + classifier.batch_size]
        verdicts = classifier.classify([items[i] for i in chunk])
        if len(verdicts) != len(chunk):
            raise ClassifierError(f"{classifier.name} returned {len(verdicts)} verdicts for {len(chunk)} segments")
        for i, v in zip(chunk, verdicts):
            fresh[keys[i]] = v
        if cache is not None:
            cache.put_many([(keys[i], fresh[keys[i]]) for i in chunk])
    known.update(fresh)
    return [known[k] for k in keys], len(order)


class RewriteCache:
    """sqlite table content-hash -> rewritten text (rewriting is the slowest step of the rewrite variant)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, timeout=600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS rewrites (key TEXT PRIMARY KEY, text TEXT)")
        self._db.commit()

    def rewrite(self, rewriter: Rewriter, items: Sequence[SegmentInput], verdicts: Sequence[Verdict]) -> list[str]:
        keys = []
        for it, v in zip(items, verdicts):
            h = hashlib.sha256()
            for part in (rewriter.name, rewriter.version, it.context, it.segment, v.label, *v.categories):
                data = part.encode("utf-8", "surrogatepass")
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
            keys.append(h.hexdigest())
        found = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            found.update(self._db.execute(
                f"SELECT key, text FROM rewrites WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall())
        todo = [i for i, k in enumerate(keys) if k not in found]
        if todo:
            texts = rewriter.rewrite([items[i] for i in todo], [verdicts[i] for i in todo])
            if len(texts) != len(todo):
                raise ClassifierError(f"rewriter {rewriter.name} returned {len(texts)} texts for {len(todo)} segments")
            self._db.executemany("INSERT OR REPLACE INTO rewrites VALUES (?, ?)",
                                 [(keys[i], t) for i, t in zip(todo, texts)])
            self._db.commit()
            found.update({keys[i]: t for i, t in zip(todo, texts)})
        return [found[k] for k in keys]

    def close(self) -> None:
        self._db.close()
