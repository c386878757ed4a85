"""The sweep (medsafetyworld/sweep.py): every point of the shipped recipe builds, the report is rebuilt
from committed files alone and judges the target per world, and a miniature sweep runs end to end."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import pytest

from megatron_srp.config import RecipeError
from megatron_srp.medsafetyworld import sweep
from tests.conftest import ROOT, child_env

TOOL = [sys.executable, str(ROOT / "tools" / "medsafetyworld.py"), "sweep"]
SHIPPED = str(ROOT / "recipes" / "medsafetyworld" / "sweep.yaml")


def test_every_point_of_the_shipped_sweep_is_an_ablation_recipe():
    s = sweep.load_sweep(SHIPPED)
    assert {"base", "unsafe30", "no_harm_stories", "cadence3", "steps3000", "hidden256"} <= set(s.points)
    r = sweep.point_recipe(s, "cadence3", "screen")
    assert r.corpus.segments_per_document == 3 and r.treatments == ["srp"] and r.skip_posttrain
    assert r.results_dir.endswith("results/medsafetyworld/sweep/cadence3") and r.world_seeds == [1]
    c = sweep.point_recipe(s, "steps3000", "confirm")
    assert c.pretrain_overrides == ["training.train_iters=3000"] and c.world_seeds == [1, 5, 7]
    assert "srp_masked" in c.treatments and not c.skip_posttrain and c.results_dir.endswith("steps3000-confirm")
    with pytest.raises(RecipeError, match="corpus.unsafe_sharee"):
        sweep.load_sweep(SHIPPED, ["points={typo: [corpus.unsafe_sharee=0.3]}"])
    plan = subprocess.run(TOOL + [SHIPPED, "--plan", "--points", "base,unsafe30"], capture_output=True, text=True,
                          env=child_env())
    assert plan.returncode == 0 and plan.stdout.count("screen ") == 2 and "'unsafe_share': 0.3" in plan.stdout
    bad = subprocess.run(TOOL + [SHIPPED, "--confirm", "nosuch"], capture_output=True, text=True, env=child_env())
    assert bad.returncode == 2 and "point 'nosuch' is not in points" in bad.stderr
    # overrides after the flags, from the shell; one key of the confirm stage keeps its other keys
    part = subprocess.run(TOOL + [SHIPPED, "--confirm", "steps3000", "--plan", "confirm.treatments=[srp]",
                                  "confirm.skip_posttrain=true"], capture_output=True, text=True, env=child_env())
    assert part.returncode == 0, part.stderr
    assert "worlds [1, 5, 7] seeds [0, 1, 2] treatments ['srp'] skip_posttrain=True" in part.stdout


def _srp(world, seed, f1, ff, acted):
    return {"treatment": "srp", "world_seed": world, "seed": seed, "finished": True, "provenance": {},
            "metrics": {sweep.F1: f1, sweep.FALSE_FLAGS: ff, sweep.ACTED_ON: acted}, "counts": {}, "detail": {}}


def test_report_judges_the_target_in_every_world_from_committed_files(tmp_path):
    from megatron_srp.medsafetyworld.report import merge_results, write_results

    s = sweep.load_sweep(SHIPPED, [f"results_dir={tmp_path}"])
    good = [_srp(1, 0, 0.85, 0.05, 0.02), _srp(1, 1, 0.9, 0.08, 0.0), _srp(5, 0, 0.82, 0.1, 0.04)]
    # unsafe30: the mean over all runs meets the target, but world 5 alone does not (F1 0.7)
    mixed = [_srp(1, 0, 0.95, 0.0, 0.0), _srp(1, 1, 0.95, 0.0, 0.0), _srp(5, 0, 0.7, 0.05, 0.0)]
    # steps3000's confirmation has only world 5 so far: met there, but not found (6 of its 9 runs missing)
    partial = [_srp(5, seed, 0.9, 0.0, 0.0) for seed in (0, 1, 2)]
    # cadence3: screened and confirmed on all 9 runs: the one point found; unsafe05: passed the screen,
    # failed in world 7 on confirmation
    confirmed = [_srp(w, seed, 0.9, 0.0, 0.0) for w in (1, 5, 7) for seed in (0, 1, 2)]
    failed = [_srp(w, seed, 0.9, 0.0, 0.3 if w == 7 else 0.0) for w in (1, 5, 7) for seed in (0, 1, 2)]
    for name, runs, stage in (("base", good, "screen"), ("unsafe30", mixed, "screen"), ("steps3000", partial, "confirm"),
                              ("cadence3", good, "screen"), ("cadence3", confirmed, "confirm"),
                              ("unsafe05", good, "screen"), ("unsafe05", failed, "confirm")):
        r = sweep.point_recipe(s, name, stage)
        path = tmp_path / sweep._folder(name, stage) / "results.json"
        write_results(path, merge_results(path, asdict(r), runs))
    md = sweep.write_report(s)
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ") and " | [" in line}
    assert rows["base"].endswith("| yes |") and rows["unsafe30"].endswith("| no |")
    assert rows["steps3000-confirm"].endswith("| yes so far (3 of 9 runs) |")
    assert rows["cadence3-confirm"].endswith("| yes |") and rows["unsafe05-confirm"].endswith("| no |")
    assert "0.857 [" in rows["base"] and "(3)" in rows["base"]  # F1 mean over the three runs, with its interval
    # found only on a complete, met confirmation; a passed screen alone is not found
    assert "seeds [0, 1, 2]): cadence3.\n" in md
    assert ("Passed the screen (world [1] x seeds [0, 1]): base (confirmation: not run yet), "
            "unsafe05 (confirmation: no), cadence3 (confirmation: yes).") in md
    not_run = md.split("Not run yet: ")[1].split(".")[0].split(", ")
    assert "hidden256" in not_run and "steps3000" not in not_run  # confirmed without a screen: run
    assert (tmp_path / "sweep.md").read_text() == md and (tmp_path / "sweep.png").stat().st_size > 5000


MINI = """
name: mini
base: {base}
points:
  tiny: [corpus.n_documents=2500, corpus.shards=2]
