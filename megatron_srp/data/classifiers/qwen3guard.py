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

Engines: ``transformers`` (CPU or GPU, left-padded batches) and ``vllm`` (offline batching with
automatic prefix caching, so the guard's policy preamble, the same few hundred tokens at the head of
every prompt, is computed once and its KV blocks reused); ``auto`` takes vLLM when it imports and a
GPU exists. Both are given the same token ids.

``max_new_tokens`` defaults to the token count of the longest answer the guard can give (every
category of its taxonomy listed, the longest level, the refusal line), measured with the guard's
own tokenizer, plus a closing newline and the end-of-turn token: an answer is never cut short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from megatron_srp import hf
from megatron_srp.data.classify import Classifier, ClassifierError, SegmentInput
from megatron_srp.reflection import CONTROVERSIAL, QWEN3GUARD_CATEGORIES, SAFE, UNSAFE, Verdict

_LEVEL = re.compile(r"Safety:\s*(Safe|Unsafe|Controversial)\b", re.IGNORECASE)
_CATEGORIES = re.compile(r"Categories:\s*([^\n]*)", re.IGNORECASE)
_REFUSAL = re.compile(r"Refusal:\s*(Yes|No)\b", re.IGNORECASE)
_LEVELS = {"safe": SAFE, "unsafe": UNSAFE, "controversial": CONTROVERSIAL}


# Segments per engine call. transformers on a GPU: 256 measured fastest on an H200 with
# Qwen3Guard-Gen-0.6B's shape (16: under 20 segments/s, 64: 46, 256: 56; BENCHMARKS.md).
CPU_BATCH, GPU_BATCH, VLLM_BATCH = 16, 256, 1024


