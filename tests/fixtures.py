"""Small Megatron indexed datasets made on the fly (no files shipped, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_srp.data.gpt_dataset import roles_prefix

VOCAB = 512
EOD = VOCAB - 1


def reflection_role(tokens: np.ndarray) -> np.ndarray:
    """The test's stand-in rule for which tokens are reflections: ids divisible by 7."""
    return (tokens % 7 == 0).astype(np.uint8)


def write_indexed_dataset(prefix: Path, n_docs: int = 200, seed: int = 0, with_roles: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tokens_b = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    roles_b = IndexedDatasetBuilder(f"{roles_prefix(str(prefix))}.bin", dtype=np.uint8) if with_roles else None
    for _ in range(n_docs):
        n = int(rng.integers(20, 300))
        # A learnable pattern: runs of increasing ids from a random start.
        start = int(rng.integers(0, EOD - 1))
        doc = np.append((start + np.arange(n)) % (EOD - 1), EOD).astype(np.int64)
        tokens_b.add_document(torch.from_numpy(doc), [len(doc)])
        if roles_b is not None:
            roles_b.add_document(torch.from_numpy(reflection_role(doc).astype(np.int64)), [len(doc)])
    tokens_b.finalize(f"{prefix}.idx")
    if roles_b is not None:
        roles_b.finalize(f"{roles_prefix(str(prefix))}.idx")
    return prefix
