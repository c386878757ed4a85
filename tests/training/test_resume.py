"""Checkpoints: stop + resume equals an uninterrupted run; layouts change on resume; interrupted
saves and Slurm signals lose nothing."""

import math
import os
import signal

import pytest

from tests.conftest import ROOT, child_env
from tests.training import runner


def assert_same_losses(got: dict, want: dict, steps):
    for step in steps:
        assert step in got, f"step {step} missing"
        assert math.isclose(got[step], want[step], rel_tol=1e-5), (step, got[step], want[step])


def test_stop_and_resume_equals_uninterrupted(tmp_path, from_init, baseline):
    first = runner.run(tmp_path, from_init + ["training.exit_interval=10"])
    assert "exit_interval reached" in first.stderr
    assert runner.tracker(tmp_path) == 10
    second = runner.run(tmp_path, from_init)
    assert "resumed from" in second.stderr and "at step 10" in second.stderr
    assert_same_losses(runner.losses(tmp_path), baseline, range(1, 21))
    assert runner.tracker(tmp_path) == 20


def test_distributed_optimizer_checkpoint_resumes(tmp_path, from_init, baseline):
    dist_opt = ["optimizer.use_distributed_optimizer=true"]
    runner.run(tmp_path, from_init + dist_opt + ["training.exit_interval=10"], nproc=2)
    runner.run(tmp_path, from_init + dist_opt, nproc=2)
    assert_same_losses(runner.losses(tmp_path), baseline, range(1, 21))


@pytest.mark.parametrize("saved_at, both", [
    (["parallel.tensor_model_parallel_size=2"], []),
    (["parallel.pipeline_model_parallel_size=2"], []),
    # DP=2: the distributed optimizer's state is sharded over DP and resharded to one rank (fully_reshardable).
    ([], ["optimizer.use_distributed_optimizer=true"]),
], ids=["tp2-at-tp1", "pp2-at-pp1", "dp2-distributed-optimizer-at-dp1"])
def test_checkpoint_resumes_in_a_one_process_layout(tmp_path, from_init, baseline, saved_at, both):
    runner.run(tmp_path, from_init + both + saved_at + ["training.exit_interval=10"], nproc=2)
    assert runner.tracker(tmp_path) == 10
    resumed = runner.run(tmp_path, from_init + both)
    assert "parallel layout changed" in resumed.stderr
    assert_same_losses(runner.losses(tmp_path), baseline, range(1, 21))


def test_keep_last_prunes_old_checkpoints(tmp_path, from_init):
    runner.run(tmp_path, from_init + ["checkpoint.save_interval=5", "checkpoint.keep_last=2"])
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("iter_"))
    assert kept == ["iter_0000015", "iter_0000020"]
    assert (tmp_path / "ckpt" / "iter_0000020" / "recipe.yaml").is_file()


