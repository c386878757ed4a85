"""The checkpoint folder layout, in one place, importable without Megatron-Core or torch.

Laid out as Megatron-LM lays it out::

    CKPT_DIR/
      latest_checkpointed_iteration.txt    # written last, atomically: the commit point
      recipe.yaml                          # the resolved recipe of the newest save
      iter_0000010/                        # torch_dist shards + common.pt + metadata.json
        recipe.yaml                        # the recipe in effect for that save

Training (checkpointing.py), the Hugging Face converter, the torch_dist reader, MedSafetyWorld and
the Slurm helpers all read and write checkpoints through these functions.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Callable, Optional

from megatron_srp.errors import SRPError
from megatron_srp.io import atomic_write_text

TRACKER = "latest_checkpointed_iteration.txt"
FORMAT_VERSION = 1
RECIPE_FILE = "recipe.yaml"
_ITER_RE = re.compile(r"^iter_(\d{7})$")


class CheckpointError(SRPError, RuntimeError):
    """A checkpoint that is missing, incomplete, damaged, or does not match the recipe."""


def iter_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def iter_dir(ckpt_dir: str, iteration: int) -> str:
    return os.path.join(ckpt_dir, iter_name(iteration))


def iteration_of(path: str) -> Optional[int]:
    """The iteration an ``iter_NNNNNNN`` folder holds; None for any other name."""
    m = _ITER_RE.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def split_iteration_dir(path: str) -> tuple[str, Optional[int]]:
    """``CKPT/iter_0000020`` -> (CKPT, 20); a checkpoint directory -> (path, None). Megatron-LM and
    Megatron-Bridge users pass either."""
    it = iteration_of(path)
    if it is None:
        return path, None
    return os.path.dirname(os.path.normpath(path)) or ".", it


def tracker_path(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, TRACKER)


def read_tracker(ckpt_dir: str) -> Optional[int]:
    """The last completed iteration in ``ckpt_dir``, or None when it holds no checkpoint."""
    path = tracker_path(ckpt_dir)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path}: expected an iteration number, found {text!r}")
    return int(text)


def completed_iterations(ckpt_dir: str) -> list[int]:
    """Iterations saved in ``ckpt_dir`` up to the committed one, oldest first (a newer folder is a
    save that was killed before it committed)."""
    latest = read_tracker(ckpt_dir)
    if latest is None:
        return []
    found = [iteration_of(name) for name in os.listdir(ckpt_dir)]
    return sorted(it for it in found if it is not None and it <= latest)


def resolve_load_dir(ckpt_dir: str, iteration: Optional[int] = None) -> tuple[str, int]:
    """(iteration directory, iteration) of the tracker's or the requested iteration."""
    latest = read_tracker(ckpt_dir)
    if latest is None:
        raise CheckpointError(f"{ckpt_dir}: no {TRACKER}; not a checkpoint directory of a completed save")
    it = latest if iteration is None else iteration
    path = iter_dir(ckpt_dir, it)
    if not os.path.isdir(path):
        have = completed_iterations(ckpt_dir)
        raise CheckpointError(f"{ckpt_dir}: iteration {it} not found; completed iterations: {have}")
    return path, it


def prepare_iteration_dir(ckpt_dir: str, iteration: int) -> str:
    """An empty folder for a save; a leftover of a save killed before it committed is removed."""
    target = iter_dir(ckpt_dir, iteration)
    os.makedirs(ckpt_dir, exist_ok=True)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.makedirs(target)
    return target


def write_iteration_recipe(ckpt_dir: str, iteration: int, recipe_yaml: str) -> None:
    atomic_write_text(os.path.join(iter_dir(ckpt_dir, iteration), RECIPE_FILE), recipe_yaml)


def commit(ckpt_dir: str, iteration: int, recipe_yaml: str) -> None:
    """Make ``iteration`` the checkpoint a resume loads: the top-level recipe, then the tracker."""
    atomic_write_text(os.path.join(ckpt_dir, RECIPE_FILE), recipe_yaml)
    atomic_write_text(tracker_path(ckpt_dir), f"{iteration}\n")


def prune(ckpt_dir: str, keep_last: int) -> list[int]:
    """Delete completed checkpoints older than the newest ``keep_last``; returns those deleted."""
    done = completed_iterations(ckpt_dir)
    doomed = done[:-keep_last] if keep_last < len(done) else []
    for it in doomed:
        shutil.rmtree(iter_dir(ckpt_dir, it), ignore_errors=True)
    return doomed


def weights_only_state(model_state: dict, recipe_dict: dict, iteration: int = 0) -> dict:
    """What a weights-only checkpoint holds (a converted model): the model, no optimizer, schedule
    or data position; a resume of it starts a fresh optimizer at step 0."""
    return {
        "model": model_state, "iteration": iteration, "consumed_train_samples": 0,
        "consumed_valid_samples": 0, "opt_param_scheduler": None, "weights_only": True,
        "layout": {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "data_parallel_size": 1},
        "recipe": recipe_dict, "format_version": FORMAT_VERSION,
    }


def write_weights_only(ckpt_dir: str, model_state: dict, recipe, save: Callable[[dict, str], None],
                       iteration: int = 0, extra: Optional[dict] = None) -> str:
    """Save a one-process model as a weights-only iteration and its recipe.yaml; commit with
    :func:`commit` once the caller has checked it. ``save`` is ``dist_checkpointing.save`` (passed in
    so this module needs no Megatron-Core); ``extra`` joins the common state (Megatron-LM's ``args``).
    Returns the iteration folder."""
    target = prepare_iteration_dir(ckpt_dir, iteration)
    save({**weights_only_state(model_state, recipe.to_dict(), iteration), **(extra or {})}, target)
    write_iteration_recipe(ckpt_dir, iteration, recipe.to_yaml())
    return target