def length_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices sorted by length (longest first) and cut into groups whose padded size (count x the
    group's longest) stays within ``max_tokens``; 0 = one group in the given order. Sorting lets a
    left-padded batch pad little; the budget bounds a group's memory whatever the prompts' lengths."""
    if max_tokens <= 0:
        return [list(range(len(lengths)))] if lengths else []
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class GuardOutputError(ClassifierError):
    """The guard's answer does not contain a safety level."""


@dataclass(frozen=True)
class GuardAnswer:
    """Everything a Qwen3Guard-Gen answer says: level, categories, and (response moderation) the refusal."""

    verdict: Verdict
    refusal: Optional[bool] = None
    """``Refusal: Yes`` -> True, ``No`` -> False; None when the line is absent (prompt moderation)."""


def parse_guard_answer(text: str, taxonomy: Sequence[str] = QWEN3GUARD_CATEGORIES) -> GuardAnswer:
    """``"Safety: Unsafe\\nCategories: Violent, PII\\nRefusal: No"`` -> verdict unsafe (Violent, PII), refusal False.

    Categories are matched against ``taxonomy`` case-insensitively and kept in the guard's order;
    ``None`` and unknown names are dropped; a Safe verdict never carries categories.
    """
    m = _LEVEL.search(text)
    if m is None:
        raise GuardOutputError(f"no 'Safety: Safe|Unsafe|Controversial' in the guard's output {text[:200]!r}")
    label = _LEVELS[m.group(1).lower()]
    refusal = _REFUSAL.search(text, m.end())
    refused = None if refusal is None else refusal.group(1).lower() == "yes"
    if label == SAFE:
        return GuardAnswer(Verdict(SAFE), refused)
    cats = []
    c = _CATEGORIES.search(text, m.end())
    if c:
        by_lower = {t.lower(): t for t in taxonomy}
        # split on commas, but not inside a name such as "Sexual Content or Sexual Acts"
        for part in c.group(1).split(","):
            name = by_lower.get(part.strip().rstrip(".").lower())
            if name is not None and name not in cats:
                cats.append(name)
    return GuardAnswer(Verdict(label, tuple(cats)), refused)


def parse_guard_output(text: str, taxonomy: Sequence[str] = QWEN3GUARD_CATEGORIES) -> Verdict:
    """The verdict of a Qwen3Guard-Gen answer (see ``parse_guard_answer``)."""
    return parse_guard_answer(text, taxonomy).verdict


def qwen3guard_longest_answers(taxonomy: Sequence[str]) -> list[str]:
    """Candidates for the longest answer: each level with every category, with and without a refusal line."""
    cats = ", ".join(taxonomy) or "None"
    return [f"Safety: {level}\nCategories: {cats}{refusal}" for level in ("Safe", "Unsafe", "Controversial")
            for refusal in ("", "\nRefusal: Yes", "\nRefusal: No")]


def guard_messages(item: SegmentInput) -> list[dict]:
    if item.context.strip():
        return [{"role": "user", "content": item.context}, {"role": "assistant", "content": item.segment}]
    return [{"role": "user", "content": item.segment}]


class Qwen3GuardClassifier(Classifier):
    """Options (``--classifier-arg KEY=VALUE``): model (a local directory or hub id the machine has
    cached), revision, device (auto|cpu|cuda[:N]), dtype (auto|fp32|bf16), batch_size (segments per
    engine call; default 16 with transformers on a CPU, 256 on a GPU, 1024 with vLLM), max_batch_tokens
    (transformers: bound a generate() call's memory: a call's prompts sorted by length, in groups of at
    most this many padded prompt tokens; default 0, one group), max_new_tokens (default: the longest
    answer's length, see the module text), engine (auto|transformers|vllm), on_unparsed
    (error|unsafe|safe: what an answer without a level becomes), chat_template (a jinja file that
    replaces the tokenizer's), gpu_memory_utilization and max_model_len (vLLM)."""

    name = "qwen3guard"
    default_model = "Qwen/Qwen3Guard-Gen-0.6B"
    default_taxonomy: Sequence[str] = QWEN3GUARD_CATEGORIES
    uses_chat_template = True

    def __init__(self, model: Optional[str] = None, revision: Optional[str] = None,
                 device: str = "auto", dtype: str = "auto", batch_size: Optional[int] = None,
                 max_new_tokens: Optional[int] = None, engine: str = "auto", on_unparsed: str = "error",
                 chat_template: Optional[str] = None, taxonomy: Optional[Sequence[str]] = None,
                 gpu_memory_utilization: float = 0.9, max_model_len: Optional[int] = None,
                 max_batch_tokens: Optional[int] = None):
        if on_unparsed not in ("error", "unsafe", "safe"):
            raise ClassifierError(f"on_unparsed={on_unparsed!r}: choose error, unsafe or safe")
        model = model or self.default_model
        self.categories = tuple(taxonomy or self.default_taxonomy)
        self.on_unparsed = on_unparsed
        self.tokenizer = hf.load_tokenizer(model, revision, padding_side="left")
        if chat_template:
            with open(chat_template) as f:
                self.tokenizer.chat_template = f.read()
        if self.uses_chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ClassifierError(f"{model}: the tokenizer has no chat template (the {self.name} guard's carries "
                                  f"its safety policy); pass --classifier-arg chat_template=FILE")
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else self.answer_budget()
        self.version = f"{hf.model_version(model, revision)}|greedy{self.max_new_tokens}"
        self.engine = hf.pick_engine(engine, device)
        if self.engine == "vllm":
            from vllm import LLM, SamplingParams  # optional GPU dependency, imported only when chosen

            self.batch_size, self.max_batch_tokens = int(batch_size or VLLM_BATCH), 0  # vLLM schedules its own

            # Every prompt starts with the same policy preamble: prefix caching computes it once.
            self._llm = LLM(model=model, revision=revision, dtype="auto", trust_remote_code=False,
                            enable_prefix_caching=True, gpu_memory_utilization=float(gpu_memory_utilization),
                            max_model_len=max_model_len)
            self._sampling = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        else:
            from transformers import AutoModelForCausalLM

            self.model, self.device = hf.load_model(AutoModelForCausalLM, model, revision, device, dtype)
            on_gpu = str(self.device).startswith("cuda")
            self.batch_size = int(batch_size) if batch_size else (GPU_BATCH if on_gpu else CPU_BATCH)
            # Grouping by length measured 6-9% slower on the H200 (padding is not what limits generate()),
            # so it is only a memory bound, off by default.
            self.max_batch_tokens = int(max_batch_tokens or 0)

    def longest_answers(self) -> list[str]:
        return qwen3guard_longest_answers(self.categories)

    def answer_budget(self) -> int:
        """Tokens of the longest possible answer in the guard's tokenizer, plus a newline and end of turn."""
        return 2 + max(len(self.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in self.longest_answers())

    def prompts(self, items: Sequence[SegmentInput]) -> list[str]:
        return [self.tokenizer.apply_chat_template(guard_messages(it), tokenize=False, add_generation_prompt=True)
                for it in items]

    def prompt_ids(self, items: Sequence[SegmentInput]) -> list[list[int]]:
        """Token ids of each prompt (the template's text holds the special tokens; nothing is added)."""
        return self.tokenizer(self.prompts(items), add_special_tokens=False)["input_ids"]

    def parse(self, text: str, item: SegmentInput) -> Verdict:
        return parse_guard_output(text, self.categories)

    def generate(self, items: Sequence[SegmentInput]) -> list[str]:
        """The guard's raw answers, one per item."""
        ids = self.prompt_ids(items)
        if self.engine == "vllm":
            outputs = self._llm.generate([{"prompt_token_ids": p} for p in ids], self._sampling, use_tqdm=False)
            return [o.outputs[0].text for o in outputs]
        answers: list[str] = [""] * len(ids)
        for group in length_groups([len(p) for p in ids], self.max_batch_tokens):
            for i, text in zip(group, self._generate_padded([ids[i] for i in group])):
                answers[i] = text
        return answers

    def _generate_padded(self, ids: list[list[int]]) -> list[str]:
        import torch

        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
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

    def longest_answers(self) -> list[str]:
        return ["unsafe\n" + ",".join(f"S{i}" for i in range(1, len(self.categories) + 1))]

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

    def longest_answers(self) -> list[str]:
        return [f"Harmful request: {a}\nResponse refusal: {b}\nHarmful response: {b}" for a in ("yes", "no")
                for b in ("yes", "no", "N/A")]

    def parse(self, text: str, item: SegmentInput) -> Verdict:
        return parse_wildguard_output(text, judge_response=bool(item.context.strip()))
