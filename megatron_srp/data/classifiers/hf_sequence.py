"""Any Hugging Face sequence classifier as a backend, with a map from its labels to verdicts."""

from __future__ import annotations

import json
from typing import Optional, Sequence

from megatron_srp import hf
from megatron_srp.data.classify import Classifier, ClassifierError, SegmentInput
from megatron_srp.reflection import CONTROVERSIAL, SAFE, UNSAFE, Verdict


def parse_label_map(label_map) -> dict[str, Verdict]:
    """``{"LABEL_0": "safe", "toxic": "unsafe:Violent", "borderline": "controversial"}`` -> verdicts."""
    if isinstance(label_map, str):
        label_map = json.loads(label_map)
    if not isinstance(label_map, dict) or not label_map:
        raise ClassifierError("label_map must be a JSON object {model label: safe|unsafe[:CATEGORY,...]|controversial}")
    out = {}
    for model_label, target in label_map.items():
        level, _, cats = str(target).partition(":")
        level = level.strip().lower()
        if level not in (SAFE, UNSAFE, CONTROVERSIAL):
            raise ClassifierError(f"label_map[{model_label!r}] = {target!r}: the level must be safe, unsafe or "
                                  f"controversial")
        categories = tuple(c.strip() for c in cats.split(",") if c.strip()) if level != SAFE else ()
        out[str(model_label)] = Verdict(level, categories)
    return out


class HFSequenceClassifier(Classifier):
    """Options: model, label_map (JSON; keys are the model's ``id2label`` names), revision, device, dtype,
    batch_size, max_length, with_context (prepend the preceding context as a text pair)."""

    name = "hf"

    def __init__(self, model: str, label_map=None, revision: Optional[str] = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, max_length: int = 512, with_context: bool = False):
        from transformers import AutoModelForSequenceClassification

        self.tokenizer = hf.load_tokenizer(model, revision, padding_side="right")
        self.model, self.device = hf.load_model(AutoModelForSequenceClassification, model, revision, device, dtype)
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        if label_map is None:
            raise ClassifierError(f"the hf backend needs label_map for {model}'s labels {sorted(id2label.values())}")
        self.label_map = parse_label_map(label_map)
        missing = sorted(set(id2label.values()) - set(self.label_map))
        if missing:
            raise ClassifierError(f"label_map has no entry for the model's labels {missing}")
        self.verdicts = [self.label_map[id2label[i]] for i in range(len(id2label))]
        self.categories = tuple(dict.fromkeys(c for v in self.label_map.values() for c in v.categories))
        self.batch_size, self.max_length, self.with_context = int(batch_size), int(max_length), bool(with_context)
        self.version = (f"{hf.model_version(model, revision)}|{json.dumps(label_map, sort_keys=True)}"
                        f"|ctx={self.with_context}|len={self.max_length}")

    def logits(self, items: Sequence[SegmentInput]):
        import torch

        if self.with_context:
            enc = self.tokenizer([it.context for it in items], [it.segment for it in items], truncation="only_first",
                                 max_length=self.max_length, padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer([it.segment for it in items], truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="pt")
        with torch.inference_mode():
            return self.model(**enc.to(self.device)).logits.float().cpu()

    def classify(self, items: Sequence[SegmentInput]) -> list[Verdict]:
        return [self.verdicts[i] for i in self.logits(items).argmax(-1).tolist()]
