"""Loading Hugging Face models and tokenizers, for every room that does (the data pipeline's classifier
and rewriter backends, eval, post-training): the model-folder check, device, dtype and engine choice,
safe defaults (``trust_remote_code`` off; transformers reads safetensors first).

torch, transformers and vLLM are imported inside the functions: they cost seconds at import time and
vLLM is optional (GPU only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from megatron_srp.errors import SRPError

ENGINES = ("auto", "transformers", "vllm")
_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


class HFError(SRPError, RuntimeError):
    """A model or tokenizer that cannot be loaded, or an engine or dtype that does not exist here."""


def check_model_dir(model_dir: str, chat_template: bool = False) -> None:
    """A Hugging Face model directory with a tokenizer (and a chat template when asked), or
    FileNotFoundError naming what is missing."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    if not has_tokenizer_files(model_dir):
        raise FileNotFoundError(f"{model_dir}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    if chat_template and not any(os.path.isfile(os.path.join(model_dir, f))
                                 for f in ("chat_template.jinja", "chat_template.json")):
        cfg = os.path.join(model_dir, "tokenizer_config.json")
        if not (os.path.isfile(cfg) and json.loads(Path(cfg).read_text()).get("chat_template")):
            raise FileNotFoundError(f"{model_dir}: the tokenizer has no chat template (chat_template.jinja or "
                                    "tokenizer_config.json's chat_template)")


def has_tokenizer_files(model_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_engine(engine: str, device: str) -> str:
    """transformers or vllm: ``auto`` takes vLLM when it imports, a GPU exists and the device allows it;
    ``vllm`` when vLLM does not import is an error."""
    if engine not in ENGINES:
        raise HFError(f"engine={engine!r}: choose auto, transformers or vllm")
    if engine == "transformers":
        return engine
    try:
        import vllm  # noqa: F401
    except ImportError:
        if engine == "vllm":
            raise HFError("engine=vllm: the vllm package is not installed (pip install vllm; GPU)") from None
        return "transformers"
    import torch

    if engine == "vllm":
        return engine
    return "vllm" if torch.cuda.is_available() and device != "cpu" else "transformers"


def resolve_dtype(dtype: str, device: str):
    """A torch dtype: ``auto`` is bf16 on a GPU and fp32 on the CPU."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise HFError(f"dtype {dtype!r}: choose auto, fp32, bf16 or fp16")
    return getattr(torch, _DTYPES[dtype])


def dtype_kwarg(dtype) -> dict:
    """``dtype=`` (transformers >= 4.56) or ``torch_dtype=`` (older) for from_pretrained."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def model_version(model: str, revision: Optional[str]) -> str:
    """Model id plus what pins its weights: the revision, or for a local directory its commit hash if known."""
    if revision:
        return f"{model}@{revision}"
    cfg = os.path.join(model, "config.json")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            commit = json.load(f).get("_commit_hash")
        st = os.stat(cfg)
        return f"{model}@{commit or f'local-{int(st.st_mtime)}'}"
    return model


def load_tokenizer(model: str, revision: Optional[str] = None, padding_side: Optional[str] = None):
    """A local directory's or the HF cache's tokenizer; pad = eos when it has no pad token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise HFError(f"cannot load the tokenizer of {model!r}: {e}") from e
    if padding_side is not None:
        tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(auto_class, model: str, revision: Optional[str] = None, device: str = "cpu", dtype: str = "auto"):
    """``auto_class.from_pretrained`` (a local directory or the HF cache) on ``device``, in eval mode;
    returns (model, resolved device)."""
    device = resolve_device(device)
    try:
        m = auto_class.from_pretrained(model, revision=revision, trust_remote_code=False,
                                       **dtype_kwarg(resolve_dtype(dtype, device)))
    except (OSError, ValueError) as e:
        raise HFError(f"cannot load the model {model!r}: {e}") from e
    return m.to(device).eval(), device
