"""Fake ``srun``, ``scontrol`` and ``sbatch`` on PATH, and the Slurm variables of a job, so that the
scripts in slurm/ run on a machine without Slurm.

- ``srun`` records its command line, then skips its options (the scripts always write ``--opt=value``)
  and execs the command, so the batch shell's child *is* the launcher; ``FAKE_SRUN_EXIT=N`` makes it
  exit N instead (a crash or a node failure).
- ``scontrol show hostnames`` prints ``FAKE_HOSTNAMES`` (or the node list itself); ``scontrol requeue``
  is recorded.
- ``sbatch`` is recorded (with whether any SLURM_* variable reached it) and prints a job id.
Calls land in ``FAKE_SLURM_LOG``, one JSON object per line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, child_env

_RECORD = '''
import json, os, sys
def record(**extra):
    with open(os.environ["FAKE_SLURM_LOG"], "a") as f:
        f.write(json.dumps({"cmd": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], **extra}) + "\\n")
'''

SRUN = _RECORD + '''
record()
if os.environ.get("FAKE_SRUN_EXIT"):
    sys.exit(int(os.environ["FAKE_SRUN_EXIT"]))
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
os.execvp(args[0], args)
'''

SCONTROL = _RECORD + '''
args = sys.argv[1:]
if args[:2] == ["show", "hostnames"]:
    print("\\n".join(os.environ.get("FAKE_HOSTNAMES", args[2]).split()))
else:
    record()
'''

SBATCH = _RECORD + '''
record(slurm_env=sorted(k for k in os.environ if k.startswith("SLURM_") and k != "SLURM_CONF"),
       srp_step=os.environ.get("SRP_STEP"))
print("777" if "--parsable" in sys.argv else "Submitted batch job 777")
'''


def install(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL), ("sbatch", SBATCH)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    # Inside a container the scripts call plain `python`.
    python = bin_dir / "python"
    if not python.exists():
        python.symlink_to(sys.executable)
    return bin_dir


def job_env(tmp: Path, nodes: int = 1, gpus: int = 8, job_id: int = 4242, hosts=None, **extra) -> dict:
    """The environment of a batch shell on the first node of a job, with the fakes first on PATH."""
    bin_dir = install(tmp / "fakebin")
    hosts = hosts or [f"gpu-{i + 1:03d}" for i in range(nodes)]
    env = child_env()
    for k in list(env):
        if k.startswith(("SLURM_", "SRP_")):
            del env[k]
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
        "PYTHONPATH": str(ROOT),
        "FAKE_SLURM_LOG": str(tmp / "slurm_calls.jsonl"),
        "FAKE_HOSTNAMES": " ".join(hosts),
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NAME": "srp-test",
        "SLURM_JOB_NODELIST": f"gpu-[001-{nodes:03d}]" if nodes > 1 else hosts[0],
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NNODES": str(nodes),
        "SLURM_GPUS_ON_NODE": str(gpus),
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SRP_PYTHON": sys.executable,
    })
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    for k in [k for k, v in extra.items() if v is None]:
        env.pop(k, None)  # a variable the test wants unset
    return env


def calls(env: dict, cmd: str | None = None) -> list[dict]:
    path = Path(env["FAKE_SLURM_LOG"])
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines()]
    return [c for c in out if cmd is None or c["cmd"] == cmd]


def run_script(script: str, args, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "slurm" / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
