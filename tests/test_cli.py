"""The tools as package modules: ``python -m megatron_srp.cli.TOOL``, the tools/ shims, the console
scripts, and the one error base every tool maps to exit 2."""

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from megatron_srp.errors import SRPError, exit_2_on_user_error
from tests.conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["pretrain", "annotate", "preprocess_data", "convert_to_hf", "convert_from_hf", "posttrain", "evaluate",
         "medsafetyworld"]


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_is_a_package_module_with_a_shim_and_a_script(tool):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["srp-" + tool.replace("_", "-")] == f"megatron_srp.cli.{tool}:main"
    shim = (ROOT / "tools" / f"{tool}.py").read_text()
    assert f"from megatron_srp.cli.{tool} import main" in shim and "sys.path" not in shim
    assert callable(importlib.import_module(f"megatron_srp.cli.{tool}").main)


def test_python_dash_m_runs_the_same_help_as_the_shim():
    def help_of(*cmd):
        proc = subprocess.run([sys.executable, *cmd, "--help"], cwd=ROOT, env=child_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    assert help_of("-m", "megatron_srp.cli.posttrain") == help_of("tools/posttrain.py")


def test_no_sys_path_edits_in_tools_bench_or_slurm():
    edited = [str(p.relative_to(ROOT)) for d in ("tools", "bench", "slurm", "megatron_srp")
              for p in (ROOT / d).rglob("*.py") if "sys.path.insert" in p.read_text()]
    assert edited == []


def test_every_error_class_of_the_package_is_a_user_error_except_the_documented_ones():
    not_user_errors = {"ParityError", "StageError", "FastPathUnavailable"}  # exit 3, exit 1, internal
    found = {}
    for path in (ROOT / "megatron_srp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Unavailable", "Model")) and node.bases:
                found[node.name] = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    assert len(found) >= 15, found
    for name, module in found.items():
        cls = getattr(importlib.import_module(module), name)
        if issubclass(cls, Exception):
            assert issubclass(cls, SRPError) != (name in not_user_errors), f"{module}.{name}"


def test_a_user_error_is_exit_2_with_its_message_and_a_bug_keeps_its_traceback(capsys):
    @exit_2_on_user_error
    def tool(error):
        raise error

    assert tool(SRPError("recipe.yaml: unknown key 'trainig'")) == 2
    assert capsys.readouterr().err == "error: recipe.yaml: unknown key 'trainig'\n"
    with pytest.raises(KeyError):
        tool(KeyError("a bug"))


def test_save_init_without_a_checkpoint_dir_is_exit_2_not_a_system_exit(capsys):
    from megatron_srp.cli import pretrain

    rc = pretrain.main([str(ROOT / "recipes/tiny_cpu.yaml"), "--save-init", "checkpoint.dir=null"])
    assert rc == 2
    assert "error: --save-init needs checkpoint.dir" in capsys.readouterr().err


def test_preprocess_data_hands_the_collector_back_to_python_callers_only(tmp_path):
    """``main`` freezes what is imported while it runs. A Python caller (argv given) gets the collector back;
    the command line (argv None) leaves everything frozen, so the interpreter's exit does not walk it."""
    import gc

    from megatron_srp.cli.preprocess_data import main
    from tests.fixtures import labelled_corpus, train_bpe_tokenizer, write_jsonl

    rows = labelled_corpus(20)
    write_jsonl(tmp_path / "corpus.jsonl", rows)
    tok = train_bpe_tokenizer(tmp_path / "tok", [r["text"] for r in rows])
    args = ["--input", str(tmp_path / "corpus.jsonl"), "--tokenizer-model", str(tok), "--append-eod", "--no-progress"]
    assert main([*args, "--output-prefix", str(tmp_path / "in_process")]) == 0
    assert gc.get_freeze_count() == 0
    program = ("import gc, sys\nfrom megatron_srp.cli.preprocess_data import main\n"
               "rc = main()\nprint(rc, gc.get_freeze_count() > 0)")
    proc = subprocess.run([sys.executable, "-c", program, *args, "--output-prefix", str(tmp_path / "program")],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["0", "True"]
    assert (tmp_path / "program_text_document.bin").read_bytes() == (tmp_path / "in_process_text_document.bin").read_bytes()
