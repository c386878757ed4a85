"""Loading a local Hugging Face model for a backend: one place for device, dtype and safety defaults."""

from __future__ import annotations

import os
from typing import Optional

from megatron_srp.data.classify import ClassifierError


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_engine(engine: str, device: str) -> str:
    """transformers or vllm: ``auto`` takes vLLM when it imports, a GPU exists and the device allows it;
    ``vllm`` when vLLM does not import is an error."""
    if engine not in ("auto", "transformers", "vllm"):
        raise ClassifierError(f"engine={engine!r}: choose auto, transformers or vllm")
    if engine == "transformers":
        return engine
    try:
        import vllm  # noqa: F401
    except ImportError:
        if engine == "vllm":
            raise ClassifierError("engine=vllm: the vllm package is not installed (pip install vllm; GPU)") from None
        return "transformers"
    import torch

    if engine == "vllm":
        return engine
    return "vllm" if torch.cuda.is_available() and device != "cpu" else "transformers"


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise ClassifierError(f"dtype {dtype!r}: choose auto, fp32, bf16 or fp16")
    return table[dtype]


def model_version(model: str, revision: Optional[str]) -> str:
    """Model id plus what pins its weights: the revision, or for a local directory its commit hash if known."""
    if revision:
        return f"{model}@{revision}"
    cfg = os.path.join(model, "config.json")
    if os.path.isfile(cfg):
        import json

        with open(cfg) as f:
            commit = json.load(f).get("_commit_hash")
        st = os.stat(cfg)
        return f"{model}@{commit or f'local-{int(st.st_mtime)}'}"
    return model


def load_tokenizer(model: str, revision: Optional[str], padding_side: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ClassifierError(f"cannot load the tokenizer of {model!r}: {e}") from e
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(auto_class, model: str, revision: Optional[str], device: str, dtype: str):
    device = resolve_device(device)
    try:
        m = auto_class.from_pretrained(model, revision=revision, dtype=resolve_dtype(dtype, device),
                                       trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ClassifierError(f"cannot load the model {model!r}: {e}") from e
    return m.to(device).eval(), device
