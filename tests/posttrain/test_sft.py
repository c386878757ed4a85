"""Reflection-compatible SFT data, assistant-only labels, a real SFT run whose loss falls, and
tools/posttrain.py's errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megatron_srp.posttrain.data import plain_turn, reflection_turn
from megatron_srp.reflection import ReflectionFormat, Verdict

FMT = ReflectionFormat(categories=("Violent",))
SAFE, UNSAFE = Verdict("safe"), Verdict("unsafe", ("Violent",))


def test_reflection_turn_format():
    # a reflection on the request, then one after each segment
    assert reflection_turn(SAFE, ["Boil water.", " Add salt."], [SAFE, SAFE], FMT) == (
        "<think> Safe </think> Boil water. <think> Safe </think> Add salt. <think> Safe </think>")
    # the turn ends right after the first flagged segment
    assert reflection_turn(SAFE, ["First.", " Then hurt him.", " More."], [SAFE, UNSAFE, SAFE], FMT) == (
        "<think> Safe </think> First. <think> Safe </think> Then hurt him. <think> Unsafe, Violent </think>")
    # a flagged request: the flag, and the refusal only when asked for
    assert reflection_turn(UNSAFE, ["x"], [SAFE], FMT) == "<think> Unsafe, Violent </think>"
    assert reflection_turn(UNSAFE, ["x"], [SAFE], FMT, "I can't help.") == "<think> Unsafe, Violent </think> I can't help."
    assert plain_turn(UNSAFE, "x", "I can't help.") == "I can't help." and plain_turn(SAFE, "x", None) == "x"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.fixtures import memorizing_model

    return memorizing_model(tmp_path_factory.mktemp("sft_base"), ["alpha beta gamma delta ."], steps=5)


def test_labels_cover_only_the_assistant_turns(model_dir):
    from megatron_srp.posttrain.sft import load_tokenizer, tokenize_chat

    tok = load_tokenizer(str(model_dir))
    msgs = [{"role": "user", "content": "alpha beta"}, {"role": "assistant", "content": "gamma delta"},
            {"role": "user", "content": "beta"}, {"role": "assistant", "content": "alpha ."}]
    r = tokenize_chat(tok, msgs, 100)
    trained = tok.decode([t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100])
    assert trained == "gamma delta alpha . <|endoftext|>"
    assert tok.decode(r["input_ids"]).startswith("User : alpha beta Assistant : gamma delta User : beta")


def test_sft_loss_falls_and_tool_errors(model_dir, tmp_path):
    from tests.conftest import ROOT, child_env
    from tests.fixtures import write_jsonl

    rows = [{"prompt": "alpha beta", "response": "gamma delta .", "request_label": "safe",
             "segments": [{"text": "gamma delta .", "label": "safe"}]},
            {"prompt": "beta alpha", "response": "", "request_label": "unsafe", "request_categories": ["Violent"],
             "segments": []}] * 8
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    recipe = ROOT / "recipes" / "posttrain" / "sft_cpu.yaml"
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "tools" / "posttrain.py"), str(recipe), f"model={model_dir}",
           f"data.paths=[{data}]", f"output_dir={out}", "training.max_steps=30", "training.learning_rate=3e-3",
           "training.logging_steps=5", "training.per_device_train_batch_size=4", "training.warmup_ratio=0.0"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    assert p.returncode == 0, p.stderr[-3000:]
    examples = [json.loads(line) for line in (out / "examples.jsonl").open()]
    assert examples[0]["messages"][-1]["content"] == "<think> Safe </think> gamma delta . <think> Safe </think>"
    assert examples[1]["messages"][-1]["content"] == "<think> Unsafe, Violent </think>"
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()

    # bad input: a model directory without a tokenizer; rows without the needed fields
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((model_dir / "config.json").read_text())
    p = subprocess.run(cmd[:3] + [f"model={bare}", f"data.paths=[{data}]", f"output_dir={tmp_path / 'x'}"],
                       capture_output=True, text=True, env=child_env())
    assert p.returncode == 2 and "no tokenizer files" in p.stderr
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q"}])
    p = subprocess.run(cmd[:3] + [f"model={model_dir}", f"data.paths=[{bad}]", f"output_dir={tmp_path / 'y'}"],
                       capture_output=True, text=True, env=child_env())
    assert p.returncode == 2 and "bad.jsonl:1" in p.stderr and "'messages'" in p.stderr


def test_mixed_sources_and_unlabelled_rows(model_dir, tmp_path):
    """``data`` + ``mix``: each source in its own format, verdicts from the rows; rows with neither
    verdicts nor reflections are refused instead of silently training without reflections."""
    from megatron_srp.posttrain.data import PosttrainDataError, SourceSettings
    from megatron_srp.posttrain.sft import SFTRecipe, build_examples, load_tokenizer
    from tests.fixtures import write_jsonl

    tok = load_tokenizer(str(model_dir))
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "alpha", "response": "beta gamma .", "request_label": "safe",
                                                   "response_label": "safe"}])
    wjb = write_jsonl(tmp_path / "wjb.jsonl", [
        {"vanilla": "hurt", "adversarial": "", "completion": "no .", "data_type": "vanilla_harmful"},
        {"vanilla": "delta", "adversarial": "", "completion": "x", "data_type": "vanilla_harmful"}])
    r = SFTRecipe(data=SourceSettings(paths=[str(chats)]),
                  mix=[SourceSettings(paths=[str(wjb)], format="wildjailbreak", max_examples=1)], refusal="I won't .")
    turns = [ex["messages"][-1]["content"] for ex in build_examples(r, tok)]
    assert turns == ["<think> Safe </think> beta gamma . <think> Safe </think>", "<think> Unsafe </think> I won't ."]
    r.reflections = False
    assert [ex["messages"][-1]["content"] for ex in build_examples(r, tok)] == ["beta gamma .", "I won't ."]

    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "alpha", "response": "beta ."}])
    with pytest.raises(PosttrainDataError, match="carry no verdicts .* set label_source to a classifier backend"):
        build_examples(SFTRecipe(data=SourceSettings(paths=[str(plain)])), tok)
    formatted = write_jsonl(tmp_path / "formatted.jsonl", [{"prompt": "alpha", "response": "<think> Safe </think> beta ."}])
    assert len(build_examples(SFTRecipe(data=SourceSettings(paths=[str(formatted)])), tok)) == 1


def test_a_damaged_tokenizer_is_an_input_error(tmp_path):
    """tools/posttrain.py exits 2 on PosttrainDataError: a damaged tokenizer.json is named, not a traceback."""
    from megatron_srp.posttrain.data import PosttrainDataError
    from megatron_srp.posttrain.sft import load_tokenizer

    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(PosttrainDataError, match=f"cannot load the tokenizer of '{tmp_path}'"):
        load_tokenizer(str(tmp_path))
