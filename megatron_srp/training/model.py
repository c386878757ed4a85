"""The model provider: the only module that knows which Megatron-Core model class is built.

GPTModel exists on every supported megatron-core version (0.16.1 to 0.19.x). 0.19 marks it
deprecated in favour of HybridModel; a HybridModel provider can be added here without touching
the train loop, checkpointing or export, which only see ``list[MegatronModule]`` chunks.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from megatron_srp.config import Recipe, RecipeError, padded_vocab_size
from megatron_srp.training import te_support

log = logging.getLogger(__name__)


def resolve_transformer_impl(recipe: Recipe, on_cpu: bool) -> str:
    impl = recipe.model.transformer_impl
    if impl == "auto":
        return "transformer_engine" if (not on_cpu and te_support.available()) else "local"
    if impl == "transformer_engine":
        if on_cpu:
            raise RecipeError("model.transformer_impl=transformer_engine needs a GPU; use local or auto")
        if not te_support.available():
            raise RecipeError(f"model.transformer_impl=transformer_engine, but {te_support.import_error()}")
    return impl


def build_transformer_config(recipe: Recipe, on_cpu: bool) -> TransformerConfig:
    m, p, prec = recipe.model, recipe.parallel, recipe.precision
    impl = resolve_transformer_impl(recipe, on_cpu)
    if prec.fp8 is not None and impl != "transformer_engine":
        raise RecipeError("precision.fp8 needs Transformer Engine, which is not available here")
    if prec.fp8 is not None:
        ok, why = te_support.fp8_recipe_support(prec.fp8_recipe)
        if not ok:
            raise RecipeError(f"precision.fp8_recipe={prec.fp8_recipe} does not run here: {why}")
    dtype = torch.bfloat16 if prec.bf16 else torch.float32
    kwargs = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        ffn_hidden_size=m.ffn_hidden_size or 4 * m.hidden_size,
        normalization=m.normalization,
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=m.activation == "swiglu",
        activation_func=F.silu if m.activation == "swiglu" else F.gelu,
        add_bias_linear=m.add_bias_linear,
        qk_layernorm=m.qk_layernorm,
        attention_dropout=m.attention_dropout,
        hidden_dropout=m.hidden_dropout,
        init_method_std=m.init_method_std,
        recompute_granularity=m.recompute_granularity,
        recompute_method=m.recompute_method,
        recompute_num_layers=m.recompute_num_layers,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
        sequence_parallel=p.sequence_parallel,
        bf16=prec.bf16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        autocast_dtype=dtype,
        # Loss is summed per token and divided by the global token count in
        # finalize_model_grads, so masked tokens (EOD, reflections) never skew the average and
        # every DP/PP layout computes exactly the single-process loss.
        calculate_per_token_loss=True,
        # On the CPU this is required (and gives identical initial weights for every TP layout);
        # on GPUs initialising there is much faster for large models.
        use_cpu_initialization=on_cpu,
        perform_initialization=True,
        # Fusions need CUDA kernels (apex / TE); they are opt-in on GPU only.
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        batch_p2p_sync=not on_cpu,
        deallocate_pipeline_outputs=not on_cpu,
    )
    # The default "full" warns that it is deprecated; the empty list means the same (whole layer).
    # megatron-core 0.19 names the field cuda_graph_modules (cuda_graph_scope is its deprecated alias).
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    for name in ("cuda_graph_modules", "cuda_graph_scope"):
        if name in fields:
            kwargs[name] = []
            break
    if prec.fp8 is not None:
        kwargs.update(
            fp8=prec.fp8,
            fp8_recipe=prec.fp8_recipe,
            fp8_margin=prec.fp8_margin,
            fp8_amax_history_len=prec.fp8_amax_history_len,
            fp8_amax_compute_algo=prec.fp8_amax_compute_algo,
            fp8_param=prec.fp8_param_gather,
        )
    if impl == "transformer_engine":
        kwargs.update(apply_rope_fusion=True, bias_activation_fusion=True, masked_softmax_fusion=True,
                      bias_dropout_fusion=True)
    return TransformerConfig(**kwargs)


def layer_spec(recipe: Recipe, config: TransformerConfig, on_cpu: bool, vp_stage: Optional[int] = None):
    """The TE layer spec, or the local spec as a whole block whose every norm is PyTorch's."""
    impl = resolve_transformer_impl(recipe, on_cpu)
    if impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=recipe.model.qk_layernorm)
    spec = get_gpt_layer_local_spec(qk_layernorm=recipe.model.qk_layernorm,
                                    normalization=recipe.model.normalization)
    if recipe.model.local_attention == "sdpa":
        from megatron_srp.training.attention import SDPADotProductAttention

        spec.submodules.self_attention.submodules.core_attention = SDPADotProductAttention
    # Megatron-Core picks apex's FusedLayerNorm for the layers' LayerNorm and TE's TENorm for the
    # final norm whenever those import, even in the local spec: CUDA-only kernels that break a
    # `device: cpu` run on a GPU node. "local" means PyTorch layers throughout.
    layer = spec.submodules
    layer.input_layernorm = layer.pre_mlp_layernorm = WrappedTorchNorm
    attention = layer.self_attention.submodules
    if recipe.model.qk_layernorm:
        attention.q_layernorm = attention.k_layernorm = WrappedTorchNorm
    return TransformerBlockSubmodules(layer_specs=[spec] * get_num_layers_to_build(config, vp_stage),
                                      layer_norm=WrappedTorchNorm)


def build_model_chunk(recipe: Recipe, config: TransformerConfig, on_cpu: bool,
                      vp_stage: Optional[int] = None) -> GPTModel:
    """One pipeline chunk of the model for this rank (unwrapped, on the current device)."""
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    m = recipe.model
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(recipe, config, on_cpu, vp_stage),
        vocab_size=padded_vocab_size(recipe),
        max_sequence_length=m.max_position_embeddings or m.seq_length,
        pre_process=pre,
        post_process=post,
        share_embeddings_and_output_weights=m.share_embeddings_and_output_weights,
        position_embedding_type=m.position_embedding_type,
        rotary_base=int(m.rotary_base),
        vp_stage=vp_stage,
    )
    if config.bf16:
        # Every parameter in bf16, as Megatron-LM's Float16Module casts it: the local spec builds its
        # norms in fp32, and Megatron's bf16 optimizer (fp32 main weights of bf16 parameters) cannot
        # checkpoint a model that mixes both.
        model.bfloat16()
    return model


def model_flops_per_token(recipe: Recipe) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), as Megatron-LM counts them:
    the dense matmuls plus attention scores; recomputation is not counted (model FLOPs)."""
    m = recipe.model
    h, L, s = m.hidden_size, m.num_layers, m.seq_length
    heads = m.num_attention_heads
    kv = m.kv_channels or h // heads
    groups = m.num_query_groups or heads
    ffn = m.ffn_hidden_size or 4 * h
    gated = 2 if m.activation == "swiglu" else 1
    qkv = 2 * h * (heads * kv + 2 * groups * kv)
    attn_out = 2 * heads * kv * h
    scores = 2 * 2 * s * heads * kv / 2  # QK^T and AV, causal half
    mlp = 2 * h * ffn * (gated + 1)
    logits = 2 * h * padded_vocab_size(recipe)
    forward = L * (qkv + attn_out + scores + mlp) + logits
    return 3.0 * forward
