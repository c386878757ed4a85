"""The pretraining recipe: typed sections whose names follow Megatron-Core's (``TransformerConfig``,
``OptimizerConfig``, ``initialize_model_parallel``) wherever Megatron-Core has one, so a Megatron user
can read a recipe without a glossary.

    defaults: [../base.yaml]          # optional, paths relative to this file; later wins
    model: {num_layers: 2, hidden_size: 64}
    training: {train_iters: 20}

Loading (inheritance, overrides, key checks) is ``config.loader``; the checks across sections are
``config.validation``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import List, Literal, Optional

import yaml



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
    extended by more than lr_wsd_decay_iters returns to lr and decays again over its last
    lr_wsd_decay_iters; extended by fewer, it resumes inside the new decay window); with checkpoint the
    old schedule stays (a finished run continues at min_lr)."""


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


def padded_vocab_size(r: Recipe) -> int:
    """Megatron-LM's padding: a multiple of make_vocab_size_divisible_by * TP."""
    mult = r.model.make_vocab_size_divisible_by * r.parallel.tensor_model_parallel_size
    return int(math.ceil(r.model.vocab_size / mult) * mult)
