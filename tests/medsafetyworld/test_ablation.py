"""The post-training and evaluation sets keep the held-out cell out; a miniature ablation (every
pretraining data variant and two control arms, a few steps each) runs end to end through the real
tools and writes well-formed results, also into the committed-results directory; a rerun skips every
finished stage."""

from __future__ import annotations

import json
import subprocess
import sys

from megatron_srp.medsafetyworld import tasks
from megatron_srp.medsafetyworld.corpus import HELD_OUT
from megatron_srp.medsafetyworld.oracle import judge_text
from megatron_srp.medsafetyworld.world import WorldSettings, generate_world


def test_task_sets_are_deterministic_and_never_contain_the_held_out_cell():
    w = generate_world(WorldSettings(seed=1))
    a, b = tasks.test_items(w, 20, seed=0), tasks.test_items(w, 20, seed=0)
    assert a == b and a != tasks.test_items(w, 20, seed=1)
    assert list(a)[0] == HELD_OUT
    items = tasks.sft_items(w, 400, 0.25, seed=0)
    assert not any((it.genre, it.relation) == HELD_OUT for it, _ in items)
    assert 60 < sum(h for _, h in items) < 140 and all(tasks.is_harmful_request(it) == h for it, h in items)
    harmful_pairs = tasks.attack_pairs(w, 30, harmful=True, seed=0)
    benign_pairs = tasks.attack_pairs(w, 30, harmful=False, seed=0)
    for pairs, unsafe in ((harmful_pairs, True), (benign_pairs, False)):
        assert len(pairs) == 30
        for p in pairs:  # the oracle agrees with what each set is meant to be
            user, answer = (m["content"] for m in p["messages"])
            assert not user.startswith("Case note") or not unsafe
            assert (not judge_text(w, answer, user).is_safe) == unsafe, (user, answer)


def test_post_training_sets_share_requests_and_reflections_match_the_oracle():
    from megatron_srp.medsafetyworld.ablate import AblationRecipe, sft_examples
    from megatron_srp.medsafetyworld.evaluate import FORMAT

    w = generate_world(WorldSettings(seed=1))
    r = AblationRecipe()
    r.posttrain.n_examples = 600
    srp, plain = sft_examples(w, r, True, 0), sft_examples(w, r, False, 0)
    assert len(srp) == len(plain) and [e["messages"][0] for e in srp] == [e["messages"][0] for e in plain]
    flagged_actions = 0
    for s, p in zip(srp, plain):
        user, turn = s["messages"][0]["content"], s["messages"][1]["content"]
        assert not user.startswith("Case note") or "would harm" not in user  # the held-out cell
        found = FORMAT.find(turn)
        assert found and found[0][0] == 0  # a reflection on the request comes first
        if found[0][2].is_flagged:  # a harmful request: the turn ends at the flag
            assert turn.strip() == FORMAT.render(found[0][2]).strip()
            assert p["messages"][1]["content"].startswith("I will not")
            continue
        answer = turn[found[0][1]:found[-1][0]]
        assert found[-1][2] == judge_text(w, answer, user)  # the reflection after the action is the oracle's
        flagged_actions += found[-1][2].is_flagged
        assert judge_text(w, p["messages"][1]["content"], user).is_safe  # baselines never learn a harmful action
    assert flagged_actions > 10


RECIPE = """
name: mini
out_dir: {out}
results_dir: {results}
corpus: {{n_documents: 2500, shards: 2, unsafe_share: 0.15, mistake_share: 0.7, overdose_share: 0.1}}
treatments: [filter, rewrite, srp, raw_rsft, filter_rsft, srp_masked]
world_seeds: [3]
seeds: [0]
pretrain_overrides: [training.train_iters=12, scheduler.lr_warmup_iters=2, checkpoint.save_interval=12,
                     logging.log_interval=4]
posttrain: {{n_examples: 48, training: {{max_steps: 3, per_device_train_batch_size: 8}}}}
eval: {{n_items: 6, prefill_tokens: [3], finetune_harmful: [10], finetune_benign: [10],
        attack_training: {{max_steps: 2}}}}
"""


def _final_loss_of(run_dir):
    losses = [json.loads(line)["loss"] for line in (run_dir / "pretrain" / "metrics.jsonl").open() if '"loss"' in line]
    return losses[-1]


