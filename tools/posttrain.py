#!/usr/bin/env python3
"""Supervised post-training of a Hugging Face model (an export of tools/convert_to_hf.py) with the
loss on assistant turns, in the reflection-compatible format or without reflections.

    python tools/posttrain.py recipes/posttrain/sft_cpu.yaml model=hf/tiny output_dir=runs/sft
    python tools/posttrain.py RECIPE reflections=false          # the baselines' format
    python tools/posttrain.py --describe                        # every recipe key

Overrides are ``key.sub=value`` and may come before or after the flags. Writes OUTPUT/examples.jsonl
(the formatted conversations), checkpoints, metrics.jsonl and OUTPUT/final (safetensors + tokenizer
with its chat template). A rerun resumes from the last checkpoint. The model's own chat template is
used (an export carries srp); --chat-template / chat_template= replaces it. Bad input: exit 2.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_srp.plugins import load_plugins  # noqa: E402


def main(argv=None) -> int:
    load_plugins()  # judges and classifiers registered outside eval (judge=oracle)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="recipe YAML")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--chat-template", metavar="NAME|FILE",
                   help="same as chat_template=NAME|FILE: srp (built in) or a Jinja file replaces the model's template")
    p.add_argument("--describe", action="store_true", help="list every recipe key with its default and meaning")
    a = p.parse_intermixed_args(argv)
    from megatron_srp.posttrain.sft import SFTRecipe

    if a.describe:
        from megatron_srp.posttrain.describe import describe

        print(describe(SFTRecipe))
        return 0
    if not a.recipe:
        p.error("a recipe path is required")
    from megatron_srp.config import RecipeError, load_config
    from megatron_srp.data.classify import ClassifierError
    from megatron_srp.posttrain.data import PosttrainDataError
    from megatron_srp.posttrain.sft import run_recipe

    overrides = list(a.overrides) + ([f"chat_template={a.chat_template}"] if a.chat_template else [])
    try:
        r = load_config(SFTRecipe, a.recipe, overrides)
        final = run_recipe(r)
    except (RecipeError, PosttrainDataError, ClassifierError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
