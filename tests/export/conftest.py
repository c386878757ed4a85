"""Session fixtures of the export tests: one tokenizer, and each tiny model trained once."""

from __future__ import annotations

import pytest

from tests.export.helpers import MODELS
from tests.fixtures import SAFE_SENTENCES, train_bpe_tokenizer
from tests.training import runner


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_bpe_tokenizer(tmp_path_factory.mktemp("tok"), SAFE_SENTENCES * 10, vocab_size=400)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Each model trained 6 steps with 2 gloo processes; returns name -> checkpoint dir."""
    out = {}

    def get(name):
        if name not in out:
            d = tmp_path_factory.mktemp(name)
            runner.run(d, MODELS[name] + ["training.train_iters=6"], nproc=2)
            out[name] = d / "ckpt"
        return out[name]

    return get
