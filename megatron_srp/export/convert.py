"""Megatron-Core torch_dist checkpoint <-> Hugging Face directory, with a logit parity check.

``to_hf`` streams the checkpoint one stacked tensor at a time through ``mapping.to_hf`` into
sharded safetensors; ``from_hf`` fills a Megatron-Core GPTModel from safetensors through
``mapping.from_hf`` and saves it with ``dist_checkpointing``. Both then run the Megatron model and
the Hugging Face model on the same tokens and compare logits; the output directory appears (an
atomic rename) only when the check passed.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from megatron_srp.config import Recipe, RecipeError, load_recipe, padded_vocab_size, recipe_from_dict
from megatron_srp.export import hf_files, mapping, model_card
from megatron_srp.export.model_card import PARITY_FILE
from megatron_srp.export.megatron_side import load_weights, logits, megatron_model, round_params_to
from megatron_srp.export.torch_dist_reader import TorchDistCheckpoint
from megatron_srp.io import replace_dir
from megatron_srp.posttrain.chat_template import ChatTemplateError
from megatron_srp.training import layout as ck
from megatron_srp.training.layout import CheckpointError
from megatron_srp.training.megatron_lm_args import megatron_lm_common

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class ParityError(RuntimeError):
    """The converted model's logits differ from Megatron's beyond the tolerance."""


@dataclass
class ParitySettings:
    batch: int = 2
    """Sequences of random token ids both models read."""
    seq: int = 64
    """Their length (at most the model's seq_length)."""
    seed: int = 0
    """Seed of the token ids."""
    compute: str = "auto"
    """dtype both models compute in: auto (the exported weights' dtype), fp32 (exact; a full fp32 copy of
    the model in memory) or bf16. Either way both models hold exactly the exported weight values."""
    atol: Optional[float] = None
    """Pass when max |megatron - hf| <= atol + rtol * max |megatron|; defaults per compute dtype (TOLERANCE)."""
    rtol: Optional[float] = None

    def compute_dtype(self, weights: torch.dtype) -> torch.dtype:
        return weights if self.compute == "auto" else DTYPES[self.compute]

    def bounds(self, compute: torch.dtype) -> tuple[float, float]:
        atol, rtol = TOLERANCE[compute]
        return (self.atol if self.atol is not None else atol, self.rtol if self.rtol is not None else rtol)


# fp32: kernels differ only in summation order. bf16: every op rounds to 8 bits of mantissa; a mapping
# error (a wrong q/k/v split, a swapped gate/up) moves logits by their own magnitude, far beyond this.
# Measured: fp32 3.6e-7 (tiny_cpu); bf16 0.5% (tiny_cpu) and 3.4% (SmolLM2-1.7B shape, random init) of max |logit|.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (0.0, 0.1)}


def parity_tokens(vocab_size: int, seq_length: int, p: ParitySettings) -> torch.Tensor:
    g = torch.Generator().manual_seed(p.seed)
    return torch.randint(0, vocab_size, (p.batch, min(p.seq, seq_length)), generator=g)


def compare(meg: torch.Tensor, hf: torch.Tensor, p: ParitySettings, dtype: torch.dtype) -> dict:
    compute = p.compute_dtype(dtype)
    atol, rtol = p.bounds(compute)
    meg, hf = meg.float(), hf.float()
    diff = (meg - hf).abs()
    bound = atol + rtol * float(meg.abs().max())
    return {"tokens": list(meg.shape[:2]), "weights_dtype": str(dtype).removeprefix("torch."),
            "compute": str(compute).removeprefix("torch."), "atol": atol, "rtol": rtol,
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "mean_abs_logit": float(meg.abs().mean()),
            "max_abs_logit": float(meg.abs().max()), "tolerance": bound,
            "top1_agreement": float((meg.argmax(-1) == hf.argmax(-1)).float().mean()),
            "passed": bool(float(diff.max()) <= bound)}


def hf_logits(hf_dir: str, tokens: torch.Tensor, vocab_size: int, compute: torch.dtype) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=compute, attn_implementation="eager",
                                                 trust_remote_code=False)
    model.eval()
    with torch.no_grad():
        out = model(tokens).logits[..., :vocab_size].float()
    del model
    gc.collect()
    return out


