"""The GPU annotation bench, rehearsed on the CPU: the same command a lent GPU runs, on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from megatron_srp import hf
from megatron_srp.hf import HFError
from tests.conftest import ROOT, child_env
from tests.fixtures import SAFE_SENTENCES, UNSAFE_SENTENCES, train_bpe_tokenizer, write_jsonl


def test_bench_runs_as_a_gpu_would_run_it(tmp_path):
    texts = [" ".join(SAFE_SENTENCES[i % len(SAFE_SENTENCES):] + UNSAFE_SENTENCES[:i % 3]) for i in range(6)]
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    tok = train_bpe_tokenizer(tmp_path / "tok", texts * 5, vocab_size=400)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "annotate_qwen3guard.py"), "--input", str(corpus),
                           "--tokenizer-model", str(tok), "--shape", "tiny", "--engine", "transformers",
                           "--device", "cpu", "--segments", "8", "--batch-size", "4", "--new-tokens", "5",
                           "--segment-tokens", "32", "--work", str(tmp_path / "work")],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert r["engine"] == "transformers" and r["segments"] == 8 and r["max_new_tokens"] == 5
    assert 0 < r["mean_segment_tokens"] <= 32 and r["segments_per_s"] > 0
    # every prompt opens with the guard's policy preamble: what vLLM's prefix caching computes once
    assert r["shared_prefix_tokens"] > 100 and r["mean_prompt_tokens"] > r["shared_prefix_tokens"]
    hours = 1e9 / (r["segments_per_s"] * r["mean_segment_tokens"]) / 3600
    assert abs(r["device_hours_per_1B_tokens"] - hours) / hours < 0.01


def test_engine_auto_takes_vllm_only_with_a_gpu_and_vllm(monkeypatch):
    """vLLM cannot be installed on this CPU machine: an empty module stands in for its import only."""
    import torch

    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable
    assert hf.pick_engine("auto", "auto") == "transformers"
    with pytest.raises(HFError, match="vllm package is not installed"):
        hf.pick_engine("vllm", "auto")
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hf.pick_engine("auto", "auto") == "vllm"
    assert hf.pick_engine("auto", "cpu") == "transformers"
    assert hf.pick_engine("transformers", "auto") == "transformers"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hf.pick_engine("auto", "auto") == "transformers"
