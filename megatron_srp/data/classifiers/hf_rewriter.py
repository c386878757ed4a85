"""An instruction model (transformers, or vLLM when installed) as the rewriter of the ``rewrite`` variant."""

from __future__ import annotations

from typing import Optional, Sequence

from megatron_srp import hf
from megatron_srp.data.classify import ClassifierError, Rewriter, SegmentInput
from megatron_srp.reflection import Verdict

DEFAULT_INSTRUCTION = (
    "Rewrite the passage below so that it is safe: keep its topic, style and length, remove or replace "
    "anything harmful ({categories}). Reply with the rewritten passage only.\n\nPassage:\n{segment}")


class HFRewriter(Rewriter):
    """Options: model, revision, device, dtype, batch_size, max_new_tokens, instruction (``{segment}`` and
    ``{categories}`` are filled in), engine (transformers|vllm)."""

    name = "hf"

    def __init__(self, model: str, revision: Optional[str] = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, max_new_tokens: int = 512, instruction: str = DEFAULT_INSTRUCTION,
                 engine: str = "transformers"):
        if "{segment}" not in instruction:
            raise ClassifierError("the rewriter instruction must contain {segment}")
        self.instruction, self.batch_size, self.max_new_tokens = instruction, int(batch_size), int(max_new_tokens)
        self.engine = engine
        self.version = f"{hf.model_version(model, revision)}|greedy{self.max_new_tokens}|{instruction}"
        self.tokenizer = hf.load_tokenizer(model, revision, padding_side="left")
        if engine == "vllm":
            from vllm import LLM, SamplingParams

            self._llm = LLM(model=model, revision=revision, trust_remote_code=False)
            self._sampling = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        else:
            from transformers import AutoModelForCausalLM

            self.model, self.device = hf.load_model(AutoModelForCausalLM, model, revision, device, dtype)

    def prompt(self, item: SegmentInput, verdict: Verdict) -> str:
        text = self.instruction.format(segment=item.segment.strip(),
                                       categories=", ".join(verdict.categories) or verdict.label)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text + "\n\nRewritten passage:\n"

    def _generate(self, prompts: list[str]) -> list[str]:
        if self.engine == "vllm":
            return [o.outputs[0].text for o in self._llm.generate(prompts, self._sampling, use_tqdm=False)]
        import torch

        outs = []
        for i in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(prompts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            outs += self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return outs

    def rewrite(self, items: Sequence[SegmentInput], verdicts: Sequence[Verdict]) -> list[str]:
        texts = self._generate([self.prompt(it, v) for it, v in zip(items, verdicts)])
        out = []
        for item, text in zip(items, texts):
            lead = item.segment[:len(item.segment) - len(item.segment.lstrip())]
            out.append(lead + text.strip())  # keep the segment's own leading whitespace (the document's layout)
        return out
