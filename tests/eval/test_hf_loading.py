"""megatron_srp/hf.py: the one place data, eval and post-training load Hugging Face models from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from megatron_srp import hf
from megatron_srp.data.classify import ClassifierError, build_classifier

ROOT = Path(__file__).resolve().parents[2]


def test_model_folder_check_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.check_model_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        hf.check_model_dir(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({}))
    hf.check_model_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no chat template"):
        hf.check_model_dir(str(tmp_path), chat_template=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    hf.check_model_dir(str(tmp_path), chat_template=True)


def test_dtype_and_engine_choices():
    assert hf.resolve_dtype("auto", "cpu") is torch.float32 and hf.resolve_dtype("auto", "cuda:0") is torch.bfloat16
    assert hf.resolve_dtype("bf16", "cpu") is torch.bfloat16 and hf.resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(hf.HFError, match="dtype 'fp8': choose auto, fp32, bf16 or fp16"):
        hf.resolve_dtype("fp8", "cpu")
    with pytest.raises(hf.HFError, match="engine='tgi'"):
        hf.pick_engine("tgi", "cpu")


def test_a_backend_that_cannot_load_its_model_is_a_classifier_error(tmp_path):
    """The data pipeline's tools catch ClassifierError (exit 2): hf's errors reach them as one."""
    with pytest.raises(ClassifierError, match="cannot load the tokenizer"):
        build_classifier("hf", model=str(tmp_path / "absent"))


def test_one_module_loads_tokenizers_and_looks_up_the_end_of_document_token():
    """data/, eval/ and posttrain/ load tokenizers through hf.py; one end-of-document lookup in the package."""
    lib = list((ROOT / "megatron_srp").rglob("*.py"))
    users = [ROOT / "megatron_srp" / "hf.py"] + [p for room in ("data", "eval", "posttrain")
                                                 for p in (ROOT / "megatron_srp" / room).rglob("*.py")]
    loading = sorted(str(p.relative_to(ROOT)) for p in users if "AutoTokenizer.from_pretrained" in p.read_text())
    assert loading == ["megatron_srp/hf.py"]
    eod = sorted(str(p.relative_to(ROOT)) for p in lib if '"<|endoftext|>", "</s>", "<eos>"' in p.read_text())
    assert eod == ["megatron_srp/data/tokenizer.py"]