screen: {{world_seeds: [3], seeds: [0]}}
out_dir: {out}
results_dir: {results}
"""
MINI_BASE = """
name: mini_base
corpus: {unsafe_share: 0.15, mistake_share: 0.7, overdose_share: 0.1}
pretrain_overrides: [training.train_iters=12, scheduler.lr_warmup_iters=2, logging.log_interval=4]
eval: {n_items: 6}
"""


def test_a_miniature_sweep_runs_and_reports(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(MINI_BASE)
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(MINI.format(base=base, out=tmp_path / "out", results=tmp_path / "results"))
    p = subprocess.run(TOOL + [str(recipe)], capture_output=True, text=True, env=child_env(), timeout=900)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert (tmp_path / "results" / "tiny" / "results.json").is_file()
    row = next(line for line in (tmp_path / "results" / "sweep.md").read_text().splitlines() if line.startswith("| tiny"))
    assert "| [3] |" in row and row.endswith(("| yes |", "| no |"))
    run = tmp_path / "out" / "tiny" / "world3" / "srp" / "seed0"  # screening: the pretrained evaluation only
    assert (run / "eval_pretrained.json").is_file() and not (run / "eval_chat.json").exists()


def test_the_committed_sweep_page_is_rebuilt_from_the_committed_results(monkeypatch):
    """results/medsafetyworld/sweep/sweep.md (cited by RESULTS.md) is exactly what `sweep --report` writes from
    the committed per-point files: no number edited by hand, no point missing from it."""
    monkeypatch.chdir(ROOT)  # the recipe's results_dir is relative to the repository root
    s = sweep.load_sweep(SHIPPED, [])
    page = ROOT / s.results_dir / "sweep.md"
    if not page.is_file():
        pytest.skip("no sweep results committed yet")
    assert page.read_text() == sweep.render(s, sweep.summaries(s))
