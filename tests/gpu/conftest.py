"""The GPU leg's switches: the model it trains, and what stands in for the GPU in a rehearsal.

Rehearsal (``SRP_GPU_REHEARSAL=1``; the CPU suite runs it through ``REHEARSE=1 tools/gpu_check.sh``):
the same tests, commands and assertions on the CPU, with ``device=cpu`` for ``device=cuda``, the local
spec for Transformer Engine's, no FP8 (every FP8 recipe counts as supported, and one is run), and two
gloo processes for two GPUs. It shows the tests' own bugs, not TE's or the GPU's.
"""

from __future__ import annotations

import pytest

from megatron_srp.training import te_support
from tests.conftest import GPU_REHEARSAL

REHEARSAL = GPU_REHEARSAL
STEPS = 4 if REHEARSAL else 20

# tiny_cpu's shape widened to multiples of 128, the strictest GEMM shape rule of TE's FP8 recipes
# (block scaling): the same model runs every recipe. fp32 unless a test asks for bf16.
MODEL = ["device=cuda", "model.hidden_size=128", "model.ffn_hidden_size=512", "model.num_attention_heads=4",
         "model.num_query_groups=2", "model.seq_length=128", "model.vocab_size=512",
         "training.micro_batch_size=2", "training.global_batch_size=8", "scheduler.lr_warmup_iters=1"]


def on_device(overrides: list[str]) -> list[str]:
    """``overrides`` as the GPU runs them, or with the rehearsal's stand-ins."""
    if not REHEARSAL:
        return list(overrides)
    out = []
    for o in overrides:
        if o == "device=cuda":
            o = "device=cpu"
        elif o == "model.transformer_impl=transformer_engine":
            o = "model.transformer_impl=local"
        elif o.startswith("precision.fp8"):
            continue
        out.append(o)
    return out


def require_te() -> None:
    why = None if REHEARSAL else te_support.import_error()
    if why:
        pytest.skip(f"{why}: the TE layer spec, FP8 and TE checkpoints need it (the NGC container has it)")


def require_fp8(recipe: str) -> None:
    require_te()
    if REHEARSAL:
        if recipe != te_support.FP8_RECIPES[0]:
            pytest.skip(f"rehearsal: {recipe} runs the same commands as {te_support.FP8_RECIPES[0]}")
        return
    ok, why = te_support.fp8_recipe_support(recipe)
    if not ok:
        pytest.skip(f"precision.fp8_recipe={recipe} is not supported here: {why}")


def gpu_count() -> int:
    if REHEARSAL:
        return 2
    import torch

    return torch.cuda.device_count()
