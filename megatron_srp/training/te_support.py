"""What the installed Transformer Engine and this GPU can run: the import, and each FP8 recipe.

One place asks TE, so a recipe that names an FP8 scaling recipe this GPU lacks (MXFP8 before
Blackwell, block scaling off Hopper or before CUDA 12.9) stops with the recipe key and TE's own reason
before the model is built, and the GPU tests skip exactly the recipes TE refuses.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from typing import Optional

log = logging.getLogger(__name__)

# precision.fp8_recipe -> TE's check function (both tensor-scaled recipes need plain FP8 support).
_CHECKS = {
    "delayed": "check_fp8_support",
    "tensorwise": "check_fp8_support",
    "mxfp8": "check_mxfp8_support",
    "blockwise": "check_fp8_block_scaling_support",
}
FP8_RECIPES = tuple(_CHECKS)


@functools.lru_cache(maxsize=None)
def import_error() -> Optional[str]:
    """None when ``transformer_engine.pytorch`` imports; else why not, in one line."""
    if importlib.util.find_spec("transformer_engine") is None:
        return "Transformer Engine is not installed"
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:  # a broken TE install must not break local-spec runs
        log.warning("transformer_engine is installed but does not import (%s); using the local spec", e)
        return f"Transformer Engine does not import ({type(e).__name__}: {e})"
    return None


def available() -> bool:
    return import_error() is None


def _check_function(name: str):
    # TE 2.x keeps the checks in transformer_engine.pytorch.fp8; newer releases moved them to .quantization.
    for module in ("transformer_engine.pytorch.quantization", "transformer_engine.pytorch.fp8"):
        try:
            fn = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    return None


def fp8_recipe_support(recipe: str) -> tuple[bool, str]:
    """(supported, reason) for one ``precision.fp8_recipe`` on the current GPU."""
    if recipe not in _CHECKS:
        return False, f"unknown FP8 recipe {recipe!r} (one of {', '.join(FP8_RECIPES)})"
    why = import_error()
    if why is not None:
        return False, why
    fn = _check_function(_CHECKS[recipe])
    if fn is None:
        return False, f"this Transformer Engine has no {_CHECKS[recipe]} (too old for the {recipe} recipe)"
    ok, reason = fn()
    return bool(ok), "" if ok else str(reason)
