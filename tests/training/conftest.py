import pytest

from tests.training import runner


@pytest.fixture(scope="session")
def init_ckpt(tmp_path_factory):
    """Freshly initialised weights (iteration 0), shared by every layout so all start equal."""
    d = tmp_path_factory.mktemp("init")
    runner.run(d, extra=["--save-init"])
    assert runner.tracker(d) == 0
    return d / "ckpt"


@pytest.fixture(scope="session")
def from_init(init_ckpt):
    return [f"checkpoint.load={init_ckpt}", "checkpoint.finetune=true"]


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, from_init):
    """20 uninterrupted single-process steps: the reference for every other run."""
    d = tmp_path_factory.mktemp("baseline")
    runner.run(d, from_init)
    got = runner.losses(d)
    assert sorted(got) == list(range(1, 21))
    return got
