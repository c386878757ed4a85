"""SRP_DRY_RUN=1: every script prints the exact commands of every node and rank, and starts nothing."""

import shlex

import pytest

from tests.conftest import ROOT
from tests.slurm.fake_slurm import calls, job_env, run_script

RECIPE = "recipes/smollm2_1p7b_fineweb_edu_srp_h100_bf16.yaml"
OVERRIDES = ["training.train_iters=60000", "data.data_path=[0.3,data/a_text_document,0.7,data/b_text_document]"]


def dry_pretrain(tmp_path, nodes, launcher, overrides=OVERRIDES, **extra):
    env = job_env(tmp_path, nodes=nodes, gpus=8, SRP_DRY_RUN=1, SRP_LAUNCHER=launcher, **extra)
    proc = run_script("pretrain.sbatch", [RECIPE, *overrides], env)
    return proc, env


def line(out: str, prefix: str) -> str:
    found = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    assert len(found) == 1, (prefix, out)
    return found[0]


def command_after(text: str, marker: str) -> list[str]:
    """The shell words after ``marker`` in a dry-run line (they must parse as shell)."""
    return shlex.split(text.split(marker, 1)[1])


@pytest.mark.parametrize("nodes", [1, 8])
def test_torchrun_one_task_per_node_with_c10d_rendezvous_on_the_first_host(tmp_path, nodes):
    proc, env = dry_pretrain(tmp_path, nodes, "torchrun")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"{nodes} node(s) x 8 GPU(s) = {nodes * 8} ranks" in out
    assert line(out, "rendezvous:").startswith("rendezvous: gpu-001:24242 ")
    assert f"DP={nodes * 8}, {1024 // (4 * nodes * 8)} microbatch(es)" in out
    step = command_after(line(out, "step:"), "step: ")
    assert step[:4] == ["srun", f"--nodes={nodes}", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
    task = step[step.index("bash"):]
    assert task[:3] == ["bash", "slurm/launch.sh", env["SRP_PYTHON"]]
    for opt in (f"--nnodes={nodes}", "--nproc-per-node=8", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-001:24242",
                "--rdzv-id=srp-4242", "--max-restarts=0"):
        assert opt in task, (opt, task)
    # The recipe and every override reach pretrain.py unchanged, after the launcher's options.
    assert task[task.index("tools/pretrain.py"):] == ["tools/pretrain.py", RECIPE, *OVERRIDES]
    nodes_lines = [ln for ln in out.splitlines() if ln.startswith("node ")]
    assert [ln.split(":")[0] for ln in nodes_lines] == [f"node {i} gpu-{i + 1:03d}" for i in range(nodes)]
    for ln in nodes_lines:
        assert command_after(ln, "global ranks from the c10d rendezvous: ") == task
    assert calls(env, "srun") == [] and calls(env, "scontrol") == []  # nothing started, nothing requeued
    assert not (ROOT / "runs" / "smollm2_1p7b_fineweb_edu_srp_h100_bf16" / "slurm" / "job-4242.requeue").exists()


@pytest.mark.parametrize("nodes", [1, 8])
def test_srun_one_task_per_gpu_prints_every_rank(tmp_path, nodes):
    proc, env = dry_pretrain(tmp_path, nodes, "srun", SLURM_CPUS_ON_NODE=96)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    step = command_after(line(out, "step:"), "step: ")
    assert step[:5] == ["srun", f"--nodes={nodes}", "--kill-on-bad-exit=1", "--ntasks-per-node=8", "--cpus-per-task=12"]
    task = step[step.index("bash"):]
    assert task == ["bash", "slurm/launch.sh", env["SRP_PYTHON"], "tools/pretrain.py", RECIPE, *OVERRIDES]
    ranks = [ln for ln in out.splitlines() if ln.startswith("rank ")]
    assert len(ranks) == nodes * 8
    for r, ln in enumerate(ranks):
        n, local = divmod(r, 8)
        head, cmd = ln.split(": ", 1)
        assert head == f"rank {r} node {n} gpu-{n + 1:03d} local {local}"
        words = shlex.split(cmd)
        assert words[:5] == [f"SLURM_PROCID={r}", f"SLURM_LOCALID={local}", f"SLURM_NTASKS={nodes * 8}",
                             "MASTER_ADDR=gpu-001", "MASTER_PORT=24242"]
        assert words[5:] == task


def test_container_mode_puts_the_step_in_the_image(tmp_path):
    proc, env = dry_pretrain(tmp_path, 2, "torchrun", SRP_CONTAINER_IMAGE="/images/megatron-srp.sqsh",
                             SRP_CONTAINER_MOUNTS="/scratch/data:/data", SRP_SRUN_ARGS="--mpi=pmix --gpus-per-node=8", SRP_PYTHON=None)
    assert proc.returncode == 0, proc.stderr
    step = command_after(line(proc.stdout, "step:"), "step: ")
    opts = step[:step.index("bash")]
    assert "--mpi=pmix" in opts and "--gpus-per-node=8" in opts
    assert "--container-image=/images/megatron-srp.sqsh" in opts
    assert f"--container-mounts={ROOT}:{ROOT},/scratch/data:/data" in opts
    assert f"--container-workdir={ROOT}" in opts
    assert step[step.index("bash"):][:3] == ["bash", "slurm/launch.sh", "python"]  # the container's python
    # The recipe was checked inside the container too: one single-task srun step.
    helper = calls(env, "srun")
    assert len(helper) == 1 and "--ntasks=1" in helper[0]["argv"] and "slurm/recipe_info.py" in helper[0]["argv"]


def test_a_layout_that_does_not_fit_the_allocation_stops_before_any_rank(tmp_path):
    proc, env = dry_pretrain(tmp_path, 8, "torchrun", overrides=["training.global_batch_size=384"])
    assert proc.returncode == 2
    assert "training.global_batch_size=384 is not divisible by training.micro_batch_size=4 x data-parallel size 64" \
        in proc.stderr
    assert "step:" not in proc.stdout


def test_a_nodelist_that_does_not_match_the_node_count_is_refused(tmp_path):
    env = job_env(tmp_path, nodes=2, SRP_DRY_RUN=1, FAKE_HOSTNAMES="gpu-001")
    proc = run_script("pretrain.sbatch", [RECIPE], env)
    assert proc.returncode == 2 and "gave 1 host(s) for 2 node(s)" in proc.stderr


def test_preprocess_array_task_and_its_finishing_job(tmp_path):
    args = ["--input", "data/fineweb_edu/sample/100BT", "--output-prefix", "data/fineweb_edu/srp/fineweb_edu_srp",
            "--tokenizer-model", "tokenizers/smollm2", "--annotations", "data/fineweb_edu/annotations",
            "--variant", "srp", "--append-eod", "--workers", "16"]
    first = dict(SLURM_ARRAY_JOB_ID=5000, SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_MAX=63,
                 SLURM_ARRAY_TASK_COUNT=64, SLURM_JOB_PARTITION="cpu", SLURM_JOB_ACCOUNT="proj")
    env = job_env(tmp_path, SRP_DRY_RUN=1, SLURM_ARRAY_TASK_ID=0, **first)
    proc = run_script("preprocess.sbatch", ["preprocess", *args], env)
    assert proc.returncode == 0, proc.stderr
    submit = command_after(line(proc.stdout, "submit:"), "submit: ")
    assert submit[0] == "sbatch" and "--dependency=afterok:5000" in submit
    assert "--export=ALL,SRP_STEP=finish" in submit and "--partition=cpu" in submit and "--account=proj" in submit
    assert submit[submit.index(str(ROOT / "slurm" / "preprocess.sbatch")) + 1:] == ["preprocess", *args]
    task = command_after(line(proc.stdout, "task 0 of 64:"), "task 0 of 64: ")
    assert task == ["srun", "--ntasks=1", "--kill-on-bad-exit=1", env["SRP_PYTHON"], "slurm/shard_task.py",
                    "preprocess", "--rank", "0", "--world", "64", "--", *args]

    env = job_env(tmp_path, SRP_DRY_RUN=1, SLURM_ARRAY_TASK_ID=17, **first)
    proc = run_script("preprocess.sbatch", ["preprocess", *args], env)
    assert "submit:" not in proc.stdout  # only the first task submits the finishing job
    assert "--rank 17 --world 64 --" in line(proc.stdout, "task 17 of 64:")

    env = job_env(tmp_path, SRP_DRY_RUN=1, SRP_STEP="finish")
    proc = run_script("preprocess.sbatch", ["preprocess", *args], env)
    assert command_after(line(proc.stdout, "finish:"), "finish: ")[4:] == [
        "slurm/shard_task.py", "preprocess", "--finish", "--", *args]

    env = job_env(tmp_path, SRP_DRY_RUN=1)  # no array: the tool itself, once
    proc = run_script("preprocess.sbatch", ["annotate", "--input", "x", "--output", "ann"], env)
    assert command_after(line(proc.stdout, "annotate:"), "annotate: ")[3:] == [
        env["SRP_PYTHON"], "tools/annotate.py", "--input", "x", "--output", "ann"]

    env = job_env(tmp_path, SRP_DRY_RUN=1, SLURM_ARRAY_TASK_ID=0, **{**first, "SLURM_ARRAY_TASK_COUNT": 32})
    proc = run_script("preprocess.sbatch", ["preprocess", *args], env)  # --array=0-63:2
    assert proc.returncode == 2 and "contiguous range" in proc.stderr


def test_convert_and_eval_pass_their_arguments_through(tmp_path):
    env = job_env(tmp_path, SRP_DRY_RUN=1)
    proc = run_script("convert.sbatch", ["--checkpoint", "runs/x/checkpoints", "--output", "hf/x", "--dtype", "bf16"], env)
    assert proc.returncode == 0, proc.stderr
    assert command_after(line(proc.stdout, "convert:"), "convert: ") == [
        "srun", "--ntasks=1", "--kill-on-bad-exit=1", env["SRP_PYTHON"], "tools/convert_to_hf.py", "--no-progress",
        "--checkpoint", "runs/x/checkpoints", "--output", "hf/x", "--dtype", "bf16"]
    proc = run_script("eval.sbatch", ["suites/safety.yaml", "--model", "hf/x", "--output", "evals/x"], env)
    assert proc.returncode == 0, proc.stderr
    assert command_after(line(proc.stdout, "eval:"), "eval: ") == [
        "srun", "--ntasks=1", "--kill-on-bad-exit=1", env["SRP_PYTHON"], "tools/evaluate.py",
        "suites/safety.yaml", "--model", "hf/x", "--output", "evals/x"]
    proc = run_script("eval.sbatch", ["suites/safety.yaml"], env)
    assert proc.returncode == 2 and "usage" in proc.stderr


def login_env(tmp_path) -> dict:
    """A login node: the fakes on PATH (nothing may call them), no job variables."""
    return job_env(tmp_path, SRP_DRY_RUN=1, SLURM_JOB_ID=None, SLURM_JOB_NODELIST=None, SLURM_JOB_NUM_NODES=None,
                   SLURM_NNODES=None, SLURM_GPUS_ON_NODE=None)


def test_login_node_dry_run_prints_every_node_for_given_nodes_and_checks_paths(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a_text_document", "b_text_document"):
        for ext in (".bin", ".idx"):
            (data / f"{name}{ext}").write_bytes(b"")
    (tmp_path / "tok").mkdir()
    overrides = [f"data.data_path=[0.3,{data}/a_text_document,0.7,{data}/b_text_document]",
                 f"data.tokenizer_model={tmp_path}/tok", f"checkpoint.dir={tmp_path}/ckpt"]
    env = login_env(tmp_path)
    proc = run_script("pretrain.sbatch", ["--nodes=4", RECIPE, *overrides], env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "4 node(s) x 8 GPU(s) = 32 ranks" in out
    assert "outside a job: 4 node(s) from --nodes" in out
    nodes_lines = [ln for ln in out.splitlines() if ln.startswith("node ")]
    assert [ln.split(":")[0] for ln in nodes_lines] == [f"node {i} node-{i + 1:03d}" for i in range(4)]
    task = command_after(nodes_lines[0], "global ranks from the c10d rendezvous: ")
    assert task[task.index("tools/pretrain.py"):] == ["tools/pretrain.py", RECIPE, *overrides]
    assert calls(env) == []  # no srun, scontrol or sbatch on a login node

    # A missing prefix file, tokenizer or checkpoint.load is named, and nothing is printed to run.
    (data / "b_text_document.idx").unlink()
    bad = overrides[:1] + [f"data.tokenizer_model={tmp_path}/no_tok", f"checkpoint.load={tmp_path}/no_ckpt"]
    proc = run_script("pretrain.sbatch", ["--nodes", "2", RECIPE, *bad], env)
    assert proc.returncode == 2
    assert f"missing: data.data_path: {data}/b_text_document.idx" in proc.stderr
    assert f"missing: data.tokenizer_model: {tmp_path}/no_tok" in proc.stderr
    assert f"missing: checkpoint.load: {tmp_path}/no_ckpt" in proc.stderr
    assert "node 0" not in proc.stdout


def test_outside_a_job_without_dry_run_says_how_to_check(tmp_path):
    env = login_env(tmp_path)
    env.pop("SRP_DRY_RUN")
    proc = run_script("pretrain.sbatch", [RECIPE], env)
    assert proc.returncode == 2
    assert "SLURM_JOB_ID is not set" in proc.stderr and "SRP_DRY_RUN=1 bash slurm/pretrain.sbatch --nodes=N" in proc.stderr
