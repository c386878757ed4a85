"""metrics.jsonl (one JSON object per logged step), TensorBoard scalars, a one-line console log."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
from typing import Optional

import torch

from megatron_srp.config import Recipe, RecipeError

log = logging.getLogger("megatron_srp")

# Dense peak TFLOP/s per GPU (no sparsity), from the vendors' data sheets.
GPU_PEAK_TFLOPS = {
    # name fragment: {bf16, fp8}
    "H200": {"bf16": 989.0, "fp8": 1979.0},
    "GH200": {"bf16": 989.0, "fp8": 1979.0},
    "H100 PCIe": {"bf16": 756.0, "fp8": 1513.0},
    "H100 NVL": {"bf16": 835.0, "fp8": 1671.0},
    "H100": {"bf16": 989.0, "fp8": 1979.0},
    "B200": {"bf16": 2250.0, "fp8": 4500.0},
    "A100": {"bf16": 312.0, "fp8": None},
    "L40S": {"bf16": 362.0, "fp8": 733.0},
}


def gpu_peak_tflops(device_name: str, fp8: bool) -> Optional[float]:
    """Peak TFLOP/s for the GPU's name and precision; None when unknown (or on the CPU)."""
    for fragment, peaks in GPU_PEAK_TFLOPS.items():  # dict order: specific names first
        if fragment in device_name:
            return peaks["fp8" if fp8 else "bf16"]
    return None


def check_wandb(recipe: Recipe) -> None:
    """W&B is optional: a recipe that asks for it fails at start, not after the model is built."""
    if not recipe.logging.wandb_project:
        return
    try:
        import wandb  # noqa: F401  (optional dependency)
    except ImportError as e:
        raise RecipeError(f"logging.wandb_project={recipe.logging.wandb_project} needs the wandb package "
                          f"(pip install wandb), or set logging.wandb_project=null ({e})") from e


def _start_wandb(recipe: Recipe, log_dir: str):
    import wandb  # optional dependency (check_wandb ran at start)

    lg = recipe.logging
    return wandb.init(project=lg.wandb_project, entity=lg.wandb_entity, name=lg.wandb_run_name or recipe.name,
                      mode=lg.wandb_mode, dir=log_dir, config=recipe.to_dict())


class MetricsWriter:
    """Writes on the rank that holds the loss (last pipeline stage, first TP/DP rank), as Megatron-LM
    does: metrics.jsonl always, TensorBoard and Weights & Biases when the recipe asks."""

    def __init__(self, recipe: Recipe, enabled: bool):
        log_dir = recipe.log_dir
        self.enabled = enabled
        self.path = os.path.join(log_dir, "metrics.jsonl")
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        os.makedirs(log_dir, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if recipe.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=os.path.join(log_dir, "tensorboard"))
        if recipe.logging.wandb_project:
            self._wandb = _start_wandb(recipe, log_dir)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        step = record["step"]
        prefix = "validation/" if record.get("split") == "validation" else "train/"
        scalars = {prefix + k: v for k, v in clean.items()
                   if k not in ("step", "split") and isinstance(v, (int, float)) and v is not None}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def peak_memory_gib(on_cpu: bool) -> float:
    """Peak memory of this process: resident set size on the CPU, max allocated tensor memory on a GPU."""
    if on_cpu:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB
    return torch.cuda.max_memory_allocated() / 2**30


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_loss(value: Optional[float]) -> str:
    """A loss for the console; None when no token was trained on (all masked)."""
    return "n/a (no trained tokens)" if value is None else f"{value:.4f}"


def console_line(r: dict, train_iters: int) -> str:
    parts = [f"step {r['step']:>6}/{train_iters}", f"loss {format_loss(r.get('loss'))}"]
    if r.get("loss_text") is not None:
        parts.append(f"text {r['loss_text']:.4f}")
    if r.get("loss_reflection") is not None:
        parts.append(f"refl {r['loss_reflection']:.4f}")
    parts += [f"lr {r['lr']:.3e}", f"gnorm {r['grad_norm']:.3f}" if r.get("grad_norm") is not None else "gnorm n/a",
              f"{r['step_time_s'] * 1000:.0f} ms/step", f"{r['tokens_per_s_per_device']:.0f} tok/s/dev"]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    parts += [f"mem {r['peak_memory_gib']:.2f} GiB", f"ETA {format_duration(r['eta_s'])}"]
    return " | ".join(parts)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def verdict_line(val: dict) -> str:
    """The validation log line's reflection part, when the run measures it (training/reflection_metrics.py)."""
    acc, f1, ff = (val.get(k) for k in ("reflection_verdict_accuracy", "reflection_unsafe_f1", "reflection_false_flags"))
    if acc is None:
        return ""
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    return f" | reflection verdicts: accuracy {fmt(acc)}, F1 on Unsafe {fmt(f1)}, false flags {fmt(ff)}"

