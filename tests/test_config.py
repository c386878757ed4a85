"""The recipe schema: inheritance, overrides, validation errors that name the key."""

import dataclasses
import subprocess
import sys
import typing

import pytest
import yaml

from megatron_srp import config as C
from megatron_srp.config import RecipeError, load_recipe, validate_world
from tests.conftest import ROOT, child_env

RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def _schema(path):
    """Pretraining recipes everywhere but recipes/posttrain (SFT), recipes/eval (suites), the
    MedSafetyWorld sweep and its ablations (recipes/medsafetyworld/*, except its model_*.yaml)."""
    rel = path.relative_to(ROOT / "recipes")
    if rel.parts[0] == "posttrain":
        from megatron_srp.posttrain.sft import SFTRecipe
        return SFTRecipe
    if rel.parts[0] == "eval":
        from megatron_srp.eval.suite import Suite
        return Suite
    if rel.parts[0] == "medsafetyworld" and rel.name.startswith("sweep"):
        return "sweep"
    if rel.parts[0] == "medsafetyworld" and not rel.name.startswith("model_"):
        return "ablation"
    return None


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_loads(path):
    schema = _schema(path)
    if schema is None:
        r = load_recipe(path)
        assert r.model.num_layers > 0
    elif schema == "ablation":
        from megatron_srp.medsafetyworld.ablate import load_ablation

        r = load_ablation(str(path))
        load_recipe(ROOT / r.pretrain_recipe, r.pretrain_overrides)  # its model recipe and overrides too
    elif schema == "sweep":
        from megatron_srp.medsafetyworld.sweep import load_sweep, point_recipe

        s = load_sweep(str(path))  # builds every point's ablation recipe
        for name in s.points:
            r = point_recipe(s, name, "screen")
            load_recipe(ROOT / r.pretrain_recipe, r.pretrain_overrides)
    else:
        assert C.load_config(schema, path) is not None


def test_defaults_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"model": {"num_layers": 8, "hidden_size": 128}, "training": {"train_iters": 7}, "data": {"mock": True}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(
        {"defaults": ["base.yaml"], "model": {"hidden_size": 256}, "optimizer": {"lr": "5e-4"}}))
    r = load_recipe(tmp_path / "child.yaml", ["training.train_iters=11", "data.data_path=[a,b]", "data.mock=false"])
    assert r.model.num_layers == 8  # inherited
    assert r.model.hidden_size == 256  # child wins
    assert r.training.train_iters == 11  # override wins
    assert r.optimizer.lr == 5e-4  # YAML 1.1 string float accepted
    assert r.data.data_path == ["a", "b"]


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'parallel.tensor_parallel_size'.*tensor_model_parallel_size"):
        load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["parallel.tensor_parallel_size=2"])
    with pytest.raises(RecipeError, match=r"unknown key 'modle'.*'model'"):
        load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["modle.num_layers=2"])


@pytest.mark.parametrize("override, message", [
    ("training.train_iters=ten", r"training.train_iters: expected int"),
    ("model.activation=relu", r"model.activation: 'relu' is not one of"),
    ("precision.bf16=3", r"precision.bf16: expected bool"),
    ("model.num_query_groups=3", r"model.num_attention_heads=4 is not divisible by model.num_query_groups=3"),
    ("parallel.tensor_model_parallel_size=4", r"num_query_groups=2 is not divisible by parallel.tensor_model_parallel_size=4"),
    ("parallel.pipeline_model_parallel_size=3", r"model.num_layers=4 is not divisible by parallel.pipeline_model_parallel_size=3"),
    ("training.global_batch_size=7", r"training.global_batch_size=7 is not divisible by training.micro_batch_size=4"),
    ("model.recompute_granularity=full", r"needs model.recompute_method"),
    ("training.train_iters=5", r"scheduler.lr_warmup_iters=5 must be smaller than the decay length 5"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(ROOT / "recipes/tiny_cpu.yaml", [override])


def test_world_size_must_factor():
    r = load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["parallel.tensor_model_parallel_size=2"])
    assert validate_world(r, 4) == 2
    with pytest.raises(RecipeError, match=r"world size 3 does not factor into parallel.tensor_model_parallel_size=2"):
        validate_world(r, 3)
    with pytest.raises(RecipeError, match=r"global_batch_size=8 is not divisible by training.micro_batch_size=4 x data-parallel size 4"):
        validate_world(r, 8)


def test_padded_vocab_follows_megatron():
    r = load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["model.vocab_size=49152", "parallel.tensor_model_parallel_size=2"])
    assert C.padded_vocab_size(r) == 49152
    r = load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["model.vocab_size=50000", "parallel.tensor_model_parallel_size=2"])
    assert C.padded_vocab_size(r) == 50176


