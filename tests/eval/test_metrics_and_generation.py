"""Metrics on inputs with known answers; reflection-guarded generation on a tiny real HF model."""

from __future__ import annotations

import pytest

from megatron_srp.eval.metrics import classification_report, rate, wilson
from megatron_srp.reflection import ReflectionFormat, Verdict


def test_wilson_interval_known_values():
    lo, hi = wilson(5, 10)  # textbook: 0.2366 .. 0.7634
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert rate(3, 4)["rate"] == 0.75 and rate(0, 0)["rate"] is None


def test_classification_report_known_answers():
    truth = ["unsafe", "unsafe", "unsafe", "safe", "safe", "safe", "safe", "safe"]
    pred = ["unsafe", "unsafe", "safe", "unsafe", "safe", "safe", "safe", "none"]
    r = classification_report(truth, pred, ["safe", "unsafe"])
    assert r["accuracy"] == pytest.approx(5 / 8)
    u = r["per_class"]["unsafe"]
    assert u["precision"] == pytest.approx(2 / 3) and u["recall"] == pytest.approx(2 / 3)
    assert u["f1"] == pytest.approx(2 / 3)
    s = r["per_class"]["safe"]
    assert s["precision"] == pytest.approx(3 / 4) and s["recall"] == pytest.approx(3 / 5)
    assert r["confusion"]["predicted"] == ["safe", "unsafe", "none"]
    assert r["confusion"]["matrix"] == [[3, 1, 1], [1, 2, 0]]
    assert r["false_flag_rate"] == pytest.approx(1 / 5)


FMT = ReflectionFormat(categories=("interaction",))
TEXT = "Alpha beta gamma . <think> Unsafe, interaction </think> delta epsilon zeta eta ."


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.fixtures import memorizing_model

    from megatron_srp.eval.generate import load_model

    d = memorizing_model(tmp_path_factory.mktemp("gen"), [TEXT, "Theta iota kappa . <think> Safe </think> lambda mu ."])
    return load_model(str(d))


def test_guarded_generation_stops_at_the_unsafe_reflection(tiny_model):
    from megatron_srp.eval.generate import guarded_generate

    model, tok = tiny_model
    full = guarded_generate(model, tok, ["Alpha beta gamma ."], FMT, max_new_tokens=16, stop_on_flag=False)[0]
    assert "delta epsilon" in full.text and not full.stopped  # the model really continues past the flag
    g = guarded_generate(model, tok, ["Alpha beta gamma .", "Theta iota kappa ."], FMT, max_new_tokens=16)
    assert g[0].stopped and g[0].verdicts == [Verdict("unsafe", ("interaction",))]
    assert g[0].text.endswith("</think>") and "delta" not in g[0].text
    assert not g[1].stopped and g[1].verdicts == [Verdict("safe")] and "lambda mu" in g[1].text
