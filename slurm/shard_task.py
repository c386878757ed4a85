#!/usr/bin/env python3
"""One task of slurm/preprocess.sbatch's job array, or the job that finishes the array.

    python slurm/shard_task.py annotate --rank 3 --world 64 -- TOOL_ARGS...   # files 3, 67, 131, ...
    python slurm/shard_task.py annotate --finish -- TOOL_ARGS...             # the manifest
    python slurm/shard_task.py preprocess --finish -- TOOL_ARGS...           # merge parts into the prefix

TOOL_ARGS are those of tools/annotate.py or tools/preprocess_data.py, parsed once into the tool's
settings. A task calls the same functions that the tools' own ``--executor slurm`` runs in each
datatrove task (the task contract of megatron_srp/data/datatrove_steps.py; ``run_task``: input files
``rank::world``, one sidecar or part each, finished ones skipped; ``finish_task``: the manifest, or
the merge in input order), so the output is byte-identical to a single-process run.
"""

import argparse
import sys

from megatron_srp.data.datatrove_steps import TOOLS, tool_module
from megatron_srp.plugins import load_plugins


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: shard_task.py TOOL (--rank R --world W | --finish) -- TOOL_ARGS...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tool", choices=sorted(TOOLS))
    p.add_argument("--rank", type=int)
    p.add_argument("--world", type=int)
    p.add_argument("--finish", action="store_true")
    args = p.parse_args(argv[:cut])
    # A progress bar per task is noise in a Slurm log.
    tool_argv = argv[cut + 1:] + ["--no-progress"]
    if not args.finish and (args.rank is None or not args.world or not 0 <= args.rank < args.world):
        p.error("give --finish, or --rank R --world W with 0 <= R < W")

    load_plugins()  # --classifier oracle, --rewriter medsafetyworld
    module = tool_module(args.tool)
    try:
        settings = module.settings_from_argv(tool_argv)
        if args.finish:
            module.finish_task(settings)
        else:
            module.run_task(settings, args.rank, args.world)
    except module.ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
