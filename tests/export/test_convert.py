"""tools/convert_to_hf.py and tools/convert_from_hf.py on tiny models trained here at TP=2 / PP=2."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, child_env, free_port
from tests.export.helpers import FROM_HF, MODELS, TO_HF, tool
from tests.training import runner

@pytest.mark.parametrize("name", MODELS)
def test_export_matches_megatron_logits_and_generates(trained, tokenizer, tmp_path, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "hf"
    tool(TO_HF, "--checkpoint", trained(name), "--output", out, "--tokenizer", tokenizer, "--dtype", "fp32")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0, parity
    cfg = json.loads((out / "config.json").read_text())
    qk = "qk_layernorm" in name
    assert cfg["architectures"] == ["Qwen3ForCausalLM" if qk else "LlamaForCausalLM"]
    tied = "model.share_embeddings_and_output_weights=false" not in MODELS[name]
    assert cfg["rope_theta"] == 10000.0 and cfg["tie_word_embeddings"] == tied
    vocab = 500 if "padded" in name else 512
    assert cfg["vocab_size"] == vocab
    weights = load_file(out / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (vocab, 64)
    assert ("lm_head.weight" in weights) == (not tied)
    assert "step 6" in (out / "README.md").read_text()
    check_card_and_generation_config(out, parity)

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    prompt = tok("The river is", return_tensors="pt")
    gen = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 4
    with torch.no_grad():
        first = model(**prompt).logits[0, -1].argmax()
    assert gen[0, prompt["input_ids"].shape[1]] == first


def check_card_and_generation_config(out: Path, parity: dict) -> None:
    """The card's metadata (huggingface_hub reads it back) and the reflection-aware generation config."""
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer, GenerationConfig

    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert {"megatron-srp", "safety-reflection"} <= set(meta["tags"]) and meta["pipeline_tag"] == "text-generation"
    assert meta["parity"]["max_abs_diff"] == parity["max_abs_diff"] and meta["parity"]["passed"] is True
    assert meta["reflection_format"]["open_tag"] == "<think>" and meta["reflection_format"]["example"] == \
        "<think> Unsafe, Violent </think>"
    assert meta["chat_template_name"] == "srp" and "base_model" not in meta  # trained from scratch
    assert "guarded_generate" in card.text
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == AutoTokenizer.from_pretrained(out).eos_token_id
    assert "close tag does not" in gen.reflection_stop


