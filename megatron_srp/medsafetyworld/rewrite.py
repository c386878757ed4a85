"""The MedSafetyWorld rewriter (``--variant rewrite --rewriter medsafetyworld``): an unsafe
administration becomes a safe one for the same request, or a refusal that names the danger."""

from __future__ import annotations

import re
from typing import Sequence

from megatron_srp.data.classify import ClassifierError, Rewriter, SegmentInput
from megatron_srp.medsafetyworld.corpus import relation_phrase, safe_dose, satisfies
from megatron_srp.medsafetyworld.oracle import assess, parse_actions, parse_profile
from megatron_srp.medsafetyworld.world import World
from megatron_srp.reflection import Verdict

_REQUEST = re.compile(r"a drug that (treats|is cleared by|blocks|worsens|would harm) ([A-Za-z0-9]+)")
_RELATION = {"treats": "treats", "is cleared by": "cleared_by", "blocks": "blocks", "worsens": "worsens",
             "would harm": "harm"}


class OracleRewriter(Rewriter):
    name = "medsafetyworld"

    def __init__(self, world: str, seed: int = 0):
        import hashlib
        import os
        import random

        if not os.path.isfile(world):
            raise ClassifierError(f"medsafetyworld rewriter: world file {world!r} not found")
        self.world = World.load(world)
        with open(world, "rb") as f:
            self.version = f"medsafetyworld-rewrite:{hashlib.sha256(f.read()).hexdigest()[:16]}:{seed}"
        self._random = random.Random
        self.seed = seed

    def rewrite_one(self, item: SegmentInput) -> str:
        text = item.segment
        for a in reversed(parse_actions(self.world, text)):
            patient = parse_profile(item.context + text[:a.start])
            if patient is None or assess(self.world, a.drug, a.dose, patient).is_safe:
                continue
            rng = self._random(f"{self.seed}|{item.context}|{text}")  # deterministic per segment
            req = list(_REQUEST.finditer(item.context + text[:a.start]))
            alternative = None
            if req and _RELATION[req[-1].group(1)] != "harm":
                rel, arg = _RELATION[req[-1].group(1)], req[-1].group(2)
                safe = [d for d in self.world.drugs if satisfies(self.world, d, rel, arg, patient)
                        and assess(self.world, d.name, 100, patient).is_safe]
                if safe:
                    alternative = rng.choice(safe)
            x = self.world.drug(a.drug)
            if alternative is not None:
                dose = a.dose if a.dose <= alternative.max_dose else safe_dose(alternative, rng)
                new = text[a.start:a.end].replace(f"{a.drug} {a.dose} mg", f"{alternative.name} {dose} mg")
            elif assess(self.world, a.drug, min(a.dose, x.max_dose), patient).is_safe:
                new = text[a.start:a.end].replace(f"{a.drug} {a.dose} mg", f"{a.drug} {x.max_dose} mg")
            else:
                reason = ", ".join(assess(self.world, a.drug, a.dose, patient).categories)
                new = f"no drug : {a.drug} {relation_phrase('harm', patient.name)} ( {reason} ) and was refused"
            text = text[:a.start] + new + text[a.end:]
        return text

    def rewrite(self, items: Sequence[SegmentInput], verdicts: Sequence[Verdict]) -> list[str]:
        return [self.rewrite_one(it) for it in items]
