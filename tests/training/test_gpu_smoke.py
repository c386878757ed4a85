"""tools/gpu_smoke.sh, the one script a lent GPU runs: its whole flow rehearsed on the CPU, so the
GPU's few minutes are never spent on a script bug."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, child_env
from tests.slurm.test_shellcheck import shellcheck

SCRIPT = str(ROOT / "tools" / "gpu_smoke.sh")


def _smoke(tmp_path, **env):
    env = {**child_env(), "PYTHON": sys.executable, "OUT": str(tmp_path), **env}
    return subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_gpu_smoke_is_shellcheck_clean():
    proc = subprocess.run([shellcheck(), "-x", "--severity=style", SCRIPT], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_smoke_refuses_to_run_without_a_gpu(tmp_path):
    proc = _smoke(tmp_path)
    assert proc.returncode == 1
    assert "no CUDA device visible" in proc.stderr and "FAILED: torch with CUDA" in proc.stdout


def test_gpu_smoke_rehearsal_runs_bf16_and_judges_the_result(tmp_path):
    proc = _smoke(tmp_path, REHEARSE="1")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    result = [line.split() for line in out.splitlines() if line.startswith("RESULT bf16_local")]
    assert len(result) == 1 and float(result[0][2]) > 0 and result[0][3] == "n/a"  # CPU: no MFU
    summary = out.split("== summary", 1)[1]
    assert f"bf16: {int(result[0][2]):,} tokens/s/GPU" in summary
    assert "fp8: not measurable (Transformer Engine does not import here)" in summary
    metrics = Path(tmp_path) / "bf16_local" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 4  # STEPS=4 in a rehearsal, every step logged


def test_gpu_smoke_reports_a_failed_run(tmp_path):
    """A run that does not finish (here: within a 1 s limit) fails the script, which shows its log."""
    proc = _smoke(tmp_path, REHEARSE="1", RUN_TIMEOUT="1")
    assert proc.returncode == 1
    assert "FAILED: bf16_local" in proc.stdout and "bf16: FAILED (no result)" in proc.stdout
    assert os.path.isfile(Path(tmp_path) / "bf16_local.log")