def stored_key(ckpt: TorchDistCheckpoint, key: str) -> Optional[str]:
    """The checkpoint's name for ``key`` (norms saved under the local spec's module names are accepted)."""
    if key in ckpt.tensors:
        return key
    if key.startswith(mapping.LAYER_PREFIX):
        alias = {v: k for k, v in mapping.NORM_ALIASES.items()}.get(key[len(mapping.LAYER_PREFIX):])
        if alias and mapping.LAYER_PREFIX + alias in ckpt.tensors:
            return mapping.LAYER_PREFIX + alias
    return None


def check_shapes(ckpt: TorchDistCheckpoint, shape: mapping.Shape) -> None:
    """Every tensor the recipe implies is in the checkpoint with the implied shape; else name them all."""
    problems = []
    for key in mapping.megatron_keys(shape):
        found = stored_key(ckpt, key)
        if found is None:
            problems.append(f"{key}: missing")
        elif ckpt.shape(found) != mapping.expected_megatron_shape(key, shape):
            problems.append(f"{key}: checkpoint {list(ckpt.shape(found))} != recipe "
                            f"{list(mapping.expected_megatron_shape(key, shape))}")
    if problems:
        r = ckpt.recipe.model
        raise CheckpointError(
            f"{ckpt.path}: the tensors do not match its recipe (num_layers={r.num_layers}, hidden_size={r.hidden_size}, "
            f"vocab_size={r.vocab_size}, heads={r.num_attention_heads}/{r.num_query_groups}):\n  " + "\n  ".join(problems))


