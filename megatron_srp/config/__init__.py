"""The recipe schema and its loader: typed dataclasses, YAML with inheritance, dotted overrides,
validation.

- ``loader``: the YAML loader every recipe type shares (``defaults:`` inheritance, ``key.sub=value``
  overrides including list indices, type coercion, did-you-mean on unknown keys).
- ``recipe``: the pretraining recipe's sections (``model``, ``parallel``, ``training``, ...).
- ``validation``: checks across sections and against the process count.
- ``describe``: ``--describe`` of any config dataclass (every key, its default and docstring).

``from megatron_srp.config import X`` works for every public name below.
"""

from megatron_srp.config.describe import describe
from megatron_srp.config.loader import RecipeError, config_from_dict, field_docs, load_config, parse_override, read_tree
from megatron_srp.config.recipe import (
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    PrecisionConfig,
    Recipe,
    SchedulerConfig,
    TrainingConfig,
    padded_vocab_size,
)
from megatron_srp.config.validation import blend_from_data_path, load_recipe, recipe_from_dict, validate, validate_world

__all__ = [
    "CheckpointConfig", "DataConfig", "LoggingConfig", "ModelConfig", "OptimizerConfig", "ParallelConfig",
    "PrecisionConfig", "Recipe", "RecipeError", "SchedulerConfig", "TrainingConfig", "blend_from_data_path",
    "config_from_dict", "describe", "field_docs", "load_config", "load_recipe", "padded_vocab_size",
    "parse_override", "read_tree", "recipe_from_dict", "validate", "validate_world",
]
