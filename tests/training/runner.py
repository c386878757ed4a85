"""Run tools/pretrain.py as real processes (python for 1 rank, torchrun for N) and read results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from megatron_srp.training import layout
from tests.conftest import ROOT, child_env, free_port

PRETRAIN = str(ROOT / "tools" / "pretrain.py")
TINY = str(ROOT / "recipes" / "tiny_cpu.yaml")
# Small, fast, and every step logged; tests add the layout and output folders.
BASE = [
    "training.train_iters=20",
    "training.eval_interval=null",
    "checkpoint.save_interval=null",
    "checkpoint.keep_last=null",
    "logging.log_interval=1",
    "logging.tensorboard=false",
]


def command(nproc: int, overrides: list[str], extra: list[str] = ()) -> list[str]:
    if nproc == 1:
        launcher = [sys.executable, PRETRAIN]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                    "--master-addr", "127.0.0.1", "--master-port", str(free_port()), PRETRAIN]
    return launcher + [TINY, *BASE, *overrides, *extra]


def run(run_dir: Path, overrides: list[str] = (), nproc: int = 1, extra: list[str] = (), env=None,
        timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    overrides = [f"checkpoint.dir={run_dir / 'ckpt'}", f"logging.dir={run_dir}", *overrides]
    proc = subprocess.run(command(nproc, overrides, extra), cwd=ROOT, env={**child_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """step -> value from metrics.jsonl; a step logged twice (replayed after a crash) keeps the last."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") != "validation" and key in rec:
            out[rec["step"]] = rec[key]
    return out


def tracker(run_dir: Path):
    return layout.read_tracker(str(Path(run_dir) / "ckpt"))
