"""MedSafetyWorld: a synthetic medical world with an exact safety definition.

  python tools/medsafetyworld.py ablate recipes/medsafetyworld/tiny_cpu.yaml [key=value ...]
  python tools/medsafetyworld.py report recipes/medsafetyworld/tiny_cpu.yaml [key=value ...]
  python tools/medsafetyworld.py report results/medsafetyworld/SETTING [--into RESULTS.md]
  python tools/medsafetyworld.py sweep recipes/medsafetyworld/sweep.yaml [--points a,b] [--confirm POINT]
      [--plan] [--report] [key=value ...]
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

``sweep`` screens each point of a sweep recipe (srp, pretrained evaluation, a few worlds and seeds),
or with ``--confirm POINT`` runs one point on more worlds and seeds with the control arms; ``--plan``
prints what would run, ``--report`` only rebuilds RESULTS_DIR/sweep.md and sweep.png
(megatron_srp/medsafetyworld/sweep.py says what the target is).

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
from megatron_srp.medsafetyworld import ablate, sweep
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
    w = sub.add_parser("sweep", help="the search over corpus, cadence and model knobs")
    w.add_argument("recipe", help="a sweep recipe")
    w.add_argument("overrides", nargs="*", help="key.sub=value")
    w.add_argument("--points", help="comma-separated point names (default: all)")
    w.add_argument("--confirm", metavar="POINT", help="run the confirmation stage of this point")
    w.add_argument("--plan", action="store_true", help="print each run's ablation settings; run nothing")
    w.add_argument("--report", action="store_true", help="only rebuild the sweep's report")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # overrides before or after the flags (argparse intermixes only without subcommands)
        args = w.parse_intermixed_args(argv[1:], argparse.Namespace(command="sweep"))
    else:
        args = p.parse_args(argv)
    if args.command in ("ablate", "report"):
        return ablate_or_report(args)
    if args.command == "sweep":
        return run_sweep(args)
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


def run_sweep(args) -> int:
    s = sweep.load_sweep(args.recipe, args.overrides)
    stage = "confirm" if args.confirm else "screen"
    points = [args.confirm] if args.confirm else (args.points.split(",") if args.points else list(s.points))
    recipes = [sweep.point_recipe(s, name, stage) for name in points]  # an unknown point fails here
    if args.plan:
        for name, r in zip(points, recipes):
            print(f"{stage} {name}: worlds {r.world_seeds} seeds {r.seeds} treatments {r.treatments} "
                  f"skip_posttrain={r.skip_posttrain} -> {r.results_dir}")
            print(f"  corpus {asdict(r.corpus)}\n  pretrain_overrides {r.pretrain_overrides}")
        return 0
    if args.report:
        print(sweep.write_report(s))
        return 0
    try:
        print(sweep.run(s, stage, points, log=lambda m: print(m, flush=True)))
    except ablate.StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
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
