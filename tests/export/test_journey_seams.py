"""The seams between convert, posttrain and evaluate a user meets on the README's path: the default
export carries a chat template that keeps reflections, an ``iter_NNNNNNN`` folder converts, exports
follow the umask, and the tools take flags and overrides in any order."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env
from tests.export.helpers import TO_HF, tool
from tests.fixtures import write_jsonl

POSTTRAIN = str(ROOT / "tools" / "posttrain.py")
EVALUATE = str(ROOT / "tools" / "evaluate.py")
PRETRAIN = str(ROOT / "tools" / "pretrain.py")
SFT_CPU = str(ROOT / "recipes" / "posttrain" / "sft_cpu.yaml")


def run(*cmd, timeout=300):
    return subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_default_export_posttrains_and_evaluates_without_flags(trained, tokenizer, tmp_path):
    hf = tmp_path / "hf"
    env = child_env()
    env.pop("PYTHONWARNINGS")  # what a user sees: Megatron-Core's fallback warnings are filtered at import
    p = subprocess.run([sys.executable, TO_HF, "--checkpoint", str(trained("gqa_tied_tp2")), "--output", str(hf),
                        "--tokenizer", str(tokenizer), "--no-progress"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Falling back to" not in p.stderr and "UserWarning" not in p.stderr, p.stderr[-3000:]
    rows = [{"prompt": "Where is the map?", "response": "A map shows roads and towns.", "request_label": "safe",
             "segments": [{"text": "A map shows roads and towns.", "label": "safe"}]}] * 4
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    sft = tmp_path / "sft"
    # overrides before and after the flag
    p = run(POSTTRAIN, SFT_CPU, f"model={hf}", "--chat-template", "srp", f"data.paths=[{data}]",
            f"output_dir={sft}", "training.max_steps=1", "training.logging_steps=1")
    assert p.returncode == 0, p.stderr[-3000:]
    p = run(POSTTRAIN, SFT_CPU, f"model={hf}", f"data.paths=[{data}]", f"output_dir={tmp_path / 'sft2'}",
            "training.max_steps=1")
    assert p.returncode == 0, p.stderr[-3000:]  # no flag: the export's own template
    example = json.loads((sft / "examples.jsonl").read_text().splitlines()[0])
    assert example["messages"][-1]["content"].startswith("<think> Safe </think>")

    cls = write_jsonl(tmp_path / "cls.jsonl", [{"text": "Plants need light.", "label": "safe"}])
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: t\nmax_new_tokens: 3\nclassification:\n  - name: c\n    data: {{path: {cls}}}\n")
    report = tmp_path / "report"
    p = run(EVALUATE, suite, "batch_size=1", "--model", sft / "final", "--output", report)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((report / "report.json").read_text())["classification"]["c"]


def test_chat_templates_are_checked_for_reflections(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from megatron_srp.posttrain import chat_template as ct
    from megatron_srp.posttrain.sft import tokenize_chat
    from megatron_srp.reflection import DEFAULT

    tok = AutoTokenizer.from_pretrained(tokenizer)
    ct.apply(tok, "srp")
    msgs = ct._probe(DEFAULT)
    text = tok.apply_chat_template(msgs, tokenize=False)
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=False)
    # the model's first reflection follows the prompt as the pretraining data writes one after a segment
    assert prompt == "User: How hot is boiling water?\nAssistant:"
    assert text.startswith(prompt + DEFAULT.render(DEFAULT.find(msgs[1]["content"])[0][2]))
    assert [v for *_, v in DEFAULT.find(text)] == [v for m in msgs for *_, v in DEFAULT.find(m["content"])]
    r = tokenize_chat(tok, msgs, 512)
    trained_text = tok.decode([t for t, lab in zip(r["input_ids"], r["labels"]) if lab != -100])
    assert trained_text == "".join(" " + m["content"] + tok.eos_token for m in msgs if m["role"] == "assistant")

    # a Qwen3-style template: reasoning dropped from history, an empty <think> block in the prompt
    drops = tmp_path / "drops.jinja"
    drops.write_text("{% for m in messages %}{{ m.role }}: {{ m.content.split('</think>')[-1] if m.role == "
                     "'assistant' else m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    opens = tmp_path / "opens.jinja"
    opens.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                     "{% if add_generation_prompt %}assistant: <think>\n\n</think>{% endif %}")
    with pytest.raises(ct.ChatTemplateError, match="not rendered verbatim"):
        ct.apply(tok, str(drops))
    with pytest.raises(ct.ChatTemplateError, match="writes '<think>' itself"):
        ct.apply(tok, str(opens))
    with pytest.raises(ct.ChatTemplateError, match="did you mean 'srp'"):
        ct.apply(tok, "spr")


def test_iteration_folder_converts_under_the_umask(trained, tokenizer, tmp_path):
    ckpt = trained("gqa_tied_tp2")
    out = tmp_path / "hf"
    tool(TO_HF, "--checkpoint", ckpt / "iter_0000006", "--output", out, "--tokenizer", tokenizer, "--no-verify",
         umask=0o022)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert f"torch_dist checkpoint `{ckpt / 'iter_0000006'}`" in (out / "README.md").read_text()
    p = tool(TO_HF, "--checkpoint", ckpt / "iter_0000006", "--iteration", "5", "--output", tmp_path / "x", check=False)
    assert p.returncode == 2 and "is iteration 6, but --iteration 5" in p.stderr, p.stderr[-2000:]
    # an iteration folder newer than the tracker is a save that never completed: refused
    run_dir = tmp_path / "run"
    shutil.copytree(ckpt, run_dir)
    shutil.copytree(run_dir / "iter_0000006", run_dir / "iter_0000009")
    p = tool(TO_HF, "--checkpoint", run_dir / "iter_0000009", "--output", tmp_path / "z", check=False)
    assert p.returncode == 2 and "newer than the last completed save (6" in p.stderr, p.stderr[-2000:]
    # a wrong template file is refused before anything is written
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content.split('</think>')[-1] }}{% endfor %}")
    p = tool(TO_HF, "--checkpoint", ckpt, "--output", tmp_path / "y", "--tokenizer", tokenizer,
             "--chat-template", bad, "--no-verify", check=False)
    assert p.returncode == 2 and "bad.jinja" in p.stderr and "not rendered verbatim" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "y").exists()


DESCRIBED = {
    POSTTRAIN: ["model:", "chat_template:", "training:", "  learning_rate: 0.0001", "mix[]:"],
    EVALUATE: ["judge:", "chat_template:", "classification[]:", "  label_map: {}"],
    PRETRAIN: ["name: 'run'", "model:  # Shape of the decoder-only transformer", "  num_layers: 2",
               "      Number of transformer layers.", "data:  # ", "  reflection_loss: "],
}


@pytest.mark.parametrize("tool_path", list(DESCRIBED))
def test_describe_lists_every_key(tool_path):
    """One --describe for every recipe-driven tool (config/describe.py), and the same missing-argument usage
    error (cli/recipe_args.py)."""
    p = run(tool_path, "--describe")
    assert p.returncode == 0, p.stderr
    for key in DESCRIBED[tool_path]:
        assert key in p.stdout, key
    p = run(tool_path)
    assert p.returncode == 2 and "path" in p.stderr and "required" in p.stderr, p.stderr
