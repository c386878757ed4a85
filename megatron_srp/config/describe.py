"""``--describe`` for any config dataclass: every key (nested sections, list items) with its default
and the docstring written under its field.

The pretraining recipe, post-training recipes and evaluation suites are all dataclasses loaded by
``config.load_config``; this walks them the same way (a list of sections is shown as ``key[]``).
"""

from __future__ import annotations

import dataclasses
import typing

from megatron_srp.config.loader import field_docs


def _section_class(tp):
    """The dataclass inside ``tp`` (itself, Optional[...] or list[...]), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return None


def _lines(cls, indent: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        doc = docs.get(f.name, "").replace("\n", " ")
        section = _section_class(hints[f.name])
        if section is None:
            out.append(f"{indent}{f.name}: {_default(f)!r}\n{indent}    {doc}")
            continue
        is_list = typing.get_origin(hints[f.name]) in (list, typing.List)
        name = f"{f.name}[]" if is_list else f.name
        default = _default(f)
        shown = "" if is_list and not default else ("  (default: none)" if default is None else "")
        doc = doc or (section.__doc__ or "").strip().splitlines()[0]  # an undocumented field: its section's line
        out.append(f"{indent}{name}:{shown}  # {doc}")
        out.extend(_lines(section, indent + "  "))
    return out


def describe(cls) -> str:
    """Every key of the config dataclass ``cls`` with its default and meaning."""
    head = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    return "\n".join([f"# {head}", *_lines(cls, "")])
