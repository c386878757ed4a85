"""Megatron-LM's ``args`` (the argparse Namespace its torch_dist checkpoints keep in ``common.pt``) <->
our recipe's model section.

Our saves carry an ``args`` Namespace with Megatron-LM's names (``megatron_lm_common``), so that
Megatron-LM / Megatron-Bridge tools that read ``state_dict['args']`` understand our checkpoints;
``recipe_from_args`` reads a checkpoint Megatron-LM's ``pretrain_gpt.py`` wrote, refusing (naming
the field) what our GPT cannot express. ``common.pt`` is read with ``torch.load(weights_only=True)``
and only ``argparse.Namespace`` (plus Megatron-Core's attention enums, when importable) allowlisted;
Megatron-Core registers the same classes itself when it is imported.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import torch

from megatron_srp.config import Recipe, RecipeError, padded_vocab_size, recipe_from_dict

# Megatron-LM compares this with its own; 3.0 is the torch_dist era's value.
CHECKPOINT_VERSION = 3.0


def allow_common_state_globals() -> None:
    """Allowlist for torch.load(weights_only=True) what a Megatron-LM common state holds besides plain
    containers: the args Namespace and, when Megatron-Core is installed, its attention enums (imported
    here, at load time, so that importing this module needs no Megatron-Core). Idempotent."""
    found = [argparse.Namespace]
    try:  # optional: Megatron-LM's args may hold these enums
        from megatron.core.transformer.enums import AttnBackend, AttnMaskType

        found += [AttnBackend, AttnMaskType]
    except ImportError:
        pass
    torch.serialization.add_safe_globals(found)



def megatron_lm_common(recipe: Recipe) -> dict:
    """The entries Megatron-LM expects in a checkpoint's common state: ``args`` and ``checkpoint_version``."""
    m, p = recipe.model, recipe.parallel
    heads = m.num_attention_heads
    groups = m.num_query_groups or heads
    tok = recipe.data.tokenizer_model
    args = argparse.Namespace(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size or 4 * m.hidden_size,
        num_attention_heads=heads, group_query_attention=groups != heads, num_query_groups=groups,
        kv_channels=m.kv_channels or m.hidden_size // heads, seq_length=m.seq_length,
        max_position_embeddings=m.max_position_embeddings or m.seq_length, vocab_size=m.vocab_size,
        padded_vocab_size=padded_vocab_size(recipe), make_vocab_size_divisible_by=m.make_vocab_size_divisible_by,
        normalization=m.normalization, norm_epsilon=m.norm_epsilon, swiglu=m.activation == "swiglu",
        untie_embeddings_and_output_weights=not m.share_embeddings_and_output_weights,
        position_embedding_type=m.position_embedding_type, rotary_base=int(m.rotary_base)
        if float(m.rotary_base).is_integer() else m.rotary_base, rotary_percent=1.0,
        add_bias_linear=m.add_bias_linear, add_qkv_bias=m.add_bias_linear, qk_layernorm=m.qk_layernorm,
        init_method_std=m.init_method_std, attention_dropout=m.attention_dropout, hidden_dropout=m.hidden_dropout,
        num_experts=None, apply_layernorm_1p=False, bf16=recipe.precision.bf16, fp16=False,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        micro_batch_size=recipe.training.micro_batch_size, global_batch_size=recipe.training.global_batch_size,
        train_iters=recipe.training.train_iters, seed=recipe.training.seed, lr=recipe.optimizer.lr,
        min_lr=recipe.optimizer.min_lr, use_distributed_optimizer=recipe.optimizer.use_distributed_optimizer,
        tokenizer_type="HuggingFaceTokenizer" if tok else "NullTokenizer", tokenizer_model=tok,
        ckpt_format="torch_dist")
    return {"args": args, "checkpoint_version": CHECKPOINT_VERSION}


class ArgsError(RecipeError):
    """Megatron-LM args our recipe cannot express, or a common.pt that cannot be read safely."""


