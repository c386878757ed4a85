"""Reflection-guarded generation on Hugging Face models.

``guarded_generate`` decodes with transformers (greedy by default), reads reflections as the text
grows, and stops a sequence at its first flagged (Unsafe / Controversial) reflection: it returns the
text up to and including that reflection, every verdict written, and whether it stopped there.
Evaluations use it; so can a chat front end (``python -m megatron_srp.eval.generate --model DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from megatron_srp import hf
from megatron_srp.posttrain.chat_template import resolve
from megatron_srp.reflection import ReflectionFormat, Verdict


@dataclass
class Generation:
    prompt: str
    text: str
    """What the model wrote (cut after a flagged reflection when it stopped there)."""
    verdicts: list[Verdict] = field(default_factory=list)
    """Every well-formed reflection in ``text``, in order."""
    stopped: bool = False
    """True when generation ended at a flagged reflection."""
    malformed: int = 0
    """Reflection-like spans that did not parse."""

    @property
    def flagged(self) -> bool:
        return any(v.is_flagged for v in self.verdicts)


def read_reflections(text: str, fmt: ReflectionFormat) -> tuple[list[tuple[int, int, Verdict]], int]:
    """Well-formed reflections and the number of malformed ones (a model may write either)."""
    spans = fmt.spans(text)
    return [sp for sp in spans if sp[2] is not None], sum(sp[2] is None for sp in spans)


def first_flag_end(text: str, fmt: ReflectionFormat) -> Optional[int]:
    for _, end, v in read_reflections(text, fmt)[0]:
        if v.is_flagged:
            return end
    return None


def _finish(prompt: str, text: str, fmt: ReflectionFormat, stop_on_flag: bool) -> Generation:
    """The decoded text, cut after its first flagged reflection when guarding, with its verdicts."""
    end = first_flag_end(text, fmt) if stop_on_flag else None
    if end is not None:
        text = text[:end]
    found, bad = read_reflections(text, fmt)
    return Generation(prompt, text, [v for _, _, v in found], end is not None, bad)


def _stopping(tokenizer, fmt: ReflectionFormat, prompt_len: int):
    import torch
    from transformers import StoppingCriteria

    class StopAtFlag(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([first_flag_end(t, fmt) is not None for t in texts], device=input_ids.device)

    return StopAtFlag()


def guarded_generate(model, tokenizer, prompts: Sequence[str], fmt: ReflectionFormat = ReflectionFormat(),
                     max_new_tokens: int = 64, batch_size: int = 32, stop_on_flag: bool = True,
                     do_sample: bool = False, temperature: float = 1.0, seed: int = 0,
                     progress: bool = False) -> list[Generation]:
    """Generate for each prompt (prompt text as given: apply a chat template first for chat models).

    ``model`` is a transformers causal LM, or a ``vllm.LLM`` (GPU): vLLM decodes each prompt to the
    end and the text is cut after its first flagged reflection, which gives the same result."""
    if type(model).__module__.startswith("vllm"):
        return _vllm_generate(model, prompts, fmt, max_new_tokens, stop_on_flag, do_sample, temperature, seed)
    import torch
    from transformers import StoppingCriteriaList

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[Generation] = []
    torch.manual_seed(seed)
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    device = next(model.parameters()).device
    for i in batches:
        chunk = list(prompts[i:i + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        n = enc["input_ids"].shape[1]
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
        if do_sample:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        if stop_on_flag:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_stopping(tokenizer, fmt, n)])
        with torch.no_grad():
            seqs = model.generate(**enc, **kwargs)
        for prompt, text in zip(chunk, tokenizer.batch_decode(seqs[:, n:], skip_special_tokens=True)):
            out.append(_finish(prompt, text, fmt, stop_on_flag))
    return out


def _vllm_generate(llm, prompts, fmt, max_new_tokens, stop_on_flag, do_sample, temperature, seed) -> list[Generation]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0, seed=seed)
    out = []
    for prompt, res in zip(prompts, llm.generate(list(prompts), params)):
        out.append(_finish(prompt, res.outputs[0].text, fmt, stop_on_flag))
    return out


def next_token_logits(model, tokenizer, texts: Sequence[str], token_ids: Sequence[int], batch_size: int = 64):
    """Logits of ``token_ids`` as the next token after each text: an (n, len(token_ids)) tensor."""
    import torch

    tokenizer.padding_side = "left"
    rows = []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        with torch.no_grad():
            logits = model(**enc).logits[:, -1, :]
        rows.append(logits[:, list(token_ids)].float().cpu())
    return torch.cat(rows)


def load_model(model_dir: str, device: str = "cpu", dtype: str = "float32"):
    """A causal LM and its tokenizer from a local directory; a clear error when files are missing."""
    from transformers import AutoModelForCausalLM  # import-time cost: only where a model is loaded

    hf.check_model_dir(model_dir)
    tok = hf.load_tokenizer(model_dir)
    model, _ = hf.load_model(AutoModelForCausalLM, model_dir, device=device, dtype=dtype)
    return model, tok


def load_generator(model_dir: str, device: str = "cpu", engine: str = "transformers"):
    """What ``guarded_generate`` takes, and the tokenizer: a transformers model, or with ``engine`` vllm
    (or auto on a GPU with vLLM installed) a ``vllm.LLM`` over the same directory."""
    if hf.pick_engine(engine, device) == "vllm":
        from vllm import LLM  # optional, GPU only

        hf.check_model_dir(model_dir)
        return LLM(model=model_dir, trust_remote_code=False), hf.load_tokenizer(model_dir)
    return load_model(model_dir, device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Reflection-guarded generation: one JSON line per prompt.")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", action="append", default=[], help="a user message (repeatable); else stdin lines")
    p.add_argument("--raw", action="store_true", help="prompts are raw text, not chat messages")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-stop", action="store_true", help="keep generating after a flagged reflection")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--engine", default="transformers", choices=hf.ENGINES,
                   help="vllm (GPU) decodes with vLLM; auto takes it when installed and on a GPU")
    p.add_argument("--chat-template", metavar="NAME|FILE", help="srp (built in) or a Jinja file replaces the model's")
    a = p.parse_args(argv)
    model, tok = load_generator(a.model, a.device, a.engine)
    if a.chat_template:
        tok.chat_template = resolve(a.chat_template)
    prompts = a.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not a.raw:
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False) for q in prompts]
    for g in guarded_generate(model, tok, prompts, max_new_tokens=a.max_new_tokens, stop_on_flag=not a.no_stop):
        print(json.dumps({"text": g.text, "stopped": g.stopped, "verdicts": [asdict(v) for v in g.verdicts]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
