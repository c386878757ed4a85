"""The recipe schema: typed dataclasses, YAML with inheritance, dotted overrides, validation.

A recipe is a YAML file whose top-level sections map onto the dataclasses below. Field names
follow Megatron-Core's (``TransformerConfig``, ``OptimizerConfig``, ``initialize_model_parallel``)
wherever Megatron-Core has one, so a Megatron user can read a recipe without a glossary.

    defaults: [../base.yaml]          # optional, paths relative to this file; later wins
    model: {num_layers: 2, hidden_size: 64}
    training: {train_iters: 20}

On the command line, ``key.sub=value`` overrides follow the recipe path; values are parsed as
YAML (``training.train_iters=100``, ``data.data_path=[a,b]``). Unknown keys and values of the
wrong type fail at load time with the key's path and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Literal, Optional, Union

import yaml


class RecipeError(ValueError):
    """A recipe that cannot be loaded or run; the message names the key path."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Shape of the decoder-only transformer (Megatron-Core ``TransformerConfig`` names)."""

    num_layers: int = 2
    """Number of transformer layers."""
    hidden_size: int = 64
    """Model width."""
    num_attention_heads: int = 4
    """Attention heads (query heads)."""
    num_query_groups: Optional[int] = None
    """Key/value heads for grouped-query attention; null means multi-head attention."""
    kv_channels: Optional[int] = None
    """Width of one attention head; null means hidden_size / num_attention_heads."""
    ffn_hidden_size: Optional[int] = None
    """Width of the MLP; null means 4 * hidden_size."""
    seq_length: int = 128
    """Training sequence length in tokens."""
    max_position_embeddings: Optional[int] = None
    """Longest position the model supports; null means seq_length."""
    vocab_size: int = 256
    """Tokenizer vocabulary size (unpadded). The embedding is padded to a multiple of
    make_vocab_size_divisible_by * tensor_model_parallel_size, as Megatron-LM does."""
    make_vocab_size_divisible_by: int = 128
    """Embedding rows are padded to a multiple of this times the TP size."""
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    """Normalization layer."""
    norm_epsilon: float = 1e-5
    """Epsilon of the normalization layers."""
    activation: Literal["swiglu", "gelu"] = "swiglu"
    """MLP activation; swiglu is a gated SiLU (Llama, SmolLM2)."""
    position_embedding_type: Literal["rope", "learned_absolute"] = "rope"
    """Positional encoding."""
    rotary_base: float = 10000.0
    """RoPE theta."""
    share_embeddings_and_output_weights: bool = True
    """Tie the input embedding and the output layer (SmolLM2 does)."""
    add_bias_linear: bool = False
    """Biases in linear layers."""
    qk_layernorm: bool = False
    """Normalize queries and keys per head (Qwen3 style)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    hidden_dropout: float = 0.0
    """Dropout on the residual branches."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    """Layer implementation: Transformer Engine when it imports (auto), or Megatron-Core's local
    PyTorch layers. FP8 requires transformer_engine."""
    local_attention: Literal["sdpa", "unfused"] = "sdpa"
    """Core attention of the local spec: torch's scaled_dot_product_attention (fused kernels) or
    Megatron-Core's unfused DotProductAttention. Masks, dropout and bias always use the latter."""
    recompute_granularity: Optional[Literal["full", "selective"]] = None
    """Activation recomputation: null (off), full layers, or selective (core attention)."""
    recompute_method: Optional[Literal["uniform", "block"]] = None
    """With full recompute: how layers are grouped for recomputation."""
    recompute_num_layers: Optional[int] = None
    """With full recompute: layers per group (uniform) or recomputed layers per stage (block)."""


@dataclass
class ParallelConfig:
    """Parallel layout; data parallel size is derived: world / (TP * PP)."""

    tensor_model_parallel_size: int = 1
    """Tensor parallel size."""
    pipeline_model_parallel_size: int = 1
    """Pipeline parallel size."""
    virtual_pipeline_model_parallel_size: Optional[int] = None
    """Model chunks per pipeline stage (interleaved 1F1B); null disables."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs TP > 1 and the Transformer Engine spec)."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduce with the backward pass (GPU)."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's parameter all-gather with the forward pass (GPU)."""


@dataclass
class TrainingConfig:
    """Length, batch and stopping of a run."""

    train_iters: int = 20
    """Optimizer steps of the whole run."""
    micro_batch_size: int = 2
    """Sequences per microbatch per data-parallel rank."""
    global_batch_size: int = 4
    """Sequences per optimizer step over all data-parallel ranks (gradient accumulation fills
    the rest)."""
    seed: int = 1234
    """Seed of the weights, dropout and data order."""
    eval_interval: Optional[int] = None
    """Compute validation loss every N steps; null disables."""
    eval_iters: int = 2
    """Validation batches per evaluation."""
    exit_duration_minutes: Optional[float] = None
    """Save and exit cleanly once the job has run this many minutes (for Slurm time limits)."""
    exit_interval: Optional[int] = None
    """Save and exit at the first step divisible by this (useful for testing resume)."""


