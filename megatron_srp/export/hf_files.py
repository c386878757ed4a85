"""The files of a Hugging Face model directory: config, tokenizer, safetensors (the card and generation
config: model_card.py)."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch
from safetensors.torch import save_file

from megatron_srp.config import blend_from_data_path
from megatron_srp.data.roles import has_roles
from megatron_srp.export.mapping import Shape, UnsupportedModel
from megatron_srp.posttrain import chat_template as chat_templates

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = chat_templates.DEFAULT_NAME

SUPPORTED = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}


def architecture(shape: Shape) -> str:
    return "Qwen3ForCausalLM" if shape.qk_layernorm else "LlamaForCausalLM"


def write_config(out_dir: str, recipe, shape: Shape, dtype: torch.dtype, token_ids: dict) -> dict:
    """config.json through transformers' own config class, plus a top-level ``rope_theta`` so that
    transformers 4.x (which ignores ``rope_parameters``) reads the same RoPE base."""
    from transformers import LlamaConfig, Qwen3Config

    m = recipe.model
    arch = architecture(shape)
    rope = float(m.rotary_base)
    kwargs = dict(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                  intermediate_size=shape.ffn_hidden_size, num_hidden_layers=shape.num_layers,
                  num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_query_groups,
                  head_dim=shape.head_dim, hidden_act="silu",
                  max_position_embeddings=m.max_position_embeddings or m.seq_length, rms_norm_eps=m.norm_epsilon,
                  tie_word_embeddings=shape.tied, attention_bias=False, attention_dropout=0.0,
                  initializer_range=m.init_method_std, rope_parameters={"rope_type": "default", "rope_theta": rope},
                  **token_ids)
    cfg = Qwen3Config(**kwargs) if arch == "Qwen3ForCausalLM" else LlamaConfig(mlp_bias=False, **kwargs)
    cfg.architectures = [arch]
    cfg.dtype = dtype
    cfg.save_pretrained(out_dir)
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        data = json.load(f)
    data["rope_theta"] = rope
    data["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    return data


def set_chat_template(tok, spec: str, src: str) -> None:
    """The export's chat template, checked to keep reflections (``keep`` without one: none, with a warning)."""
    if spec == chat_templates.KEEP and not tok.chat_template:
        log.warning("--chat-template keep: %s has no chat template; post-training and evaluation will need one "
                    "(chat_template=srp)", src)
        return
    try:
        chat_templates.apply(tok, spec, where="--chat-template")
    except chat_templates.ChatTemplateError as e:
        raise UnsupportedModel(str(e)) from None


def copy_tokenizer(src: str, out_dir: str, vocab_size: int, chat_template: str = DEFAULT_TEMPLATE) -> dict:
    """Save the tokenizer beside the model (readable by transformers 4.x and 5.x) with the chat template
    ``chat_template`` (a built-in name, a file, or ``keep``); returns its ids."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UnsupportedModel(f"--tokenizer {src}: cannot load a tokenizer: {e}") from e
    if len(tok) > vocab_size:
        raise UnsupportedModel(f"--tokenizer {src} has {len(tok)} tokens but the model's vocab_size is {vocab_size}")
    set_chat_template(tok, chat_template, src)
    tok.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    added = [t for t in tok.all_special_tokens if t not in (tok.eos_token, tok.bos_token, tok.pad_token, tok.unk_token)]
    if added:
        cfg["additional_special_tokens"] = added
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}


class ShardedSafetensorsWriter:
    """Tensors in, ``model-0000i-of-0000N.safetensors`` + index out (one ``model.safetensors`` if it fits).

    At most ``max_shard_bytes`` of tensors are held before a shard is written."""

    def __init__(self, out_dir: str, max_shard_bytes: int):
        self.out_dir, self.max = out_dir, max_shard_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.shards: list[list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.size + nbytes > self.max:
            self._flush()
        self.buffer[name] = tensor.detach().clone()  # own storage: safetensors refuses shared memory
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        i = len(self.shards)
        save_file(self.buffer, os.path.join(self.out_dir, f"shard-{i:05d}.tmp"), metadata={"format": "pt"})
        self.shards.append(list(self.buffer))
        self.buffer, self.size = {}, 0

    def close(self) -> list[str]:
        if self.buffer:
            self._flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            os.replace(os.path.join(self.out_dir, f"shard-{i:05d}.tmp"), os.path.join(self.out_dir, name))
        if n > 1:
            weight_map = {t: names[i] for i, shard in enumerate(self.shards) for t in shard}
            with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": self.total}, "weight_map": weight_map}, f, indent=2)
        return names


class SafetensorsDir:
    """Read tensors by name from a HF directory's safetensors (single file or sharded with an index)."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        index = os.path.join(hf_dir, "model.safetensors.index.json")
        single = os.path.join(hf_dir, "model.safetensors")
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        elif os.path.isfile(single):
            weight_map = None
        else:
            hint = " (pytorch_model.bin is not read: convert it to safetensors first)" \
                if os.path.exists(os.path.join(hf_dir, "pytorch_model.bin")) else ""
            raise UnsupportedModel(f"{hf_dir}: no model.safetensors or model.safetensors.index.json{hint}")
        self._files = {}
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        for name in files:
            self._files[name] = safe_open(os.path.join(hf_dir, name), framework="pt")
        self.where = weight_map or {k: "model.safetensors" for k in self._files["model.safetensors"].keys()}

    def keys(self):
        return self.where.keys()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise UnsupportedModel(f"the Hugging Face model has no tensor {name!r}")
        return self._files[self.where[name]].get_tensor(name)


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UnsupportedModel(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    with open(path) as f:
        cfg = json.load(f)
    arch = (cfg.get("architectures") or [None])[0]
    if arch not in SUPPORTED:
        raise UnsupportedModel(f"{path}: architecture {arch!r} (model_type {cfg.get('model_type')!r}) is not "
                               f"supported; supported: {sorted(SUPPORTED)}")
    problems = []
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    if (rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default") != "default":
        problems.append(f"rope scaling {rope.get('rope_type') or scaling}")
    if cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={cfg['hidden_act']}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        problems.append("linear biases")
    if cfg.get("use_sliding_window"):
        problems.append("sliding-window attention")
    if problems:
        raise UnsupportedModel(f"{path}: not expressible in megatron-srp's GPT: " + ", ".join(problems))
    return cfg


def hf_rope_theta(cfg: dict) -> float:
    return float((cfg.get("rope_parameters") or {}).get("rope_theta") or cfg.get("rope_theta") or 10000.0)


def data_variant(recipe) -> str:
    """What the training data was, as far as the files tell: srp data carries the role sidecar."""

    if recipe.data.mock or not recipe.data.data_path:
        return "mock data"
    prefixes, _ = blend_from_data_path(recipe.data.data_path)
    with_roles = [p for p in prefixes if has_roles(p)]
    if with_roles:
        return "srp (reflection-interleaved; role sidecar present)" if len(with_roles) == len(prefixes) else \
            f"a blend with srp data ({len(with_roles)} of {len(prefixes)} prefixes carry reflections)"
    if any(os.path.exists(f"{p}.idx") for p in prefixes):
        return "no reflections (plain, filter or rewrite)"
    return "unknown (the data files are not on this machine)"
