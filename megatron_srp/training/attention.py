"""Core attention for Megatron-Core's local layer spec through torch's scaled_dot_product_attention.

Megatron-Core's local ``DotProductAttention`` is unfused (baddbmm, masked softmax, bmm). Without
Transformer Engine (CPU runs, GPUs without TE) PyTorch's SDPA computes the same causal attention
with fused kernels. Cases SDPA does not cover the same way fall back to Megatron's own path:
an explicit attention mask (``data.reset_attention_mask``), attention dropout while training
(Megatron draws it from its tensor-parallel RNG tracker), attention bias and packed sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron.core.transformer.dot_product_attention import DotProductAttention


class SDPADotProductAttention(DotProductAttention):
    """``DotProductAttention`` with its causal no-dropout case on SDPA; [s, b, h, d] in and
    [s, b, h * d] out, as Megatron's."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None, **kwargs):
        dropout = self.config.attention_dropout if self.training else 0.0
        if (attention_mask is not None or attention_bias is not None or packed_seq_params is not None
                or dropout > 0.0 or kwargs or self.config.apply_query_key_layer_scaling):
            return super().forward(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                                   attention_bias=attention_bias, packed_seq_params=packed_seq_params, **kwargs)
        sq, b = query.shape[0], query.shape[1]
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                             enable_gqa=k.shape[1] != q.shape[1])
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
