"""Typed settings of annotate and preprocess: built once from argv, the same as a recipe mapping, and
carried into datatrove and Slurm tasks as an object."""

import pickle

import pytest

from megatron_srp.config import RecipeError, config_from_dict
from megatron_srp.data import annotate, preprocess
from megatron_srp.data.datatrove_steps import TOOLS, ToolShards, task_settings, tool_module
from megatron_srp.data.settings import AnnotateConfig, PreprocessConfig

PREPROCESS_ARGV = ["--input", "a.jsonl", "b.jsonl", "--output-prefix", "out/c", "--tokenizer-model", "tok",
                   "--variant", "rewrite", "--annotations", "ann", "--flagged-labels", "unsafe, controversial",
                   "--rewriter", "template", "--rewriter-arg", "temperature=0.5", "--reflection", "safe_word=ok",
                   "--no-injection-guard", "--no-progress", "--executor", "slurm", "--slurm-partition", "cpu",
                   "--slurm-sbatch-arg", "account=srp"]


def test_preprocess_argv_gives_the_settings_a_recipe_mapping_gives():
    from_argv = preprocess.settings_from_argv(PREPROCESS_ARGV)
    from_mapping = config_from_dict(PreprocessConfig, {
        "input": ["a.jsonl", "b.jsonl"], "output_prefix": "out/c", "tokenizer_model": "tok", "variant": "rewrite",
        "annotations": "ann", "flagged_labels": ["unsafe", "controversial"], "rewriter": "template",
        "rewriter_options": {"temperature": 0.5}, "reflection_options": {"safe_word": "ok"},
        "injection_guard": False, "progress": False,
        "executor": {"executor": "slurm", "slurm_partition": "cpu", "slurm_sbatch_args": {"account": "srp"}}})
    assert from_argv == from_mapping


def test_annotate_defaults_match_the_dataclass_and_keys_are_checked():
    cfg = annotate.settings_from_argv(["--input", "x", "--output", "ann", "--tokenizer-model", "tok",
                                       "--classifier-arg", "batch_size=16"])
    assert cfg == AnnotateConfig(input=["x"], output="ann", tokenizer_model="tok",
                                 classifier_options={"batch_size": 16})
    with pytest.raises(RecipeError, match="did you mean 'segment_tokens'"):
        config_from_dict(AnnotateConfig, {"input": ["x"], "output": "a", "tokenizer_model": "t", "segment_token": 1})


def test_tasks_get_the_settings_pickled_without_executor_or_progress_bar():
    cfg = preprocess.settings_from_argv(PREPROCESS_ARGV)
    step = pickle.loads(pickle.dumps(ToolShards("preprocess", task_settings(cfg))))
    assert step.settings.executor.executor == "none" and not step.settings.progress
    assert step.settings.executor.slurm_partition == "cpu" and step.settings.input == cfg.input
    assert cfg.executor.executor == "slurm"  # the caller's settings are unchanged
    for tool in TOOLS:
        module = tool_module(tool)
        assert all(callable(getattr(module, f)) for f in ("settings_from_argv", "run_task", "finish_task"))


def test_bad_key_value_flag_exits_2_naming_the_flag(capsys):
    argv = ["--input", "x", "--output-prefix", "o", "--tokenizer-model", "t", "--reflection", "safe_word"]
    assert preprocess.main(argv) == 2
    assert "--reflection expects KEY=VALUE, got 'safe_word'" in capsys.readouterr().err


def test_flag_help_is_the_field_docstring(capsys):
    with pytest.raises(SystemExit):
        preprocess.settings_from_argv(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "CPU cores to tokenize with (gigatoken: a process per span of a large file; tokenizers: processes)" in out
    assert "datatrove logs and completion markers (default: OUTPUT.datatrove)" in out
