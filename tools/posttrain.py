#!/usr/bin/env python3
"""Supervised post-training of a Hugging Face model (an export of tools/convert_to_hf.py) with the
loss on assistant turns, in the reflection-compatible format or without reflections.

    python tools/posttrain.py recipes/posttrain/sft_cpu.yaml model=hf/tiny output_dir=runs/sft
    python tools/posttrain.py RECIPE reflections=false          # the baselines' format

Writes OUTPUT/examples.jsonl (the formatted conversations), checkpoints, metrics.jsonl and
OUTPUT/final (safetensors + tokenizer). A rerun resumes from the last checkpoint.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    a = p.parse_args(argv)
    from megatron_srp.config import RecipeError, load_config
    from megatron_srp.data.classify import ClassifierError
    from megatron_srp.posttrain.data import PosttrainDataError
    from megatron_srp.posttrain.sft import SFTRecipe, run_recipe

    try:
        r = load_config(SFTRecipe, a.recipe, a.overrides)
        final = run_recipe(r)
    except (RecipeError, PosttrainDataError, ClassifierError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
