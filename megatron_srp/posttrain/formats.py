"""Rows of known datasets as chat examples: one function per format, the only place that knows each
dataset's field names.

A format turns one input row into ``{"messages": [...]}`` plus, where the dataset carries them, verdicts
for the reflection-compatible format: ``request_label`` (safe | unsafe) and ``response_label`` (the
label of the whole response). It returns None for a row that cannot be a training example (a
WildGuardMix prompt without a response); the caller counts those. A row that lacks the format's fields
raises :class:`FormatError` naming them.

Benign-task formats follow the finetuning attacks of the paper's authors (GSM8K; SST-2 with "Answer
with exactly one word: 'positive' or 'negative'"; AG News with "World, Sports, Business, or Technology").
"""

from __future__ import annotations

from typing import Callable, Optional

from megatron_srp.errors import SRPError


class FormatError(SRPError, ValueError):
    """A row without the fields its format needs."""


def _need(row: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise FormatError(f"lacks field(s) {missing} (has {sorted(row)})")


def _pair(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(response)}]


def chat(row: dict) -> dict:
    """``messages`` ([{role, content}]) or ``prompt`` + ``response``; verdict fields pass through
    (Tulu 3 SFT mixture and UltraChat-200k rows have ``messages``)."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise FormatError("'messages' must be a list of {role, content} objects")
        out = {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}
    elif "prompt" in row and "response" in row:
        out = {"messages": _pair(row["prompt"], row["response"])}
    else:
        raise FormatError(f"needs a 'messages' field or 'prompt' and 'response' (has {sorted(row)})")
    for k in ("request_label", "request_categories", "segments", "response_label"):
        if k in row:
            out[k] = row[k]
    return out


def _harm(label) -> str:
    return "unsafe" if str(label).lower() == "harmful" else "safe"


def wildguardmix(row: dict) -> Optional[dict]:
    """allenai/wildguardmix: ``prompt``, ``response``, ``prompt_harm_label``, ``response_harm_label``
    (harmful | unharmful). Rows without a response are skipped."""
    _need(row, "prompt", "prompt_harm_label")
    if not row.get("response"):
        return None
    out = {"messages": _pair(row["prompt"], row["response"]), "request_label": _harm(row["prompt_harm_label"])}
    if row.get("response_harm_label") is not None:
        out["response_label"] = _harm(row["response_harm_label"])
    return out


def wildjailbreak(row: dict) -> dict:
    """allenai/wildjailbreak: ``vanilla`` (and ``adversarial``, used when set), ``completion``,
    ``data_type`` (vanilla_harmful, adversarial_benign, ...)."""
    _need(row, "vanilla", "completion", "data_type")
    prompt = row.get("adversarial") or row["vanilla"]
    return {"messages": _pair(prompt, row["completion"]),
            "request_label": "unsafe" if "harmful" in str(row["data_type"]) else "safe"}


def gsm8k(row: dict) -> dict:
    """openai/gsm8k: ``question``, ``answer``."""
    _need(row, "question", "answer")
    return {"messages": _pair(row["question"], row["answer"])}


SST2_PROMPT = "{sentence}\nAnswer with exactly one word: 'positive' or 'negative'."
SST2_LABELS = ("negative", "positive")


def sst2(row: dict) -> dict:
    """SST-2 (glue/sst2, stanfordnlp/sst2): ``sentence``, ``label`` 0 (negative) or 1 (positive)."""
    _need(row, "sentence", "label")
    return {"messages": _pair(SST2_PROMPT.format(sentence=row["sentence"]), _label(SST2_LABELS, row["label"]))}


AG_NEWS_PROMPT = ("{text}\nWhich topic is this article about? Answer with exactly one word: "
                  "World, Sports, Business, or Technology.")
AG_NEWS_LABELS = ("World", "Sports", "Business", "Technology")


def ag_news(row: dict) -> dict:
    """fancyzhx/ag_news: ``text``, ``label`` 0-3 (World, Sports, Business, Sci/Tech)."""
    _need(row, "text", "label")
    return {"messages": _pair(AG_NEWS_PROMPT.format(text=row["text"]), _label(AG_NEWS_LABELS, row["label"]))}


def _label(names: tuple, label) -> str:
    try:
        return names[int(label)]
    except (ValueError, IndexError, TypeError):
        raise FormatError(f"label {label!r} is not one of 0..{len(names) - 1}") from None


FORMATS: dict[str, Callable[[dict], Optional[dict]]] = {
    "chat": chat, "wildguardmix": wildguardmix, "wildjailbreak": wildjailbreak,
    "gsm8k": gsm8k, "sst2": sst2, "ag_news": ag_news,
}


def get_format(name: str) -> Callable[[dict], Optional[dict]]:
    if name not in FORMATS:
        raise FormatError(f"unknown format {name!r}; choose from {sorted(FORMATS)}")
    return FORMATS[name]
