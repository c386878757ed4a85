"""The paper's cluster recipes: SmolLM2-1.7B on FineWeb-Edu, four data variants x bf16 / fp8, each
valid at the layouts documented in smollm2_1p7b_fineweb_edu_srp_h100_bf16.yaml (8, 64, 256 H100s),
and identical except for data, precision and output folders."""

import dataclasses

import pytest

from megatron_srp.config import load_recipe, validate_world
from tests.conftest import ROOT

VARIANTS = ["plain", "srp", "filter", "rewrite"]
PRECISIONS = ["bf16", "fp8"]
# H100s -> (data-parallel size, microbatches per step), as the recipe's comment table says.
LAYOUTS = {8: (8, 32), 64: (64, 4), 256: (256, 1)}


def recipe(variant, precision):
    name = f"smollm2_1p7b_fineweb_edu_{variant}_h100_{precision}"
    return name, load_recipe(ROOT / "recipes" / f"{name}.yaml")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_recipe_loads_and_fits_8_64_and_256_gpus(variant, precision):
    name, r = recipe(variant, precision)
    assert r.name == name
    assert r.data.data_path == [f"data/fineweb_edu/{variant}/fineweb_edu_{variant}_text_document"]
    assert r.checkpoint.dir == f"runs/{name}/checkpoints" and r.logging.dir == f"runs/{name}"
    assert r.training.global_batch_size * r.model.seq_length == 1024 * 2048
    assert r.training.train_iters == 50_000  # 104.9B tokens, as the comments say
    assert r.precision.bf16
    assert r.precision.fp8 == ("hybrid" if precision == "fp8" else None)
    assert r.model.transformer_impl == ("transformer_engine" if precision == "fp8" else "auto")
    for gpus, (dp, microbatches) in LAYOUTS.items():
        assert validate_world(r, gpus) == dp
        t = r.training
        assert t.global_batch_size // (t.micro_batch_size * dp) == microbatches


def test_variants_differ_only_in_data_precision_and_outputs():
    _, ref = recipe("srp", "bf16")

    def comparable(r):
        d = dataclasses.asdict(r)
        for key in ("name", "checkpoint", "logging", "precision"):
            d.pop(key)
        d["data"].pop("data_path")
        d["model"].pop("transformer_impl")
        return d

    for variant in VARIANTS:
        for precision in PRECISIONS:
            assert comparable(recipe(variant, precision)[1]) == comparable(ref), (variant, precision)
    fp8 = [recipe(v, "fp8")[1].precision for v in VARIANTS]
    assert all(p == fp8[0] for p in fp8)
