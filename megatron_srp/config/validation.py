"""Checks across a pretraining recipe's sections (before any process starts) and against the
process count (at start-up); ``load_recipe`` runs the first."""

from __future__ import annotations

import os
from typing import Optional

from megatron_srp.config.loader import RecipeError, _build, read_tree
from megatron_srp.config.recipe import Recipe


def recipe_from_dict(raw: dict) -> Recipe:
    recipe = _build(Recipe, raw, "")
    validate(recipe)
    return recipe


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    """Load ``path`` (following ``defaults:``), apply ``key.sub=value`` overrides, validate."""
    return recipe_from_dict(read_tree(path, overrides))


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise RecipeError(message)


def validate(r: Recipe) -> None:
    """Checks that do not depend on the number of processes."""
    m, p, t = r.model, r.parallel, r.training
    for key in ("num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size"):
        _need(getattr(m, key) > 0, f"model.{key} must be positive, got {getattr(m, key)}")
    for key in ("train_iters", "micro_batch_size", "global_batch_size"):
        _need(getattr(t, key) > 0, f"training.{key} must be positive, got {getattr(t, key)}")
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
        _need(getattr(p, key) >= 1, f"parallel.{key} must be >= 1, got {getattr(p, key)}")
    tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    _need(
        m.num_attention_heads % tp == 0,
        f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
        f"parallel.tensor_model_parallel_size={tp}",
    )
    groups = m.num_query_groups or m.num_attention_heads
    _need(
        m.num_attention_heads % groups == 0,
        f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
        f"model.num_query_groups={groups}",
    )
    _need(
        groups % tp == 0,
        f"model.num_query_groups={groups} is not divisible by parallel.tensor_model_parallel_size={tp}",
    )
    if m.kv_channels is None:
        _need(
            m.hidden_size % m.num_attention_heads == 0,
            f"model.hidden_size={m.hidden_size} is not divisible by "
            f"model.num_attention_heads={m.num_attention_heads}; set model.kv_channels",
        )
    ffn = m.ffn_hidden_size or 4 * m.hidden_size
    _need(
        ffn % tp == 0,
        f"model.ffn_hidden_size={ffn} is not divisible by parallel.tensor_model_parallel_size={tp}",
    )
    chunks = pp * (vpp or 1)
    _need(
        m.num_layers % chunks == 0,
        f"model.num_layers={m.num_layers} is not divisible by parallel.pipeline_model_parallel_size"
        f"={pp}" + (f" x parallel.virtual_pipeline_model_parallel_size={vpp}" if vpp else ""),
    )
    if vpp is not None:
        _need(pp > 1, "parallel.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size > 1")
    if p.sequence_parallel:
        _need(tp > 1, "parallel.sequence_parallel needs parallel.tensor_model_parallel_size > 1")
    if m.position_embedding_type == "rope":
        _need((m.kv_channels or m.hidden_size // m.num_attention_heads) % 2 == 0,
              "model: RoPE needs an even head dimension (kv_channels)")
    if m.max_position_embeddings is not None:
        _need(m.max_position_embeddings >= m.seq_length,
              f"model.max_position_embeddings={m.max_position_embeddings} < model.seq_length={m.seq_length}")
    _need(
        t.global_batch_size % t.micro_batch_size == 0,
        f"training.global_batch_size={t.global_batch_size} is not divisible by "
        f"training.micro_batch_size={t.micro_batch_size}",
    )
    if m.recompute_granularity == "full":
        _need(m.recompute_method is not None, "model.recompute_granularity=full needs model.recompute_method")
        _need(m.recompute_num_layers is not None and m.recompute_num_layers > 0,
              "model.recompute_granularity=full needs model.recompute_num_layers >= 1")
    if r.precision.fp8 is not None:
        _need(m.transformer_impl != "local", "precision.fp8 needs model.transformer_impl "
              "transformer_engine or auto (FP8 runs through Transformer Engine)")
    if r.data.mock:
        # A data path given with the recipe's mock: true would otherwise be ignored without a word.
        _need(not r.data.data_path, f"data.data_path={r.data.data_path} is set but data.mock is true, which "
              "trains on mock data; set data.mock=false to train on data.data_path (or data.data_path=[] for mock data)")
    else:
        _need(bool(r.data.data_path), "data.data_path is empty; give dataset prefixes or set data.mock=true")
        blend_from_data_path(r.data.data_path)  # raises on a malformed blend
    if r.data.eod_token_id is not None:
        _need(0 <= r.data.eod_token_id < m.vocab_size,
              f"data.eod_token_id={r.data.eod_token_id} is outside model.vocab_size={m.vocab_size}")
    if r.checkpoint.save_interval is not None:
        _need(r.checkpoint.save_interval > 0, "checkpoint.save_interval must be positive")
    if r.checkpoint.keep_last is not None:
        _need(r.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1")
    _need(r.logging.log_interval >= 1, "logging.log_interval must be >= 1")
    sched = r.scheduler
    decay = sched.lr_decay_iters or t.train_iters
    # OptimizerParamScheduler asserts warmup < decay (a bare AssertionError at start-up otherwise)
    _need(sched.lr_warmup_iters < decay,
          f"scheduler.lr_warmup_iters={sched.lr_warmup_iters} must be smaller than the decay length {decay} "
          f"(scheduler.lr_decay_iters, or training.train_iters)")
    _need(r.optimizer.min_lr <= r.optimizer.lr, "optimizer.min_lr exceeds optimizer.lr")


def blend_from_data_path(data_path: list[str]) -> tuple[list[str], Optional[list[float]]]:
    """Megatron's blend list: [p1, p2] or [w1, p1, w2, p2] -> (prefixes, weights or None)."""
    def is_number(s: str) -> bool:
        try:
            float(s)
            return True
        except ValueError:
            return False

    if not any(is_number(s) for s in data_path):
        return list(data_path), None
    if len(data_path) % 2 or not all(is_number(w) for w in data_path[0::2]):
        raise RecipeError(
            f"data.data_path={data_path}: a weighted blend alternates weight and prefix: "
            "[w1, prefix1, w2, prefix2, ...]"
        )
    weights = [float(w) for w in data_path[0::2]]
    _need(all(w > 0 for w in weights), f"data.data_path: weights must be positive, got {weights}")
    return list(data_path[1::2]), weights


def validate_world(r: Recipe, world_size: int) -> int:
    """Check the layout against the process count; return the data-parallel size."""
    tp, pp = r.parallel.tensor_model_parallel_size, r.parallel.pipeline_model_parallel_size
    _need(
        world_size % (tp * pp) == 0,
        f"world size {world_size} does not factor into parallel.tensor_model_parallel_size={tp} x "
        f"parallel.pipeline_model_parallel_size={pp} x data parallel",
    )
    dp = world_size // (tp * pp)
    t = r.training
    _need(
        t.global_batch_size % (t.micro_batch_size * dp) == 0,
        f"training.global_batch_size={t.global_batch_size} is not divisible by "
        f"training.micro_batch_size={t.micro_batch_size} x data-parallel size {dp}",
    )
    if r.parallel.virtual_pipeline_model_parallel_size:
        n_mb = t.global_batch_size // (t.micro_batch_size * dp)
        _need(n_mb % pp == 0, f"interleaved pipelining needs the number of microbatches ({n_mb}) "
              f"to be divisible by parallel.pipeline_model_parallel_size={pp}")
    return dp
