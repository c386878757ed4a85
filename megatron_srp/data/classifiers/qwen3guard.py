"""Generative guard models as classifier backends: Qwen3Guard-Gen (the default), Llama Guard and
WildGuard. One engine (batched greedy generation with transformers, or vLLM), one prompt builder and
one answer parser per guard:

- ``qwen3guard``: the guard's own chat template; ``Safety: ...`` / ``Categories: ...``.
- ``llamaguard``: Llama Guard 3's chat template; ``safe`` or ``unsafe`` then ``S1,S10``.
- ``wildguard``: WildGuard's instruction format (no chat template); ``Harmful request: yes|no`` ...
  ``Harmful response: yes|no``.

How a segment is asked about: with preceding context, the context is the user turn and the segment
the assistant turn, so the guard moderates the segment *given* what came before (Qwen3Guard's
response moderation); a segment at the start of a document is moderated alone as a user turn
(prompt moderation). The guard's tokenizer carries its policy in its chat template; a model
without a chat template is refused (pass ``chat_template=PATH`` to supply one).

Engines: ``transformers`` (CPU or GPU, left-padded batches) and ``vllm`` (when installed);
``auto`` takes vLLM when it imports and a GPU exists.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from megatron_srp.data.classify import Classifier, ClassifierError, SegmentInput
from megatron_srp.data.classifiers import _hf
from megatron_srp.reflection import CONTROVERSIAL, QWEN3GUARD_CATEGORIES, SAFE, UNSAFE, Verdict

_LEVEL = re.compile(r"Safety:\s*(Safe|Unsafe|Controversial)\b", re.IGNORECASE)
_CATEGORIES = re.compile(r"Categories:\s*([^\n]*)", re.IGNORECASE)
_LEVELS = {"safe": SAFE, "unsafe": UNSAFE, "controversial": CONTROVERSIAL}


class GuardOutputError(ClassifierError):
    """The guard's answer does not contain a safety level."""


def parse_guard_output(text: str, taxonomy: Sequence[str] = QWEN3GUARD_CATEGORIES) -> Verdict:
    """``"Safety: Unsafe\\nCategories: Violent, PII"`` -> ``Verdict("unsafe", ("Violent", "PII"))``.

    Categories are matched against ``taxonomy`` case-insensitively and kept in the guard's order;
    ``None`` and unknown names are dropped; a Safe verdict never carries categories.
    """
    m = _LEVEL.search(text)
    if m is None:
        raise GuardOutputError(f"no 'Safety: Safe|Unsafe|Controversial' in the guard's output {text[:200]!r}")
    label = _LEVELS[m.group(1).lower()]
    if label == SAFE:
        return Verdict(SAFE)
    cats = []
    c = _CATEGORIES.search(text, m.end())
    if c:
        by_lower = {t.lower(): t for t in taxonomy}
        # split on commas, but not inside a name such as "Sexual Content or Sexual Acts"
        for part in c.group(1).split(","):
            name = by_lower.get(part.strip().rstrip(".").lower())
            if name is not None and name not in cats:
                cats.append(name)
    return Verdict(label, tuple(cats))


def guard_messages(item: SegmentInput) -> list[dict]:
    if item.context.strip():
        return [{"role": "user", "content": item.context}, {"role": "assistant", "content": item.segment}]
    return [{"role": "user", "content": item.segment}]


class Qwen3GuardClassifier(Classifier):
    """Options (``--classifier-arg KEY=VALUE``): model (a local directory or hub id the machine has
    cached), revision, device (auto|cpu|cuda[:N]), dtype (auto|fp32|bf16), batch_size, max_new_tokens,
    engine (auto|transformers|vllm), on_unparsed (error|unsafe|safe: what an answer without a level
    becomes), chat_template (a jinja file that replaces the tokenizer's)."""

    name = "qwen3guard"
    default_model = "Qwen/Qwen3Guard-Gen-0.6B"
    default_taxonomy: Sequence[str] = QWEN3GUARD_CATEGORIES
    uses_chat_template = True

    def __init__(self, model: Optional[str] = None, revision: Optional[str] = None,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 16, max_new_tokens: int = 32,
                 engine: str = "auto", on_unparsed: str = "error", chat_template: Optional[str] = None,
                 taxonomy: Optional[Sequence[str]] = None):
        if on_unparsed not in ("error", "unsafe", "safe"):
            raise ClassifierError(f"on_unparsed={on_unparsed!r}: choose error, unsafe or safe")
        model = model or self.default_model
        self.categories = tuple(taxonomy or self.default_taxonomy)
        self.batch_size, self.max_new_tokens, self.on_unparsed = int(batch_size), int(max_new_tokens), on_unparsed
        self.version = f"{_hf.model_version(model, revision)}|greedy{self.max_new_tokens}"
        self.tokenizer = _hf.load_tokenizer(model, revision, padding_side="left")
        if chat_template:
            with open(chat_template) as f:
                self.tokenizer.chat_template = f.read()
        if self.uses_chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ClassifierError(f"{model}: the tokenizer has no chat template (the {self.name} guard's carries "
                                  f"its safety policy); pass --classifier-arg chat_template=FILE")
        self.engine = _hf.pick_engine(engine, device)
        if self.engine == "vllm":
            from vllm import LLM, SamplingParams

            self._llm = LLM(model=model, revision=revision, dtype="auto", trust_remote_code=False)
            self._sampling = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        else:
            from transformers import AutoModelForCausalLM

            self.model, self.device = _hf.load_model(AutoModelForCausalLM, model, revision, device, dtype)

    def prompts(self, items: Sequence[SegmentInput]) -> list[str]:
        return [self.tokenizer.apply_chat_template(guard_messages(it), tokenize=False, add_generation_prompt=True)
                for it in items]

    def parse(self, text: str, item: SegmentInput) -> Verdict:
        return parse_guard_output(text, self.categories)

    def generate(self, items: Sequence[SegmentInput]) -> list[str]:
        """The guard's raw answers, one per item."""
        prompts = self.prompts(items)
        if self.engine == "vllm":
            return [o.outputs[0].text for o in self._llm.generate(prompts, self._sampling, use_tqdm=False)]
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def classify(self, items: Sequence[SegmentInput]) -> list[Verdict]:
        verdicts = []
        for item, text in zip(items, self.generate(items)):
            try:
                verdicts.append(self.parse(text, item))
            except GuardOutputError:
                if self.on_unparsed == "error":
                    raise
                verdicts.append(Verdict(self.on_unparsed))
        return verdicts


