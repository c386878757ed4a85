"""What the export tests share: the tools, the tiny models they convert, a runner for the tools."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT, child_env

TO_HF = str(ROOT / "tools" / "convert_to_hf.py")
FROM_HF = str(ROOT / "tools" / "convert_from_hf.py")

# name -> overrides of tiny_cpu (4 layers, hidden 64, GQA 4 heads / 2 groups, vocab 512)
MODELS = {
    "gqa_tied_tp2": ["parallel.tensor_model_parallel_size=2"],
    # vocab 500 is padded to 512 inside Megatron: the export must trim it
    "untied_padded_vocab_pp2": ["parallel.pipeline_model_parallel_size=2", "model.vocab_size=500",
                                "model.share_embeddings_and_output_weights=false"],
    "qk_layernorm_tp2": ["parallel.tensor_model_parallel_size=2", "model.qk_layernorm=true",
                         "model.share_embeddings_and_output_weights=false"],
}


def tool(*args, check=True, timeout=300, umask=None, env=None):
    """Run a conversion tool (under ``umask`` when given, with ``env`` added); fail with its output unless
    it exits 0."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    proc = subprocess.run([sys.executable, *map(str, args), "--no-progress"], cwd=ROOT, env={**child_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
