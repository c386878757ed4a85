"""The Megatron-Core side of a conversion: one process, TP = PP = 1, the project's own model provider.

Used by the parity check (logits of the real Megatron model) and by ``convert_from_hf`` (to build
the sharded state dict that ``dist_checkpointing`` saves). Any TP/PP layout of a checkpoint loads
here, since torch_dist stores global tensors.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

import torch

from megatron_srp.config import Recipe, recipe_from_dict


def single_process_recipe(recipe: Recipe) -> Recipe:
    d = recipe.to_dict()
    d["parallel"].update(tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                         virtual_pipeline_model_parallel_size=None, sequence_parallel=False)
    d["model"].update(transformer_impl="auto", recompute_granularity=None, recompute_method=None,
                      recompute_num_layers=None)
    d["precision"]["fp8"] = None
    d["training"]["global_batch_size"] = d["training"]["micro_batch_size"]
    d["checkpoint"].update(dir=None, load=None)
    d["device"] = "auto"  # a conversion runs where it is started: a GPU when there is one, else the CPU
    return recipe_from_dict(d)


@contextmanager
def megatron_model(recipe: Recipe) -> Iterator[torch.nn.Module]:
    """A freshly initialised GPTModel chunk for ``recipe`` at TP = PP = 1 (process group set up and torn down)."""
    from megatron_srp.training.quiet import missing_kernel_warnings_ignored

    with missing_kernel_warnings_ignored():  # Megatron-Core's import-time fallback warnings, nothing else
        from megatron_srp.training import distributed
        from megatron_srp.training.model import build_model_chunk, build_transformer_config

    r = single_process_recipe(recipe)
    env = distributed.setup(r)
    try:
        with missing_kernel_warnings_ignored():
            model = build_model_chunk(r, build_transformer_config(r, env.on_cpu), env.on_cpu)
        if not env.on_cpu:
            model.cuda(torch.cuda.current_device())
        model.eval()
        yield model
    finally:
        model = None
        gc.collect()
        distributed.teardown()


def load_weights(model: torch.nn.Module, iter_path: str) -> None:
    """Megatron's own loading path: ``dist_checkpointing.load`` of the model's sharded state dict."""
    from megatron.core import dist_checkpointing

    from megatron_srp.training.quiet import checkpoint_read_warnings_ignored

    with checkpoint_read_warnings_ignored():
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, iter_path)
    model.load_state_dict(loaded["model"], strict=True)


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[b, s, padded vocab] float32 logits on the CPU."""
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    position_ids = torch.arange(tokens.shape[1], device=device).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        out = model(tokens, position_ids, None)
    return out.float().cpu()


def round_params_to(model: torch.nn.Module, weights: torch.dtype, compute: torch.dtype) -> None:
    """Hold exactly the exported weight values (rounded through ``weights``), stored in ``compute``."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.to(weights).to(compute)
