"""Pretrain a GPT model on Megatron-Core from a YAML recipe.

    python tools/pretrain.py recipes/tiny_cpu.yaml training.train_iters=50
    torchrun --nproc-per-node 2 tools/pretrain.py recipes/tiny_cpu.yaml parallel.tensor_model_parallel_size=2

Overrides are ``key.sub=value`` (values parsed as YAML). A run resumes automatically from
``checkpoint.dir``. SIGTERM / SIGUSR1 save at the next step and exit 0.
"""

import logging
import os
import sys

from megatron_srp.cli.recipe_args import parse_recipe_args, recipe_parser
from megatron_srp.config import Recipe, RecipeError, load_recipe
from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.training.quiet import missing_kernel_warnings_ignored


@exit_2_on_user_error
def main(argv=None) -> int:
    parser = recipe_parser(__doc__)
    parser.add_argument("--save-init", action="store_true",
                        help="save the freshly initialised model as iteration 0 in checkpoint.dir and exit")
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    args = parse_recipe_args(parser, argv, Recipe)
    if args is None:
        return 0
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"recipe error: {e}", file=sys.stderr)
        return 2
    if args.print_recipe:
        print(recipe.to_yaml())
        return 0

    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s r{rank}] %(message)s", datefmt="%H:%M:%S")
    for noisy in ("megatron.core", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    # Imported here, not at the top: Megatron-Core and torch take seconds to import, which --help,
    # --describe, --print-recipe and a recipe error do without; the trainer logs what a missing
    # Transformer Engine changes, so its import-time warnings are silenced.
    with missing_kernel_warnings_ignored():
        from megatron_srp.training.trainer import pretrain

    reason = pretrain(recipe, save_init=args.save_init)  # an SRPError: exit 2 with its message
    logging.getLogger("megatron_srp").info("finished: %s", reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
