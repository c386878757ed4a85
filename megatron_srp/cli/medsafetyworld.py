"""MedSafetyWorld: a synthetic medical world with an exact safety definition.

  python tools/medsafetyworld.py ablate recipes/medsafetyworld/tiny_cpu.yaml [key=value ...]
  python tools/medsafetyworld.py report recipes/medsafetyworld/tiny_cpu.yaml [key=value ...]
  python tools/medsafetyworld.py report results/medsafetyworld/SETTING [--into RESULTS.md]
  python tools/medsafetyworld.py generate --out runs/msw [--world-seed 1] [--n-documents 80000]
      [--unsafe-share 0.05] [--mistake-share 0.4] [--overdose-share 0.2] [--shards 4]

``ablate`` runs every stage for each treatment and model seed (generate, tokenizer, oracle
annotation, preprocessing, Megatron-Core pretraining, export with parity, SFT, evaluation, finetuning
attacks) and writes OUT/results.json, results.md and results.png; a rerun skips finished stages.
Every run is also merged into RESULTS_DIR/results.json (default results/medsafetyworld/<out_dir's
name>: the small file to commit), whose results.md and results.png are rebuilt with it.
``report RECIPE`` rebuilds both from what has finished under OUT; ``report DIR`` rebuilds DIR's
tables and chart from DIR/results.json alone (means with 95% bootstrap intervals over the runs,
every run with its 95% Wilson interval, per-run dots on the chart); ``--into FILE`` also puts those
tables into FILE, between ``<!-- BEGIN report DIR -->`` and ``<!-- END report DIR -->``.

``generate`` alone:

writes OUT/world.json (drugs, conditions, enzymes, names) and OUT/corpus/part_K.jsonl (id, text,
genre, relation, kind). The four treatments then come from the standard tools:

  python tools/annotate.py --input OUT/corpus --output OUT/ann --tokenizer-model TOK \\
      --classifier oracle --classifier-arg world=OUT/world.json
  python tools/preprocess_data.py --input OUT/corpus --output-prefix OUT/srp --tokenizer-model TOK \\
      --append-eod --annotations OUT/ann --variant plain|filter|srp|rewrite \\
      [--rewriter medsafetyworld --rewriter-arg world=OUT/world.json]
"""

import argparse
import json
import os
import re
import sys
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path

from megatron_srp.errors import exit_2_on_user_error
from megatron_srp.medsafetyworld import ablate
from megatron_srp.medsafetyworld.corpus import CorpusSettings, write_corpus
from megatron_srp.medsafetyworld.report import report_dir, splice_into
from megatron_srp.medsafetyworld.world import WorldSettings, generate_world


@exit_2_on_user_error
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="a world and its pretraining corpus")
    g.add_argument("--out", required=True)
    for cls, prefix in ((WorldSettings, "world-"), (CorpusSettings, "")):
        for f in fields(cls):
            name = f"--{prefix}{f.name.replace('_', '-')}"
            g.add_argument(name, type=type(f.default), default=f.default, dest=f"{prefix}{f.name}".replace("-", "_"),
                           help=f"(default {f.default})")
    for name in ("ablate", "report"):
        a = sub.add_parser(name, help="the four-treatment ablation" if name == "ablate" else "rebuild results files")
        a.add_argument("recipe", help="an ablation recipe" + ("" if name == "ablate" else
                                                              ", or a results directory holding results.json"))
        a.add_argument("overrides", nargs="*", help="key.sub=value")
        if name == "report":
            a.add_argument("--into", metavar="FILE", help="with a results directory: also replace its marked block in FILE")
    args = p.parse_args(argv)
    if args.command in ("ablate", "report"):
        return ablate_or_report(args)
    ws = WorldSettings(**{f.name: getattr(args, f"world_{f.name}") for f in fields(WorldSettings)})
    cs = CorpusSettings(**{f.name: getattr(args, f.name) for f in fields(CorpusSettings)})
    try:
        cs.validate()
    except ValueError as e:  # name the flag, not the recipe key
        flags = re.sub(r"corpus\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))
        print(f"error: {flags}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    world = generate_world(ws)
    world.save(os.path.join(args.out, "world.json"))
    paths = write_corpus(world, cs, os.path.join(args.out, "corpus"))
    kinds = Counter()
    for path in paths:
        with open(path) as f:
            kinds.update(json.loads(line)["kind"] for line in f)
    summary = {"world": asdict(ws), "corpus": asdict(cs), "files": paths, "kinds": dict(kinds)}
    with open(os.path.join(args.out, "generate.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({"out": args.out, "kinds": dict(kinds)}))
    return 0


def ablate_or_report(args) -> int:
    """A bad recipe, a results directory holding another setting: an SRPError, exit 2 (through main)."""
    if args.command == "report" and Path(args.recipe).is_dir():
        md = report_dir(Path(args.recipe))
        if args.into:
            splice_into(Path(args.into), Path(args.recipe), md)
        print(md)
        return 0
    r = ablate.load_ablation(args.recipe, args.overrides)
    if args.command == "report":
        out = Path(r.out_dir)
        if not (out / "ablation.json").is_file():
            print(f"error: {out} holds no ablation (run ablate first)", file=sys.stderr)
            return 2
        ablate.write_report(r)
    else:
        try:
            ablate.run_ablation(r, log=lambda m: print(m, flush=True))
        except ablate.StageError as e:  # names the stage's log; a rerun continues from there
            print(f"error: {e}", file=sys.stderr)
            return 1
    print((Path(r.out_dir) / "results.md").read_text())
    comparison = Path(r.out_dir) / "comparison.md"
    if comparison.is_file() and comparison.read_text():  # where these runs sit among the committed ones of the same setting
        print(comparison.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
