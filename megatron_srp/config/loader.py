"""The YAML loader every recipe type shares: pretraining recipes, post-training recipes, evaluation
suites and MedSafetyWorld ablations.

    defaults: [../base.yaml]          # optional, paths relative to this file; later wins
    model: {num_layers: 2, hidden_size: 64}

On the command line, ``key.sub=value`` overrides follow the recipe path; values are parsed as
YAML (``training.train_iters=100``, ``data.data_path=[a,b]``, ``attacks.0.n=10``). Unknown keys and
values of the wrong type fail at load time with the key's path and the nearest valid name.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, List, Literal, Union

import yaml

from megatron_srp.errors import SRPError


class RecipeError(SRPError, ValueError):
    """A recipe that cannot be loaded or run; the message names the key path."""


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: circular 'defaults' chain: {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    parents = raw.pop("defaults", []) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        merged = _deep_merge(merged, _read_yaml(path.parent / parent, seen + (path,)))
    return _deep_merge(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], parsed c); a number indexes a list (``attacks.0.n=10``)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key.sub=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node: Any = tree
    for i, k in enumerate(keys):
        if isinstance(node, list):
            if not (k.isdigit() and int(k) < len(node)):
                raise RecipeError(f"{'.'.join(keys)}: {'.'.join(keys[:i])} is a list of {len(node)}; "
                                  f"{k!r} is not an index of it")
            k = int(k)
        if i == len(keys) - 1:
            node[k] = value
            return
        nxt = node[k] if isinstance(node, list) else node.get(k)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[k] = nxt
        node = nxt


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RecipeError(f"{path}: {value!r} is not one of {list(args)}{hint}")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, val_tp = args or (Any, Any)
        return {_coerce(k, key_tp, path): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise RecipeError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _field_default(f: dataclasses.Field):
    """A field's default value (its factory called), or None when it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(cls, raw: Any, path: str, base=None):
    """``cls`` from a mapping; keys it leaves out keep ``base``'s values (the enclosing field's default:
    ``confirm: {seeds: [0]}`` keeps the confirm stage's worlds, not the Stage class's), else the defaults."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {(path + '.' if path else '') + near[0]!r}?" if near else ""
            raise RecipeError(f"unknown key {key_path!r}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            default = _field_default(fields[key])
            kwargs[key] = _build(tp, value, key_path, default if isinstance(default, tp) else None)
        else:
            kwargs[key] = _coerce(value, tp, key_path)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def read_tree(path: str | os.PathLike, overrides: list[str] = ()) -> dict:
    """The YAML at ``path`` with its ``defaults:`` merged in and ``key.sub=value`` overrides applied,
    before any key check."""
    tree = _read_yaml(Path(path))
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(tree, keys, value)
    return tree


def load_config(cls, path: str | os.PathLike, overrides: list[str] = ()):
    """Any config dataclass from YAML (``defaults:`` inheritance, ``key.sub=value`` overrides) with the
    same key checks as a pretraining recipe: post-training recipes, evaluation suites and MedSafetyWorld
    ablations share this loader."""
    return _build(cls, read_tree(path, overrides), "")


def config_from_dict(cls, raw: dict):
    return _build(cls, raw, "")


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under each field, for ``tools/pretrain.py --describe``."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs
