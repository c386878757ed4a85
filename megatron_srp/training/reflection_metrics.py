"""In-loop reflection accuracy: at each validation, how often the model would write the reflection's
own verdict word, and F1 on Unsafe, read from the role sidecar.

A verdict position is a reflection token (role sidecar) whose label is the first word that tells
`` <think> Safe`` from `` <think> Unsafe`` and whose previous label ends the opener. There the model
"predicts" the verdict when it gives the true word a lower loss than the other one: both losses come
from the same logits through Megatron's vocab-parallel cross entropy, so any TP layout agrees. Each
entry is a [numerator, denominator] pair, summed over microbatches and data-parallel ranks like the
losses (F1 = 2TP / (2TP + FP + FN) is such a ratio). Controversial verdicts are not counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from megatron_srp.config import Recipe, blend_from_data_path
from megatron_srp.data.roles import ROLE_REFLECTION, has_roles
from megatron_srp.reflection import DEFAULT, SAFE, UNSAFE, Verdict

KEYS = ("reflection_verdict_accuracy", "reflection_unsafe_f1", "reflection_false_flags")


@dataclass(frozen=True)
class VerdictTokens:
    opener_last: int
    """The token just before the verdict word (the end of `` <think>``)."""
    safe: int
    unsafe: int


def verdict_tokens(recipe: Recipe) -> Optional[VerdictTokens]:
    """The ids to look for, or None when the run has no role sidecar or no tokenizer (mock data)."""
    if recipe.data.mock or not recipe.data.tokenizer_model:
        return None
    if not any(map(has_roles, blend_from_data_path(recipe.data.data_path)[0])):
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(recipe.data.tokenizer_model, "tokenizer.json"))
    # As preprocessing encodes a reflection (the project's default format).
    safe, unsafe = (tok.encode(DEFAULT.render(Verdict(label)), add_special_tokens=False).ids for label in (SAFE, UNSAFE))
    k = next((i for i, (a, b) in enumerate(zip(safe, unsafe)) if a != b), None)
    if not k:  # no common opener, or one rendering a prefix of the other
        return None
    return VerdictTokens(opener_last=safe[k - 1], safe=safe[k], unsafe=unsafe[k])


def verdict_report(v: VerdictTokens, labels: torch.Tensor, roles: torch.Tensor, loss_mask: torch.Tensor,
                   loss_true: torch.Tensor, loss_other: torch.Tensor) -> dict[str, torch.Tensor]:
    """[b, s] tensors -> {key: [numerator, denominator]} for the verdict positions of this microbatch.
    ``loss_other``: the loss had each verdict position's label been the other verdict word."""
    refl = roles == ROLE_REFLECTION
    at = torch.zeros_like(refl)
    at[:, 1:] = (refl[:, 1:] & refl[:, :-1] & (labels[:, :-1] == v.opener_last) & (loss_mask[:, 1:] > 0)
                 & ((labels[:, 1:] == v.safe) | (labels[:, 1:] == v.unsafe)))
    true_unsafe = labels[at] == v.unsafe
    correct = loss_true[at] < loss_other[at]
    pred_unsafe = torch.where(true_unsafe, correct, ~correct)
    tp = (true_unsafe & pred_unsafe).sum()
    fp = (~true_unsafe & pred_unsafe).sum()
    fn = (true_unsafe & ~pred_unsafe).sum()
    pairs = {"reflection_verdict_accuracy": (correct.sum(), at.sum()),
             "reflection_unsafe_f1": (2 * tp, 2 * tp + fp + fn),
             "reflection_false_flags": (fp, (~true_unsafe).sum())}
    return {k: torch.stack([n.float(), d.float()]) for k, (n, d) in pairs.items()}


def other_verdict(v: VerdictTokens, labels: torch.Tensor) -> torch.Tensor:
    """``labels`` with every Safe word made Unsafe and every Unsafe word Safe (other labels kept)."""
    return torch.where(labels == v.safe, v.unsafe, torch.where(labels == v.unsafe, v.safe, labels))
