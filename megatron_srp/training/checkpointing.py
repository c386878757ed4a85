"""Checkpoints in Megatron-Core's ``dist_checkpointing`` (torch_dist) format, in the folder layout
of layout.py (Megatron-LM's).

A save is complete only once the tracker names it, so a job killed mid-save resumes from the
previous good checkpoint. Tensors are saved with their global shapes, so a checkpoint loads under
any TP / PP / DP layout; optimizer state uses the ``fully_reshardable`` distributed-optimizer
format for the same reason.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_srp.config import Recipe
from megatron_srp.training import layout
from megatron_srp.training.integrity import DamagedCheckpointError, check_iteration_files
# Re-exported: callers of this module name these as checkpointing.X.
from megatron_srp.training.layout import (FORMAT_VERSION, CheckpointError, completed_iterations,  # noqa: F401
                                          iter_dir, prune, read_tracker, resolve_load_dir)
from megatron_srp.training.megatron_lm_args import allow_common_state_globals, megatron_lm_common
from megatron_srp.training.quiet import checkpoint_read_warnings_ignored

log = logging.getLogger(__name__)
# A resume reads common state through Megatron-Core's loader (torch.load, weights_only=True).
allow_common_state_globals()

# Fault injection for tests of interrupted saves: "ITERATION:SECONDS" sleeps after that
# iteration's shards are written and before the tracker commits them, so a SIGKILL lands mid-save.
_FAULT_SLEEP_ENV = "MEGATRON_SRP_FAULT_SLEEP_BEFORE_COMMIT"


def _fault_sleep_seconds(iteration: int) -> float:
    spec = os.environ.get(_FAULT_SLEEP_ENV, "")
    if not spec:
        return 0.0
    it, _, secs = spec.partition(":")
    return float(secs) if int(it) == iteration else 0.0


@dataclass
class LoadedState:
    iteration: int
    consumed_train_samples: int
    consumed_valid_samples: int
    saved_recipe: dict = field(default_factory=dict)
    """The checkpoint's recipe (empty for a checkpoint written without one)."""
    scheduler_state: Optional[dict] = None
    """OptimizerParamScheduler's state; None for weights only (a fresh schedule)."""


def _parallel_layout() -> dict:
    return {
        "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": parallel_state.get_pipeline_model_parallel_world_size(),
        "data_parallel_size": parallel_state.get_data_parallel_world_size(),
    }


def _rng_state() -> dict:
    return {
        "random": random.getstate(),
        "np": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state) -> ShardedObject:
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return ShardedObject(
        "rng_state", state, (pp, tp),
        (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )


def _model_sharded_state_dict(model) -> dict:
    if len(model) == 1:
        return {"model": model[0].module.sharded_state_dict()}
    return {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(model)}


_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _ensure_optimizer_state(optimizer) -> None:
    """torch's AdamW creates its state lazily at the first step; Megatron's sharded state dict
    needs it to exist. Zero states plus step 0 are exactly what the first step would create."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        init = getattr(opt, "init_state_fn", None)
        if init is not None:
            init(inner, getattr(opt, "config", None))
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if "exp_avg" in st and "step" not in st:
                    st["step"] = torch.zeros((), dtype=torch.float32)


def _fix_loaded_step_tensors(optimizer) -> None:
    """After loading, each param must own its ``step`` tensor (a shared one is stepped N times)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for st in opt.optimizer.state.values():
            if "step" in st and torch.is_tensor(st["step"]):
                st["step"] = st["step"].detach().clone().float().reshape(())


@contextmanager
def _torch_adam_load_fix(optimizer):
    """megatron-core's DistributedOptimizer, wrapping torch's AdamW (no TE / apex), copies every
    key of a param's state when loading ``fully_reshardable`` state, but the checkpoint has no
    per-param ``step`` (it is restored from the param groups): KeyError 'step' in 0.16 and 0.19.
    Copy only the keys the checkpoint holds, for the duration of the load."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not (isinstance(opt, DistributedOptimizer) and isinstance(opt.optimizer, torch.optim.Optimizer)
                and type(opt.optimizer).__module__.startswith("torch.optim")
                and not opt.config.use_precision_aware_optimizer):
            continue

        def set_present_keys(model_param, tensors, _opt=opt):
            group_index, group_order = _opt.model_param_group_index_map[model_param]
            main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
            dst = {"param": main_param, **_opt.optimizer.state[main_param]}
            with torch.no_grad():
                for key, value in tensors.items():
                    dst[key].copy_(value)

        opt._set_main_param_and_optimizer_states = set_present_keys
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states


def _results_queue_in_this_process() -> None:
    """Megatron-Core's filesystem writer creates its results queue, at the first save, in a
    multiprocessing Manager: a server process of its own that a run killed with SIGKILL leaves
    running. Saves here are synchronous: the writer runs in this process (its forked workers report
    on a queue of their own), so a thread-safe in-process queue does the same job with no process."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", False) is None:
        filesystem_async._results_queue = queue.Queue()


