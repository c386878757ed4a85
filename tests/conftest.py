import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# The tests that the megatron-core 0.19.2 leg runs (`make test-mcore019`: `-m mcore_matrix`): one
# of each way the project calls Megatron-Core, not every case of each. Model building and the
# parallel layouts (TP, interleaved PP, DP with the distributed optimizer), the local spec's norms next to
# apex / TE, the validation loss read from the logits, checkpoint save / resume /
# layout change and its optimizer formats, schedules, datasets and role sidecars, the start-up
# warnings filtered by text, the run's processes, and export through dist_checkpointing. The full
# suite runs on 0.16.1. Node ids match by prefix.
MCORE_MATRIX = (
    "tests/training/test_layout.py",
    "tests/training/test_parallel_layouts.py::test_two_process_layout_matches_single_process[tp2]",
    "tests/training/test_parallel_layouts.py::test_two_process_layout_matches_single_process[dp2_distributed_optimizer]",
    "tests/training/test_parallel_layouts.py::test_two_process_layout_matches_single_process[pp2_virtual2]",
    "tests/training/test_pretrain_cli.py::test_save_init_before_the_overrides_starts_without_backend_warnings",
    "tests/training/test_pretrain_cli.py::test_device_cpu_is_honoured_on_a_node_with_cuda_apex_and_te",
    "tests/training/test_reflection_metrics.py::test_validation_reports_reflection_verdicts_without_changing_the_loss",
    "tests/training/test_data_and_metrics.py::test_metrics_record_every_field",
    "tests/training/test_data_and_metrics.py::test_role_sidecar_gives_separate_losses",
    "tests/training/test_data_and_metrics.py::test_weighted_blend_of_two_datasets",
    "tests/training/test_data_and_metrics.py::test_logged_learning_rate_follows_the_schedule[WSD]",
    "tests/training/test_data_and_metrics.py::test_missing_dataset_is_a_clear_error_before_the_model_is_built",
    "tests/training/test_resume.py::test_stop_and_resume_equals_uninterrupted",
    "tests/training/test_resume.py::test_checkpoint_resumes_in_a_one_process_layout[dp2-distributed-optimizer-at-dp1]",
    "tests/training/test_resume.py::test_run_stopped_at_3_and_resumed_equals_6_straight_steps[bf16]",
    "tests/training/test_resume.py::test_extending_a_finished_wsd_run_follows_the_recipe_schedule",
    "tests/training/test_resume.py::test_damaged_latest_checkpoint_falls_back_naming_the_file",
    "tests/training/test_resume.py::test_sigkill_after_a_save_leaves_no_process_of_the_run",
    "tests/data/test_role_dataset.py",
    "tests/data/test_tokenizer_info.py",
    "tests/data/test_pipeline.py::test_plain_is_byte_identical_to_megatron_lms_procedure",
    "tests/data/test_pipeline.py::test_outputs_train_through_gpt_dataset",
    "tests/data/test_fast_tokenizer.py",
    "tests/export/test_convert.py::test_export_matches_megatron_logits_and_generates[gqa_tied_tp2]",
    "tests/export/test_convert.py::test_hf_to_megatron_to_hf_is_bit_identical[qwen3-True]",
)


# `SRP_GPU_REHEARSAL=1`: the GPU leg's tests run on the CPU (tests/gpu/conftest.py says what stands in
# for what), so a lent GPU's minutes are never spent on a bug a CPU could have shown.
GPU_REHEARSAL = os.environ.get("SRP_GPU_REHEARSAL") == "1"


def cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: the GPU leg (make test-gpu); skipped, with the reason, without CUDA")
    if (config.option.markexpr or "").strip() != "gpu":
        # The CPU legs see a CPU machine, also on a GPU node: `device: auto` recipes, 2-process gloo
        # layouts and CPU-exact comparisons mean the same there. Only `-m gpu` (make test-gpu) keeps CUDA.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    config.addinivalue_line("markers", "mcore_matrix: also run on megatron-core 0.19.2 (see MCORE_MATRIX)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(MCORE_MATRIX):
            item.add_marker(pytest.mark.mcore_matrix)
    if GPU_REHEARSAL or cuda_visible():
        return
    gpu_leg = (config.option.markexpr or "").strip() == "gpu"
    skip = pytest.mark.skip(reason="GPU leg: no CUDA device visible here" if gpu_leg else
                            "GPU leg: the CPU legs hide the GPUs (run `make test-gpu`, i.e. pytest -m gpu, on a GPU node)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("PYTHONPATH", str(ROOT))
    return env


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (children first listed last, so none is re-parented
    and missed)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def describe_tree(pid: int) -> str:
    """One line per process of the tree (pid, state, command): what a hung test was waiting on."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return f"{pid}: gone"
    rows = []
    for p in procs:
        try:
            rows.append(f"{p.pid} ppid {p.ppid()} {p.status()}: {' '.join(p.cmdline())[:200]}")
        except psutil.Error:
            pass
    return "\n".join(rows)


class Watched:
    """A child process whose merged stdout/stderr a thread reads, so that every wait on it has a
    deadline: a launcher that never starts, or a grandchild that keeps the pipe open, fails the test
    with the output so far instead of hanging the suite. A timeout kills the whole process tree."""

    def __init__(self, cmd, **popen_kwargs):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, **popen_kwargs)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._eof = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def until(self, done, timeout: float) -> str:
        """Read until ``done(output)`` is true (a string: until it appears); the output so far."""
        if isinstance(done, str):
            needle = done
            done = lambda out: needle in out  # noqa: E731
        deadline = time.monotonic() + timeout
        while not done(self.output):
            if self._eof:
                raise AssertionError(f"exited ({self.proc.wait()}) before the expected output:\n{self.output[-4000:]}")
            self._next(deadline, timeout)
        return self.output

    def finish(self, timeout: float) -> str:
        """Read to the end and reap the process; the whole output."""
        deadline = time.monotonic() + timeout
        while not self._eof:
            self._next(deadline, timeout)
        self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return self.output

    @property
    def returncode(self):
        return self.proc.returncode

    def _next(self, deadline: float, timeout: float) -> None:
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            tree = describe_tree(self.pid)
            self.kill()
            raise AssertionError(f"timed out after {timeout:.0f} s; processes:\n{tree}\noutput so far:\n"
                                 f"{self.output[-4000:]}") from None
        if line is None:
            self._eof = True
        else:
            self.lines.append(line)

    def kill(self) -> None:
        kill_tree(self.pid)
        self.proc.wait(timeout=30)


@pytest.fixture
def watch():
    """``watch(cmd, **popen_kwargs)`` starts a :class:`Watched` process; any still running when the test
    ends (it failed half-way) is killed with its descendants."""
    started: list[Watched] = []

    def start(cmd, **popen_kwargs) -> Watched:
        started.append(Watched(cmd, **popen_kwargs))
        return started[-1]

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.kill()
