"""The README's quickstart, run as written: examples/quickstart.sh takes a jsonl corpus through every
stage with the project's own tools and no hand edit between them."""

import json
import sys

from tests.conftest import ROOT, child_env


def test_quickstart_script_runs_every_stage_on_the_users_data(tmp_path, watch):
    work = tmp_path / "qs"
    env = child_env()
    env["PY"] = sys.executable
    proc = watch(["bash", str(ROOT / "examples" / "quickstart.sh"), str(work)], cwd=ROOT, env=env)
    out = proc.finish(timeout=840)
    assert proc.returncode == 0, out[-6000:]
    for n in range(8):
        assert f"\n== {n}. " in out, n  # every step ran, in order

    stats = json.loads((work / "data" / "srp" / "stats.json").read_text())
    assert stats["documents_written"] == 400 and stats["labels"]["unsafe"] > 0

    # Pretraining read the preprocessed dataset, not mock data: the role sidecar's reflection loss is
    # logged, and the saved recipe names the data.
    records = [json.loads(line) for line in (work / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") != "validation"]
    assert train[-1]["step"] == 60 and "loss_reflection" in train[-1]
    assert train[-1]["loss"] < train[0]["loss"]

    base = work / "hf" / "base"
    assert json.loads((base / "parity.json").read_text())["passed"] is True
    from transformers import AutoTokenizer

    from megatron_srp.posttrain.chat_template import SRP_TEMPLATE

    assert AutoTokenizer.from_pretrained(base).chat_template == SRP_TEMPLATE  # the default, reflection-aware

    report = json.loads((work / "eval" / "report.json").read_text())
    assert report["classification"] and report["harmful"] and "finetune_attacks" in report
    generations = [json.loads(line) for line in (work / "generate.jsonl").read_text().splitlines()]
    assert len(generations) == 2 and all("text" in g for g in generations)