def save_checkpoint(recipe: Recipe, ckpt_dir: str, iteration: int, model, optimizer, scheduler,
                    consumed_train_samples: int, consumed_valid_samples: int) -> float:
    """Save on all ranks (collective); commit with the tracker; prune. Returns seconds taken."""
    t0 = time.time()
    _results_queue_in_this_process()
    rank = torch.distributed.get_rank()
    target = iter_dir(ckpt_dir, iteration)
    if rank == 0:
        layout.prepare_iteration_dir(ckpt_dir, iteration)
    torch.distributed.barrier()

    state = _model_sharded_state_dict(model)
    if optimizer is not None:
        _ensure_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=False, metadata=_OPTIM_METADATA)
    state["opt_param_scheduler"] = scheduler.state_dict() if scheduler is not None else None
    state["rng_state"] = _rng_sharded_object(_rng_state())
    state["iteration"] = iteration
    state["consumed_train_samples"] = consumed_train_samples
    state["consumed_valid_samples"] = consumed_valid_samples
    state["layout"] = _parallel_layout()
    state["recipe"] = recipe.to_dict()
    state["format_version"] = FORMAT_VERSION
    state.update(megatron_lm_common(recipe))  # args + checkpoint_version: what Megatron-LM's tools read
    dist_checkpointing.save(state, target)
    torch.distributed.barrier()

    if rank == 0:
        layout.write_iteration_recipe(ckpt_dir, iteration, recipe.to_yaml())
        fault_sleep = _fault_sleep_seconds(iteration)
        if fault_sleep > 0:
            print(f"[fault injection] shards of iteration {iteration} written; sleeping {fault_sleep}s "
                  "before commit", flush=True)
            time.sleep(fault_sleep)
        layout.commit(ckpt_dir, iteration, recipe.to_yaml())
        if recipe.checkpoint.keep_last:
            prune(ckpt_dir, recipe.checkpoint.keep_last)
    torch.distributed.barrier()
    return time.time() - t0


