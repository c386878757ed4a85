"""THE name and layout mapping between Megatron-Core GPT weights and Hugging Face Llama / Qwen3.

Megatron side: the keys of a torch_dist checkpoint, where every per-layer weight is one tensor with
a leading layer axis ([num_layers, ...], global shapes, any TP/PP layout). Hugging Face side: the
per-layer names of ``LlamaForCausalLM`` (``Qwen3ForCausalLM`` when qk-layernorm is on).

Layouts that differ (verified against logits, see the tests):
- ``linear_qkv`` [(nq + 2 ng) hd, h] is interleaved per query group: view [ng, (nq/ng + 2) hd, h]
  and split dim 1 into [nq/ng hd, hd, hd] -> q, k, v. A contiguous [Q; K; V] split is wrong.
- ``linear_fc1`` [2 ffn, h] is [gate; up] (SwiGLU).
- the embedding and output layer carry Megatron's vocabulary padding: HF gets the first
  ``vocab_size`` rows; the way back pads with zero rows.
Megatron's default RoPE (non-interleaved halves) is HF's ``rotate_half``: no permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from megatron_srp.config import RecipeError, padded_vocab_size


class UnsupportedModel(RecipeError):
    """A model this mapping cannot express exactly (it would give a silently wrong model)."""


@dataclass(frozen=True)
class Shape:
    """What the mapping needs to know of the model (from a recipe's ``model`` section)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    padded_vocab_size: int
    tied: bool
    qk_layernorm: bool

    @property
    def qkv_rows(self) -> int:
        return (self.num_heads + 2 * self.num_query_groups) * self.head_dim


def shape_from_recipe(recipe) -> Shape:

    m = recipe.model
    problems = []
    if m.normalization != "RMSNorm":
        problems.append(f"model.normalization={m.normalization} (Llama/Qwen3 use RMSNorm)")
    if m.activation != "swiglu":
        problems.append(f"model.activation={m.activation} (Llama/Qwen3 use SwiGLU)")
    if m.position_embedding_type != "rope":
        problems.append(f"model.position_embedding_type={m.position_embedding_type} (Llama/Qwen3 use RoPE)")
    if m.add_bias_linear:
        problems.append("model.add_bias_linear=true (Llama/Qwen3 have no linear biases)")
    if problems:
        raise UnsupportedModel("this model has no exact Hugging Face Llama/Qwen3 equivalent: " + "; ".join(problems))
    heads = m.num_attention_heads
    return Shape(num_layers=m.num_layers, hidden_size=m.hidden_size, num_heads=heads,
                 num_query_groups=m.num_query_groups or heads, head_dim=m.kv_channels or m.hidden_size // heads,
                 ffn_hidden_size=m.ffn_hidden_size or 4 * m.hidden_size, vocab_size=m.vocab_size,
                 padded_vocab_size=padded_vocab_size(recipe), tied=m.share_embeddings_and_output_weights,
                 qk_layernorm=m.qk_layernorm)


# Megatron checkpoint key (per-layer keys without "decoder.layers.") -> HF name under model.layers.{i}.
LAYER_NORMS = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
}
# The local layer spec keeps its norms as modules of their own; its sharded state dict maps them to
# the names above, but a checkpoint written by other tools may carry the module names.
NORM_ALIASES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
LAYER_PLAIN = {
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    **LAYER_NORMS,
}
QKV = "self_attention.linear_qkv.weight"
FC1 = "mlp.linear_fc1.weight"
LAYER_PREFIX = "decoder.layers."
EMBED, OUTPUT, FINAL_NORM = "embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight"


def megatron_keys(shape: Shape) -> list[str]:
    """Every weight key the checkpoint must hold for ``shape`` (stacked per-layer keys included)."""
    layer = [QKV, "self_attention.linear_proj.weight", FC1, "mlp.linear_fc2.weight", *LAYER_NORMS]
    if shape.qk_layernorm:
        layer += ["self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"]
    keys = [EMBED, FINAL_NORM, *(LAYER_PREFIX + k for k in layer)]
    if not shape.tied:
        keys.append(OUTPUT)
    return keys


