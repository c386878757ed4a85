"""tools/pretrain.py's command line: flags anywhere among the overrides, a --help without
Megatron-Core, a start without Transformer Engine / Apex warnings."""

import importlib.util
import re
import subprocess
import sys

from tests.conftest import ROOT, child_env
from tests.training import runner


def _pretrain(args, env=None, timeout=300):
    return subprocess.run([sys.executable, runner.PRETRAIN, *args], cwd=ROOT, env={**child_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_help_imports_no_megatron_core():
    proc = _pretrain(["--help"], env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0 and "--print-recipe" in proc.stdout
    imported = re.findall(r"\|\s+(\S+)$", proc.stderr, re.M)
    assert "argparse" in imported, proc.stderr[-2000:]  # the import profile was read
    assert not [m for m in imported if m.split(".")[0] in ("megatron", "torch")]


def test_flags_go_before_between_or_after_the_overrides():
    for args in (["--print-recipe", runner.TINY, "training.train_iters=10", "optimizer.lr=0.01"],
                 [runner.TINY, "training.train_iters=10", "--print-recipe", "optimizer.lr=0.01"],
                 [runner.TINY, "--print-recipe", "training.train_iters=10", "optimizer.lr=0.01"]):
        proc = _pretrain(args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "train_iters: 10" in proc.stdout and "lr: 0.01" in proc.stdout, args


def test_save_init_before_the_overrides_starts_without_backend_warnings(tmp_path):
    env = {k: v for k, v in child_env().items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, runner.PRETRAIN, runner.TINY, "--save-init", *runner.BASE,
                           f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runner.tracker(tmp_path) == 0
    assert "Warning" not in proc.stderr, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if "layers: " in ln]
    assert len(notes) == 1, proc.stderr
    if importlib.util.find_spec("transformer_engine") is None:
        assert "Transformer Engine is not installed" in notes[0] and "no FP8" in notes[0]


# A GPU node as the CPU run sees it: torch reports CUDA, and Megatron-Core would build apex's or TE's
# CUDA-only norms (they import there). The class below stands for those and fails if built.
_GPU_NODE = """
import sys, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
import megatron.core.models.backends as backends
import megatron.core.models.gpt.gpt_layer_specs as specs
import megatron.core.transformer.transformer_block as block

class CudaOnlyNorm(torch.nn.Module):
    def __init__(self, *a, **k):
        raise RuntimeError("a CUDA-only norm was built in a device: cpu run")

backends.LNImpl = specs.LNImpl = block.LayerNormImpl = CudaOnlyNorm
from megatron_srp.cli.pretrain import main
sys.exit(main(sys.argv[1:]))
"""


def test_device_cpu_is_honoured_on_a_node_with_cuda_apex_and_te(tmp_path):
    """`device: cpu` next to CUDA trains on the CPU with PyTorch norms (it raised before), so the CPU
    tests also run on a GPU node."""
    cmd = [sys.executable, "-c", _GPU_NODE, runner.TINY, *runner.BASE, "training.train_iters=3",
           "scheduler.lr_warmup_iters=1", "device=cpu", "model.normalization=LayerNorm",
           "model.qk_layernorm=true", f"logging.dir={tmp_path}", "checkpoint.dir=null"]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu (gloo)" in proc.stderr + proc.stdout
    assert len(runner.losses(tmp_path)) == 3