def checkpoint_common(path: str) -> dict:
    """The non-tensor part of a saved iteration directory (recipe, iteration, layout, ...)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    if not os.path.isfile(os.path.join(path, "metadata.json")):
        raise DamagedCheckpointError(f"{path}: not a torch_dist checkpoint (no metadata.json)")
    try:
        return dist_checkpointing.load_common_state_dict(path)
    except (EOFError, OSError, pickle.UnpicklingError, RuntimeError) as e:
        raise DamagedCheckpointError(f"{os.path.join(path, 'common.pt')}: unreadable ({type(e).__name__}: {e})") from e


def loadable_iteration(ckpt_dir: str, on_damaged: str = "fallback") -> int:
    """The newest completed iteration whose files are whole. A damaged newer one is an error with
    ``on_damaged="error"``; with "fallback" it is skipped with a warning naming the damaged file."""
    latest = read_tracker(ckpt_dir)
    candidates = sorted(set(completed_iterations(ckpt_dir)) | {latest}, reverse=True)
    for it in candidates:
        path = iter_dir(ckpt_dir, it)
        try:
            check_iteration_files(path)
            checkpoint_common(path)
            return it
        except DamagedCheckpointError as e:
            if on_damaged == "error":
                raise DamagedCheckpointError(f"{e}\n(checkpoint.on_damaged=error; with checkpoint.on_damaged=fallback "
                                             "the run resumes from the newest iteration that is whole)") from e
            if torch.distributed.get_rank() == 0:
                log.warning("DAMAGED CHECKPOINT, iteration %d skipped: %s; falling back to an older iteration "
                            "(checkpoint.on_damaged=fallback)", it, e)
    raise DamagedCheckpointError(f"{ckpt_dir}: no saved iteration is whole ({candidates} all damaged); "
                                 "move the folder away to start afresh")


_SHAPE_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
               "ffn_hidden_size", "vocab_size", "make_vocab_size_divisible_by", "normalization",
               "activation", "share_embeddings_and_output_weights", "add_bias_linear", "qk_layernorm",
               "position_embedding_type")


def check_compatible(recipe: Recipe, saved_recipe: dict, where: str) -> None:
    """Raise when the checkpoint's model shape differs from the recipe's, naming every key."""
    saved = saved_recipe.get("model", {})
    ours = recipe.to_dict()["model"]
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r} != recipe {ours[k]!r}"
             for k in _SHAPE_KEYS if k in saved and saved.get(k) != ours[k]]
    if diffs:
        raise CheckpointError(f"{where} does not match the recipe:\n  " + "\n  ".join(diffs))


def _use_saved_group_lrs(optimizer, saved_recipe: dict) -> None:
    """megatron-core 0.19 pairs the optimizer's param groups with the saved ones by their settings,
    max_lr and min_lr among them, so a resume with a changed optimizer.lr would find no group. Load
    under the saved values; the trainer then sets those in effect (scheduler.on_resume)."""
    saved = saved_recipe.get("optimizer")
    if not saved:
        return
    for group in optimizer.param_groups:
        if "max_lr" in group:
            group["max_lr"], group["min_lr"] = saved["lr"], saved["min_lr"]


def load_checkpoint(recipe: Recipe, ckpt_dir: str, model, optimizer, finetune: bool = False,
                    iteration: Optional[int] = None) -> LoadedState:
    """Load model, optimizer and RNG in place; the schedule's state is returned for the caller
    (optim.resume_schedule decides whose values it runs with)."""
    path, it = resolve_load_dir(ckpt_dir, iteration)
    check_iteration_files(path)
    common = checkpoint_common(path)
    check_compatible(recipe, common.get("recipe", {}), path)
    if common.get("weights_only") and not finetune:
        # written by tools/convert_from_hf.py: weights, no optimizer, schedule or data position
        log.info("%s holds weights only (a converted model): starting a fresh optimizer at step 0", path)
        finetune = True

    state = _model_sharded_state_dict(model)
    load_optim = optimizer is not None and not finetune and recipe.checkpoint.load_optim
    if load_optim:
        _use_saved_group_lrs(optimizer, common.get("recipe") or {})
        _ensure_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True, metadata=_OPTIM_METADATA)
    same_layout = common.get("layout") == _parallel_layout()
    load_rng = not finetune and recipe.checkpoint.load_rng and same_layout
    if load_rng:
        state["rng_state"] = _rng_sharded_object(None)
    try:
        with checkpoint_read_warnings_ignored():
            loaded = dist_checkpointing.load(state, path)
    except (EOFError, pickle.UnpicklingError) as e:  # damage the file checks cannot see
        raise DamagedCheckpointError(f"{path}: a shard is unreadable ({type(e).__name__}: {e})") from e

    if len(model) == 1:
        model[0].module.load_state_dict(loaded["model"], strict=True)
    else:
        for i, chunk in enumerate(model):
            chunk.module.load_state_dict(loaded[f"model{i}"], strict=True)
    if load_optim:
        with _torch_adam_load_fix(optimizer):
            optimizer.load_state_dict(loaded["optimizer"])
        _fix_loaded_step_tensors(optimizer)
    if finetune:
        return LoadedState(0, 0, 0)
    if load_rng:
        _set_rng_state(loaded["rng_state"])
    elif not same_layout:
        log.info("parallel layout changed %s -> %s: RNG states are not restored", common.get("layout"), _parallel_layout())
    return LoadedState(int(common["iteration"]), int(common["consumed_train_samples"]),
                       int(common["consumed_valid_samples"]), saved_recipe=common.get("recipe") or {},
                       scheduler_state=common.get("opt_param_scheduler"))