def _start(watch, tmp_path, overrides, env=None):
    cmd = runner.command(1, [f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path}", *overrides])
    return watch(cmd, cwd=ROOT, env={**child_env(), **(env or {})})


def test_sigkill_during_save_resumes_from_previous_checkpoint(watch, tmp_path, from_init, baseline):
    overrides = from_init + ["checkpoint.save_interval=5"]
    proc = _start(watch, tmp_path, overrides, env={"MEGATRON_SRP_FAULT_SLEEP_BEFORE_COMMIT": "10:60"})
    proc.until("shards of iteration 10 written", timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # The half-finished save exists on disk but was never committed.
    assert (tmp_path / "ckpt" / "iter_0000010").is_dir()
    assert runner.tracker(tmp_path) == 5
    resumed = runner.run(tmp_path, overrides)
    assert "at step 5" in resumed.stderr
    assert runner.tracker(tmp_path) == 20
    assert_same_losses(runner.losses(tmp_path), baseline, range(1, 21))


def test_sigterm_saves_exits_zero_and_resumes(watch, tmp_path, from_init, baseline):
    proc = _start(watch, tmp_path, from_init)
    proc.until("step      2/20", timeout=120)
    os.kill(proc.pid, signal.SIGTERM)
    out = proc.finish(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "signal received" in out
    stopped_at = runner.tracker(tmp_path)
    assert stopped_at is not None and 2 <= stopped_at < 20
    runner.run(tmp_path, from_init)
    assert runner.tracker(tmp_path) == 20
    assert_same_losses(runner.losses(tmp_path), baseline, range(1, 21))


def test_exit_duration_minutes_saves_and_exits(tmp_path, from_init):
    proc = runner.run(tmp_path, from_init + ["training.exit_duration_minutes=0.0"])
    assert "exit_duration_minutes reached" in proc.stderr
    assert runner.tracker(tmp_path) == 1


def test_sigusr1_to_one_rank_stops_all_ranks_cleanly(watch, tmp_path, from_init, baseline):
    import psutil

    dist_opt = ["optimizer.use_distributed_optimizer=true"]
    cmd = runner.command(2, [f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path}", *from_init, *dist_opt])
    proc = watch(cmd, cwd=ROOT, env=child_env())
    proc.until("step      2/20", timeout=120)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "pretrain.py" in " ".join(p.cmdline())]
    rank1 = [p for p in workers if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1, [p.cmdline() for p in workers]
    rank1[0].send_signal(signal.SIGUSR1)  # only one rank hears it, as when Slurm signals one task
    out = proc.finish(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    stopped_at = runner.tracker(tmp_path)
    assert stopped_at is not None and 2 <= stopped_at < 20
    runner.run(tmp_path, from_init + dist_opt, nproc=2)
    assert_same_losses(runner.losses(tmp_path), baseline, range(1, 21))


def test_sigusr1_to_every_process_with_dataloader_workers(watch, tmp_path, from_init):
    """Slurm signals every process of the step: the DataLoader workers must leave it to the rank."""
    import psutil

    proc = _start(watch, tmp_path, from_init + ["data.num_workers=1"])
    proc.until("step      2/20", timeout=120)
    tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    assert len(tree) >= 2  # the rank and its worker
    for p in tree:
        p.send_signal(signal.SIGUSR1)
    out = proc.finish(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "signal received" in out and 2 <= runner.tracker(tmp_path) < 20


def test_signal_during_start_up_is_not_lost(watch, tmp_path, from_init):
    proc = _start(watch, tmp_path, from_init)
    proc.until("parameters on this rank", timeout=120)  # logged while the model is built, before step 1
    os.kill(proc.pid, signal.SIGTERM)
    out = proc.finish(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "signal received" in out and runner.tracker(tmp_path) == 1


@pytest.mark.parametrize("overrides", [
    # bf16 (what the GPU recipes train in): the checkpoint's fp32 main weights and Adam state.
    ["precision.bf16=true"],
    # Dropout: the losses after a resume depend on the restored RNG states (CPU generator and
    # Megatron's tracker); a resume that drew fresh masks would differ from the straight run.
    ["model.hidden_dropout=0.2", "model.attention_dropout=0.2"],
], ids=["bf16", "dropout"])
def test_run_stopped_at_3_and_resumed_equals_6_straight_steps(tmp_path, overrides):
    overrides = overrides + ["training.train_iters=6"]
    whole = tmp_path / "whole"
    runner.run(whole, overrides)
    split = tmp_path / "split"
    runner.run(split, overrides + ["training.exit_interval=3"])
    assert runner.tracker(split) == 3
    runner.run(split, overrides)
    want = runner.losses(whole)
    assert sorted(want) == list(range(1, 7)) and want[6] < want[1]
    assert_same_losses(runner.losses(split), want, range(1, 7))


@pytest.fixture(scope="module")
def finished_wsd_run(tmp_path_factory):
    """8 steps of warmup 2, stable, and a WSD decay over the last 3 to min_lr, saved at the end."""
    d = tmp_path_factory.mktemp("wsd")
    overrides = ["training.train_iters=8", "scheduler.lr_decay_style=WSD", "scheduler.lr_warmup_iters=2",
                 "scheduler.lr_wsd_decay_iters=3"]
    runner.run(d, overrides)
    assert runner.tracker(d) == 8
    return d, overrides


def _extended(tmp_path, finished, more):
    import shutil

    src, overrides = finished
    shutil.copytree(src / "ckpt", tmp_path / "ckpt")
    return runner.run(tmp_path, overrides + ["training.train_iters=12", "optimizer.lr=0.01", "optimizer.min_lr=0.001",
                                             *more])


def test_extending_a_finished_wsd_run_follows_the_recipe_schedule(tmp_path, finished_wsd_run):
    """scheduler.on_resume=recipe (the default): the new lr and length apply from the first resumed
    step; WSD is stable at the new lr until its last 3 steps, then decays to the new min_lr."""
    import yaml

    proc = _extended(tmp_path, finished_wsd_run, [])
    notes = [ln for ln in proc.stderr.splitlines() if "lr schedule from" in ln]
    assert len(notes) == 1 and "from the recipe" in notes[0] and "optimizer.lr=0.01 (checkpoint: 0.003)" in notes[0]
    lr = runner.losses(tmp_path, "lr")
    assert sorted(lr) == [9, 10, 11, 12]
    assert math.isclose(lr[9], 0.01, rel_tol=1e-6)
    assert lr[9] > lr[10] > lr[11] > lr[12] and math.isclose(lr[12], 0.001, rel_tol=1e-6)
    saved = yaml.safe_load((tmp_path / "ckpt" / "iter_0000012" / "recipe.yaml").read_text())
    assert saved["optimizer"]["lr"] == 0.01 and saved["scheduler"]["on_resume"] == "recipe"


def test_extending_with_the_checkpoint_schedule_keeps_min_lr(tmp_path, finished_wsd_run):
    """scheduler.on_resume=checkpoint (Megatron-LM's --use-checkpoint-opt_param-scheduler): the old
    schedule stays, so a finished run continues at its min_lr; the saved recipe says so."""
    import yaml

    proc = _extended(tmp_path, finished_wsd_run, ["scheduler.on_resume=checkpoint"])
    notes = [ln for ln in proc.stderr.splitlines() if "lr schedule from" in ln]
    assert len(notes) == 1 and "from the checkpoint" in notes[0] and "optimizer.lr=0.003 (recipe: 0.01)" in notes[0]
    lr = runner.losses(tmp_path, "lr")
    assert [round(lr[k], 10) for k in (9, 10, 11, 12)] == [3.0e-4] * 4
    saved = yaml.safe_load((tmp_path / "ckpt" / "iter_0000012" / "recipe.yaml").read_text())
    assert saved["optimizer"]["lr"] == 0.003 and saved["optimizer"]["min_lr"] == 0.0003
    assert saved["scheduler"]["lr_decay_iters"] == 8 and saved["training"]["train_iters"] == 12


@pytest.fixture(scope="module")
def damaged_latest(tmp_path_factory):
    """Saves at steps 3 and 6; the largest shard of iteration 6 then loses its second half."""
    d = tmp_path_factory.mktemp("damaged")
    runner.run(d, ["training.train_iters=6", "checkpoint.save_interval=3"])
    shard = max((d / "ckpt" / "iter_0000006").glob("*.distcp"), key=lambda p: p.stat().st_size)
    os.truncate(shard, shard.stat().st_size // 2)
    return d, shard


def _copy_ckpt(src, dst):
    import shutil

    shutil.copytree(src / "ckpt", dst / "ckpt")


def test_damaged_latest_checkpoint_falls_back_naming_the_file(tmp_path, damaged_latest):
    src, shard = damaged_latest
    _copy_ckpt(src, tmp_path)
    proc = runner.run(tmp_path, ["training.train_iters=8", "checkpoint.save_interval=3"])
    warnings = [ln for ln in proc.stderr.splitlines() if "DAMAGED CHECKPOINT" in ln]
    assert len(warnings) == 1 and f"{tmp_path / 'ckpt' / 'iter_0000006' / shard.name}" in warnings[0]
    assert "cut short" in warnings[0]
    assert "at step 3" in proc.stderr
    assert sorted(runner.losses(tmp_path)) == [4, 5, 6, 7, 8] and runner.tracker(tmp_path) == 8


def test_damaged_latest_checkpoint_is_an_error_when_the_recipe_asks(tmp_path, damaged_latest):
    src, shard = damaged_latest
    _copy_ckpt(src, tmp_path)
    proc = runner.run(tmp_path, ["training.train_iters=8", "checkpoint.on_damaged=error"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{tmp_path / 'ckpt' / 'iter_0000006' / shard.name}" in proc.stderr and "Traceback" not in proc.stderr
    assert runner.tracker(tmp_path) == 6


def test_sigkill_after_a_save_leaves_no_process_of_the_run(watch, tmp_path):
    """Megatron-Core's checkpoint writer used to start a multiprocessing Manager at the first save,
    which outlived the killed run. The run gets a session of its own; after the kill none of it remains."""
    import time

    import psutil

    proc = watch(runner.command(1, [f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path}",
                                    "checkpoint.save_interval=2"]),
                 cwd=ROOT, env=child_env(), start_new_session=True)
    proc.until("saved checkpoint", timeout=180)
    proc.until("step      3/20", timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.proc.wait(timeout=30)

    def session():
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if os.getsid(p.pid) == proc.pid:
                    found.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])[:200]}")
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        return found

    deadline = time.monotonic() + 10
    while session() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = session()
    for line in left:  # clean up before failing
        psutil.Process(int(line.split(":")[0])).kill()
    assert not left
