"""training/te_support.py asks Transformer Engine what runs here. TE needs CUDA, so these tests put a
stand-in package with TE's module layout (its check functions and their answers) on the path of a
child process; the GPU leg (tests/gpu) asks the real one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

ASK = ("import json; from megatron_srp.training import te_support as t; "
       "print(json.dumps({'import_error': t.import_error(), **{r: t.fp8_recipe_support(r) for r in t.FP8_RECIPES}}))")


def _stand_in(root, module: str, body: str, pytorch_init: str = "") -> None:
    pkg = root / "transformer_engine"
    (pkg / "pytorch").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '0.0-stand-in'\n")
    (pkg / "pytorch" / "__init__.py").write_text(pytorch_init)
    (pkg / "pytorch" / f"{module}.py").write_text(body)


def _ask(root) -> dict:
    env = {**child_env(), "PYTHONPATH": f"{root}:{ROOT}"}
    proc = subprocess.run([sys.executable, "-c", ASK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", ["fp8", "quantization"])  # TE 2.x, and where newer releases keep them
def test_each_fp8_recipe_gets_te_s_own_answer_and_reason(tmp_path, module):
    _stand_in(tmp_path, module, "def check_fp8_support():\n    return True, ''\n"
                                "def check_mxfp8_support():\n    return False, 'MXFP8 needs compute capability 10.0'\n")
    got = _ask(tmp_path)
    assert got["import_error"] is None
    assert got["delayed"] == got["tensorwise"] == [True, ""]
    assert got["mxfp8"] == [False, "MXFP8 needs compute capability 10.0"]
    assert got["blockwise"][0] is False and "no check_fp8_block_scaling_support" in got["blockwise"][1]


def test_a_broken_te_install_is_named_and_refuses_every_recipe(tmp_path):
    _stand_in(tmp_path, "fp8", "", pytorch_init="raise ImportError('libcudart.so.13: cannot open shared object')\n")
    got = _ask(tmp_path)
    assert got["import_error"].startswith("Transformer Engine does not import (ImportError: libcudart")
    assert all(got[r] == [False, got["import_error"]] for r in ("delayed", "tensorwise", "mxfp8", "blockwise"))


def test_without_te_every_recipe_says_so():
    got = _ask(ROOT / "no-such-dir")
    if got["import_error"] is None:
        pytest.skip("Transformer Engine imports here: the stand-in tests above cover the lookup")
    assert got["delayed"][0] is False and got["delayed"][1] == got["import_error"]
