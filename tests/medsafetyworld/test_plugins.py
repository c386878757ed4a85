"""MedSafetyWorld is a client of the package: it registers its backends, the rooms below never name it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from megatron_srp.data import classify
from megatron_srp.data.classify import ClassifierError, build_classifier, build_rewriter
from megatron_srp.eval import judges
from megatron_srp.eval.judges import build_judge
from megatron_srp.medsafetyworld import ablate
from megatron_srp.medsafetyworld.world import WorldSettings, generate_world
from megatron_srp.plugins import BUILTIN, load_plugins

ROOT = Path(__file__).resolve().parents[2]


def test_no_lower_room_names_medsafetyworld():
    """Not even in an import string: the module name appears nowhere in data/, training/, export/,
    eval/ or posttrain/ (prose may say MedSafetyWorld)."""
    rooms = ("data", "training", "export", "eval", "posttrain")
    files = [p for room in rooms for p in (ROOT / "megatron_srp" / room).rglob("*.py")]
    naming = sorted(str(p.relative_to(ROOT)) for p in files if re.search(r"medsafetyworld", p.read_text()))
    assert files and naming == []


def test_load_plugins_registers_the_oracle_backends(tmp_path):
    assert load_plugins()[:len(BUILTIN)] == list(BUILTIN)
    assert "oracle" in classify.BACKENDS and "medsafetyworld" in classify.REWRITERS and "oracle" in judges.JUDGES
    world = tmp_path / "world.json"
    generate_world(WorldSettings(seed=0)).save(str(world))
    assert build_classifier("oracle", world=str(world)).name == "oracle"
    assert build_rewriter("medsafetyworld", world=str(world)).name == "medsafetyworld"
    assert build_judge("oracle", world=str(world)).harmful(["hello"], ["Water is wet."]) == [False]


def test_unknown_names_suggest_a_registered_one():
    load_plugins()
    with pytest.raises(ClassifierError, match=r"unknown classifier backend 'orcale' \(did you mean 'oracle'\?\)"):
        build_classifier("orcale")
    with pytest.raises(ClassifierError, match=r"unknown judge 'refusl' \(did you mean 'refusal'\?\); choose one of"):
        build_judge("refusl")
    with pytest.raises(ClassifierError, match=r"unknown rewriter 'nothing-like'; choose one of \["):
        build_rewriter("nothing-like")


def test_a_name_is_registered_once():
    load_plugins()
    with pytest.raises(ClassifierError, match="classifier backend 'oracle' is already registered"):
        classify.register_classifier("oracle", classify.ColumnClassifier)


def test_a_task_process_gets_the_parents_backends():
    """datatrove tasks start in fresh processes: the step carries the registry and restores it."""
    load_plugins()
    tables = classify.registered()
    saved = classify.BACKENDS.pop("oracle")
    try:
        classify.restore_registered(tables)
        assert classify.BACKENDS["oracle"] is saved
    finally:
        classify.BACKENDS["oracle"] = saved


def test_ablate_starts_every_tool_through_one_helper():
    """One place decides how ablate starts a tool: its package entry point, never a file path."""
    import importlib.util

    source = (ROOT / "megatron_srp" / "medsafetyworld" / "ablate.py").read_text()
    assert source.count("sys.executable") == 1 and '"tools"' not in source
    for name in ("annotate", "preprocess_data", "pretrain", "convert_to_hf"):
        assert f'_tool_cmd("{name}")' in source
        cmd = ablate._tool_cmd(name)
        assert cmd[:2] == [sys.executable, "-m"] and importlib.util.find_spec(cmd[2]) is not None
