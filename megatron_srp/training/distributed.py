"""Process group, Megatron parallel state and seeds, for 1 process (python) or N (torchrun/srun)."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from megatron.core import parallel_state, tensor_parallel

from megatron_srp.config import Recipe, validate_world
from megatron_srp.training import cpu_compat

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    on_cpu: bool
    rank: int
    world_size: int
    local_rank: int
    dp_size: int

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.on_cpu else torch.device("cuda", torch.cuda.current_device())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _launcher_env() -> tuple[int, int, int]:
    """(rank, world, local rank) from torchrun or from srun's one-task-per-GPU variables."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1:
        os.environ.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError("srun launch without torchrun: export MASTER_ADDR (the first node's hostname)")
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def resolve_on_cpu(recipe: Recipe) -> bool:
    if recipe.device == "cpu":
        return True
    if recipe.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda, but torch sees no CUDA device")
        return False
    return not torch.cuda.is_available()


def setup(recipe: Recipe) -> DistEnv:
    """Initialise torch.distributed and Megatron's parallel state; seed every RNG."""
    on_cpu = resolve_on_cpu(recipe)
    if on_cpu:
        cpu_compat.enable()
    rank, world, local_rank = _launcher_env()
    dp = validate_world(recipe, world)
    if not torch.distributed.is_initialized():
        backend = "gloo" if on_cpu else "nccl"
        if not on_cpu:
            torch.cuda.set_device(local_rank)
        if world == 1 and "MASTER_ADDR" not in os.environ:
            store = torch.distributed.HashStore()
            torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1)
        else:
            torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                                 timeout=timedelta(minutes=30))
    p = recipe.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
    )
    set_seed(recipe.training.seed, on_cpu)
    return DistEnv(on_cpu=on_cpu, rank=rank, world_size=world, local_rank=local_rank, dp_size=dp)


def set_seed(seed: int, on_cpu: bool) -> None:
    """Megatron-LM's seeding: offset by pipeline rank, then the tensor-parallel RNG tracker."""
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if on_cpu:
        cpu_compat.seed_cpu_rng_tracker(seed)
    else:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def teardown() -> None:
    if torch.distributed.is_initialized():
        parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()