def _random_hf_model(path: Path, arch: str, tokenizer: Path, tied: bool):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=450, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5,
              tie_word_embeddings=tied, rope_parameters={"rope_type": "default", "rope_theta": 130000.0})
    model = Qwen3ForCausalLM(Qwen3Config(**kw)) if arch == "qwen3" else LlamaForCausalLM(LlamaConfig(**kw))
    with torch.no_grad():  # norms away from 1 so that a mapping mistake on them shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(path)
    return path


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen3", True)])
def test_hf_to_megatron_to_hf_is_bit_identical(tokenizer, tmp_path, arch, tied):
    src = _random_hf_model(tmp_path / "src", arch, tokenizer, tied)
    ckpt = tmp_path / "ckpt"
    # overrides before, between and after the flags
    tool(FROM_HF, "training.seed=7", "--hf", src, "parallel.tensor_model_parallel_size=2", "--output", ckpt,
         "--recipe", runner.TINY, "name=from_hf")
    parity = json.loads((ckpt / "parity.json").read_text())
    assert parity["passed"] and parity["top1_agreement"] == 1.0, parity
    saved = (ckpt / "recipe.yaml").read_text()
    assert "seed: 7" in saved and "tensor_model_parallel_size: 2" in saved and "name: from_hf" in saved
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    back = tmp_path / "back"
    tool(TO_HF, "--checkpoint", ckpt, "--output", back, "--dtype", "fp32")
    a, b = load_file(src / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["rope_theta"] == 130000.0 and cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 16


def test_converted_checkpoint_continues_pretraining_at_tp2(tokenizer, tmp_path):
    # laid out as the Hugging Face hub cache keeps a download, with the license in its card
    src = _random_hf_model(tmp_path / "models--HuggingFaceTB--SmolLM2-tiny" / "snapshots" / "0a1b", "llama",
                           tokenizer, tied=False)
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    ckpt = tmp_path / "ckpt"
    tool(FROM_HF, "--hf", src, "--output", ckpt, "--recipe", runner.TINY, "--no-verify")
    recipe = ckpt / "recipe.yaml"
    common = ["training.train_iters=3", "scheduler.lr_warmup_iters=1", "scheduler.lr_wsd_decay_iters=1",
              "logging.log_interval=1", "logging.tensorboard=false",
              "checkpoint.save_interval=null", "training.eval_interval=null", f"checkpoint.load={ckpt}"]
    losses = {}
    for tp in (1, 2):
        d = tmp_path / f"tp{tp}"
        launcher = [sys.executable, runner.PRETRAIN] if tp == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
             "--master-port", str(free_port()), runner.PRETRAIN]
        proc = subprocess.run(launcher + [str(recipe), *common, f"parallel.tensor_model_parallel_size={tp}",
                                          f"checkpoint.dir={d / 'ckpt'}", f"logging.dir={d}"],
                              cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "holds weights only" in proc.stderr + proc.stdout
        losses[tp] = runner.losses(d)
    assert sorted(losses[1]) == [1, 2, 3]
    for step in (1, 2, 3):
        assert math.isclose(losses[1][step], losses[2][step], rel_tol=1e-5)
    # the converted weights were used: a random-init model of this vocab starts near ln(450)
    assert losses[1][1] != pytest.approx(math.log(450), abs=1e-3)

    # the export of the continued run names its base model and inherits its license
    from huggingface_hub import ModelCard

    out = tmp_path / "hf"
    tool(TO_HF, "--checkpoint", tmp_path / "tp1" / "ckpt", "--output", out, "--no-verify")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-tiny" and card.data.license == "apache-2.0"
    assert "| base model | HuggingFaceTB/SmolLM2-tiny |" in card.text


def test_bad_inputs_are_named(trained, tokenizer, tmp_path):
    ckpt = trained("gqa_tied_tp2")
    (tmp_path / "empty").mkdir()
    p = tool(TO_HF, "--checkpoint", tmp_path / "empty", "--output", tmp_path / "o1", check=False)
    assert p.returncode == 2 and "latest_checkpointed_iteration.txt" in p.stderr
    p = tool(TO_HF, "--checkpoint", ckpt, "--iteration", 999, "--output", tmp_path / "o2", check=False)
    assert p.returncode == 2 and "iteration 999 not found; completed iterations: [6]" in p.stderr

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    yaml_path = bad / "iter_0000006" / "recipe.yaml"
    good_yaml = yaml_path.read_text()
    yaml_path.write_text(good_yaml.replace("num_layers: 4", "num_layers: 3"))
    p = tool(TO_HF, "--checkpoint", bad, "--output", tmp_path / "o3", check=False)
    assert p.returncode == 2 and "decoder.layers.self_attention.linear_qkv.weight: checkpoint [4, 128, 64] " \
                                 "!= recipe [3, 128, 64]" in p.stderr, p.stderr
    yaml_path.write_text(good_yaml.replace("activation: swiglu", "activation: gelu"))
    p = tool(TO_HF, "--checkpoint", bad, "--output", tmp_path / "o4", check=False)
    assert p.returncode == 2 and "no exact Hugging Face" in p.stderr and "activation=gelu" in p.stderr

    from transformers import AutoTokenizer

    big_tok = AutoTokenizer.from_pretrained(tokenizer)
    big_tok.add_tokens([f"<extra_{i}>" for i in range(600 - len(big_tok))])  # 600 tokens > vocab 512
    big = tmp_path / "bigtok"
    big_tok.save_pretrained(big)
    p = tool(TO_HF, "--checkpoint", ckpt, "--output", tmp_path / "o5", "--tokenizer", big, check=False)
    assert p.returncode == 2 and "but the model's vocab_size is 512" in p.stderr
    assert not (tmp_path / "o5").exists()

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    p = tool(TO_HF, "--checkpoint", ckpt, "--output", tmp_path / "full", check=False)
    assert p.returncode == 2 and "not empty" in p.stderr

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    p = tool(FROM_HF, "--hf", gpt2, "--output", tmp_path / "o6", check=False)
    assert p.returncode == 2 and "architecture 'GPT2LMHeadModel'" in p.stderr


def test_parity_failure_publishes_nothing(trained, tmp_path):
    out = tmp_path / "hf"
    p = tool(TO_HF, "--checkpoint", trained("gqa_tied_tp2"), "--output", out, "--atol", "-1", check=False)
    assert p.returncode == 3 and "parity check failed" in p.stderr
    assert not out.exists()
    report = json.loads((tmp_path / "hf.parity-failed" / "parity.json").read_text())
    assert report["passed"] is False and report["max_abs_diff"] < 1e-4


def test_model_card_names_the_data_variant(tmp_path):
    from megatron_srp.config import load_recipe
    from megatron_srp.export.hf_files import data_variant
    from tests.fixtures import write_indexed_dataset

    srp = write_indexed_dataset(tmp_path / "srp", n_docs=5, with_roles=True)
    plain = write_indexed_dataset(tmp_path / "plain", n_docs=5)

    def variant(*paths):
        return data_variant(load_recipe(runner.TINY, ["data.mock=false", f"data.data_path=[{','.join(paths)}]"]))

    assert data_variant(load_recipe(runner.TINY)) == "mock data"
    from megatron_srp.export.model_card import card_data

    blend = load_recipe(runner.TINY, ["data.mock=false", f"data.data_path=[0.5,{srp},0.5,{plain}]"])
    assert card_data(blend, "LlamaForCausalLM", None, "srp", "mit").datasets == [str(srp), str(plain)]
    assert variant(str(srp)).startswith("srp")
    assert variant(str(plain)) == "no reflections (plain, filter or rewrite)"
    assert variant("0.5", str(srp), "0.5", str(plain)).startswith("a blend with srp data (1 of 2")
    assert variant(str(tmp_path / "elsewhere")).startswith("unknown")
