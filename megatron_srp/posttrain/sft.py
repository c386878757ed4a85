"""Full supervised finetuning of a Hugging Face model with the loss on assistant turns only.

transformers' ``Trainer`` does the work (CPU or GPU, checkpoints, resume); this module tokenizes
chat examples through the tokenizer's own chat template, masks everything but the assistant turns,
and writes ``metrics.jsonl`` like pretraining. The finished model is saved with safetensors.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from megatron_srp import hf
from megatron_srp.data.classify import build_classifier
from megatron_srp.data.segment import Segmenter, hf_token_offsets
from megatron_srp.io import atomic_dir
from megatron_srp.posttrain import chat_template as templates
from megatron_srp.posttrain.data import (
    PosttrainDataError, SourceSettings, label_conversations, read_conversations, write_jsonl,
)
from megatron_srp.reflection import DEFAULT, ReflectionFormat


@dataclass
class SFTTrainingSettings:
    """Optimisation (transformers ``TrainingArguments`` names)."""

    num_train_epochs: float = 1.0
    """Passes over the data."""
    max_steps: int = -1
    """Stop after this many steps (-1: follow num_train_epochs)."""
    per_device_train_batch_size: int = 8
    """Examples per step and device."""
    gradient_accumulation_steps: int = 1
    """Steps accumulated before an optimizer step."""
    learning_rate: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.03
    """Share of steps with linear warm-up."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    seed: int = 0
    """Data order and dropout seed."""
    logging_steps: int = 10
    """Steps between metrics lines."""
    save_steps: int = 500
    """Steps between checkpoints."""
    save_total_limit: int = 2
    """Checkpoints kept."""
    bf16: bool = False
    """bf16 autocast (GPU)."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is visible."""


@dataclass
class SFTRecipe:
    """``tools/posttrain.py RECIPE``: data, model, format and optimisation of one SFT run."""

    model: str = ""
    """Hugging Face model directory (an export of tools/convert_to_hf.py, or any causal LM)."""
    output_dir: str = "runs/sft"
    """Checkpoints, metrics.jsonl and, when done, the final model in ``OUTPUT/final``."""
    data: SourceSettings = field(default_factory=SourceSettings)
    """Conversations."""
    mix: list[SourceSettings] = field(default_factory=list)
    """More sources, appended after ``data`` (e.g. UltraChat-200k + WildGuardMix + WildJailbreak, each
    with its ``format`` and ``max_examples``)."""
    reflections: bool = True
    """Reflection-compatible targets (False: the same examples without reflections)."""
    label_source: str = "fields"
    """Where verdicts come from: ``fields`` (``request_label`` / ``segments`` in the rows, or rows
    already formatted when neither is present) or a classifier backend name (``qwen3guard``, ``hf``, ...)."""
    classifier_args: dict[str, str] = field(default_factory=dict)
    """Options of the classifier backend."""
    refusal: Optional[str] = None
    """Text after the flag on a harmful request (None: the turn ends at the flag)."""
    segment_tokens: int = 100
    """Budget of a response segment (sentence-aligned), in tokens of the model's tokenizer."""
    max_length: int = 1024
    """Tokens per example (longer ones are cut)."""
    chat_template: Optional[str] = None
    """Chat template: null keeps the model's own (an export of tools/convert_to_hf.py carries srp); a
    built-in name (srp: User:/Assistant: turns that keep reflections verbatim) or a Jinja file replaces it
    and is saved with the final model. With reflections, a template that drops or opens reflections is
    refused."""
    training: SFTTrainingSettings = field(default_factory=SFTTrainingSettings)
    """Optimisation."""