def expected_megatron_shape(key: str, shape: Shape) -> tuple[int, ...]:
    s, L, h = shape, shape.num_layers, shape.hidden_size
    table = {
        EMBED: (s.padded_vocab_size, h), OUTPUT: (s.padded_vocab_size, h), FINAL_NORM: (h,),
        LAYER_PREFIX + QKV: (L, s.qkv_rows, h),
        LAYER_PREFIX + "self_attention.linear_proj.weight": (L, h, s.num_heads * s.head_dim),
        LAYER_PREFIX + FC1: (L, 2 * s.ffn_hidden_size, h),
        LAYER_PREFIX + "mlp.linear_fc2.weight": (L, h, s.ffn_hidden_size),
        LAYER_PREFIX + "self_attention.q_layernorm.weight": (L, s.head_dim),
        LAYER_PREFIX + "self_attention.k_layernorm.weight": (L, s.head_dim),
        **{LAYER_PREFIX + k: (L, h) for k in LAYER_NORMS},
    }
    return table[key]


def split_qkv(w: torch.Tensor, s: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    per = s.num_heads // s.num_query_groups
    g = w.view(s.num_query_groups, (per + 2) * s.head_dim, s.hidden_size)
    q, k, v = torch.split(g, [per * s.head_dim, s.head_dim, s.head_dim], dim=1)
    return (q.reshape(-1, s.hidden_size), k.reshape(-1, s.hidden_size), v.reshape(-1, s.hidden_size))


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Shape) -> torch.Tensor:
    per = s.num_heads // s.num_query_groups
    g = s.num_query_groups
    return torch.cat([q.view(g, per * s.head_dim, -1), k.view(g, s.head_dim, -1), v.view(g, s.head_dim, -1)],
                     dim=1).reshape(s.qkv_rows, -1)


def to_hf(key: str, tensor: torch.Tensor, s: Shape) -> Iterator[tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs for one Megatron checkpoint tensor (all layers of a stacked key)."""
    if key == EMBED:
        yield "model.embed_tokens.weight", tensor[: s.vocab_size]
        return
    if key == OUTPUT:
        yield "lm_head.weight", tensor[: s.vocab_size]
        return
    if key == FINAL_NORM:
        yield "model.norm.weight", tensor
        return
    sub = key[len(LAYER_PREFIX):]
    for i in range(s.num_layers):
        base = f"model.layers.{i}."
        t = tensor[i]
        if sub == QKV:
            q, k, v = split_qkv(t, s)
            yield base + "self_attn.q_proj.weight", q
            yield base + "self_attn.k_proj.weight", k
            yield base + "self_attn.v_proj.weight", v
        elif sub == FC1:
            gate, up = torch.chunk(t, 2, dim=0)
            yield base + "mlp.gate_proj.weight", gate
            yield base + "mlp.up_proj.weight", up
        else:
            yield base + LAYER_PLAIN[sub], t


def megatron_module_name(layer: Optional[int], key: str) -> str:
    """In-memory parameter name of a GPTModel built with the local spec (what ``from_hf`` fills)."""
    if layer is None:
        return key
    local = {v: k for k, v in NORM_ALIASES.items()}.get(key, key)
    return f"{LAYER_PREFIX}{layer}.{local}"


def from_hf(get, s: Shape) -> Iterator[tuple[str, torch.Tensor]]:
    """(in-memory Megatron name, tensor) for every weight, reading HF tensors with ``get(name)``."""
    emb = get("model.embed_tokens.weight")
    yield EMBED, pad_vocab(emb, s)
    yield FINAL_NORM, get("model.norm.weight")
    if not s.tied:
        yield OUTPUT, pad_vocab(get("lm_head.weight"), s)
    inverse = {v: k for k, v in LAYER_PLAIN.items()}
    for i in range(s.num_layers):
        base = f"model.layers.{i}."
        yield megatron_module_name(i, QKV), merge_qkv(get(base + "self_attn.q_proj.weight"),
                                                      get(base + "self_attn.k_proj.weight"),
                                                      get(base + "self_attn.v_proj.weight"), s)
        yield megatron_module_name(i, FC1), torch.cat([get(base + "mlp.gate_proj.weight"),
                                                       get(base + "mlp.up_proj.weight")], dim=0)
        names = ["self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
                 "post_attention_layernorm.weight"]
        if s.qk_layernorm:
            names += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
        for n in names:
            yield megatron_module_name(i, inverse[n]), get(base + n)


def pad_vocab(w: torch.Tensor, s: Shape) -> torch.Tensor:
    if w.shape[0] == s.padded_vocab_size:
        return w
    pad = torch.zeros(s.padded_vocab_size - w.shape[0], w.shape[1], dtype=w.dtype)
    return torch.cat([w, pad], dim=0)
