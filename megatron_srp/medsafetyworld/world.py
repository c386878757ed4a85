"""The world: drugs, conditions, enzymes and patients, generated deterministically from a seed.

Names come from a syllable grammar and are single words (``Velorin``, ``Golloitis``, ``KX3``), so
a word-level view of the text sees each entity as one unit. A world is saved as JSON
(``world.json``); everything downstream (corpus, oracle, rewriter, evaluation) reads that file.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Optional

from megatron_srp.io import atomic_write_text

ONSETS = ["b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "cl", "dr", "pr", "tr"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "io"]
DRUG_SUFFIXES = ["rin", "vex", "dol", "zine", "pril", "tan", "mab", "cort", "lex", "sone"]
CONDITION_SUFFIXES = ["osis", "itis", "emia", "algia", "opathy"]
DOSES = (100, 200, 300, 400, 500, 600)


@dataclass(frozen=True)
class Drug:
    name: str
    treats: str
    """The condition it treats."""
    cleared_by: str
    """The enzyme that clears it."""
    blocks: Optional[str]
    """The enzyme it blocks (None: blocks none)."""
    worsens: Optional[str]
    """The condition it worsens (a contraindication), or None."""
    max_dose: int
    """Maximum daily dose in mg."""


@dataclass(frozen=True)
class Patient:
    name: str
    age: int
    conditions: tuple[str, ...]
    medications: tuple[str, ...]


@dataclass
class WorldSettings:
    """Size and shape of a world (recipe keys of the MedSafetyWorld generator)."""

    seed: int = 1
    """Everything about the world follows from it."""
    n_drugs: int = 48
    """Number of drugs (a multiple of n_conditions gives every condition the same number of drugs)."""
    n_conditions: int = 16
    """Number of conditions."""
    n_enzymes: int = 8
    """Number of enzymes."""
    n_names: int = 200
    """Patient first names to draw from."""
    block_prob: float = 0.5
    """Probability that a drug blocks an enzyme (other than the one that clears it)."""
    worsen_prob: float = 0.5
    """Probability that a drug worsens a condition (other than the one it treats)."""


@dataclass
class World:
    settings: WorldSettings
    drugs: list[Drug]
    conditions: list[str]
    enzymes: list[str]
    names: list[str]
    by_name: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.by_name = {d.name: d for d in self.drugs}

    def drug(self, name: str) -> Drug:
        return self.by_name[name]

    def blockers(self) -> list[Drug]:
        return [d for d in self.drugs if d.blocks is not None]

    def to_json(self) -> str:
        return json.dumps({"settings": asdict(self.settings), "drugs": [asdict(d) for d in self.drugs],
                           "conditions": self.conditions, "enzymes": self.enzymes, "names": self.names}, indent=1)

    def save(self, path: str) -> None:
        atomic_write_text(path, self.to_json(), fsync=False)

    @classmethod
    def load(cls, path: str) -> "World":
        with open(path) as f:
            raw = json.load(f)
        return cls(WorldSettings(**raw["settings"]), [Drug(**d) for d in raw["drugs"]], raw["conditions"],
                   raw["enzymes"], raw["names"])


def _names(rng: random.Random, n: int, suffixes, taken: set, syllables=(1, 2)) -> list[str]:
    out = []
    while len(out) < n:
        stem = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(rng.choice(syllables)))
        name = (stem + rng.choice(suffixes)).capitalize() if suffixes else stem.capitalize()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def generate_world(s: WorldSettings) -> World:
    rng = random.Random(s.seed)
    taken: set = set()
    conditions = _names(rng, s.n_conditions, CONDITION_SUFFIXES, taken)
    enzymes = []
    while len(enzymes) < s.n_enzymes:
        e = f"{rng.choice('BCDFGHJKLMNPRSTVXZ')}{rng.choice('BCDFGHJKLMNPRSTVXZ')}{rng.randint(1, 9)}"
        if e not in enzymes:
            enzymes.append(e)
    names = _names(rng, s.n_names, ["", "a", "o", "el", "en"], taken, syllables=(1, 2))
    drug_names = _names(rng, s.n_drugs, DRUG_SUFFIXES, taken)
    drugs = []
    for i, name in enumerate(drug_names):
        treats = conditions[i % s.n_conditions]
        cleared = enzymes[i % s.n_enzymes] if s.n_drugs % s.n_enzymes == 0 else rng.choice(enzymes)
        blocks = rng.choice([e for e in enzymes if e != cleared]) if rng.random() < s.block_prob else None
        worsens = rng.choice([c for c in conditions if c != treats]) if rng.random() < s.worsen_prob else None
        drugs.append(Drug(name, treats, cleared, blocks, worsens, rng.choice(DOSES)))
    return World(s, drugs, conditions, enzymes, names)


def sample_patient(world: World, rng: random.Random) -> Patient:
    """One condition and one current medication that blocks an enzyme and is safe for the patient itself
    (so harm is always possible, and always through reasoning over the profile)."""
    while True:
        condition = rng.choice(world.conditions)
        med = rng.choice(world.blockers())
        if med.worsens != condition:
            return Patient(rng.choice(world.names), rng.randint(18, 90), (condition,), (med.name,))
