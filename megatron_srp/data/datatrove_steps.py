"""The annotate and tokenize commands as datatrove pipeline steps: one command, a node or a Slurm cluster.

``--executor local`` runs the command's input files as datatrove tasks with ``LocalPipelineExecutor``;
``--executor slurm`` submits them as a Slurm job array with ``SlurmPipelineExecutor``. Task ``rank``
handles ``files[rank::tasks]`` (datatrove's convention) and writes one output per file (annotation
sidecars, or tokenized parts); a second, dependent step with one task then finishes the run (the
annotation manifest, or the merge of the parts into one prefix). Both steps are the same code the
plain command runs, so outputs are byte-identical whichever way they were made. datatrove records
finished tasks in ``--logging-dir`` and skips them on a rerun.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Sequence

from datatrove.pipeline.base import PipelineStep

from megatron_srp.data import classify

_TOOLS = {"annotate": "megatron_srp.data.annotate", "preprocess": "megatron_srp.data.preprocess"}


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale-out with datatrove")
    g.add_argument("--executor", choices=["none", "local", "slurm"], default="none",
                   help="none: this process; local: datatrove tasks on this node; slurm: a Slurm job array")
    g.add_argument("--tasks", type=int, default=None, help="datatrove tasks (default and maximum: one per input file)")
    g.add_argument("--local-workers", type=int, default=-1, help="local: tasks run at once (-1: all)")
    g.add_argument("--logging-dir", help="datatrove logs and completion markers (default: OUTPUT.datatrove)")
    g.add_argument("--slurm-partition", help="slurm: partition")
    g.add_argument("--slurm-time", default="24:00:00", help="slurm: time limit per task")
    g.add_argument("--slurm-cpus-per-task", type=int, default=8)
    g.add_argument("--slurm-mem-per-cpu-gb", type=int, default=2)
    g.add_argument("--slurm-gpus-per-task", type=int, default=0, help="slurm: GPUs per task (classifier backends)")
    g.add_argument("--slurm-qos", default="normal")
    g.add_argument("--slurm-venv", help="slurm: virtualenv to activate in each task")
    g.add_argument("--slurm-env-command", help="slurm: shell command run before each task (module load ...)")
    g.add_argument("--slurm-sbatch-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra #SBATCH option, repeatable (account=..., constraint=...)")


class _ToolStep(PipelineStep):
    type = "SRP"

    def __init__(self, tool: str, argv: Sequence[str]):
        super().__init__()
        self.tool, self.argv = tool, list(argv)
        self.backends = classify.registered()  # a task process starts without the parent's plugins

    def module(self):
        classify.restore_registered(self.backends)
        return importlib.import_module(_TOOLS[self.tool])


class ToolShards(_ToolStep):
    """Task ``rank`` of ``world_size`` runs the command on its share of the input files."""

    name = "megatron-srp shards"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.module().run_task(self.argv, rank, world_size)
        return iter(())


class ToolFinish(_ToolStep):
    """One task after every shard: the manifest (annotate) or the merge into one prefix (preprocess)."""

    name = "megatron-srp finish"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.module().finish_task(self.argv)
        return iter(())


def _without_executor_flags(argv: Sequence[str]) -> list[str]:
    """The command line a task re-parses: everything but --executor (tasks run in-process)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--executor":
            skip = True
            continue
        if a.startswith("--executor="):
            continue
        out.append(a)
    return out + ["--executor", "none", "--no-progress"]


def run_with_datatrove(tool: str, argv: Sequence[str], args, n_inputs: int) -> int:
    from megatron_srp.data.classify import parse_options

    task_argv = _without_executor_flags(argv)
    tasks = min(args.tasks or n_inputs, n_inputs)
    out = getattr(args, "output", None) or args.output_prefix
    logging_dir = args.logging_dir or f"{out.rstrip('/')}.datatrove"
    shards, finish = ToolShards(tool, task_argv), ToolFinish(tool, task_argv)
    if args.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        first = LocalPipelineExecutor([shards], tasks=tasks, workers=args.local_workers,
                                      logging_dir=os.path.join(logging_dir, "shards"), start_method="spawn")
        last = LocalPipelineExecutor([finish], tasks=1, logging_dir=os.path.join(logging_dir, "finish"),
                                     depends=first, start_method="spawn")
        last.run()
        return 0
    from datatrove.executor import SlurmPipelineExecutor

    if not args.slurm_partition:
        raise ValueError("--executor slurm needs --slurm-partition")
    common = dict(time=args.slurm_time, partition=args.slurm_partition, qos=args.slurm_qos,
                  venv_path=args.slurm_venv, env_command=args.slurm_env_command,
                  sbatch_args=parse_options(args.slurm_sbatch_arg, "--slurm-sbatch-arg") or None)
    first = SlurmPipelineExecutor([shards], tasks=tasks, cpus_per_task=args.slurm_cpus_per_task,
                                  mem_per_cpu_gb=args.slurm_mem_per_cpu_gb, gpus_per_task=args.slurm_gpus_per_task,
                                  job_name=f"srp-{tool}", logging_dir=os.path.join(logging_dir, "shards"), **common)
    last = SlurmPipelineExecutor([finish], tasks=1, cpus_per_task=args.slurm_cpus_per_task,
                                 mem_per_cpu_gb=args.slurm_mem_per_cpu_gb, job_name=f"srp-{tool}-finish",
                                 logging_dir=os.path.join(logging_dir, "finish"), depends=first, **common)
    last.run()
    print(f"submitted: {tool} shards ({tasks} tasks) and a finishing job; logs in {logging_dir}")
    return 0
