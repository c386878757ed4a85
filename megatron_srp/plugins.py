"""Backends registered by name from outside the data and eval rooms: the built-in plugin modules
(MedSafetyWorld's oracle classifier, rewriter and judge) and third-party packages that declare an
entry point in the group ``megatron_srp.plugins`` (the entry point names a module; importing it
registers its backends with ``register_classifier``, ``register_rewriter`` or ``register_judge``).

This module sits at the top with the command-line tools: every tool that resolves a backend by name
calls ``load_plugins()`` first."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from megatron_srp.errors import SRPError

ENTRY_POINT_GROUP = "megatron_srp.plugins"
BUILTIN = ("megatron_srp.medsafetyworld.plugins",)


class PluginError(SRPError, RuntimeError):
    """A plugin module that cannot be imported."""


def load_plugins() -> list[str]:
    """Import the built-in plugin modules and the entry points' modules (once each); returns their names."""
    names = list(BUILTIN)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        names.append(point.value.split(":")[0])
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise PluginError(f"plugin module {name!r} (entry point group {ENTRY_POINT_GROUP}) cannot be imported: {e}") from e
    return names
