"""Read a torch_dist checkpoint one tensor at a time, without Megatron, a process group or a GPU.

Only the tensors asked for are read (``torch.distributed.checkpoint`` with ``no_dist=True``), so
converting a model needs the memory of its largest stacked tensor, not of the whole checkpoint.
The recipe comes from the ``recipe.yaml`` saved beside the shards (plain YAML, nothing unpickled), or,
for a checkpoint Megatron-LM wrote, from the ``args`` in its common.pt (read with weights_only=True).
Damaged files (a truncated shard, an unreadable .metadata or common.pt) are named.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from megatron_srp.config import Recipe, RecipeError, load_recipe
from megatron_srp.training import megatron_lm_args
from megatron_srp.training.integrity import check_iteration_files
from megatron_srp.training.quiet import checkpoint_read_warnings_ignored
from megatron_srp.training.layout import (CheckpointError, iter_dir, read_tracker, resolve_load_dir,
                                          split_iteration_dir, tracker_path)


def resolve_checkpoint(ckpt_dir: str, iteration: Optional[int] = None) -> tuple[str, int]:
    """(iteration folder, iteration) of a run folder (its tracker's or the requested iteration), or of an
    ``iter_NNNNNNN`` folder given directly, as Megatron-LM and Megatron-Bridge users pass it. A folder
    newer than its run's tracker is a save that never completed: refused."""
    run_dir, it = split_iteration_dir(ckpt_dir)
    if it is None:
        return resolve_load_dir(ckpt_dir, iteration)
    if iteration is not None and iteration != it:
        raise CheckpointError(f"{ckpt_dir} is iteration {it}, but --iteration {iteration} was asked for")
    committed = read_tracker(run_dir)
    if committed is not None and it > committed:
        raise CheckpointError(f"{ckpt_dir}: iteration {it} is newer than the last completed save ({committed}, "
                              f"{tracker_path(run_dir)}): a save that did not finish; convert "
                              f"{iter_dir(run_dir, committed)} instead")
    return os.path.normpath(ckpt_dir), it


class TorchDistCheckpoint:
    def __init__(self, ckpt_dir: str, iteration: Optional[int] = None, tokenizer: Optional[str] = None):
        if not os.path.isdir(ckpt_dir):
            raise CheckpointError(f"{ckpt_dir}: no such directory")
        self.path, self.iteration = resolve_checkpoint(ckpt_dir, iteration)
        if not os.path.isfile(os.path.join(self.path, ".metadata")):
            raise CheckpointError(f"{self.path}: not a torch_dist checkpoint (no .metadata)")
        self.recipe: Recipe = read_recipe(self.path, tokenizer)
        meta = check_iteration_files(self.path)  # names a missing or cut-short file before anything is read
        self._files = shard_files_by_key(meta)
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
        try:
            with checkpoint_read_warnings_ignored():  # a single-process read, on purpose
                dcp.load(out, storage_reader=FileSystemReader(self.path), no_dist=True)
        except Exception as e:  # a damaged shard fails inside torch.load/dcp with any error type: name the files
            files = ", ".join(os.path.join(self.path, f) for f in self._files.get(key, ["?"]))
            raise CheckpointError(f"{files}: cannot read tensor {key!r} (damaged checkpoint file): "
                                  f"{type(e).__name__}: {e}") from e
        return out[key]


def read_recipe(path: str, tokenizer: Optional[str] = None) -> Recipe:
    """Our ``recipe.yaml`` beside the shards, or else one built from the ``args`` Megatron-LM keeps in
    common.pt (``tokenizer``, when given, tells the unpadded vocabulary size if the args do not)."""
    recipe_file = os.path.join(path, "recipe.yaml")
    if os.path.isfile(recipe_file):
        try:
            return load_recipe(recipe_file)
        except RecipeError as e:
            raise CheckpointError(f"{recipe_file}: {e}") from e
    try:
        args = megatron_lm_args.load_common(path).get("args")
        if args is None:
            raise CheckpointError(f"{path}: no recipe.yaml and no Megatron-LM 'args' in common.pt: neither a "
                                  "megatron-srp nor a Megatron-LM checkpoint")
        return megatron_lm_args.recipe_from_args(args, os.path.join(path, "common.pt"), tokenizer_length(tokenizer))
    except megatron_lm_args.ArgsError as e:
        raise CheckpointError(str(e)) from None


def tokenizer_length(tokenizer: Optional[str]) -> Optional[int]:
    if not tokenizer or not os.path.isdir(tokenizer):
        return None
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False))


def shard_files_by_key(meta) -> dict[str, list[str]]:
    """Tensor key -> the ``.distcp`` files holding its pieces."""
    out: dict[str, set] = {}
    for index, info in meta.storage_data.items():
        out.setdefault(index.fqn, set()).add(info.relative_path)
    return {k: sorted(v) for k, v in out.items()}