@contextmanager
def staged_output(output: str, overwrite: bool):
    """A temporary directory beside ``output``; removed if the conversion fails before ``publish``."""
    if os.path.exists(output) and os.listdir(output) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty (pass --overwrite to replace it)")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=os.path.dirname(output))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: str) -> None:
    """Give ``root`` and everything in it the modes a plain mkdir / open would have given: mkdtemp makes
    0700 folders, and a shared filesystem's group must be able to read an export."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o666 & ~mask)


def publish(tmp: str, output: str, report: Optional[dict]) -> None:
    """Write the parity report; rename to ``output`` when it passed, else to OUTPUT.parity-failed and raise."""
    if report is not None:
        with open(os.path.join(tmp, PARITY_FILE), "w") as f:
            json.dump(report, f, indent=2)
    apply_umask(tmp)
    target = output if report is None or report["passed"] else f"{output}.parity-failed"
    replace_dir(tmp, target)
    if target != output:
        raise ParityError(f"logits differ: max abs diff {report['max_abs_diff']:.3g} > tolerance "
                          f"{report['tolerance']:.3g} (top-1 agreement {report['top1_agreement']:.4f}); the converted "
                          f"files and {PARITY_FILE} are in {target}")


def to_hf(checkpoint: str, output: str, iteration: Optional[int] = None, tokenizer: Optional[str] = None,
          dtype: str = "auto", verify: bool = True, parity: ParitySettings = ParitySettings(),
          max_shard_bytes: int = 2 << 30, overwrite: bool = False, progress: bool = True,
          chat_template: str = hf_files.DEFAULT_TEMPLATE, license: Optional[str] = None) -> dict:
    ckpt = TorchDistCheckpoint(checkpoint, iteration, tokenizer)
    recipe = ckpt.recipe
    shape = mapping.shape_from_recipe(recipe)
    check_shapes(ckpt, shape)
    out_dtype = DTYPES[dtype] if dtype != "auto" else (torch.bfloat16 if recipe.precision.bf16 else torch.float32)
    tok_src = tokenizer or recipe.data.tokenizer_model
    if tokenizer and not os.path.isdir(tokenizer):
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no such directory")
    if tok_src and not os.path.isdir(tok_src):
        log.warning("the recipe's data.tokenizer_model %s is not here: writing the model without tokenizer files "
                    "(pass --tokenizer DIR)", tok_src)
        tok_src = None
    output = os.path.abspath(output)
    with staged_output(output, overwrite) as tmp:
        token_ids = hf_files.copy_tokenizer(tok_src, tmp, shape.vocab_size, chat_template) if tok_src else {}
        writer = hf_files.ShardedSafetensorsWriter(tmp, max_shard_bytes)
        keys = mapping.megatron_keys(shape)
        for key in tqdm(keys, desc="convert", unit="tensor", disable=not progress):
            stacked = ckpt.read(stored_key(ckpt, key))
            for name, t in mapping.to_hf(key, stacked, shape):
                writer.add(name, t.to(out_dtype))
            del stacked
        files = writer.close()
        hf_files.write_config(tmp, recipe, shape, out_dtype, token_ids)
        model_card.write_generation_config(tmp, token_ids)
        with open(os.path.join(tmp, "recipe.yaml"), "w") as f:
            f.write(recipe.to_yaml())
        report = None
        if verify:
            tokens = parity_tokens(shape.vocab_size, recipe.model.seq_length, parity)
            with megatron_model(recipe) as model:
                load_weights(model, ckpt.path)
                round_params_to(model, out_dtype, parity.compute_dtype(out_dtype))
                meg = logits(model, tokens)[..., :shape.vocab_size]
            del model  # the `as` name would keep the Megatron model alive while the HF model loads
            gc.collect()
            report = compare(meg, hf_logits(tmp, tokens, shape.vocab_size, parity.compute_dtype(out_dtype)),
                             parity, out_dtype)
            report.update(direction="megatron->hf", checkpoint=ckpt.path)
        model_card.write_model_card(tmp, recipe, ckpt.iteration, ckpt.path, report, hf_files.architecture(shape),
                                    chat_template if tok_src else "none (no tokenizer written)", license)
        publish(tmp, output, report)
    return {"output": output, "iteration": ckpt.iteration, "architecture": hf_files.architecture(shape),
            "dtype": str(out_dtype).removeprefix("torch."), "files": files, "parity": report}


def recipe_for_hf(hf_dir: str, base_recipe: Optional[str], overrides: list[str]) -> Recipe:
    """The base recipe (training settings) with its ``model`` section taken from the HF config."""
    cfg = hf_files.read_hf_config(hf_dir)
    heads = int(cfg["num_attention_heads"])
    model = {
        "num_layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"], "num_attention_heads": heads,
        "num_query_groups": cfg.get("num_key_value_heads") or heads,
        "kv_channels": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        "ffn_hidden_size": cfg["intermediate_size"], "vocab_size": cfg["vocab_size"],
        "rotary_base": hf_files.hf_rope_theta(cfg), "norm_epsilon": cfg.get("rms_norm_eps", 1e-6),
        "share_embeddings_and_output_weights": bool(cfg.get("tie_word_embeddings", False)),
        "qk_layernorm": cfg["architectures"][0] == "Qwen3ForCausalLM", "normalization": "RMSNorm",
        "activation": "swiglu", "position_embedding_type": "rope", "add_bias_linear": False,
        "max_position_embeddings": cfg.get("max_position_embeddings"),
    }
    model_overrides = [f"model.{k}={json.dumps(v)}" for k, v in model.items()]
    # keep the source's precision (a bf16 model stays bf16; an fp32 one converts bit-exactly)
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
    model_overrides.append(f"precision.bf16={json.dumps(dtype == 'bfloat16')}")
    if any(os.path.isfile(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        model_overrides.append(f"data.tokenizer_model={json.dumps(os.path.abspath(hf_dir))}")
    recipe = load_recipe(base_recipe or _DEFAULT_BASE, model_overrides + list(overrides))
    if recipe.model.seq_length > (recipe.model.max_position_embeddings or recipe.model.seq_length):
        recipe = load_recipe(base_recipe or _DEFAULT_BASE, model_overrides + list(overrides) +
                             [f"model.seq_length={recipe.model.max_position_embeddings}"])
    return recipe


_DEFAULT_BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "recipes", "smollm2_1p7b_base.yaml")


def from_hf(hf_dir: str, output: str, base_recipe: Optional[str] = None, overrides: list[str] = (),
            verify: bool = True, parity: ParitySettings = ParitySettings(), overwrite: bool = False,
            progress: bool = True) -> dict:
    from megatron.core import dist_checkpointing


    recipe = recipe_for_hf(hf_dir, base_recipe, list(overrides))
    shape = mapping.shape_from_recipe(recipe)
    source = hf_files.SafetensorsDir(hf_dir)
    output = os.path.abspath(output)
    if ck.read_tracker(output) is not None and not overwrite:
        raise FileExistsError(f"{output} already holds a checkpoint (pass --overwrite to replace it)")
    with staged_output(output, True) as tmp:
        d = recipe.to_dict()
        d["checkpoint"]["dir"] = output

        recipe = recipe_from_dict(d)
        report = None
        weights_dtype = torch.bfloat16 if recipe.precision.bf16 else torch.float32
        with megatron_model(recipe) as model:
            state = dict(model.state_dict())
            filled = set()
            # embedding, final norm, [output layer]; per layer qkv, fc1, o_proj, fc2, two norms, [q/k norms]
            n_tensors = 2 + (not shape.tied) + shape.num_layers * (6 + 2 * shape.qk_layernorm)
            for name, tensor in tqdm(mapping.from_hf(source.get, shape), total=n_tensors, desc="convert",
                                     unit="tensor", disable=not progress):
                if name not in state:
                    raise CheckpointError(f"internal: Megatron model has no parameter {name}")
                if tuple(state[name].shape) != tuple(tensor.shape):
                    raise mapping.UnsupportedModel(f"{name}: Hugging Face gives {list(tensor.shape)}, the Megatron "
                                                   f"model expects {list(state[name].shape)}")
                with torch.no_grad():
                    state[name].copy_(tensor)
                filled.add(name)
                del tensor
            del source  # close the safetensors memory maps before saving and verifying
            gc.collect()
            missing = [k for k in state if k not in filled and not k.endswith("_extra_state")
                       and not (shape.tied and k == mapping.OUTPUT)]
            if missing:
                raise CheckpointError(f"internal: parameters not filled from the Hugging Face model: {missing}")
            target = ck.write_weights_only(tmp, model.sharded_state_dict(), recipe, dist_checkpointing.save,
                                           extra=megatron_lm_common(recipe))
            if verify:
                tokens = parity_tokens(shape.vocab_size, recipe.model.seq_length, parity)
                with torch.no_grad():
                    for p in model.parameters():
                        p.zero_()
                load_weights(model, target)  # prove the saved files, not the model in memory
                round_params_to(model, weights_dtype, parity.compute_dtype(weights_dtype))
                meg = logits(model, tokens)[..., :shape.vocab_size]
            del state
        del model  # the `as` name would keep the Megatron model alive while the HF model loads
        gc.collect()
        if verify:
            report = compare(meg, hf_logits(hf_dir, tokens, shape.vocab_size, parity.compute_dtype(weights_dtype)),
                             parity, weights_dtype)
            report.update(direction="hf->megatron", source=os.path.abspath(hf_dir))
        model_card.record_source(tmp, hf_dir)
        ck.commit(tmp, 0, recipe.to_yaml())
        publish(tmp, output, report)
    return {"output": output, "recipe": recipe.name, "parity": report,
            "padded_vocab_size": padded_vocab_size(recipe)}


def add_parity_args(parser) -> None:
    """The parity flags both command-line tools take."""
    parser.add_argument("--no-verify", action="store_true", help="skip the logit parity check")
    parser.add_argument("--parity-dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="dtype both models compute in (auto: the weights' dtype; fp32 is exact but holds an "
                             "fp32 copy of the model)")
    parser.add_argument("--atol", type=float, help="parity tolerance (default: 1e-4 in fp32, 0 in bf16)")
    parser.add_argument("--rtol", type=float, help="relative to max |logit| (default: 1e-4 in fp32, 0.1 in bf16)")


def parity_from_args(args) -> ParitySettings:
    return ParitySettings(compute=args.parity_dtype, atol=args.atol, rtol=args.rtol)


def run_cli(convert, **kwargs) -> int:
    """What both command-line tools do around a conversion: exit 0 and the result as JSON, 2 on bad input
    (the message names it), 3 when the parity check failed."""

    try:
        result = convert(**kwargs)
    except ParityError as e:
        print(f"parity check failed: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, RecipeError, ChatTemplateError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
