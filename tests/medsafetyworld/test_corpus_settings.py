"""The corpus-share checks live in CorpusSettings.validate(): generate, write_corpus and ablate use them."""

from __future__ import annotations

import importlib.util

import pytest

from megatron_srp.config import RecipeError
from megatron_srp.medsafetyworld.ablate import load_ablation
from megatron_srp.medsafetyworld.corpus import CorpusSettings, write_corpus
from megatron_srp.medsafetyworld.world import WorldSettings, generate_world
from tests.conftest import ROOT


def _tool():
    spec = importlib.util.spec_from_file_location("msw_tool", ROOT / "tools" / "medsafetyworld.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("bad, message", [
    ({"unsafe_share": 1.5}, r"corpus.unsafe_share must be in \[0, 1\], got 1.5"),
    ({"mistake_share": 0.7, "overdose_share": 0.5}, "corpus.mistake_share \\+ corpus.overdose_share must not exceed 1"),
    ({"segments_per_document": 0}, "corpus.segments_per_document must be >= 1"),
])
def test_every_path_to_a_corpus_checks_the_shares(tmp_path, capsys, bad, message):
    with pytest.raises(ValueError, match=message):
        CorpusSettings(**bad).validate()
    with pytest.raises(ValueError, match=message):  # the library itself, before any file is written
        write_corpus(generate_world(WorldSettings(seed=0)), CorpusSettings(n_documents=10, **bad), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    overrides = [f"corpus.{k}={v}" for k, v in bad.items()]
    with pytest.raises(RecipeError, match=message):  # ablate
        load_ablation(str(ROOT / "recipes/medsafetyworld/tiny_cpu.yaml"), overrides)
    flags = [x for k, v in bad.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert _tool().main(["generate", "--out", str(tmp_path / "g"), *flags]) == 2  # generate names the flag
    assert f"--{next(iter(bad)).replace('_', '-')}" in capsys.readouterr().err and not (tmp_path / "g").exists()
