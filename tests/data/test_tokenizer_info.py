"""The end-of-document id comes from a Hugging Face tokenizer directory, checked against the model."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from megatron_srp.config import RecipeError, load_recipe
from megatron_srp.training.data import tokenizer_info
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cell divides and the dose is low"] * 20, trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return d, tok


def test_eod_is_read_from_the_tokenizer(tokenizer_dir):
    d, tok = tokenizer_dir
    r = load_recipe(ROOT / "recipes/tiny_cpu.yaml", [f"data.tokenizer_model={d}", "model.vocab_size=512"])
    info = tokenizer_info(r)
    assert info.eod == tok.token_to_id("<|endoftext|>")
    assert info.vocab_size == 512


def test_tokenizer_larger_than_the_model_is_refused(tokenizer_dir):
    d, tok = tokenizer_dir
    r = load_recipe(ROOT / "recipes/tiny_cpu.yaml", [f"data.tokenizer_model={d}", "model.vocab_size=100"])
    with pytest.raises(RecipeError, match=r"model.vocab_size=100"):
        tokenizer_info(r)


def test_missing_tokenizer_file_names_the_key(tmp_path):
    r = load_recipe(ROOT / "recipes/tiny_cpu.yaml", [f"data.tokenizer_model={tmp_path}"])
    with pytest.raises(RecipeError, match="data.tokenizer_model"):
        tokenizer_info(r)
