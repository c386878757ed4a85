"""The reflection format: render, parse, round trips, injection safety."""

import random

import pytest

from megatron_srp.reflection import (
    DEFAULT, QWEN3GUARD_CATEGORIES, ReflectionFormat, ReflectionParseError, Verdict, ZERO_WIDTH_SPACE,
)


def test_default_strings_are_the_authors():
    assert DEFAULT.render(Verdict("safe")) == " <think> Safe </think>"
    assert DEFAULT.render(Verdict("unsafe", ("Violent",))) == " <think> Unsafe, Violent </think>"
    assert DEFAULT.render(Verdict("controversial", ("PII", "Unethical Acts"))) == \
        " <think> Controversial, PII, Unethical Acts </think>"
    assert DEFAULT.render(Verdict("unsafe")) == " <think> Unsafe </think>"


@pytest.mark.parametrize("verdict", [Verdict("safe"), Verdict("unsafe", ("Suicide & Self-Harm",)),
                                     Verdict("controversial", ("Politically Sensitive Topics", "PII")),
                                     Verdict("unsafe")])
def test_parse_inverts_render(verdict):
    assert DEFAULT.parse(DEFAULT.render(verdict)) == verdict


def _random_text(rng: random.Random) -> str:
    pieces = ["The cell divides.", " Dr. Smith said", " <think> Safe </think>", "</think>", "<think>",
              "\n\n", " x", " émigré", " <|endoftext|>", "  ", "<think> Unsafe, Violent </think>"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))


def test_round_trip_of_neutralized_segments_and_verdicts():
    rng = random.Random(0)
    fmt = DEFAULT
    for _ in range(500):
        segments = [fmt.neutralize(_random_text(rng)) for _ in range(rng.randint(1, 6))]
        segments = [s or "." for s in segments]
        verdicts = [Verdict("safe") if rng.random() < 0.6 else
                    Verdict(rng.choice(["unsafe", "controversial"]), tuple(rng.sample(QWEN3GUARD_CATEGORIES, rng.randint(0, 2))))
                    for _ in segments]
        text = fmt.interleave(segments, verdicts)
        got_segments, got_verdicts = fmt.split(text)
        assert got_verdicts == verdicts
        assert got_segments == segments
        assert "".join(got_segments) == "".join(segments)


def test_neutralize_removes_every_tag_and_is_idempotent():
    text = "a <think> Safe </think> b <think>x</think>"
    out = DEFAULT.neutralize(text)
    assert "<think>" not in out and "</think>" not in out
    assert DEFAULT.find(out) == []
    assert DEFAULT.neutralize(out) == out
    assert out.replace(ZERO_WIDTH_SPACE, "") == text  # reads the same


def test_first_flag_points_after_the_unsafe_reflection():
    text = "Hello." + DEFAULT.render(Verdict("safe")) + " Now the bad part." + DEFAULT.render(Verdict("unsafe", ("Violent",))) + " more"
    end, verdict = DEFAULT.first_flag(text)
    assert text[:end].endswith("Violent </think>")
    assert verdict == Verdict("unsafe", ("Violent",))
    assert DEFAULT.first_flag("fine" + DEFAULT.render(Verdict("safe"))) is None


@pytest.mark.parametrize("text, message", [
    (" <think> Maybe </think>", "unknown label word"),
    (" <think> Safe, Violent </think>", "carries no category"),
    (" <think> Unsafe, Dangerous </think>", "unknown categories"),
    ("x <think> Safe </think>", "not a single reflection"),
])
def test_malformed_reflections_are_errors(text, message):
    with pytest.raises(ReflectionParseError, match=message):
        DEFAULT.parse(text)


def test_custom_format_is_used_everywhere():
    fmt = ReflectionFormat(open_tag="[[", close_tag="]]", safe_word="OK", unsafe_word="BAD",
                           controversial_word="HMM", categories=("Weapons",), register_special_tokens=True)
    assert fmt.render(Verdict("unsafe", ("Weapons",))) == " [[ BAD, Weapons ]]"
    assert fmt.parse(" [[ OK ]]") == Verdict("safe")
    assert fmt.special_tokens() == ["[[", "]]"]
    assert DEFAULT.special_tokens() == []
    with pytest.raises(ValueError):
        fmt.render(Verdict("unsafe", ("Violent",)))
    with pytest.raises(ValueError, match="distinct"):
        ReflectionFormat(safe_word="X", unsafe_word="X")


def test_spans_tolerate_malformed_model_output():
    """A model may open a reflection and never close it before the next one: ``spans`` reports the
    malformed span as None where ``find`` raises, and MedSafetyWorld's scoring reads it as no verdict."""
    from megatron_srp.medsafetyworld.evaluate import _after_answer_verdict
    from megatron_srp.reflection import ReflectionFormat, ReflectionParseError, Verdict

    fmt = ReflectionFormat()
    text = "Rx : Velorin <think> 200 mg daily . <think> Safe </think> then <think> Unsafe </think>"
    with pytest.raises(ReflectionParseError):
        fmt.find(text)
    spans = fmt.spans(text)
    assert [v for _, _, v in spans] == [None, Verdict("unsafe")]
    assert text[spans[1][0]:spans[1][1]] == " <think> Unsafe </think>"
    assert _after_answer_verdict(text) is None
    assert _after_answer_verdict(" Rx : Velorin 200 mg daily . <think> Unsafe </think>") == Verdict("unsafe")
