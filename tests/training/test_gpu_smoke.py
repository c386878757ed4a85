"""tools/gpu_check.sh and tools/gpu_smoke.sh, the command a lent GPU runs: their whole flow rehearsed
on the CPU, so the GPU's few minutes are never spent on a script bug."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, child_env, cuda_visible
from tests.slurm.test_shellcheck import shellcheck

SCRIPT = str(ROOT / "tools" / "gpu_smoke.sh")
CHECK = str(ROOT / "tools" / "gpu_check.sh")
WHEELS = str(ROOT / "tools" / "install_wheels.sh")


def _smoke(tmp_path, **env):
    env = {**child_env(), "PYTHON": sys.executable, "OUT": str(tmp_path), **env}
    return subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script", [SCRIPT, CHECK, WHEELS], ids=["gpu_smoke", "gpu_check", "install_wheels"])
def test_gpu_scripts_are_shellcheck_clean(script):
    # -x follows `source tools/install_wheels.sh` (a path from the repository root)
    proc = subprocess.run([shellcheck(), "-x", "--severity=style", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_wheels_installs_offline_into_a_private_folder_once(tmp_path):
    """The WHEELS path of both GPU scripts: a relative folder of wheels, no index; PYTHONPATH gets the folder and
    WHEELS is cleared, so gpu_check.sh's call of gpu_smoke.sh does not install a second time."""
    pkg = tmp_path / "src"
    (pkg / "srp_probe_pkg").mkdir(parents=True)
    (pkg / "srp_probe_pkg" / "__init__.py").write_text("VALUE = 42\n")
    (pkg / "pyproject.toml").write_text('[project]\nname = "srp-probe-pkg"\nversion = "1.0"\n'
                                        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    wheels = tmp_path / "work" / "whl"
    wheels.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(pkg)], check=True, capture_output=True)
    script = (f'PY={sys.executable}; source {WHEELS}; install_wheels || exit 1; echo "WHEELS=[$WHEELS]"; '
              f'"$PY" -c "import srp_probe_pkg as p; print(p.VALUE, p.__file__)"')
    env = {**child_env(), "WHEELS": "whl", "SITE": str(tmp_path / "site")}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path / "work", env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WHEELS=[]" in proc.stdout and f"42 {tmp_path / 'site'}" in proc.stdout, proc.stdout
    env["WHEELS"] = "missing"
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path / "work", env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "FAILED: WHEELS=missing is not a folder" in proc.stdout, proc.stdout


@pytest.mark.skipif(cuda_visible(), reason="a CUDA device is visible: this checks the refusal where there is none")
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
    assert "fp8: not measurable (a CPU rehearsal of the branch without Transformer Engine)" in summary
    metrics = Path(tmp_path) / "bf16_local" / "metrics.jsonl"
    assert len(metrics.read_text().splitlines()) == 4  # STEPS=4 in a rehearsal, every step logged


def test_gpu_smoke_reports_a_failed_run(tmp_path):
    """A run that does not finish (here: within a 1 s limit) fails the script, which shows its log."""
    proc = _smoke(tmp_path, REHEARSE="1", RUN_TIMEOUT="1")
    assert proc.returncode == 1
    assert "FAILED: bf16_local" in proc.stdout and "bf16: FAILED (no result)" in proc.stdout
    assert os.path.isfile(Path(tmp_path) / "bf16_local.log")


def test_gpu_check_rehearsal_runs_the_gpu_leg_and_the_te_branch_of_the_smoke_test(tmp_path):
    """The prepared command as a lent GPU runs it, on the CPU: the GPU leg's tests with their stand-ins,
    then the smoke test's Transformer Engine branch (bf16 and FP8 runs, the FP8 verdict)."""
    env = {**child_env(), "PYTHON": sys.executable, "OUT": str(tmp_path), "REHEARSE": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    leg = next(line for line in summary.splitlines() if line.startswith("gpu leg:"))
    assert "5 passed" in leg and "failed" not in leg and "(exit 0)" in leg, summary
    assert "smoke: fp8:" in summary and "x bf16 (target >= 1.2x:" in summary, summary
    for name in ("bf16_te", "fp8_te"):
        assert len((tmp_path / "smoke" / name / "metrics.jsonl").read_text().splitlines()) == 4
