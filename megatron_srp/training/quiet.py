"""Warnings about choices this project makes on purpose, filtered where they arise.

Without Transformer Engine and Apex, importing Megatron-Core warns four to six times that it falls
back to PyTorch implementations. The trainer says once, in one line, what that changes (see
``backend_note``); these exact messages are ignored during the import and nothing else is. Reading a
checkpoint warns three more times about APIs Megatron-Core itself calls (ShardedTensor,
``load_state_dict``) and about a single-process read, which the converter does on purpose: ignored
around those reads only.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from megatron_srp.training import te_support

# The messages (regexes matched at the start), as megatron-core 0.16 and 0.19 word them. 0.19 also
# warns, while the first model is built, about an experimental multimodal config this project never uses.
FALLBACK_WARNINGS = (
    r"Transformer Engine and Apex are not installed\. Falling back to",
    r"Apex is not installed\. Falling back to Torch Norm",
    r"MimoModelConfig is experimental",
)


CHECKPOINT_READ_WARNINGS = (
    r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to load in a single",
    r"`load_state_dict` is deprecated and will be removed in future versions",
    r"Please use DTensor instead and we are deprecating ShardedTensor",
)


@contextmanager
def checkpoint_read_warnings_ignored():
    """Read a torch_dist checkpoint (Megatron-Core's loader or torch's dcp) inside this block."""
    with warnings.catch_warnings():
        for message in CHECKPOINT_READ_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


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
    why = te_support.import_error() or "Transformer Engine needs a GPU"
    return f"layers: Megatron-Core's local PyTorch spec ({why}); no FP8, no fused TE kernels"
