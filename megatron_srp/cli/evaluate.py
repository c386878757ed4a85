"""Safety evaluation of a Hugging Face model: classification by the model's own reflection,
harmful requests under prefilling / template / GCG attacks, finetuning attacks, over-refusal,
lm-eval utility.

    python tools/evaluate.py recipes/eval/safety_cpu.yaml --model hf/tiny --output runs/eval/tiny
    python tools/evaluate.py SUITE.yaml --model DIR judge=guard judge_args.model=/models/Qwen3Guard-Gen-0.6B
    python tools/evaluate.py --describe                          # every suite key

Overrides are ``key.sub=value`` and may come before or after the flags. Prompts use the model's own
chat template (an export of tools/convert_to_hf.py carries srp); --chat-template / chat_template=
replaces it. Writes OUTPUT/report.json and OUTPUT/report.md. Every input is checked before
generation starts (exit 2 with the file or field named).
"""

import json
import os
import sys

from megatron_srp.cli.recipe_args import parse_recipe_args, recipe_parser
from megatron_srp.config import load_config
from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.plugins import load_plugins
from megatron_srp.eval.suite import Runner, Suite, markdown


@exit_2_on_user_error
def main(argv=None) -> int:
    load_plugins()  # judges and classifiers registered outside eval and posttrain (judge: oracle, label_source: oracle)
    p = recipe_parser(__doc__, positional="suite")
    p.add_argument("--model", help="Hugging Face model directory")
    p.add_argument("--output", help="report directory (default runs/eval/<suite name>)")
    p.add_argument("--chat-template", metavar="NAME|FILE",
                   help="same as chat_template=NAME|FILE: srp (built in) or a Jinja file replaces the model's template")
    a = parse_recipe_args(p, argv, Suite, required=("suite", "model"))
    if a is None:
        return 0
    overrides = list(a.overrides) + ([f"chat_template={a.chat_template}"] if a.chat_template else [])
    suite = load_config(Suite, a.suite, overrides)  # an SRPError (recipe, suite, model): exit 2
    runner = Runner(suite, a.model)
    out = a.output or os.path.join("runs", "eval", suite.name)
    os.makedirs(out, exist_ok=True)
    report = runner.run(out)
    for name, text in (("report.json", json.dumps(report, indent=1)), ("report.md", markdown(report))):
        with open(os.path.join(out, name + ".tmp"), "w") as f:
            f.write(text)
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