def test_every_field_has_a_docstring():
    for f in dataclasses.fields(C.Recipe):
        cls = typing.get_type_hints(C.Recipe)[f.name]
        if dataclasses.is_dataclass(cls):
            docs = C.field_docs(cls)
            missing = [sub.name for sub in dataclasses.fields(cls) if not docs.get(sub.name)]
            assert not missing, f"{f.name}: fields without a docstring: {missing}"


def test_cli_recipe_error_exits_nonzero_with_key_path():
    proc = subprocess.run([sys.executable, str(ROOT / "tools/pretrain.py"), str(ROOT / "recipes/tiny_cpu.yaml"),
                           "training.micro_batch_sise=2"], capture_output=True, text=True, env=child_env(), cwd=ROOT)
    assert proc.returncode == 2
    assert "training.micro_batch_sise" in proc.stderr and "training.micro_batch_size" in proc.stderr


def test_cli_resolved_recipe_round_trips(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools/pretrain.py"), str(ROOT / "recipes/tiny_cpu.yaml"),
                           "model.hidden_size=96", "model.num_attention_heads=4", "--print-recipe"],
                          capture_output=True, text=True, env=child_env(), cwd=ROOT, check=True)
    (tmp_path / "resolved.yaml").write_text(proc.stdout)
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again.model.hidden_size == 96
    assert again == load_recipe(ROOT / "recipes/tiny_cpu.yaml", ["model.hidden_size=96"])


def test_overrides_index_lists_of_sections(tmp_path):
    from megatron_srp.eval.suite import Suite

    suite = tmp_path / "suite.yaml"
    suite.write_text("finetune_attacks:\n  - {name: a, n: 10}\n  - {name: b, n: 100}\n")
    s = C.load_config(Suite, suite, ["finetune_attacks.1.n=5", "finetune_attacks.0.data.format=sst2"])
    assert [(a.name, a.n, a.data.format) for a in s.finetune_attacks] == [("a", 10, "sst2"), ("b", 5, "chat")]
    with pytest.raises(RecipeError, match=r"finetune_attacks.2.n: finetune_attacks is a list of 2"):
        C.load_config(Suite, suite, ["finetune_attacks.2.n=5"])


def test_data_path_next_to_mock_data_is_refused_naming_both_keys():
    tiny = ROOT / "recipes" / "tiny_cpu.yaml"
    with pytest.raises(RecipeError, match=r"data\.data_path=\['corpus'\] is set but data\.mock is true.*data\.mock=false"):
        load_recipe(tiny, ["data.data_path=[corpus]"])
    assert load_recipe(tiny, ["data.data_path=[corpus]", "data.mock=false"]).data.data_path == ["corpus"]


@pytest.mark.parametrize("override, hint", [
    ("scheduler.on_resume=checkpoints", "did you mean 'checkpoint'"),
    ("checkpoint.on_damage=error", "did you mean 'checkpoint.on_damaged'"),
    ("logging.wandb_mode=ofline", "did you mean 'offline'"),
    ("logging.wandb_projet=x", "did you mean 'logging.wandb_project'"),
])
def test_new_keys_are_checked_with_did_you_mean(override, hint):
    with pytest.raises(RecipeError, match=hint):
        load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", [override])


def test_a_partial_section_keeps_the_fields_own_defaults(tmp_path):
    """``section: {one_key: ...}`` changes that key of the section's default, whatever its factory set."""

    @dataclasses.dataclass
    class Inner:
        a: int = 1
        b: list[int] = dataclasses.field(default_factory=lambda: [1])

    @dataclasses.dataclass
    class Outer:
        plain: Inner = dataclasses.field(default_factory=Inner)
        tuned: Inner = dataclasses.field(default_factory=lambda: Inner(a=7, b=[5, 6]))

    path = tmp_path / "r.yaml"
    path.write_text("tuned: {a: 8}\nplain: {b: [2]}\n")
    got = C.load_config(Outer, path)
    assert got.tuned == Inner(a=8, b=[5, 6]) and got.plain == Inner(a=1, b=[2])
    assert C.load_config(Outer, path, ["tuned.b=[9]"]).tuned == Inner(a=8, b=[9])
