import numpy as np
import pytest

from megatron_srp.config import load_recipe
from megatron_srp.training.data import build_datasets
from tests.conftest import ROOT
from tests.fixtures import EOD, VOCAB, reflection_role, write_indexed_dataset


def _recipe(prefix, tmp_path, **extra):
    overrides = [f"data.data_path=[{prefix}]", "data.mock=false", f"data.data_cache_path={tmp_path / 'cache'}",
                 f"model.vocab_size={VOCAB}", "training.train_iters=10", "training.eval_interval=5"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", overrides)


def test_roles_align_with_labels_across_document_boundaries(tmp_path):
    prefix = write_indexed_dataset(tmp_path / "srp", with_roles=True)
    train, valid = build_datasets(_recipe(prefix, tmp_path))
    assert len(train) >= 10 * 8
    crossings = 0
    for i in range(40):
        s = train[i]
        labels = s["labels"].numpy()
        roles = s["roles"].numpy()
        assert roles.shape == labels.shape
        real = s["loss_mask"].numpy() > 0
        np.testing.assert_array_equal(roles[real], reflection_role(labels[real]))
        crossings += int((s["tokens"].numpy() == EOD).any())
    assert crossings > 0, "no sample crossed a document boundary; the test would prove little"
    assert "roles" in valid[0]


def test_plain_dataset_has_no_roles(tmp_path):
    prefix = write_indexed_dataset(tmp_path / "plain", with_roles=False)
    train, _ = build_datasets(_recipe(prefix, tmp_path))
    assert "roles" not in train[0]


def test_mismatched_role_sidecar_is_refused(tmp_path):
    prefix = write_indexed_dataset(tmp_path / "a", seed=0, with_roles=True)
    other = write_indexed_dataset(tmp_path / "b", seed=1, with_roles=True)
    for ext in (".bin", ".idx"):
        (tmp_path / f"a.roles{ext}").write_bytes((tmp_path / f"b.roles{ext}").read_bytes())
    with pytest.raises(Exception, match="role sidecar does not match"):
        build_datasets(_recipe(prefix, tmp_path))
