"""Training on Megatron indexed datasets (weighted blends, role sidecars) and what a run writes."""

import json
import math

import pytest

from tests.fixtures import VOCAB, write_indexed_dataset
from tests.training import runner


@pytest.fixture(scope="module")
def srp_prefix(tmp_path_factory):
    return write_indexed_dataset(tmp_path_factory.mktemp("data") / "srp", n_docs=300, with_roles=True)


def _data(prefix, tmp_path):
    return [f"data.data_path=[{prefix}]", "data.mock=false", f"model.vocab_size={VOCAB}",
            f"data.data_cache_path={tmp_path / 'cache'}", "training.train_iters=6"]


def test_metrics_record_every_field(tmp_path):
    proc = runner.run(tmp_path, ["training.train_iters=6", "logging.tensorboard=true", "training.eval_interval=3",
                                 "logging.log_interval=2"])
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r.get("split") != "validation"]
    valid = [r for r in recs if r.get("split") == "validation"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in valid] == [3, 6]
    for r in train:
        assert r["consumed_tokens"] == r["step"] * 8 * 128
        assert r["loss"] > 0 and r["lr"] >= 0 and r["grad_norm"] > 0
        assert r["step_time_s"] > 0 and r["tokens_per_s_per_device"] > 0
        assert r["tflops_per_device"] is None and r["mfu"] is None  # CPU
        # Peak resident memory of the process: Megatron-Core and torch alone take > 100 MiB.
        assert 0.1 < r["peak_memory_gib"] < 64
    # ETA: the steps left times the interval's wall time per step, so 0 at the end.
    assert train[0]["eta_s"] > 0 and train[1]["eta_s"] > 0 and train[2]["eta_s"] == 0
    lines = [ln for ln in proc.stderr.splitlines() if "ms/step" in ln]
    assert len(lines) == 3 and all(" GiB" in ln and "ETA " in ln for ln in lines)
    assert all(v["loss"] > 0 for v in valid)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    for key in ("loss", "step_time_s", "eta_s", "peak_memory_gib"):
        assert [e.value for e in acc.Scalars(f"train/{key}")] == pytest.approx([r[key] for r in train], rel=1e-6)


def test_logged_step_time_is_the_mean_of_the_interval():
    from megatron_srp.training.trainer import _Interval

    iv = _Interval()
    for seconds in (0.07, 1.993, 0.189):
        iv.add(seconds)
    assert iv.mean_step_s() == pytest.approx((0.07 + 1.993 + 0.189) / 3)
    assert iv.wall_s_per_step() >= 0


def test_role_sidecar_gives_separate_losses(tmp_path, srp_prefix):
    runner.run(tmp_path, _data(srp_prefix, tmp_path))
    loss, text, refl = (runner.losses(tmp_path, k) for k in ("loss", "loss_text", "loss_reflection"))
    for step in range(1, 7):
        lo, hi = sorted([text[step], refl[step]])
        # The trained loss is the token-weighted mean of both parts.
        assert lo - 1e-6 <= loss[step] <= hi + 1e-6


def test_reflection_loss_mask_trains_on_text_only(tmp_path, srp_prefix):
    trained = tmp_path / "train"
    masked = tmp_path / "mask"
    runner.run(trained, _data(srp_prefix, tmp_path))
    runner.run(masked, _data(srp_prefix, tmp_path) + ["data.reflection_loss=mask"])
    loss, text = runner.losses(masked), runner.losses(masked, "loss_text")
    for step in loss:
        assert math.isclose(loss[step], text[step], rel_tol=1e-6)
    # Same weights and data at step 1; different gradients afterwards.
    assert math.isclose(runner.losses(trained, "loss_text")[1], text[1], rel_tol=1e-6)
    assert not math.isclose(runner.losses(trained, "loss_text")[6], text[6], rel_tol=1e-6)


def test_weighted_blend_of_two_datasets(tmp_path):
    a = write_indexed_dataset(tmp_path / "a", n_docs=150, seed=1)
    b = write_indexed_dataset(tmp_path / "b", n_docs=150, seed=2)
    overrides = _data(a, tmp_path)
    overrides[0] = f"data.data_path=[0.3,{a},0.7,{b}]"
    runner.run(tmp_path, overrides)
    assert sorted(runner.losses(tmp_path)) == list(range(1, 7))
    assert "loss_text" not in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    # The indices went to data.data_cache_path, and the blend draws 30% / 70% in the order written.
    assert list((tmp_path / "cache").rglob("*.npy")), "no index cache written"
    from megatron_srp.config import load_recipe
    from megatron_srp.training.data import build_datasets

    # Read back from the run's index cache (building afresh would need a process group).
    train, _ = build_datasets(load_recipe(runner.TINY, runner.BASE + overrides))
    share_a = float((train.dataset_index == 0).mean())
    assert len(train.dataset_index) >= 6 * 8 and abs(share_a - 0.3) < 0.05, share_a


def test_missing_dataset_is_a_clear_error_before_the_model_is_built(tmp_path):
    proc = runner.run(tmp_path, [f"data.data_path=[{tmp_path / 'nope'}]", "data.mock=false"], check=False)
    assert proc.returncode == 2
    assert f"{tmp_path / 'nope'}.bin" in proc.stderr and "data.data_path" in proc.stderr
    assert "parameters on this rank" not in proc.stderr