LLAMA_GUARD_3_CATEGORIES = (
    "Violent Crimes", "Non-Violent Crimes", "Sex-Related Crimes", "Child Sexual Exploitation", "Defamation",
    "Specialized Advice", "Privacy", "Intellectual Property", "Indiscriminate Weapons", "Hate",
    "Suicide & Self-Harm", "Sexual Content", "Elections", "Code Interpreter Abuse")


def parse_llama_guard_output(text: str, taxonomy: Sequence[str] = LLAMA_GUARD_3_CATEGORIES) -> Verdict:
    """``"unsafe\nS1,S10"`` -> ``Verdict("unsafe", ("Violent Crimes", "Hate"))``; codes S1.. index ``taxonomy``."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = lines[0].lower() if lines else ""
    if first == "safe":
        return Verdict(SAFE)
    if first != "unsafe":
        raise GuardOutputError(f"no 'safe' or 'unsafe' first line in the guard's output {text[:200]!r}")
    cats = []
    for code in (lines[1].split(",") if len(lines) > 1 else []):
        m = re.fullmatch(r"S(\d+)", code.strip())
        if m and 1 <= int(m.group(1)) <= len(taxonomy) and taxonomy[int(m.group(1)) - 1] not in cats:
            cats.append(taxonomy[int(m.group(1)) - 1])
    return Verdict(UNSAFE, tuple(cats))


class LlamaGuardClassifier(Qwen3GuardClassifier):
    """Llama Guard 3 (its chat template holds the policy; answers ``safe`` / ``unsafe`` + codes).
    Options as for qwen3guard."""

    name = "llamaguard"
    default_model = "meta-llama/Llama-Guard-3-1B"
    default_taxonomy = LLAMA_GUARD_3_CATEGORIES

    def parse(self, text: str, item: SegmentInput) -> Verdict:
        return parse_llama_guard_output(text, self.categories)


WILDGUARD_PROMPT = """<s><|user|>
[INST] You are a classifier for analyzing interactions between humans and LLMs. Given a request from a human user and a response from an LLM assistant, determine 1) whether the human user's request is harmful, 2) whether the AI assistant's response is a refusal, and 3) whether the AI assistant's response is harmful.

Human user:
{prompt}

AI assistant:
{response}

---

Answers: [/INST]
<|assistant|>
"""


def wildguard_prompt(item: SegmentInput) -> str:
    """The context is the human request and the segment the AI response; alone, the segment is the request."""
    if item.context.strip():
        return WILDGUARD_PROMPT.format(prompt=item.context, response=item.segment)
    return WILDGUARD_PROMPT.format(prompt=item.segment, response="")


_YES_NO = re.compile(r"Harmful (request|response):\s*(yes|no|n/a)", re.IGNORECASE)


def parse_wildguard_output(text: str, judge_response: bool) -> Verdict:
    """WildGuard's answer -> unsafe when the judged part (the response when there is one, else the
    request) is ``yes``. WildGuard has no categories."""
    found = {kind.lower(): value.lower() for kind, value in _YES_NO.findall(text)}
    key = "response" if judge_response else "request"
    if found.get(key) not in ("yes", "no"):
        raise GuardOutputError(f"no 'Harmful {key}: yes|no' in the guard's output {text[:200]!r}")
    return Verdict(UNSAFE if found[key] == "yes" else SAFE)


class WildGuardClassifier(Qwen3GuardClassifier):
    """WildGuard (allenai/wildguard): its instruction format, no chat template; the segment is the AI
    response and the context the human request (a segment without context is judged as a request).
    Options as for qwen3guard."""

    name = "wildguard"
    default_model = "allenai/wildguard"
    default_taxonomy: Sequence[str] = ()
    uses_chat_template = False

    def prompts(self, items: Sequence[SegmentInput]) -> list[str]:
        return [wildguard_prompt(it) for it in items]

    def parse(self, text: str, item: SegmentInput) -> Verdict:
        return parse_wildguard_output(text, judge_response=bool(item.context.strip()))