@dataclass
class OptimizerConfig:
    """AdamW through Megatron-Core's ``get_megatron_optimizer`` (``OptimizerConfig`` names)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    """Optimizer; adam is AdamW with decoupled weight decay."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""


@dataclass
class SchedulerConfig:
    """Learning-rate schedule through Megatron-Core's ``OptimizerParamScheduler``."""

    lr_decay_style: Literal["WSD", "cosine", "linear", "constant"] = "cosine"
    """Schedule after warmup. WSD: constant, then a decay over lr_wsd_decay_iters."""
    lr_warmup_iters: int = 0
    """Linear warmup steps from 0 to lr."""
    lr_decay_iters: Optional[int] = None
    """Steps over which the schedule runs; null means training.train_iters."""
    lr_wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "linear"
    """Shape of the WSD decay phase."""
    lr_wsd_decay_iters: Optional[int] = None
    """Length of the WSD decay phase; null means 10% of lr_decay_iters."""
    on_resume: Literal["recipe", "checkpoint"] = "recipe"
    """Where a resumed run takes optimizer.lr, min_lr, weight_decay and the scheduler.* lengths and
    styles from: this recipe (Megatron-LM's --override-opt_param-scheduler), or the checkpoint's
    saved recipe (--use-checkpoint-opt_param-scheduler). The step count always comes from the
    checkpoint; the recipe saved with the next checkpoint holds the values in effect. Raising
    training.train_iters with recipe stretches the schedule to the new length (a finished WSD run
    returns to lr and decays again over its last lr_wsd_decay_iters); with checkpoint the old schedule
    stays (a finished run continues at min_lr)."""


@dataclass
class PrecisionConfig:
    """Numeric precision (``TransformerConfig`` names)."""

    bf16: bool = False
    """Train in bf16 with fp32 master weights; false trains in fp32."""
    fp8: Optional[Literal["e4m3", "hybrid"]] = None
    """FP8 format through Transformer Engine; null disables."""
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "delayed"
    """FP8 scaling recipe (what the installed TE and GPU support)."""
    fp8_margin: int = 0
    """Scaling-factor margin."""
    fp8_amax_history_len: int = 1024
    """Amax history length (delayed scaling)."""
    fp8_amax_compute_algo: Literal["most_recent", "max"] = "max"
    """Amax reduction over the history (delayed scaling)."""
    fp8_param_gather: bool = False
    """Keep parameters in FP8 and all-gather them in FP8 (distributed optimizer)."""


@dataclass
class DataConfig:
    """Training data: Megatron indexed datasets, or mock data."""

    data_path: List[str] = field(default_factory=list)
    """Megatron blend: dataset prefixes (``path/to/name`` for name.bin/.idx), optionally weighted
    as [w1, prefix1, w2, prefix2]. Must be empty with mock: true (a path set there is an error, not
    ignored); every prefix must exist before the model is built."""
    mock: bool = False
    """Train on Megatron-Core's synthetic MockGPTDataset (no files). A recipe that sets it (tiny_cpu)
    needs data.mock=false next to a data.data_path override."""
    split: str = "969,30,1"
    """Train/validation/test split of each dataset, by weight."""
    data_cache_path: Optional[str] = None
    """Where GPTDataset writes its index cache; null means next to the data."""
    tokenizer_model: Optional[str] = None
    """Hugging Face tokenizer directory; gives the end-of-document id (and vocab size checks)."""
    eod_token_id: Optional[int] = None
    """End-of-document id when no tokenizer_model is given; null means vocab_size - 1."""
    reset_position_ids: bool = False
    """Restart position ids after each end-of-document token."""
    reset_attention_mask: bool = False
    """Block attention across documents (needs an explicit mask; slow)."""
    eod_mask_loss: bool = False
    """Do not train on end-of-document tokens."""
    reflection_loss: Literal["train", "mask"] = "train"
    """With a role sidecar: train on reflection tokens like text (the paper), or mask them."""
    num_workers: int = 0
    """DataLoader worker processes."""


@dataclass
class CheckpointConfig:
    """Megatron-Core ``dist_checkpointing`` (torch_dist) checkpoints."""

    dir: Optional[str] = None
    """Checkpoint directory: saves go here, and a run resumes from it automatically."""
    save_interval: Optional[int] = None
    """Save every N steps (and always at the end); null saves only at the end."""
    keep_last: Optional[int] = None
    """Keep only the newest K checkpoints; null keeps all."""
    load: Optional[str] = None
    """Initial checkpoint to start from when dir holds none (e.g. converted from Hugging Face)."""
    finetune: bool = False
    """With load: take only the weights; restart optimizer, schedule, step and data position."""
    load_optim: bool = True
    """Restore optimizer state when resuming."""
    load_rng: bool = True
    """Restore RNG states when resuming with the same parallel layout."""
    on_damaged: Literal["fallback", "error"] = "fallback"
    """A resume whose newest iteration in dir is damaged (a shard cut short, a file missing):
    fallback warns, naming the file, and resumes from the newest iteration that is whole; error
    stops with exit 2."""