def test_data_path_with_mock_data_is_refused(tmp_path):
    """tiny_cpu.yaml sets data.mock: true; a data path given on top must not be ignored."""
    proc = runner.run(tmp_path, [f"data.data_path=[{tmp_path / 'corpus_text_document'}]"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.data_path" in proc.stderr and "data.mock=false" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_out_of_vocabulary_token_fails_clearly_and_workers_do_not_hang_the_exit(watch, tmp_path):
    """Data tokenized with a larger vocabulary than the model's: a clear error naming the data and the
    setting, and the process exits although a DataLoader worker (which ignores SIGTERM) is running."""
    import numpy as np
    import psutil
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from tests.conftest import ROOT, child_env

    prefix = tmp_path / "big_vocab"
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for i in range(100):
        doc = np.append(np.arange(i, i + 200) % (VOCAB - 1), [VOCAB + 88, VOCAB - 1]).astype(np.int64)
        builder.add_document(torch.from_numpy(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    cmd = runner.command(1, [f"logging.dir={tmp_path}", "checkpoint.dir=null", "data.num_workers=1",
                             *_data(prefix, tmp_path)])
    proc = watch(cmd, cwd=ROOT, env=child_env())
    out = proc.finish(timeout=180)
    assert proc.returncode == 2, out[-3000:]
    assert f"holds token id {VOCAB + 88}" in out and "model.vocab_size=512" in out and str(prefix) in out
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


@pytest.mark.parametrize("style", ["cosine", "WSD"])
def test_logged_learning_rate_follows_the_schedule(tmp_path, style):
    """Warmup then cosine, or warmup, stable and the WSD decay at the end: the lr each step logs is
    the schedule's value after that many steps (OptimizerParamScheduler counts samples)."""
    from megatron_srp.config import load_recipe

    overrides = [f"scheduler.lr_decay_style={style}"]
    runner.run(tmp_path, overrides)
    r = load_recipe(runner.TINY, runner.BASE + overrides)
    top, low, warm, total = r.optimizer.lr, r.optimizer.min_lr, r.scheduler.lr_warmup_iters, r.training.train_iters
    assert r.scheduler.lr_decay_iters is None and 0 < warm < total

    def expected(k: int) -> float:
        if k <= warm:
            return top * k / warm
        if style == "cosine":
            return low + 0.5 * (math.cos(math.pi * (k - warm) / (total - warm)) + 1) * (top - low)
        start = total - r.scheduler.lr_wsd_decay_iters
        if k <= start:
            return top
        ratio = (k - start) / r.scheduler.lr_wsd_decay_iters
        coeff = {"linear": 1 - ratio, "cosine": 0.5 * (math.cos(math.pi * ratio) + 1),
                 "exponential": 2 * 0.5 ** ratio - 1, "minus_sqrt": 1 - math.sqrt(ratio)}[r.scheduler.lr_wsd_decay_style]
        return low + coeff * (top - low)

    got = runner.losses(tmp_path, "lr")
    assert sorted(got) == list(range(1, total + 1))
    for k in got:
        assert math.isclose(got[k], expected(k), rel_tol=1e-6, abs_tol=1e-12), (k, got[k], expected(k))
    assert math.isclose(got[total], low, rel_tol=1e-6)


def _wandb_history(run_file):
    """History rows of an offline W&B run file (``run-ID.wandb``): W&B's record log (a 7-byte file
    header, then 32 KiB blocks of records framed as crc32 / length / type) of protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, payload, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one record complete
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(payload)
            payload = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): _item_value(item) for item in rec.history.item})
    return rows


def _item_value(item):
    if item.value_json:
        return json.loads(item.value_json)
    return item.number if item.HasField("number") else item.integer


def test_weights_and_biases_offline_run_holds_the_metrics(tmp_path):
    import wandb  # noqa: F401 -- a dev requirement: a missing package fails here, it does not skip
    env = {"WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}
    runner.run(tmp_path, ["training.train_iters=6", "logging.wandb_project=srp-test", "logging.wandb_mode=offline",
                          "logging.wandb_run_name=tiny-offline", "logging.log_interval=2"], env=env)
    run_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, list((tmp_path / "wandb").rglob("*"))
    rows = [r for r in _wandb_history(run_files[0]) if "train/loss" in r]
    jsonl = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["_step"] for r in rows] == [r["step"] for r in jsonl] == [2, 4, 6]
    for row, rec in zip(rows, jsonl):
        for key in ("loss", "lr", "grad_norm", "step_time_s", "eta_s", "peak_memory_gib"):
            assert row[f"train/{key}"] == pytest.approx(rec[key], rel=1e-6), key


def test_weights_and_biases_without_the_package_is_a_recipe_error(tmp_path):
    """The package is optional: without it a recipe that asks for W&B stops before the model is built."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "wandb.py").write_text("raise ImportError('hidden by the test')\n")  # found before the real one
    import os

    proc = runner.run(tmp_path, ["logging.wandb_project=srp-test"], check=False,
                      env={"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "logging.wandb_project=srp-test needs the wandb package" in proc.stderr
    assert "parameters on this rank" not in proc.stderr