def load_common(path: str) -> dict:
    """The common (non-tensor) state of a torch_dist folder, read safely: ``common.pt`` (megatron-core <
    0.19), else the ``common_state`` object inside the shards (0.19+, which Megatron-Core itself reads with
    weights_only=True). A damaged file or a refused global is named."""
    allow_common_state_globals()
    file = os.path.join(path, "common.pt")
    if not os.path.isfile(file):
        return _load_common_in_shards(path)
    try:
        # allowlisted with add_safe_globals: torch's safe_globals() context would remove the
        # listed globals again on exit, even those Megatron-Core had registered before
        common = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated: EOFError / RuntimeError; a refused global: UnpicklingError
        raise ArgsError(f"{file}: cannot be read with torch.load(weights_only=True): {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(common, dict):
        raise ArgsError(f"{file}: holds a {type(common).__name__}, not a dict")
    return common


def _load_common_in_shards(path: str) -> dict:
    from megatron.core import dist_checkpointing

    try:
        return dist_checkpointing.load_common_state_dict(path)
    except Exception as e:  # no common state at all, or damaged shards: name the folder and the cause
        raise ArgsError(f"{path}: no readable common.pt or common_state (not a torch_dist checkpoint of "
                        f"Megatron-LM or megatron-srp, or a damaged one): {type(e).__name__}: {e}") from e


def _refusals(a) -> list[str]:
    """Megatron-LM settings with no counterpart in our GPT (each would give a silently wrong model)."""
    g = lambda name, default=None: getattr(a, name, default)  # noqa: E731
    checks = [
        (g("num_experts") not in (None, 0, 1), f"num_experts={g('num_experts')} (mixture of experts)"),
        (bool(g("multi_latent_attention")), "multi_latent_attention=True"),
        (g("position_embedding_type", "learned_absolute") not in ("rope", "learned_absolute"),
         f"position_embedding_type={g('position_embedding_type')!r}"),
        (float(g("rotary_percent", 1.0) or 1.0) != 1.0, f"rotary_percent={g('rotary_percent')}"),
        (bool(g("rotary_interleaved")), "rotary_interleaved=True"),
        (bool(g("use_rope_scaling")), "use_rope_scaling=True"),
        (bool(g("apply_layernorm_1p")), "apply_layernorm_1p=True (zero-centred norm weights)"),
        (bool(g("add_qkv_bias")) and not g("add_bias_linear", True), "add_qkv_bias=True without add_bias_linear"),
        (g("normalization", "LayerNorm") not in ("RMSNorm", "LayerNorm"), f"normalization={g('normalization')!r}"),
        (not g("swiglu") and any(g(k) for k in ("squared_relu", "openai_gelu", "onnx_safe")),
         "an activation other than SwiGLU or GeLU"),
        (g("fp16", False), "fp16=True (convert from an fp16 run is not supported; bf16 and fp32 are)"),
    ]
    return [why for bad, why in checks if bad]


def _vocab_size(a, tokenizer_len: Optional[int]) -> int:
    if getattr(a, "vocab_size", None):
        return int(a.vocab_size)
    if tokenizer_len:
        return int(tokenizer_len)
    return int(a.padded_vocab_size)  # no better knowledge: the padding rows are exported too


def recipe_from_args(a, where: str, tokenizer_len: Optional[int] = None) -> Recipe:
    """Our recipe for a checkpoint Megatron-LM wrote (TP = PP = 1: torch_dist holds global tensors)."""
    if not isinstance(a, argparse.Namespace):
        raise ArgsError(f"{where}: common.pt has no Megatron-LM 'args' Namespace (found {type(a).__name__})")
    missing = [k for k in ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "padded_vocab_size")
               if getattr(a, k, None) is None]
    if missing:
        raise ArgsError(f"{where}: Megatron-LM args lack {missing}")
    refused = _refusals(a)
    if refused:
        raise ArgsError(f"{where}: Megatron-LM args not expressible in megatron-srp's GPT: " + "; ".join(refused))
    tp = int(getattr(a, "tensor_model_parallel_size", 1) or 1)
    gqa = bool(getattr(a, "group_query_attention", False))
    model = {
        "num_layers": a.num_layers, "hidden_size": a.hidden_size, "num_attention_heads": a.num_attention_heads,
        "num_query_groups": a.num_query_groups if gqa else None, "kv_channels": getattr(a, "kv_channels", None),
        "ffn_hidden_size": getattr(a, "ffn_hidden_size", None), "seq_length": a.seq_length,
        "max_position_embeddings": getattr(a, "max_position_embeddings", None),
        "vocab_size": _vocab_size(a, tokenizer_len),
        "make_vocab_size_divisible_by": int(getattr(a, "make_vocab_size_divisible_by", 128)) * tp,
        "normalization": getattr(a, "normalization", "LayerNorm"), "norm_epsilon": getattr(a, "norm_epsilon", 1e-5),
        "activation": "swiglu" if getattr(a, "swiglu", False) else "gelu",
        "position_embedding_type": getattr(a, "position_embedding_type", "learned_absolute"),
        "rotary_base": float(getattr(a, "rotary_base", 10000)),
        "share_embeddings_and_output_weights": not getattr(a, "untie_embeddings_and_output_weights", False),
        "add_bias_linear": bool(getattr(a, "add_bias_linear", True)),
        "qk_layernorm": bool(getattr(a, "qk_layernorm", False)),
        "init_method_std": float(getattr(a, "init_method_std", 0.02)),
    }
    tok = getattr(a, "tokenizer_model", None)
    raw = {"name": "megatron-lm", "model": model, "precision": {"bf16": bool(getattr(a, "bf16", False))},
           "data": {"mock": True, "tokenizer_model": tok if tok and os.path.isdir(str(tok)) else None}}
    try:
        recipe = recipe_from_dict(raw)
    except RecipeError as e:
        raise ArgsError(f"{where}: Megatron-LM args give an invalid recipe: {e}") from None
    if padded_vocab_size(recipe) != int(a.padded_vocab_size):
        raise ArgsError(f"{where}: vocab size {model['vocab_size']} pads to {padded_vocab_size(recipe)}, but the "
                        f"checkpoint's padded_vocab_size is {a.padded_vocab_size} (pass the tokenizer it was "
                        "trained with)")
    return recipe
