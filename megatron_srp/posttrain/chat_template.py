"""Chat templates that keep reflections: the built-in ``srp`` template for base models, and the check
any template must pass before post-training, evaluation or an export use it.

A model pretrained on reflection-interleaved text has no chat template of its own. ``srp`` renders
``User: ...`` / ``Assistant: ...`` turns as plain text; an assistant turn is written verbatim after
one space, so its first reflection reads `` <think> Safe </think>`` exactly as the pretraining data
wrote reflections after a segment (``ReflectionFormat.leading_space``), and it ends with the
end-of-text token. The generation prompt is ``Assistant:`` and opens no tag: the model writes its
own first reflection.

Templates of instruction-tuned models may drop ``<think>`` spans from earlier turns or pre-write an
empty one in the generation prompt (Qwen3 does both); ``check`` refuses such a template, naming
what it did to the reflections.
"""

from __future__ import annotations

import difflib
import os
from typing import Optional

from megatron_srp.errors import SRPError
from megatron_srp.reflection import DEFAULT, ReflectionFormat, Verdict

SRP_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'Assistant:' + ('' if message['content'][:1] in [' ', '\\n'] else ' ') + message['content']"
    " + (eos_token or '') -}}"
    "{%- if not loop.last -%}{{- '\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- message['role'] | capitalize + ': ' + message['content'] + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)
BUILTIN = {"srp": SRP_TEMPLATE}
DEFAULT_NAME = "srp"
KEEP = "keep"
"""``--chat-template keep``: the tokenizer's own template (none for most base models)."""


class ChatTemplateError(SRPError, ValueError):
    """A template that cannot be found, or that does not keep reflections."""


def resolve(spec: str) -> str:
    """The Jinja text of a built-in template name or of a file (a .jinja file, or a tokenizer_config.json /
    chat_template.json holding ``chat_template``)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if os.path.isfile(spec):
        with open(spec) as f:
            text = f.read()
        if spec.endswith(".json"):
            import json

            try:
                text = json.loads(text).get("chat_template")
            except (ValueError, AttributeError):
                text = None
            if not isinstance(text, str):
                raise ChatTemplateError(f"{spec}: no string 'chat_template' in this JSON file")
        return text
    near = difflib.get_close_matches(spec, list(BUILTIN), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ChatTemplateError(f"chat template {spec!r}: neither a built-in ({sorted(BUILTIN)}) nor a file{hint}")


def _probe(fmt: ReflectionFormat) -> list[dict]:
    """Two turns whose answers carry reflections, the way post-training data writes them."""
    from megatron_srp.posttrain.data import reflection_turn

    safe = Verdict("safe")
    flag = Verdict("unsafe", fmt.categories[:1])
    first = reflection_turn(safe, ["Water boils at 100 C."], [safe], fmt)
    second = reflection_turn(safe, ["Mix the two.", " Then use it on people."], [safe, flag], fmt)
    return [{"role": "user", "content": "How hot is boiling water?"}, {"role": "assistant", "content": first},
            {"role": "user", "content": "And the next step?"}, {"role": "assistant", "content": second}]


def check(tokenizer, fmt: ReflectionFormat = DEFAULT, where: str = "chat template") -> None:
    """Raise ChatTemplateError unless the tokenizer's template renders every assistant turn with its
    reflections intact (earlier turns too), renders conversations prefix-consistently (what SFT's
    assistant-only labels rely on), and opens no reflection in the generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(f"{where}: the tokenizer has no chat template")
    msgs = _probe(fmt)
    try:
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        prompt = tokenizer.apply_chat_template(msgs[:3], add_generation_prompt=True, tokenize=False)
        history = tokenizer.apply_chat_template(msgs[:3], tokenize=False)
    except Exception as e:  # a Jinja error of a user's file: name it, whatever its type
        raise ChatTemplateError(f"{where}: rendering failed: {type(e).__name__}: {e}") from None
    for i in (1, 3):
        if msgs[i]["content"] not in full:
            raise ChatTemplateError(f"{where}: assistant turn {i} is not rendered verbatim (reflections such as "
                                    f"{fmt.render(Verdict('safe')).strip()!r} are dropped or rewritten)")
    if len(fmt.find(full)) != sum(len(fmt.find(m["content"])) for m in msgs):
        raise ChatTemplateError(f"{where}: the rendered conversation adds or loses reflections")
    opened = prompt[len(history):] if prompt.startswith(history) else prompt
    if fmt.open_tag in opened:
        raise ChatTemplateError(f"{where}: the generation prompt writes {fmt.open_tag!r} itself ({opened!r}); the "
                                "model must write its own reflection")
    if not full.startswith(prompt):
        raise ChatTemplateError(f"{where}: the generation prompt is not a prefix of the rendered answer "
                                "(conversations must render prefix-consistently)")


def apply(tokenizer, spec: Optional[str], fmt: ReflectionFormat = DEFAULT, where: str = "chat_template") -> None:
    """Give ``tokenizer`` the template ``spec`` (None or ``keep``: its own) and check it."""
    if spec and spec != KEEP:
        try:
            tokenizer.chat_template = resolve(spec)
        except OSError as e:
            raise ChatTemplateError(f"{where}: {spec}: {e}") from None
    check(tokenizer, fmt, f"{where} {spec}" if spec and spec != KEEP else where)