def tokenize_chat(tokenizer, messages: Sequence[dict], max_length: int) -> dict:
    """input_ids and labels with -100 everywhere except the assistant turns.

    The chat template renders prefixes of the conversation: assistant turn i is the text between the
    prefix ending with the generation prompt and the prefix that includes the turn; tokens of the whole
    conversation whose characters start inside such a span are trained on. An end-of-text token closes
    the conversation (and is trained on) unless the template already ends with it."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), add_generation_prompt=True, tokenize=False)
        upto = tokenizer.apply_chat_template(list(messages[:i + 1]), tokenize=False)
        if not upto.startswith(before):
            raise PosttrainDataError("the chat template does not render conversations prefix-consistently")
        spans.append((len(before), len(upto)))
    text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [t if any(a <= s < b for a, b in spans) else -100 for t, (s, _) in zip(ids, enc["offset_mapping"])]
    if not text.endswith(tokenizer.eos_token):
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id if messages[-1]["role"] == "assistant" else -100)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


class _Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch):
        import torch

        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def load_tokenizer(model_dir: str, chat_template: Optional[str] = None, fmt=None):
    """The model's tokenizer with ``chat_template`` (None: its own); with a reflection format ``fmt``, the
    template must keep reflections (``chat_template.check``)."""
    if not hf.has_tokenizer_files(model_dir):
        raise PosttrainDataError(f"{model_dir}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        tok = hf.load_tokenizer(model_dir)
    except hf.HFError as e:  # a damaged tokenizer file: exit 2 with the file named, as every input error
        raise PosttrainDataError(str(e)) from None
    if chat_template:
        try:
            tok.chat_template = templates.resolve(chat_template)
        except templates.ChatTemplateError as e:
            raise PosttrainDataError(f"chat_template: {e}") from None
    if tok.chat_template is None:
        raise PosttrainDataError(f"{model_dir}: the tokenizer has no chat template; set chat_template=srp (built in: "
                                 "keeps reflections) or chat_template=FILE.jinja")
    if fmt is not None:
        try:
            where = f"chat_template {chat_template}" if chat_template else f"{model_dir}: chat template"
            templates.check(tok, fmt, where)
        except templates.ChatTemplateError as e:
            raise PosttrainDataError(str(e)) from None
    return tok


def train_sft(model_dir: str, examples: Sequence[dict], output_dir: str, settings: SFTTrainingSettings,
              max_length: int = 1024, quiet: bool = False, chat_template: Optional[str] = None) -> str:
    """Finetune ``model_dir`` on chat ``examples``; returns ``OUTPUT/final`` (written last, atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    final = os.path.join(output_dir, "final")
    if os.path.isfile(os.path.join(final, "config.json")):
        return final  # finished earlier
    tok = load_tokenizer(model_dir, chat_template)
    rows = [tokenize_chat(tok, ex["messages"], max_length) for ex in examples]
    rows = [r for r in rows if any(lab != -100 for lab in r["labels"])]
    if not rows:
        raise PosttrainDataError("no example has an assistant token to train on")
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=False, **hf.dtype_kwarg(torch.float32))
    os.makedirs(output_dir, exist_ok=True)
    metrics_path = os.path.join(output_dir, "metrics.jsonl")

    class Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    s = asdict(settings)
    # warmup as a ratio is gone from transformers 5's TrainingArguments: give it in steps
    ratio = s.pop("warmup_ratio")
    per_step = settings.per_device_train_batch_size * settings.gradient_accumulation_steps
    total = settings.max_steps if settings.max_steps > 0 else math.ceil(
        math.ceil(len(rows) / per_step) * settings.num_train_epochs)
    s["warmup_steps"] = int(math.ceil(ratio * total))
    args = TrainingArguments(output_dir=output_dir, report_to=[], disable_tqdm=quiet, save_strategy="steps",
                             remove_unused_columns=False, dataloader_num_workers=0, **s)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=_Collator(tok.pad_token_id),
                      callbacks=[Metrics()])
    last = _last_checkpoint(output_dir)
    trainer.train(resume_from_checkpoint=last)
    with atomic_dir(final) as tmp:
        trainer.save_model(tmp)
        tok.save_pretrained(tmp)
    return final


def _last_checkpoint(output_dir: str) -> Optional[str]:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def build_examples(r: SFTRecipe, tokenizer) -> list[dict]:
    """The recipe's conversations in the reflection-compatible (or plain) format."""
    convs = [c for src in [r.data, *r.mix] for c in read_conversations(src)]
    classifier = None
    if r.label_source != "fields":
        classifier = build_classifier(r.label_source, **r.classifier_args)
    fmt = ReflectionFormat(categories=tuple(getattr(classifier, "categories", ())) or ReflectionFormat().categories)
    labelled = [c for c in convs if {"segments", "request_label", "response_label"} & set(c[1])]
    if classifier is None and not labelled:
        # Rows already in their final format: accepted only when they say so (reflections present, or
        # the baselines' plain format), never as a silent fall-back to training without reflections.
        if r.reflections and not any(fmt.spans(msgs[-1]["content"]) for _, _, msgs in convs):
            raise PosttrainDataError(
                f"{convs[0][0] if convs else 'data'}: the rows carry no verdicts (request_label, segments, "
                "response_label) and no reflections, and label_source is 'fields': set label_source to a "
                "classifier backend (e.g. qwen3guard), or reflections=false for the plain format")
        return [{"messages": msgs} for _, _, msgs in convs]
    segmenter = Segmenter(hf_token_offsets(tokenizer), budget=r.segment_tokens)
    return list(label_conversations(convs, fmt, classifier, segmenter, r.refusal, r.reflections))


def run_recipe(r: SFTRecipe) -> str:
    if not r.model:
        raise PosttrainDataError("model: the Hugging Face model directory to post-train is not set")
    tok = load_tokenizer(r.model, r.chat_template, DEFAULT if r.reflections else None)
    examples = build_examples(r, tok)
    os.makedirs(r.output_dir, exist_ok=True)
    write_jsonl(examples, os.path.join(r.output_dir, "examples.jsonl"))
    with open(os.path.join(r.output_dir, "recipe.json"), "w") as f:
        json.dump(asdict(r), f, indent=1)
    return train_sft(r.model, examples, r.output_dir, r.training, r.max_length, chat_template=r.chat_template)
