"""Checkpoints convert_to_hf meets outside our own runs: one Megatron-LM's pretrain_gpt.py wrote (no
recipe.yaml; the model is in common.pt's ``args``), and damaged ones (a truncated shard, a truncated
common.pt), which must exit 2 naming the file. Ours carry Megatron-LM's ``args`` in turn."""

from __future__ import annotations

import argparse
import json
import shutil

import torch

from tests.export.helpers import TO_HF, tool


def megatron_lm_args(**changes) -> argparse.Namespace:
    """The args Megatron-LM's pretrain_gpt.py saves, for tiny_cpu at TP=2 with a Hugging Face tokenizer
    (written by hand with Megatron-LM's names and defaults, not by our writer)."""
    args = dict(num_layers=4, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, group_query_attention=True,
                num_query_groups=2, kv_channels=16, seq_length=128, max_position_embeddings=128, padded_vocab_size=512,
                vocab_size=None, make_vocab_size_divisible_by=128, tensor_model_parallel_size=2,
                pipeline_model_parallel_size=1, normalization="RMSNorm", norm_epsilon=1e-5, swiglu=True,
                untie_embeddings_and_output_weights=False, position_embedding_type="rope", rotary_base=10000,
                rotary_percent=1.0, rotary_interleaved=False, use_rope_scaling=False, add_bias_linear=False,
                add_qkv_bias=False, qk_layernorm=False, num_experts=None, multi_latent_attention=False,
                apply_layernorm_1p=False, bf16=False, fp16=False, params_dtype=torch.float32,
                init_method_std=0.02, tokenizer_type="HuggingFaceTokenizer", tokenizer_model="/cluster/tok",
                ckpt_format="torch_dist", transformer_impl="local", micro_batch_size=4, lr=3e-3)
    args.update(changes)
    return argparse.Namespace(**args)


def as_megatron_lm(ckpt, dest, args: argparse.Namespace):
    """Our iteration folder rewritten as Megatron-LM leaves it: no recipe.yaml, its args in common.pt."""
    it = dest / "iter_0000006"
    shutil.copytree(ckpt / "iter_0000006", it)
    (it / "recipe.yaml").unlink()
    torch.save({"args": args, "checkpoint_version": 3.0, "iteration": 6, "num_floating_point_operations_so_far": 0,
                "opt_param_scheduler": {"max_lr": 3e-3, "num_steps": 48}}, it / "common.pt")
    (dest / "latest_checkpointed_iteration.txt").write_text("6")
    return dest


def test_megatron_lm_checkpoint_converts_from_its_args(trained, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    ckpt = trained("gqa_tied_tp2")
    mlm = as_megatron_lm(ckpt, tmp_path / "mlm", megatron_lm_args())
    out = tmp_path / "hf"
    tool(TO_HF, "--checkpoint", mlm, "--output", out, "--tokenizer", tokenizer, "--dtype", "fp32")
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["top1_agreement"] == 1.0, parity
    cfg = json.loads((out / "config.json").read_text())
    # vocab_size: None in the args, so the tokenizer's length (< the checkpoint's 512 padded rows)
    n_tokens = len(AutoTokenizer.from_pretrained(tokenizer))
    assert (cfg["vocab_size"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (n_tokens, 2, 256)
    assert cfg["tie_word_embeddings"] is True and cfg["architectures"] == ["LlamaForCausalLM"]

    refused = as_megatron_lm(ckpt, tmp_path / "moe", megatron_lm_args(num_experts=8, rotary_percent=0.5))
    p = tool(TO_HF, "--checkpoint", refused, "--output", tmp_path / "x", check=False)
    assert p.returncode == 2 and "num_experts=8" in p.stderr and "rotary_percent=0.5" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "x").exists()


def test_damaged_files_are_named(trained, tmp_path):
    ckpt = trained("gqa_tied_tp2")
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    shard = sorted((bad / "iter_0000006").glob("*.distcp"))[-1]  # 4 shards (mcore 0.16), 2 (0.19)
    shard.write_bytes(shard.read_bytes()[:1000])
    p = tool(TO_HF, "--checkpoint", bad, "--output", tmp_path / "o1", check=False)
    assert p.returncode == 2 and f"{shard}: 1000 bytes" in p.stderr and "cut short" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not (tmp_path / "o1").exists()

    mlm = as_megatron_lm(ckpt, tmp_path / "mlm", megatron_lm_args())
    common = mlm / "iter_0000006" / "common.pt"
    common.write_bytes(common.read_bytes()[:200])
    p = tool(TO_HF, "--checkpoint", mlm, "--output", tmp_path / "o2", check=False)
    assert p.returncode == 2 and f"{common}: cannot be read" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


def test_our_checkpoints_carry_megatron_lm_args(trained):
    from megatron_srp.config import load_recipe
    from megatron_srp.training.megatron_lm_args import load_common, recipe_from_args

    it = trained("gqa_tied_tp2") / "iter_0000006"
    # common.pt (mcore 0.16) or the common_state object in the shards (0.19), weights_only=True either way
    common = load_common(str(it))
    args = common["args"]
    assert isinstance(args, argparse.Namespace) and common["checkpoint_version"] == 3.0
    assert (args.num_layers, args.num_query_groups, args.group_query_attention, args.padded_vocab_size,
            args.swiglu, args.untie_embeddings_and_output_weights, args.tensor_model_parallel_size) == \
        (4, 2, True, 512, True, False, 2)
    ours = load_recipe(it / "recipe.yaml").model
    back = recipe_from_args(args, "ours").model
    for key in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                "vocab_size", "normalization", "activation", "share_embeddings_and_output_weights", "rotary_base"):
        assert getattr(back, key) == getattr(ours, key), key
