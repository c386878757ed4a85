"""Training data: BlendedMegatronDatasetBuilder + GPTDataset (or MockGPTDataset), and a sampler
whose position is one integer (consumed samples), so a resumed run reads exactly the batches an
uninterrupted run would have read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from tokenizers import Tokenizer

from megatron.core import parallel_state
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset

from megatron_srp.config import Recipe, RecipeError, blend_from_data_path
from megatron_srp.data.gpt_dataset import RoleAwareGPTDataset
from megatron_srp.data.tokenizer import TokenizerError, eod_token_id
from megatron_srp.training.signals import EXIT_SIGNALS


@dataclass
class DatasetTokenizerInfo:
    """The two facts GPTDataset needs from a tokenizer."""

    vocab_size: int
    eod: int

    @property
    def unique_identifiers(self) -> dict:
        # Part of GPTDataset's cache key: a different eod must not reuse cached indices.
        return {"class": type(self).__name__, "vocab_size": self.vocab_size, "eod": self.eod}


def tokenizer_info(recipe: Recipe) -> DatasetTokenizerInfo:
    d, vocab = recipe.data, recipe.model.vocab_size
    if d.tokenizer_model:
        eod = _hf_eod_id(d.tokenizer_model, vocab)
        return DatasetTokenizerInfo(vocab_size=vocab, eod=eod)
    eod = d.eod_token_id if d.eod_token_id is not None else vocab - 1
    return DatasetTokenizerInfo(vocab_size=vocab, eod=eod)


def _hf_eod_id(path: str, vocab_size: int) -> int:
    """End-of-document id of a Hugging Face tokenizer directory, read without loading code."""
    tok_path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tok_path):
        raise RecipeError(f"data.tokenizer_model={path}: no tokenizer.json there")
    tok = Tokenizer.from_file(tok_path)
    if tok.get_vocab_size() > vocab_size:
        raise RecipeError(f"data.tokenizer_model={path} has {tok.get_vocab_size()} tokens but "
                          f"model.vocab_size={vocab_size}; set model.vocab_size >= the tokenizer's")
    try:
        return eod_token_id(path, tok)
    except TokenizerError:
        raise RecipeError(f"data.tokenizer_model={path}: cannot find an end-of-text token; set data.eod_token_id") from None


def _num_samples(recipe: Recipe) -> list[int]:
    t = recipe.training
    train = t.train_iters * t.global_batch_size
    if t.eval_interval:
        evals = t.train_iters // t.eval_interval + 1
        valid = evals * t.eval_iters * t.global_batch_size
    else:
        valid = 0
    return [train, valid, 0]


def check_data_files(recipe: Recipe) -> None:
    """Every prefix of data.data_path has its .bin and .idx (pretrain checks before building the model)."""
    if recipe.data.mock:
        return
    prefixes, _ = blend_from_data_path(recipe.data.data_path)
    for p in prefixes:
        missing = [f"{p}{ext}" for ext in (".bin", ".idx") if not os.path.isfile(p + ext)]
        if missing:
            raise RecipeError(f"data.data_path: {' and '.join(missing)} not found (a prefix names PREFIX.bin "
                              "and PREFIX.idx, as tools/preprocess_data.py writes them)")


def build_datasets(recipe: Recipe):
    """(train, valid) datasets, built on every rank (each rank reads its own microbatches)."""
    d, m = recipe.data, recipe.model
    info = tokenizer_info(recipe)
    blend = None
    if not d.mock:
        check_data_files(recipe)
        prefixes, weights = blend_from_data_path(d.data_path)
        blend = (prefixes, weights)
    cfg = GPTDatasetConfig(
        random_seed=recipe.training.seed,
        sequence_length=m.seq_length,
        blend=blend,
        split=d.split,
        path_to_cache=d.data_cache_path,
        tokenizer=info,
        reset_position_ids=d.reset_position_ids,
        reset_attention_mask=d.reset_attention_mask,
        eod_mask_loss=d.eod_mask_loss,
        create_attention_mask=d.reset_attention_mask,
        mid_level_dataset_surplus=0.005,
    )
    if d.mock:
        cfg.mock = True
    sizes = _num_samples(recipe)
    # Build only the splits the run reads. An unread split would still be indexed, and an empty
    # one makes GPTDataset loop forever. Dropping it from the matrix keeps the train boundaries.
    cfg.split_matrix = [rng if n > 0 else None for rng, n in zip(cfg.split_matrix, sizes)]
    if not d.mock:
        _check_splits_nonempty(prefixes, cfg.split_matrix)
    cls = MockGPTDataset if d.mock else RoleAwareGPTDataset
    train, valid, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, cfg).build()
    return train, valid


def _check_splits_nonempty(prefixes: list[str], split_matrix) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    names = ["train", "validation", "test"]
    for prefix in prefixes:
        ds = IndexedDataset(prefix)  # held while reading: its __del__ closes the mmap
        n = len(ds.sequence_lengths)
        for name, rng in zip(names, split_matrix):
            if rng is None:
                continue
            beg, end = int(round(rng[0] * n)), int(round(rng[1] * n))
            if end <= beg:
                raise RecipeError(
                    f"data.split gives the {name} split no documents of {prefix} ({n} documents); "
                    "use more data or change data.split (or disable training.eval_interval)")


class PretrainingSampler:
    """Megatron's pretraining sampler: global batch b holds samples
    [b * gbs, (b + 1) * gbs); each microbatch step takes ``mbs * dp`` consecutive samples and
    rank r takes its ``mbs`` slice. The whole state is ``consumed_samples``."""

    def __init__(self, total: int, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.total = total
        self.consumed = consumed_samples
        self.mbs = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __iter__(self):
        step = self.mbs * self.dp_size
        start = self.consumed
        while start + step <= self.total:
            lo = start + self.dp_rank * self.mbs
            yield list(range(lo, lo + self.mbs))
            start += step


def ignore_exit_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGUSR1 to the rank (which saves and exits): Slurm signals
    every process of a step, and a worker killed by the default action would crash the rank."""
    import signal


    for sig in EXIT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class BatchIterator:
    """Microbatches from a DataLoader, with ``close()`` to stop its worker processes now.

    Workers ignore SIGTERM (``ignore_exit_signals``), so they must not outlive an error: Python's
    exit handler would terminate them with SIGTERM and wait forever. The trainer closes every
    iterator in ``finally``, so a run that fails with workers exits with its error instead of hanging.
    """

    def __init__(self, loader: torch.utils.data.DataLoader):
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def close(self) -> None:
        # The multiprocessing iterator's own shutdown (what its __del__ calls); absent without workers.
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def build_iterator(dataset, recipe: Recipe, consumed_samples: int) -> Optional[BatchIterator]:
    if dataset is None:
        return None
    sampler = PretrainingSampler(
        total=len(dataset),
        consumed_samples=consumed_samples,
        micro_batch_size=recipe.training.micro_batch_size,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=recipe.data.num_workers,
        collate_fn=torch.utils.data.default_collate,
        pin_memory=False,
        persistent_workers=recipe.data.num_workers > 0,
        worker_init_fn=ignore_exit_signals,
        # Its own generator: every new iterator draws a worker seed, which from the global generator
        # would shift the dropout masks of a resumed run (it builds its iterator after the RNG restore).
        generator=torch.Generator().manual_seed(recipe.training.seed),
    )
    return BatchIterator(loader)


def check_token_ids(tokens: torch.Tensor, vocab_size: int, recipe: Recipe) -> None:
    """A token id outside the embedding fails as an index error deep in the model (a device-side
    assert on GPUs); say which data and which setting instead. Runs on the CPU batch: no GPU sync."""
    top = int(tokens.max())
    if top >= vocab_size:
        where = "mock data" if recipe.data.mock else f"data.data_path={recipe.data.data_path}"
        raise RecipeError(f"{where} holds token id {top}, outside "
                          f"the model's vocabulary of {vocab_size} (model.vocab_size={recipe.model.vocab_size}, "
                          f"padded); the data was tokenized with another tokenizer, or model.vocab_size is too small")
