"""megatron_srp.io: a target holds the old content or the new, never a part; failed writes leave no temporary."""

import json
import os

import pytest

from megatron_srp.io import atomic_copy, atomic_dir, atomic_open, atomic_write_json, atomic_write_text


class Boom(Exception):
    pass


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"step": 1})
    with pytest.raises(Boom):
        with atomic_open(path) as f:
            f.write('{"step": 2')  # killed half way
            raise Boom
    assert json.loads(path.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_text_json_and_copy_land_complete(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "20\n")
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]}, indent=2)
    atomic_copy(tmp_path / "b.json", tmp_path / "c.json")
    assert (tmp_path / "a.txt").read_text() == "20\n"
    assert (tmp_path / "c.json").read_text() == json.dumps({"x": [1, 2]}, indent=2)
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "c.json"]


def test_folder_is_replaced_only_when_complete(tmp_path):
    out = tmp_path / "tok"
    with atomic_dir(out) as staged:
        (tmp_path / "tok.marker").write_text("")
        open(os.path.join(staged, "old.json"), "w").close()
    with pytest.raises(Boom):
        with atomic_dir(out) as staged:
            open(os.path.join(staged, "new.json"), "w").close()
            raise Boom
    assert os.listdir(out) == ["old.json"]
    with atomic_dir(out) as staged:
        open(os.path.join(staged, "new.json"), "w").close()
    assert os.listdir(out) == ["new.json"]
    assert sorted(os.listdir(tmp_path)) == ["tok", "tok.marker"]
