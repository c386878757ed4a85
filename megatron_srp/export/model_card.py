"""The export's model card (README.md through huggingface_hub's ModelCard, with metadata) and its
generation_config.json, both saying how the model writes reflections and what stops generation.

Stop behaviour, as exported: ``eos_token_id`` is the tokenizer's end-of-text token, the only token
that ends plain ``model.generate``. A reflection's close tag does not stop: after a Safe reflection the
answer goes on. Stopping at the first flagged (Unsafe / Controversial) reflection is the job of
``megatron_srp.eval.generate.guarded_generate`` (a StoppingCriteria that reads each reflection as it
completes); plain ``generate`` and other runtimes do not stop there.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from typing import Optional

from huggingface_hub import ModelCard, ModelCardData

from megatron_srp.config import blend_from_data_path
from megatron_srp.export.hf_files import data_variant
from megatron_srp.reflection import DEFAULT, ReflectionFormat

PARITY_FILE = "parity.json"
STOP_NOTE = ("eos_token_id ends generation; a reflection's close tag does not (after a Safe reflection the answer "
             "continues). Stopping at the first Unsafe / Controversial reflection is done by "
             "megatron_srp.eval.generate.guarded_generate, not by generation_config.")


def reflection_metadata(fmt: ReflectionFormat = DEFAULT) -> dict:
    d = asdict(fmt)
    d["categories"] = list(d["categories"])
    d["example"] = fmt.render(fmt.parse_body(fmt.unsafe_word + fmt.category_separator + fmt.categories[0])
                              if fmt.categories else fmt.parse_body(fmt.unsafe_word)).strip()
    return d


SOURCE_FILE = "converted_from.json"


def record_source(ckpt_dir: str, hf_dir: str) -> None:
    """convert_from_hf's note of the Hugging Face folder a checkpoint came from (the later card's base model)."""
    with open(os.path.join(ckpt_dir, SOURCE_FILE), "w") as f:
        json.dump({"source": os.path.abspath(hf_dir)}, f)


def _source(recipe) -> Optional[str]:
    load = recipe.checkpoint.load
    if not load or not os.path.isfile(os.path.join(load, SOURCE_FILE)):
        return None
    with open(os.path.join(load, SOURCE_FILE)) as f:
        return json.load(f).get("source")


def base_model(recipe) -> Optional[str]:
    """The Hugging Face model the run started from (``checkpoint.load`` written by convert_from_hf): a hub
    cache path (models--ORG--NAME) gives ORG/NAME, any other folder its name."""
    source = _source(recipe)
    if not source:
        return None
    m = re.search(r"models--([^/]+)--([^/]+)", source)
    return f"{m.group(1)}/{m.group(2)}" if m else os.path.basename(os.path.normpath(source))


def _base_license(recipe) -> Optional[str]:
    """The license in the base model's own card, when its folder is here."""
    card = os.path.join(_source(recipe) or "", "README.md")
    return ModelCard.load(card).data.license if _source(recipe) and os.path.isfile(card) else None


def datasets(recipe) -> list[str]:
    if recipe.data.mock or not recipe.data.data_path:
        return []
    return blend_from_data_path(recipe.data.data_path)[0]


def card_data(recipe, arch: str, parity: Optional[dict], chat_template: str, license: Optional[str]) -> ModelCardData:
    extra = {"reflection_format": reflection_metadata(), "chat_template_name": chat_template,
             "megatron_srp": {"recipe": recipe.name, "data_variant": data_variant(recipe),
                              "reflection_loss": recipe.data.reflection_loss}}
    if parity is not None:
        extra["parity"] = {k: parity[k] for k in ("max_abs_diff", "top1_agreement", "compute", "tolerance", "passed")}
    return ModelCardData(license=license or _base_license(recipe), base_model=base_model(recipe),
                         datasets=datasets(recipe) or None, library_name="transformers",
                         pipeline_tag="text-generation", tags=["megatron-srp", "safety-reflection", arch.lower()],
                         **extra)


def write_model_card(out_dir: str, recipe, iteration: int, source: str, parity: Optional[dict], arch: str,
                     chat_template: str = "srp", license: Optional[str] = None) -> ModelCard:
    data = card_data(recipe, arch, parity, chat_template, license)
    fmt = DEFAULT
    rows = [("architecture", f"`{arch}`"), ("recipe", f"`{recipe.name}`"), ("step", iteration),
            ("base model", data.base_model or "none (pretrained from scratch)"),
            ("data", ", ".join(recipe.data.data_path) if recipe.data.data_path else
             ("mock data" if recipe.data.mock else "-")),
            ("data variant", data_variant(recipe)), ("reflection loss", recipe.data.reflection_loss),
            ("layers x hidden", f"{recipe.model.num_layers} x {recipe.model.hidden_size}"),
            ("vocab", recipe.model.vocab_size),
            ("license", data.license or "not set (tools/convert_to_hf.py --license)"),
            ("chat template", chat_template)]
    if parity is not None:
        rows.append(("logit parity", f"max abs diff {parity['max_abs_diff']:.3g}, top-1 agreement "
                                     f"{parity['top1_agreement']:.4f} ({'passed' if parity['passed'] else 'FAILED'})"))
    body = [f"# {recipe.name} (step {iteration})", "",
            f"Converted by megatron-srp's `tools/convert_to_hf.py` from the torch_dist checkpoint `{source}`.", "",
            "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
            "## Reflections", "",
            f"After a segment the model may write a reflection: `{fmt.render(fmt.parse_body(fmt.safe_word)).strip()}`, "
            f"or `{reflection_metadata()['example']}` with a category. "
            f"Label words: {fmt.safe_word}, {fmt.unsafe_word}, {fmt.controversial_word}.", "",
            f"Stopping: {STOP_NOTE}", "",
            "The recipe it was trained with is `recipe.yaml` beside this card; the parity check's report is "
            f"`{PARITY_FILE}`."]
    card = ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body) + "\n")
    card.save(os.path.join(out_dir, "README.md"))
    return card


def write_generation_config(out_dir: str, token_ids: dict) -> dict:
    """Token ids plus the reflection format and the stop note (extra keys transformers keeps as attributes)."""
    cfg = {k: v for k, v in token_ids.items() if v is not None}
    cfg["reflection_format"] = {k: v for k, v in reflection_metadata().items() if k != "categories"}
    cfg["reflection_stop"] = STOP_NOTE
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return cfg
