"""pretrain.sbatch with real processes: the batch shell, the launcher (the fake srun execs
slurm/launch.sh, which runs torchrun or the rank itself) and tools/pretrain.py on tiny_cpu. SIGUSR1 to
the batch shell (what ``--signal=B:USR1@300`` does) must make the ranks save and exit 0, the shell
requeue the job, and the next attempt resume; the requeue cap and the no-progress guard must stop it.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT, free_port
from tests.slurm.fake_slurm import calls, job_env, run_script

TINY = "recipes/tiny_cpu.yaml"


def overrides(run: Path) -> list[str]:
    # Far more steps than the test runs: only the signal ends an attempt.
    return ["training.train_iters=100000", f"checkpoint.dir={run / 'ckpt'}", f"logging.dir={run}",
            "checkpoint.save_interval=null", "training.eval_interval=null", "logging.log_interval=1",
            "logging.tensorboard=false"]


def tracker(run: Path):
    p = run / "ckpt" / "latest_checkpointed_iteration.txt"
    return int(p.read_text()) if p.exists() else None


def wait_for_step(log: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log.read_text() if log.exists() else ""
        steps = [int(s) for s in re.findall(r"step\s+(\d+)/100000", text)]
        if steps and max(steps) >= step:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"step {step} never logged (exit {proc.poll()}):\n{text[-3000:]}")


def attempt(tmp_path, run, restarts, launcher, until_step, **extra):
    """Start the batch shell, let training reach ``until_step``, SIGUSR1 the shell, wait for it."""
    env = job_env(tmp_path, nodes=1, gpus=1, hosts=["localhost"], SRP_LAUNCHER=launcher,
                  SRP_MASTER_PORT=free_port(), SLURM_RESTART_COUNT=restarts, **extra)
    out = tmp_path / f"batch-{restarts}.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(["bash", str(ROOT / "slurm" / "pretrain.sbatch"), TINY, *overrides(run)],
                                cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    log = run / "slurm" / f"job-4242.attempt-{restarts + 1}.log"
    text = wait_for_step(log, until_step, proc)
    proc.send_signal(signal.SIGUSR1)
    rc = proc.wait(timeout=180)
    return rc, out.read_text(), log.read_text(), text, env


def test_signal_saves_requeues_and_the_next_attempt_resumes_until_the_cap(tmp_path):
    run = tmp_path / "run"
    # Attempt 1, torchrun launcher: the signal reaches the rank through the shell, launch.sh and torchrun.
    rc, out, log, _, env = attempt(tmp_path, run, 0, "torchrun", until_step=3)
    assert rc == 0, out + log[-3000:]
    assert "got SIGUSR1: passing it to the training step" in out
    assert "signal received" in log and "Traceback" not in log
    first = tracker(run)
    assert first is not None and first >= 3
    assert [c["argv"] for c in calls(env, "scontrol")] == [["requeue", "4242"]]
    assert f"requeueing job 4242 (requeue 1 of at most 20); it resumes from iteration {first}" in out

    # Attempt 2 (Slurm restarted the job: SLURM_RESTART_COUNT=1), one task per GPU this time.
    rc, out, log, _, env = attempt(tmp_path, run, 1, "srun", until_step=first + 2, SRP_MAX_REQUEUES=1)
    assert f"resumed from {run / 'ckpt'} at step {first}" in log
    assert "signal received" in log
    second = tracker(run)
    assert second is not None and second > first
    assert rc == 1, out
    assert "requeue cap reached (1 requeue(s), SRP_MAX_REQUEUES=1): not requeueing" in out
    assert len(calls(env, "scontrol")) == 1  # no second requeue
    # One log per attempt, and the batch output names each.
    assert sorted(p.name for p in (run / "slurm").glob("*.log")) == ["job-4242.attempt-1.log", "job-4242.attempt-2.log"]
    metrics_steps = [int(m) for m in re.findall(r'"step": (\d+)', (run / "metrics.jsonl").read_text())]
    assert metrics_steps == list(range(1, first + 1)) + list(range(first + 1, max(metrics_steps) + 1))


def crash_env(tmp_path, restarts, code=1, **extra):
    return job_env(tmp_path, gpus=1, FAKE_SRUN_EXIT=code, SLURM_RESTART_COUNT=restarts, **extra)


def test_attempts_without_a_new_checkpoint_stop_the_requeue_loop(tmp_path):
    run = tmp_path / "run"
    args = [TINY, *overrides(run)]
    # A crash at start-up (a bad node): the first one is retried when SRP_MAX_STALLS allows two.
    p = run_script("pretrain.sbatch", args, crash_env(tmp_path, 0, SRP_MAX_STALLS=2))
    assert p.returncode == 0 and "requeueing job 4242" in p.stderr, p.stderr
    # The second crash in a row without a checkpoint: no more requeues.
    env = crash_env(tmp_path, 1, SRP_MAX_STALLS=2)
    p = run_script("pretrain.sbatch", args, env)
    assert p.returncode == 1, p.stderr
    assert "no new checkpoint in the last 2 attempt(s): not requeueing (SRP_MAX_STALLS=2)" in p.stderr
    assert len(calls(env, "scontrol")) == 1 and len(calls(env, "srun")) == 2
    # Slurm requeued it anyway (a node failure kills the batch shell before its end): the guard at the
    # start refuses to launch again.
    p = run_script("pretrain.sbatch", args, crash_env(tmp_path, 2, SRP_MAX_STALLS=2))
    assert p.returncode == 1 and "not starting again" in p.stderr, p.stderr
    assert len(calls(env, "srun")) == 2


def test_default_guard_stops_after_one_attempt_without_progress(tmp_path):
    env = crash_env(tmp_path, 0)
    p = run_script("pretrain.sbatch", [TINY, *overrides(tmp_path / "run")], env)
    assert p.returncode == 1 and "not requeueing (SRP_MAX_STALLS=1)" in p.stderr, p.stderr
    assert calls(env, "scontrol") == []


def test_a_stop_file_ends_the_job_without_a_requeue(tmp_path):
    run = tmp_path / "run"
    (run / "slurm").mkdir(parents=True)
    (run / "slurm" / "job-4242.stop").touch()
    env = crash_env(tmp_path, 0, code=0, SRP_MAX_STALLS=5)
    p = run_script("pretrain.sbatch", [TINY, *overrides(run)], env)
    assert p.returncode == 0 and "job-4242.stop: stopping here, not requeueing" in p.stderr, p.stderr
    assert calls(env, "scontrol") == []


def test_a_recipe_or_checkpoint_error_is_never_requeued(tmp_path):
    env = crash_env(tmp_path, 0, code=2, SRP_MAX_STALLS=5)
    p = run_script("pretrain.sbatch", [TINY, *overrides(tmp_path / "run")], env)
    assert p.returncode == 2 and "exit 2 is a recipe or checkpoint error" in p.stderr, p.stderr
    assert calls(env, "scontrol") == []


def test_requeue_cap_and_finished_runs_start_nothing(tmp_path):
    run = tmp_path / "run"
    env = crash_env(tmp_path, 3, SRP_MAX_REQUEUES=2)
    p = run_script("pretrain.sbatch", [TINY, *overrides(run)], env)
    assert p.returncode == 1 and "requeue cap reached: attempt 4, SRP_MAX_REQUEUES=2; not starting" in p.stderr
    (run / "ckpt").mkdir(parents=True)
    (run / "ckpt" / "latest_checkpointed_iteration.txt").write_text("100000")
    p = run_script("pretrain.sbatch", [TINY, *overrides(run)], crash_env(tmp_path, 0))
    assert p.returncode == 0 and "nothing to do" in p.stderr, p.stderr
    assert calls(env, "srun") == []


# -- slurm/launch.sh on its own: every rank hears SIGUSR1, nothing else dies of it --------------------

RANK = '''
import multiprocessing as mp, os, signal, sys, time
# A DataLoader worker stand-in, forked before the rank installs its handler.
worker = mp.get_context("fork").Process(target=time.sleep, args=(600,))
worker.start()
got = []
signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
print(f"rank {os.environ['RANK']} ready worker {worker.pid}", flush=True)
while not got:
    time.sleep(0.05)
time.sleep(0.5)  # a second signal, if any, arrives now
print(f"rank {os.environ['RANK']} saved; worker alive: {worker.is_alive()}", flush=True)
worker.terminate()
'''


def _launch(tmp_path, watch, to_every_process: bool) -> str:
    import psutil

    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = job_env(tmp_path)
    cmd = ["bash", str(ROOT / "slurm" / "launch.sh"), env["SRP_PYTHON"], "-m", "torch.distributed.run",
           "--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script)]
    proc = watch(cmd, cwd=ROOT, env=env)
    proc.until(lambda out: out.count(" ready worker ") == 2, timeout=120)
    # Slurm's --signal may reach only the task (srun forwarding) or every process of the step.
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in (tree if to_every_process else [proc.pid]):
        os.kill(pid, signal.SIGUSR1)
    out = proc.finish(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_launch_forwards_sigusr1_to_every_rank_of_torchrun(tmp_path, watch):
    out = _launch(tmp_path, watch, to_every_process=False)
    assert "rank 0 saved; worker alive: True" in out and "rank 1 saved; worker alive: True" in out


def test_launch_keeps_torchrun_and_forked_workers_alive_when_every_process_is_signalled(tmp_path, watch):
    out = _launch(tmp_path, watch, to_every_process=True)
    assert "rank 0 saved; worker alive: True" in out and "rank 1 saved; worker alive: True" in out
