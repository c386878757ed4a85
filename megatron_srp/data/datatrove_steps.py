"""The annotate and tokenize commands as datatrove pipeline steps: one command, a node or a Slurm cluster.

``--executor local`` runs the command's input files as datatrove tasks with ``LocalPipelineExecutor``;
``--executor slurm`` submits them as a Slurm job array with ``SlurmPipelineExecutor``. Task ``rank``
handles ``files[rank::tasks]`` (datatrove's convention) and writes one output per file (annotation
sidecars, or tokenized parts); a second, dependent step with one task then finishes the run (the
annotation manifest, or the merge of the parts into one prefix). Both steps are the same code the
plain command runs, so outputs are byte-identical whichever way they were made. datatrove records
finished tasks in ``--logging-dir`` and skips them on a rerun.

The task contract, shared with ``slurm/shard_task.py``: a tool module (``TOOLS``) has
``settings_from_argv(argv)`` (its typed settings: ``AnnotateConfig`` or ``PreprocessConfig``),
``run_task(settings, rank, world_size)``, ``finish_task(settings)`` and ``ERRORS`` (the exceptions
its command reports with exit status 2). The settings travel into each task pickled, argv is parsed
once.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from types import ModuleType
from typing import Any

from datatrove.pipeline.base import PipelineStep

from megatron_srp.data import classify
from megatron_srp.errors import SRPError
from megatron_srp.data.settings import ExecutorConfig

# Module names, not imports: the tool modules import this one (their --executor runs through it).
TOOLS = {"annotate": "megatron_srp.data.annotate", "preprocess": "megatron_srp.data.preprocess"}


class ExecutorError(SRPError, ValueError):
    """Executor flags that cannot start a run (e.g. Slurm without a partition)."""


def tool_module(tool: str) -> ModuleType:
    """The module that implements the task contract of ``tool``."""
    return importlib.import_module(TOOLS[tool])


def task_settings(settings: Any) -> Any:
    """The settings each task runs with: in-process (no executor of its own), no progress bar."""
    return dataclasses.replace(settings, progress=False,
                               executor=dataclasses.replace(settings.executor, executor="none"))


class _ToolStep(PipelineStep):
    type = "SRP"

    def __init__(self, tool: str, settings: Any):
        super().__init__()
        self.tool, self.settings = tool, settings
        self.backends = classify.registered()  # a task process starts without the parent's plugins


class ToolShards(_ToolStep):
    """Task ``rank`` of ``world_size`` runs the command on its share of the input files."""

    name = "megatron-srp shards"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        classify.restore_registered(self.backends)
        tool_module(self.tool).run_task(self.settings, rank, world_size)
        return iter(())


class ToolFinish(_ToolStep):
    """One task after every shard: the manifest (annotate) or the merge into one prefix (preprocess)."""

    name = "megatron-srp finish"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        classify.restore_registered(self.backends)
        tool_module(self.tool).finish_task(self.settings)
        return iter(())


def run_with_datatrove(tool: str, settings: Any, output: str, n_inputs: int) -> int:
    """Run ``tool`` with ``settings`` as datatrove tasks (``settings.executor``); ``output``: the run's
    output directory or prefix (the default logging folder sits next to it)."""
    # datatrove's executors: ~0.2 s of imports that --help and in-process runs do without.
    from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor

    ex: ExecutorConfig = settings.executor
    per_task = task_settings(settings)
    tasks = min(ex.tasks or n_inputs, n_inputs)
    logging_dir = ex.logging_dir or f"{output.rstrip('/')}.datatrove"
    shards, finish = ToolShards(tool, per_task), ToolFinish(tool, per_task)
    if ex.executor == "local":
        first = LocalPipelineExecutor([shards], tasks=tasks, workers=ex.local_workers,
                                      logging_dir=os.path.join(logging_dir, "shards"), start_method="spawn")
        last = LocalPipelineExecutor([finish], tasks=1, logging_dir=os.path.join(logging_dir, "finish"),
                                     depends=first, start_method="spawn")
        last.run()
        return 0
    if not ex.slurm_partition:
        raise ExecutorError("--executor slurm needs --slurm-partition")
    common = dict(time=ex.slurm_time, partition=ex.slurm_partition, qos=ex.slurm_qos, venv_path=ex.slurm_venv,
                  env_command=ex.slurm_env_command, sbatch_args=ex.slurm_sbatch_args or None)
    first = SlurmPipelineExecutor([shards], tasks=tasks, cpus_per_task=ex.slurm_cpus_per_task,
                                  mem_per_cpu_gb=ex.slurm_mem_per_cpu_gb, gpus_per_task=ex.slurm_gpus_per_task,
                                  job_name=f"srp-{tool}", logging_dir=os.path.join(logging_dir, "shards"), **common)
    last = SlurmPipelineExecutor([finish], tasks=1, cpus_per_task=ex.slurm_cpus_per_task,
                                 mem_per_cpu_gb=ex.slurm_mem_per_cpu_gb, job_name=f"srp-{tool}-finish",
                                 logging_dir=os.path.join(logging_dir, "finish"), depends=first, **common)
    last.run()
    print(f"submitted: {tool} shards ({tasks} tasks) and a finishing job; logs in {logging_dir}")
    return 0
