"""Read a torch_dist checkpoint one tensor at a time, without Megatron, a process group or a GPU.

Only the tensors asked for are read (``torch.distributed.checkpoint`` with ``no_dist=True``), so
converting a model needs the memory of its largest stacked tensor, not of the whole checkpoint.
The recipe comes from the ``recipe.yaml`` saved beside the shards (plain YAML, nothing unpickled).
"""

from __future__ import annotations

import os
import re
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from megatron_srp.config import Recipe, RecipeError, load_recipe
from megatron_srp.training.checkpointing import CheckpointError, resolve_load_dir


_ITER_DIR = re.compile(r"^iter_(\d{7})$")


def resolve_checkpoint(ckpt_dir: str, iteration: Optional[int] = None) -> tuple[str, int]:
    """(iteration folder, iteration) of a run folder (its tracker's or the requested iteration), or of an
    ``iter_NNNNNNN`` folder given directly, as Megatron-LM and Megatron-Bridge users pass it."""
    m = _ITER_DIR.match(os.path.basename(os.path.normpath(ckpt_dir)))
    if m is None:
        return resolve_load_dir(ckpt_dir, iteration)
    if iteration is not None and iteration != int(m.group(1)):
        raise CheckpointError(f"{ckpt_dir} is iteration {int(m.group(1))}, but --iteration {iteration} was asked for")
    return os.path.normpath(ckpt_dir), int(m.group(1))


class TorchDistCheckpoint:
    def __init__(self, ckpt_dir: str, iteration: Optional[int] = None):
        if not os.path.isdir(ckpt_dir):
            raise CheckpointError(f"{ckpt_dir}: no such directory")
        self.path, self.iteration = resolve_checkpoint(ckpt_dir, iteration)
        if not os.path.isfile(os.path.join(self.path, ".metadata")):
            raise CheckpointError(f"{self.path}: not a torch_dist checkpoint (no .metadata)")
        recipe_file = os.path.join(self.path, "recipe.yaml")
        if not os.path.isfile(recipe_file):
            raise CheckpointError(f"{self.path}: no recipe.yaml (was it written by tools/pretrain.py?)")
        try:
            self.recipe: Recipe = load_recipe(recipe_file)
        except RecipeError as e:
            raise CheckpointError(f"{recipe_file}: {e}") from e
        self._reader = FileSystemReader(self.path)
        meta = self._reader.read_metadata()
        self.tensors: dict[str, TensorStorageMetadata] = {
            k: v for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].size)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].properties.dtype

    def read(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise CheckpointError(f"{self.path}: no tensor {key!r}")
        out = {key: torch.empty(self.shape(key), dtype=self.dtype(key))}
        dcp.load(out, storage_reader=FileSystemReader(self.path), no_dist=True)
        return out[key]
