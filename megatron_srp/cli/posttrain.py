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

import sys

from megatron_srp.cli.recipe_args import parse_recipe_args, recipe_parser
from megatron_srp.config import load_config
from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.plugins import load_plugins
from megatron_srp.posttrain.sft import SFTRecipe, run_recipe


@exit_2_on_user_error
def main(argv=None) -> int:
    load_plugins()  # judges and classifiers registered outside eval and posttrain (judge: oracle, label_source: oracle)
    p = recipe_parser(__doc__)
    p.add_argument("--chat-template", metavar="NAME|FILE",
                   help="same as chat_template=NAME|FILE: srp (built in) or a Jinja file replaces the model's template")
    a = parse_recipe_args(p, argv, SFTRecipe)
    if a is None:
        return 0
    overrides = list(a.overrides) + ([f"chat_template={a.chat_template}"] if a.chat_template else [])
    r = load_config(SFTRecipe, a.recipe, overrides)  # an SRPError (recipe, data, classifier): exit 2
    final = run_recipe(r)
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
