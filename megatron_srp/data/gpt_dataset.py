"""GPTDataset with the per-token role sidecar of SRP data.

An SRP dataset ``PREFIX.bin/.idx`` may carry a sidecar ``PREFIX.roles.bin/.idx``: an indexed
dataset with exactly the same document lengths whose values are token roles (``ROLE_TEXT`` or
``ROLE_REFLECTION``). Samples then carry a ``roles`` tensor aligned with ``labels`` so the
trainer can report text and reflection losses apart and optionally mask reflections.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy
import torch

from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_srp.data.roles import ROLE_REFLECTION, ROLE_TEXT, ROLES_SUFFIX, has_roles, roles_prefix  # noqa: F401


class RoleAwareGPTDataset(GPTDataset):
    """A GPTDataset that also returns ``roles`` (for the label positions) when a sidecar exists."""

    def __init__(self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config):
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        self.roles: Optional[IndexedDataset] = None
        if dataset_path is not None and has_roles(dataset_path):
            self.roles = IndexedDataset(roles_prefix(dataset_path), mmap=config.mmap_bin_files)
            if not numpy.array_equal(self.roles.sequence_lengths, indexed_dataset.sequence_lengths):
                raise ValueError(
                    f"{roles_prefix(dataset_path)}: role sidecar does not match {dataset_path} "
                    "(document lengths differ); rebuild it with tools/preprocess_data.py"
                )

    def _query_roles(self, idx: int) -> numpy.ndarray:
        # The sample/document index mapping is shared; read the sidecar through the same code
        # path by pointing the parent's reader at it for one query.
        tokens_dataset = self.dataset
        self.dataset = self.roles
        try:
            # (tokens, document ids) in megatron-core 0.16; 0.19 appends per-document counts.
            roles = self._query_document_sample_shuffle_indices(idx)[0]
        finally:
            self.dataset = tokens_dataset
        return roles

    def __getitem__(self, idx: Optional[int]) -> Dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)
        if self.roles is not None:
            roles = torch.from_numpy(numpy.asarray(self._query_roles(0 if idx is None else idx))).long()
            # Role of each label position (labels are tokens shifted by one).
            sample["roles"] = roles[1:].contiguous() if self.config.add_extra_token_to_sequence else roles
        return sample
