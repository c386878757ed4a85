#!/usr/bin/env python3
"""Safety evaluation of a Hugging Face model: classification by the model's own reflection,
harmful requests under prefilling / template / GCG attacks, finetuning attacks, over-refusal,
lm-eval utility.

    python tools/evaluate.py recipes/eval/safety_cpu.yaml --model hf/tiny --output runs/eval/tiny
    python tools/evaluate.py SUITE.yaml --model DIR judge=guard judge_args.model=/models/Qwen3Guard-Gen-0.6B

Writes OUTPUT/report.json and OUTPUT/report.md. Every input is checked before generation starts
(exit 2 with the file or field named).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--output", help="report directory (default runs/eval/<suite name>)")
    a = p.parse_intermixed_args(argv)  # overrides may follow --model
    from megatron_srp.config import RecipeError, load_config
    from megatron_srp.eval.suite import Runner, Suite, SuiteError, markdown

    try:
        suite = load_config(Suite, a.suite, a.overrides)
        runner = Runner(suite, a.model)
    except (RecipeError, SuiteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
