"""The checkpoint layout has one home (training/layout.py), importable without Megatron-Core."""

import subprocess
import sys

import pytest

from megatron_srp.training import layout
from tests.conftest import ROOT, child_env


def _imported_roots(modules: str) -> set:
    code = f"import sys, {modules}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, check=True).stdout
    return set(out.split())


def test_layout_imports_neither_megatron_nor_torch():
    assert not {"megatron", "torch"} & _imported_roots("megatron_srp.training, megatron_srp.training.layout")


def test_the_torch_dist_reader_imports_no_megatron_core():
    assert "megatron" not in _imported_roots("megatron_srp.export.torch_dist_reader")


def test_tracker_file_name_is_written_in_one_module():
    """The library and the Slurm helpers read and write the tracker through layout.py (docs, --help
    texts and tests may name it)."""
    files = [p for d in ("megatron_srp", "slurm", "bench") for p in (ROOT / d).rglob("*")
             if p.is_file() and p.suffix in (".py", ".sh", ".sbatch")]
    naming = sorted(str(p.relative_to(ROOT)) for p in files if layout.TRACKER in p.read_text())
    assert naming == ["megatron_srp/training/layout.py"]


def _fake_save(ckpt, it):
    layout.prepare_iteration_dir(str(ckpt), it)
    layout.commit(str(ckpt), it, f"iteration: {it}\n")


def test_commit_prune_and_completed_iterations(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert layout.read_tracker(str(ckpt)) is None and layout.completed_iterations(str(ckpt)) == []
    for it in (5, 10, 15):
        _fake_save(ckpt, it)
    (ckpt / layout.iter_name(20)).mkdir()  # a save killed before its commit
    assert layout.read_tracker(str(ckpt)) == 15
    assert layout.completed_iterations(str(ckpt)) == [5, 10, 15]
    assert layout.prune(str(ckpt), 2) == [5]
    assert layout.completed_iterations(str(ckpt)) == [10, 15]
    assert layout.resolve_load_dir(str(ckpt)) == (str(ckpt / "iter_0000015"), 15)
    with pytest.raises(layout.CheckpointError, match=r"iteration 5 not found; completed iterations: \[10, 15\]"):
        layout.resolve_load_dir(str(ckpt), 5)
    (ckpt / layout.TRACKER).write_text("fifteen")
    with pytest.raises(layout.CheckpointError, match="expected an iteration number"):
        layout.read_tracker(str(ckpt))


def test_split_iteration_dir(tmp_path):
    assert layout.split_iteration_dir(str(tmp_path / "ck" / "iter_0000020")) == (str(tmp_path / "ck"), 20)
    assert layout.split_iteration_dir(str(tmp_path / "ck" / "iter_0000020") + "/") == (str(tmp_path / "ck"), 20)
    assert layout.split_iteration_dir(str(tmp_path / "ck")) == (str(tmp_path / "ck"), None)
