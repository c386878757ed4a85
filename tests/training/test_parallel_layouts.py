"""TP=2, PP=2 (plain and interleaved) and DP=2 (distributed optimizer) on 2 gloo processes equal
the single-process run."""

import math

import pytest

from tests.training import runner

LAYOUTS = {
    "tp2": ["parallel.tensor_model_parallel_size=2"],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
    "dp2_distributed_optimizer": ["optimizer.use_distributed_optimizer=true"],
    "pp2_virtual2": ["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2"],
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_two_process_layout_matches_single_process(tmp_path, from_init, baseline, name):
    runner.run(tmp_path, from_init + LAYOUTS[name], nproc=2)
    got = runner.losses(tmp_path)
    assert sorted(got) == list(range(1, 21))
    for step in range(1, 21):
        assert math.isclose(got[step], baseline[step], rel_tol=1e-5), (step, got[step], baseline[step])


def test_loss_falls(baseline):
    assert baseline[20] < baseline[1] - 0.5


@pytest.mark.parametrize("recompute", [
    ["model.recompute_granularity=selective"],
    ["model.recompute_granularity=full", "model.recompute_method=uniform", "model.recompute_num_layers=1"],
], ids=["selective", "full"])
def test_activation_recompute_gives_the_same_losses(tmp_path, from_init, baseline, recompute):
    runner.run(tmp_path, from_init + recompute)
    got = runner.losses(tmp_path)
    for step in range(1, 21):
        assert math.isclose(got[step], baseline[step], rel_tol=1e-5), (step, got[step], baseline[step])


def test_unfused_megatron_attention_matches_sdpa(tmp_path, from_init, baseline):
    # The baseline uses the default SDPA core attention; Megatron's unfused path must agree.
    runner.run(tmp_path, from_init + ["model.local_attention=unfused"])
    got = runner.losses(tmp_path)
    for step in range(1, 21):
        assert math.isclose(got[step], baseline[step], rel_tol=1e-5), (step, got[step], baseline[step])