def test_miniature_ablation_end_to_end_and_resumable(tmp_path):
    from tests.conftest import ROOT, child_env

    recipe = tmp_path / "mini.yaml"
    out, committed = tmp_path / "out", tmp_path / "results" / "mini"
    recipe.write_text(RECIPE.format(out=out, results=committed))
    cmd = [sys.executable, str(ROOT / "tools" / "medsafetyworld.py"), "ablate", str(recipe)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    treatments = ["filter", "rewrite", "srp", "raw_rsft", "filter_rsft", "srp_masked"]
    results = json.loads((out / "results.json").read_text())
    runs = {r["treatment"]: r for r in results["runs"]}
    assert set(runs) == set(treatments) and len(results["runs"]) == 6
    world = out / "world3"
    assert (world / "world.json").is_file() and json.loads((world / "world.json").read_text())["settings"]["seed"] == 3
    for t in treatments:
        run = runs[t]
        assert run["world_seed"] == 3 and run["seed"] == 0 and run["finished"] is True
        assert run["provenance"]["threads"] >= 1 and run["provenance"]["commit"]
        assert run["provenance"]["cpu_capability"] not in ("", "unknown")  # e.g. AVX2, AVX512 (the rounding)
        base = run["detail"]["eval_pretrained"]
        cell = base["case_note x harm"]  # committed detail: rates as [k, n]
        assert cell["n"] == 6 and cell["harmful_action"][1] == 6 and 0 <= cell["harmful_action"][0] <= 6
        assert run["metrics"]["held-out harmful action"] == cell["harmful_action"][0] / 6
        assert 0.0 < cell["best_constant_drug_rate"] <= cell["best_constant_drug_and_dose_rate"] <= 1.0
        assert cell["random_drug_rate"] < cell["best_constant_drug_rate"]
        assert sum(cell["harmful_by_cause"][c][0] for c in ("interaction", "contraindication", "overdose")) >= \
            cell["harmful_action"][0]
        assert ("forced_output_classification" in base) == (t in ("srp", "srp_masked"))
        chat = run["detail"]["eval_chat"]
        assert {"held_out_harmful", "prefill_3", "template_role_play", "benign_over_refusal"} <= set(chat)
        assert "harmful_by_cause" in chat["held_out_harmful"] and "examples" not in chat["held_out_harmful"]
        assert "eval_finetune_harmful_10" in run["detail"] and "eval_finetune_benign_10" in run["detail"]
        assert json.loads((world / t / "seed0" / "hf" / "parity.json").read_text())["passed"] is True
        assert run["metrics"]["pretrain_final_loss"] is not None
    # raw_rsft / filter_rsft post-train the model raw / filter pretrained: one pretraining each, linked
    for arm, base in (("raw_rsft", "raw"), ("filter_rsft", "filter")):
        assert (world / arm / "seed0" / "pretrain").resolve() == (world / base / "seed0" / "pretrain").resolve()
        assert (world / base / "seed0" / "hf" / "model.safetensors").is_file()
        assert runs[arm]["metrics"]["pretrain_final_loss"] == _final_loss_of(world / base / "seed0")
    assert not any((world / "raw" / "seed0").glob("eval*.json"))  # raw itself was not asked for
    assert runs["filter_rsft"]["detail"]["eval_pretrained"] == runs["filter"]["detail"]["eval_pretrained"]
    sft = [(world / t / "seed0" / "sft" / "final" / "model.safetensors").read_bytes() for t in ("filter", "filter_rsft")]
    assert sft[0] != sft[1]  # ...and post-trains it with reflections
    # the control arms train on the shared data: one preprocessed copy per data variant
    assert sorted(p.name for p in (world / "data").glob("*.stats.json")) == [
        "filter.stats.json", "raw.stats.json", "rewrite.stats.json", "srp.stats.json"]
    def logged(t):
        return [json.loads(line) for line in (world / t / "seed0" / "pretrain" / "metrics.jsonl").open()
                if '"loss_text"' in line]

    # srp_masked reads srp's data (reflection roles present) but trains on the text tokens only
    assert logged("srp_masked") and all(abs(x["loss"] - x["loss_text"]) < 1e-6 for x in logged("srp_masked"))
    assert all(abs(x["loss"] - x["loss_text"]) > 1e-6 for x in logged("srp"))
    srp_forced = runs["srp"]["detail"]["eval_pretrained"]["forced_output_classification"]
    assert srp_forced["case_note x harm"]["n"] > 6 and srp_forced["case_note x harm"]["false_flag_rate"] is not None
    md = (out / "results.md").read_text()
    assert "| held-out harmful action |" in md and (out / "results.png").stat().st_size > 1000
    # the committed copy: the same runs, rebuilt tables and chart, nothing but the small files
    def key(r):
        return r["treatment"], r["world_seed"], r["seed"]

    assert sorted(json.loads((committed / "results.json").read_text())["runs"], key=key) == sorted(results["runs"], key=key)
    assert sum(line.startswith('{"treatment"') for line in (committed / "results.json").open()) == 6  # a line per run
    assert sorted(p.name for p in committed.iterdir()) == ["results.json", "results.md", "results.png"]
    # the srp data really carries the oracle's reflections, the filter data none
    stats = {t: json.loads((world / "data" / f"{t}.stats.json").read_text()) for t in ("srp", "filter")}
    assert stats["srp"]["reflection_tokens"] > 0 and stats["filter"]["documents_dropped"] > 0

    again = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    assert again.returncode == 0
    stages = [line for line in again.stdout.splitlines() if line.startswith("[ablate]") and ":" in line
              and "results" not in line]
    assert stages and all(line.endswith("done earlier, skipped") for line in stages), stages
    (out / "results.md").unlink()
    report = subprocess.run(cmd[:2] + ["report", str(recipe)], capture_output=True, text=True, env=child_env())
    assert report.returncode == 0 and "| held-out harmful action |" in (out / "results.md").read_text()
    (committed / "results.md").unlink()
    report = subprocess.run(cmd[:2] + ["report", str(committed)], capture_output=True, text=True, env=child_env())
    assert report.returncode == 0 and "| held-out acted on |" in (committed / "results.md").read_text()
    other = subprocess.run(cmd + ["corpus.unsafe_share=0.3"], capture_output=True, text=True, env=child_env())
    assert other.returncode == 2 and "corpus.unsafe_share" in other.stderr and "results_dir" in other.stderr
    bad = subprocess.run(cmd[:2] + ["ablate", str(recipe), "treatments=[raw,filtr]"], capture_output=True,
                         text=True, env=child_env())
    assert bad.returncode == 2 and "filtr" in bad.stderr
    bad = subprocess.run(cmd + ["pretrain_overrides=[model.hidden_sze=32]"], capture_output=True, text=True,
                         env=child_env())
    assert bad.returncode == 2 and "did you mean 'model.hidden_size'" in bad.stderr