@dataclass
class LoggingConfig:
    """Where and how often metrics are written."""

    dir: Optional[str] = None
    """Directory of metrics.jsonl and TensorBoard events; null means checkpoint.dir or ./runs/NAME."""
    log_interval: int = 1
    """Log every N steps."""
    tensorboard: bool = True
    """Also write TensorBoard events."""
    wandb_project: Optional[str] = None
    """Weights & Biases project to log the metrics.jsonl fields to (from the rank that holds the
    loss); null disables W&B. Needs the optional wandb package (pip install wandb)."""
    wandb_entity: Optional[str] = None
    """W&B entity (user or team); null means your default entity."""
    wandb_run_name: Optional[str] = None
    """W&B run name; null means the recipe's name."""
    wandb_mode: Literal["online", "offline", "disabled"] = "online"
    """online uploads as it trains; offline writes LOG_DIR/wandb/offline-run-* for a later
    `wandb sync`; disabled logs nothing."""


@dataclass
class Recipe:
    """A whole run."""

    name: str = "run"
    """Run name (used for default output folders)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available, else CPU (gloo plus the compatibility layer)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def log_dir(self) -> str:
        return self.logging.dir or self.checkpoint.dir or os.path.join("runs", self.name)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: circular 'defaults' chain: {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    parents = raw.pop("defaults", []) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        merged = _deep_merge(merged, _read_yaml(path.parent / parent, seen + (path,)))
    return _deep_merge(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], parsed c); a number indexes a list (``attacks.0.n=10``)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key.sub=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node: Any = tree
    for i, k in enumerate(keys):
        if isinstance(node, list):
            if not (k.isdigit() and int(k) < len(node)):
                raise RecipeError(f"{'.'.join(keys)}: {'.'.join(keys[:i])} is a list of {len(node)}; "
                                  f"{k!r} is not an index of it")
            k = int(k)
        if i == len(keys) - 1:
            node[k] = value
            return
        nxt = node[k] if isinstance(node, list) else node.get(k)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[k] = nxt
        node = nxt


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RecipeError(f"{path}: {value!r} is not one of {list(args)}{hint}")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, val_tp = args or (Any, Any)
        return {_coerce(k, key_tp, path): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    raise RecipeError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, raw: Any, path: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {(path + '.' if path else '') + near[0]!r}?" if near else ""
            raise RecipeError(f"unknown key {key_path!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], key_path)
    return cls(**kwargs)


def recipe_from_dict(raw: dict) -> Recipe:
    recipe = _build(Recipe, raw, "")
    validate(recipe)
    return recipe


def load_config(cls, path: str | os.PathLike, overrides: list[str] = ()):
    """Any config dataclass from YAML (``defaults:`` inheritance, ``key.sub=value`` overrides) with the
    same key checks as a pretraining recipe: post-training recipes, evaluation suites and MedSafetyWorld
    ablations share this loader."""
    tree = _read_yaml(Path(path))
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(tree, keys, value)
    return _build(cls, tree, "")


def config_from_dict(cls, raw: dict):
    return _build(cls, raw, "")


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    """Load ``path`` (following ``defaults:``), apply ``key.sub=value`` overrides, validate."""
    tree = _read_yaml(Path(path))
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(tree, keys, value)
    return recipe_from_dict(tree)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


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


def padded_vocab_size(r: Recipe) -> int:
    """Megatron-LM's padding: a multiple of make_vocab_size_divisible_by * TP."""
    mult = r.model.make_vocab_size_divisible_by * r.parallel.tensor_model_parallel_size
    return int(math.ceil(r.model.vocab_size / mult) * mult)


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under each field, for ``tools/pretrain.py --describe``."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def describe() -> str:
    """Every recipe key with its default and docstring (``tools/pretrain.py --describe``)."""
    hints = typing.get_type_hints(Recipe)
    top_docs = field_docs(Recipe)
    lines = []
    for f in dataclasses.fields(Recipe):
        cls = hints[f.name]
        if not dataclasses.is_dataclass(cls):
            lines.append(f"{f.name}: {f.default!r}\n    {top_docs.get(f.name, '')}")
            continue
        lines.append(f"{f.name}:  # {(cls.__doc__ or '').strip().splitlines()[0]}")
        docs = field_docs(cls)
        for sub in dataclasses.fields(cls):
            default = sub.default if sub.default is not dataclasses.MISSING else sub.default_factory()
            lines.append(f"  {sub.name}: {default!r}\n      {docs.get(sub.name, '').replace(chr(10), ' ')}")
    return "\n".join(lines)
