"""Megatron-Core's import-time warnings about optional kernels, filtered where it is imported.

Without Transformer Engine and Apex, importing Megatron-Core warns four to six times that it falls
back to PyTorch implementations. The trainer says once, in one line, what that changes (see
``backend_note``); these exact messages are ignored during the import and nothing else is.
"""

from __future__ import annotations

import importlib.util
import warnings
from contextlib import contextmanager

# The messages (regexes matched at the start), as megatron-core 0.16 and 0.19 word them. 0.19 also
# warns, while the first model is built, about an experimental multimodal config this project never uses.
FALLBACK_WARNINGS = (
    r"Transformer Engine and Apex are not installed\. Falling back to",
    r"Apex is not installed\. Falling back to Torch Norm",
    r"MimoModelConfig is experimental",
)


@contextmanager
def missing_kernel_warnings_ignored():
    """Import Megatron-Core modules, and build the first model, inside this block."""
    with warnings.catch_warnings():
        for message in FALLBACK_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


def backend_note(impl: str, requested: str, on_cpu: bool) -> str:
    """One line on the layer implementation in use and why, for the start of a run."""
    if impl == "transformer_engine":
        return "layers: Transformer Engine"
    if requested == "local":
        return "layers: Megatron-Core's local PyTorch spec (model.transformer_impl=local); no FP8"
    why = ("Transformer Engine is not installed" if importlib.util.find_spec("transformer_engine") is None
           else "Transformer Engine needs a GPU" if on_cpu else "Transformer Engine does not import")
    return f"layers: Megatron-Core's local PyTorch spec ({why}); no FP8, no fused TE kernels"
