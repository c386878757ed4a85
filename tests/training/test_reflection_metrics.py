"""In-loop reflection accuracy (training/reflection_metrics.py): exact on hand-built microbatches, and
in a real run's validation records (metrics.jsonl and TensorBoard) without changing the validation loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from megatron_srp.data.roles import ROLE_REFLECTION, ROLE_TEXT, roles_prefix
from megatron_srp.reflection import DEFAULT, SAFE, UNSAFE, Verdict
from megatron_srp.training.reflection_metrics import VerdictTokens, other_verdict, verdict_report
from tests.fixtures import SAFE_SENTENCES, UNSAFE_SENTENCES, train_bpe_tokenizer
from tests.training import runner

V = VerdictTokens(opener_last=7, safe=20, unsafe=21)


def _ratio(pair):
    n, d = pair.tolist()
    return None if d == 0 else n / d


def test_verdict_report_counts_exactly_the_verdict_positions():
    # Four reflections: true Safe, Safe, Unsafe, Unsafe. The model's losses prefer the true word for the
    # first and the third. A Safe id in the text (no reflection role) and one after another opener
    # token are not verdict positions.
    labels = torch.tensor([[5, 7, 20, 9, 20, 7, 20, 9, 3, 8, 20, 1]] * 2)
    labels[1] = torch.tensor([5, 7, 21, 9, 4, 7, 21, 9, 3, 3, 3, 1])
    roles = torch.full_like(labels, ROLE_TEXT)
    for row, spans in ((0, [(1, 4), (5, 8), (9, 11)]), (1, [(1, 4), (5, 8)])):
        for a, b in spans:
            roles[row, a:b] = ROLE_REFLECTION
    mask = torch.ones_like(labels, dtype=torch.float)
    true = torch.full(labels.shape, 2.0)
    other = torch.full(labels.shape, 2.0)
    other[0, 2], true[0, 6] = 3.0, 3.0   # row 0: first right (Safe), second wrong (says Unsafe)
    other[1, 2], true[1, 6] = 3.0, 3.0   # row 1: first right (Unsafe), second wrong (says Safe)
    rep = verdict_report(V, labels, roles, mask, true, other)
    assert rep["reflection_verdict_accuracy"].tolist() == [2.0, 4.0]
    # Unsafe: TP 1 (row 1 first), FP 1 (row 0 second), FN 1 (row 1 second) -> F1 = 2 / 4.
    assert _ratio(rep["reflection_unsafe_f1"]) == 0.5
    assert rep["reflection_false_flags"].tolist() == [1.0, 2.0]
    # Masked positions (padding) are not counted.
    mask[1] = 0
    assert verdict_report(V, labels, roles, mask, true, other)["reflection_verdict_accuracy"].tolist() == [1.0, 2.0]


def test_other_verdict_swaps_only_the_two_words():
    assert other_verdict(V, torch.tensor([20, 21, 7, 3])).tolist() == [21, 20, 7, 3]


@pytest.fixture(scope="module")
def reflected_data(tmp_path_factory):
    """A tokenizer and an srp-style dataset: each document a sentence and its reflection (Unsafe for
    the harmful sentences), with the role sidecar, as preprocessing writes them."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer

    d = tmp_path_factory.mktemp("reflected")
    reflections = {s: DEFAULT.render(Verdict(s)) for s in (SAFE,)}
    reflections[UNSAFE] = DEFAULT.render(Verdict(UNSAFE, ("Violent",)))
    tok_dir = train_bpe_tokenizer(d / "tok", (SAFE_SENTENCES + UNSAFE_SENTENCES + list(reflections.values())) * 10,
                                  vocab_size=400)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eod = tok.token_to_id("<|endoftext|>")
    rng = np.random.default_rng(0)
    tokens_b = IndexedDatasetBuilder(f"{d / 'srp'}.bin", dtype=np.uint16)
    roles_b = IndexedDatasetBuilder(f"{roles_prefix(str(d / 'srp'))}.bin", dtype=np.uint8)
    for _ in range(400):
        unsafe = rng.random() < 0.3
        text = tok.encode(str(rng.choice(UNSAFE_SENTENCES if unsafe else SAFE_SENTENCES))).ids
        refl = tok.encode(reflections[UNSAFE if unsafe else SAFE], add_special_tokens=False).ids
        doc = np.asarray(text + refl + [eod], dtype=np.int64)
        roles = np.asarray([ROLE_TEXT] * len(text) + [ROLE_REFLECTION] * len(refl) + [ROLE_TEXT], dtype=np.int64)
        tokens_b.add_document(torch.from_numpy(doc), [len(doc)])
        roles_b.add_document(torch.from_numpy(roles), [len(doc)])
    tokens_b.finalize(f"{d / 'srp'}.idx")
    roles_b.finalize(f"{roles_prefix(str(d / 'srp'))}.idx")
    return d / "srp", tok_dir, eod


def test_validation_reports_reflection_verdicts_without_changing_the_loss(tmp_path, reflected_data):
    prefix, tok_dir, eod = reflected_data
    common = [f"data.data_path=[{prefix}]", "data.mock=false", f"data.data_cache_path={tmp_path / 'cache'}",
              "training.train_iters=20", "training.eval_interval=10", "training.eval_iters=2",
              "logging.tensorboard=true"]
    runner.run(tmp_path / "with", common + [f"data.tokenizer_model={tok_dir}"])
    # The same run where the trainer cannot find the verdict words (no tokenizer): the plain loss path.
    runner.run(tmp_path / "without", common + ["data.tokenizer_model=null", f"data.eod_token_id={eod}"])
    val = {w: [json.loads(line) for line in (tmp_path / w / "metrics.jsonl").read_text().splitlines()
               if '"validation"' in line] for w in ("with", "without")}
    assert [r["step"] for r in val["with"]] == [10, 20]
    for a, b in zip(val["with"], val["without"]):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6), (a, b)
        assert 0 <= a["reflection_verdict_accuracy"] <= 1 and 0 <= a["reflection_false_flags"] <= 1
        assert a["reflection_unsafe_f1"] is None or 0 <= a["reflection_unsafe_f1"] <= 1
        assert "reflection_verdict_accuracy" not in b
    # After 20 steps the model writes the majority word (Safe, 70% of reflections) at every verdict.
    assert val["with"][-1]["reflection_verdict_accuracy"] >= 0.5, val["with"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "with" / "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("validation/reflection_verdict_accuracy")] == [10, 20]
