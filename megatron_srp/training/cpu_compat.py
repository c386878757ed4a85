"""Run real Megatron-Core on a CPU: every patch the library needs, in one place.

Megatron-Core assumes CUDA in a handful of places (device="cuda", torch.cuda.* calls, tensor type
strings, the CUDA RNG tracker). ``enable()`` redirects those to the CPU. It is called when the run's
device is the CPU (``device: cpu``, or ``auto`` without CUDA); on a GPU node it hides the GPUs first.
Each patch is here because switching it off made a tiny CPU run fail or train wrongly.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_MODE: "_CudaToCpuMode | None" = None


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # A bare int is a CUDA ordinal (torch.cuda.current_device() returns one).
    return isinstance(dev, int) and not isinstance(dev, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU; ``Tensor.cuda()`` becomes a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Every torch call of the process passes here: keep the common path short.
        if kwargs:
            dev = kwargs.get("device")
            if dev is not None and _is_cuda_device(dev):
                kwargs = {**kwargs, "device": "cpu"}
        else:
            kwargs = {}
        if func in _SPECIAL:
            # Megatron moves modules and tensors with .cuda(); on CPU that is the identity.
            if func is _TENSOR_CUDA:
                return args[0]
            # Megatron's optimizer and DDP compare t.type() with 'torch.cuda.FloatTensor' etc.
            if func is _TENSOR_TYPE and len(args) == 1 and not kwargs:
                name = func(*args)
                return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
            # Tensor.to("cuda"), Tensor.to(torch.device("cuda")), Tensor.to(0)
            if func is _TENSOR_TO and len(args) > 1 and _is_cuda_device(args[1]):
                args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


_TENSOR_CUDA, _TENSOR_TYPE, _TENSOR_TO = torch.Tensor.cuda, torch.Tensor.type, torch.Tensor.to
_SPECIAL = {_TENSOR_CUDA, _TENSOR_TYPE, _TENSOR_TO}


class _NoopStream:
    """torch.cuda stream stand-in: megatron-core 0.19's DDP syncs on the current stream."""

    def wait_event(self, *a, **k):
        pass

    def wait_stream(self, *a, **k):
        pass

    def record_event(self, *a, **k):
        return None

    def synchronize(self):
        pass


class CpuRNGStatesTracker:
    """Megatron's CUDA RNG tracker, holding CPU generator states instead.

    Attention and tensor-parallel initialisation always fork the model-parallel RNG state; this
    keeps that contract (named states, fork swaps the default generator) on the CPU.
    """

    def __init__(self, *args, **kwargs):
        self.reset()

    def is_initialized(self):
        return self._is_initialized

    def reset(self):
        self._is_initialized = False
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self):
        return dict(self.states_)

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = states

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        gen = torch.Generator()
        gen.manual_seed(seed)
        self.states_[name] = gen.get_state()

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def seed_cpu_rng_tracker(seed: int) -> None:
    """``tensor_parallel.model_parallel_cuda_manual_seed`` for the CPU, seeded the same way."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mrandom

    tracker = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    ep_rank = parallel_state.get_expert_model_parallel_rank()
    etp_rank = parallel_state.get_expert_tensor_parallel_rank()
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024 + 100 * ep_rank + etp_rank)


def enable() -> None:
    """Install the CPU redirection for the rest of the process. Idempotent."""
    global _ENABLED, _MODE
    if _ENABLED:
        return
    # `device: cpu` on a GPU node: this process (and its DataLoader workers) then sees no CUDA, so every
    # "is there a GPU?" branch, Megatron-Core's and ours, takes the CPU path the recipe asked for.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.cuda.is_available = lambda: False
    torch.cuda.device_count = lambda: 0
    # Megatron asks for the current device index and passes it back as device=...
    torch.cuda.current_device = lambda: 0
    # Timers, checkpointing and p2p call synchronize(); nothing to wait for on the CPU.
    torch.cuda.synchronize = lambda *a, **k: None
    # megatron-core 0.19 DDP waits on the current stream at every gradient sync.
    torch.cuda.current_stream = lambda *a, **k: _NoopStream()
    # Activation recomputation saves and restores "the CUDA RNG state" around each recomputed
    # block; on the CPU that state is the default CPU generator's.
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # The recomputed forward runs inside autograd's backward, where the function mode entered
    # below is not active; re-enter it there.
    recompute_backward = mrandom.CheckpointFunction.backward

    def backward_with_mode(ctx, *grads):
        with _CudaToCpuMode():
            return recompute_backward(ctx, *grads)

    mrandom.CheckpointFunction.backward = staticmethod(backward_with_mode)
    _MODE = _CudaToCpuMode()
    _MODE.__enter__()
    _ENABLED = True


def is_enabled() -> bool:
    return _ENABLED
