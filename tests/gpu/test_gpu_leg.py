"""The GPU leg (`make test-gpu`, marker gpu): what only a GPU can show. Each test is meant to take
under a minute on one H100; tests/gpu/conftest.py says what a CPU rehearsal puts in its place.

Tolerances, stated once:
- TE spec against local spec, bf16, 20 steps: the two specs initialise and fuse differently, so losses
  agree to LOSS_STEP1_TOL at step 1 (both near ln(vocab)) and to LOSS_TOL at every step; a broken TE
  path (a norm mapped wrong, no learning) misses by far more.
- FP8 against bf16: step 1 within FP8_STEP1_TOL of the TE bf16 run's.
- TP=2 / PP=2 over NCCL against one GPU, fp32, from one saved initialisation: LAYOUT_TOL at every
  step (reduction order only).
"""

from __future__ import annotations

import json
import math

import pytest

from megatron_srp.training import te_support
from tests.export.helpers import TO_HF, tool
from tests.fixtures import SAFE_SENTENCES, train_bpe_tokenizer
from tests.gpu.conftest import MODEL, REHEARSAL, STEPS, gpu_count, on_device, require_fp8, require_te
from tests.training import runner

pytestmark = pytest.mark.gpu

LOSS_STEP1_TOL = 0.02
LOSS_TOL = 0.15
FP8_STEP1_TOL = 0.05
LAYOUT_TOL = 5e-3


def _train(run_dir, overrides, nproc=1, env=None):
    runner.run(run_dir, on_device([*MODEL, f"training.train_iters={STEPS}", *overrides]), nproc=nproc, env=env)
    losses = runner.losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in losses.values()), losses
    return losses


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    """impl -> (run dir, losses): the same bf16 steps with the local spec or TE's, each trained once and
    saved at the end."""
    runs = {}

    def get(impl):
        if impl == "transformer_engine":
            require_te()
        if impl not in runs:
            d = tmp_path_factory.mktemp(f"bf16_{impl}")
            runs[impl] = (d, _train(d, ["precision.bf16=true", f"model.transformer_impl={impl}"]))
        return runs[impl]

    return get


def test_te_spec_trains_like_the_local_spec_in_bf16(bf16):
    te, local = bf16("transformer_engine")[1], bf16("local")[1]
    assert abs(local[1] - te[1]) <= LOSS_STEP1_TOL, (local[1], te[1])
    worst = max(abs(local[s] - te[s]) for s in local)
    assert worst <= LOSS_TOL, {s: (local[s], te[s]) for s in local}
    assert te[STEPS] < te[1]  # it learns


@pytest.mark.parametrize("recipe", te_support.FP8_RECIPES)
def test_fp8_step_runs_for_each_supported_recipe(bf16, tmp_path, recipe):
    require_fp8(recipe)
    losses = _train(tmp_path, ["precision.bf16=true", "model.transformer_impl=transformer_engine",
                               "precision.fp8=e4m3", f"precision.fp8_recipe={recipe}"])
    reference = bf16("transformer_engine")[1][1]
    assert abs(losses[1] - reference) <= FP8_STEP1_TOL, (recipe, losses[1], reference)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_bpe_tokenizer(tmp_path_factory.mktemp("tok"), SAFE_SENTENCES * 10, vocab_size=400)


@pytest.mark.parametrize("impl", ["transformer_engine", "local"])
def test_gpu_checkpoint_converts_with_parity_on_the_gpu_and_on_the_cpu(bf16, tokenizer, tmp_path, impl):
    """A checkpoint trained on the GPU (TE's: norms saved as `layer_norm_weight`) exports on the GPU
    and on a CPU-only login node, parity-checked both times, to the same weights."""
    from safetensors.torch import load_file

    if REHEARSAL and impl == "local":
        pytest.skip("rehearsal: local runs the same commands as transformer_engine")
    ckpt = bf16(impl)[0] / "ckpt"
    outs = {}
    for where, env in (("gpu", None), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        outs[where] = tmp_path / where
        tool(TO_HF, "--checkpoint", ckpt, "--output", outs[where], "--tokenizer", tokenizer, "--dtype", "fp32",
             env=env)
        parity = json.loads((outs[where] / "parity.json").read_text())
        assert parity["passed"] and parity["top1_agreement"] == 1.0, (impl, where, parity)
    gpu, cpu = (load_file(outs[w] / "model.safetensors") for w in ("gpu", "cpu"))
    assert "model.layers.0.input_layernorm.weight" in gpu
    assert "model.layers.0.post_attention_layernorm.weight" in gpu
    assert gpu.keys() == cpu.keys() and all(gpu[k].equal(cpu[k]) for k in gpu)


@pytest.fixture(scope="module")
def one_gpu(tmp_path_factory):
    """(the shared initial weights' overrides, one GPU's losses). On GPUs each TP rank initialises its
    own shard, so every layout starts from one saved initialisation, as the CPU tests do."""
    if gpu_count() < 2:
        pytest.skip(f"needs 2 GPUs; this node has {gpu_count()}")
    init = tmp_path_factory.mktemp("init")
    runner.run(init, on_device(MODEL), extra=["--save-init"])
    from_init = [f"checkpoint.load={init / 'ckpt'}", "checkpoint.finetune=true"]
    return from_init, _train(tmp_path_factory.mktemp("one_gpu"), from_init)


@pytest.mark.parametrize("layout", ["parallel.tensor_model_parallel_size=2",
                                    "parallel.pipeline_model_parallel_size=2"], ids=["tp2", "pp2"])
def test_two_gpus_over_nccl_equal_one(one_gpu, tmp_path, layout):
    if REHEARSAL and "pipeline" in layout:
        pytest.skip("rehearsal: pp2 runs the same commands as tp2 (the CPU suite checks PP=2 on gloo)")
    from_init, one = one_gpu
    two = _train(tmp_path, [*from_init, layout], nproc=2)
    worst = max(abs(one[s] - two[s]) for s in one)
    assert worst <= LAYOUT_TOL, {s: (one[s], two[s]) for s in one}


def test_device_cpu_trains_on_the_cpu_next_to_cuda(tmp_path):
    """The CPU tests' own setting on a GPU node: the run says it is on the CPU, and reports no GPU
    figures."""
    proc = runner.run(tmp_path, ["device=cpu", "training.train_iters=3", "scheduler.lr_warmup_iters=1"])
    assert "cpu (gloo)" in proc.stdout + proc.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["tflops_per_device"] is None for r in records if "loss" in r)
