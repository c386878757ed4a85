#!/usr/bin/env python3
"""What slurm/pretrain.sbatch needs to know of a recipe, as shell assignments it evaluates.

    python slurm/recipe_info.py --world 64 [--check-paths] RECIPE [key.sub=value ...]

Loads the recipe with its overrides exactly as tools/pretrain.py does and checks the parallel layout
against --world ranks, so that a recipe error or a layout that does not fit the allocation stops the
job on the batch node in a second, before any rank starts (exit 2 with the reason, like pretrain.py).
With --check-paths it also checks that the files the run reads exist (every data prefix's .bin and
.idx, the tokenizer, checkpoint.load) and that checkpoint.dir can be created: what a dry run on a login
node checks before a job waits in the queue. Imports no torch.
"""

import argparse
import os
import shlex
import sys



def _nearest_existing(path: str) -> str:
    while path and not os.path.exists(path):
        path = os.path.dirname(path.rstrip("/"))
    return path or "."


def missing_paths(r) -> list[str]:
    """What the run would fail on, one line each, naming the recipe key and the path."""
    from megatron_srp.config import blend_from_data_path

    out = []
    if not r.data.mock:
        prefixes, _ = blend_from_data_path(r.data.data_path)
        for prefix in prefixes:
            for ext in (".bin", ".idx"):
                if not os.path.isfile(prefix + ext):
                    out.append(f"data.data_path: {prefix}{ext}")
    if r.data.tokenizer_model and not os.path.exists(r.data.tokenizer_model):
        out.append(f"data.tokenizer_model: {r.data.tokenizer_model}")
    if r.checkpoint.load and not os.path.isdir(r.checkpoint.load):
        out.append(f"checkpoint.load: {r.checkpoint.load}")
    if r.checkpoint.dir and not os.path.isdir(r.checkpoint.dir):
        parent = _nearest_existing(os.path.abspath(r.checkpoint.dir))
        if not os.access(parent, os.W_OK):
            out.append(f"checkpoint.dir: {r.checkpoint.dir} cannot be created ({parent} is not writable)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, required=True, help="number of training ranks")
    p.add_argument("--check-paths", action="store_true", help="check that the recipe's input paths exist")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)

    from megatron_srp.config import RecipeError, load_recipe, validate_world
    from megatron_srp.training.layout import tracker_path

    try:
        r = load_recipe(args.recipe, args.overrides)
        dp = validate_world(r, args.world)
    except RecipeError as e:
        print(f"recipe error: {e}", file=sys.stderr)
        return 2
    if not r.checkpoint.dir:
        # Without it a requeued job would start from scratch every time.
        print("recipe error: checkpoint.dir is null; pretrain.sbatch resumes from it after a requeue",
              file=sys.stderr)
        return 2
    if args.check_paths:
        missing = missing_paths(r)
        for problem in missing:
            print(f"missing: {problem}", file=sys.stderr)
        if missing:
            return 2
    t = r.training
    facts = {
        "SRP_NAME": r.name,
        "SRP_CKPT_DIR": r.checkpoint.dir,
        "SRP_TRACKER": tracker_path(r.checkpoint.dir),
        "SRP_LOG_DIR": r.log_dir,
        "SRP_TRAIN_ITERS": t.train_iters,
        "SRP_TP": r.parallel.tensor_model_parallel_size,
        "SRP_PP": r.parallel.pipeline_model_parallel_size,
        "SRP_DP": dp,
        "SRP_MICROBATCHES": t.global_batch_size // (t.micro_batch_size * dp),
        "SRP_TOKENS_PER_STEP": t.global_batch_size * r.model.seq_length,
    }
    for key, value in facts.items():
        print(f"{key}={shlex.quote(str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
