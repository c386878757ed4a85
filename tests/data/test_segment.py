"""Segmentation: exact reconstruction, budget, sentence alignment, hard cuts."""

import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

from megatron_srp.data.segment import Segmenter, hf_token_offsets, train_punkt

WORDS = ("cell protein the of a doctor patient dose mg kidney liver results show that we observe "
         "significant increase decrease Dr. Smith U.S. study trial e.g. approx. 3.5 percent").split()


def _sentence(rng: random.Random, n: int) -> str:
    s = " ".join(rng.choice(WORDS) for _ in range(n))
    return s[0].upper() + s[1:] + rng.choice([".", "!", "?"])


def _document(rng: random.Random) -> str:
    seps = [" ", "  ", "\n", "\n\n", " \n "]
    parts = [_sentence(rng, rng.randint(3, 30)) for _ in range(rng.randint(1, 25))]
    doc = parts[0]
    for p in parts[1:]:
        doc += rng.choice(seps) + p
    return rng.choice(["", " ", "\n"]) + doc + rng.choice(["", "\n", "  "])


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_document(rng) for _ in range(300)], trainer)
    return tok


@pytest.mark.parametrize("budget", [8, 32, 256])
def test_segments_rebuild_the_document_and_respect_the_budget(tokenizer, budget):
    seg = Segmenter(hf_token_offsets(tokenizer), budget=budget)
    rng = random.Random(budget)
    docs = [_document(rng) for _ in range(200)]
    for doc, segments in zip(docs, seg.segment_many(docs)):
        assert "".join(segments) == doc
        assert all(segments)
        for s in segments:
            assert len(tokenizer.encode(s).ids) <= budget, (budget, s)


def test_segments_end_at_sentence_ends_unless_cut(tokenizer):
    seg = Segmenter(hf_token_offsets(tokenizer), budget=64)
    rng = random.Random(1)
    for _ in range(100):
        doc = _document(rng)
        pieces = seg.sentences(doc)
        sentence_starts = {sum(map(len, pieces[:i])) for i in range(len(pieces) + 1)}
        pos = 0
        for s in seg.segment(doc)[:-1]:
            pos += len(s)
            tokens = len(tokenizer.encode(s).ids)
            # A boundary is a sentence boundary, or a hard cut of a sentence longer than the budget.
            assert pos in sentence_starts or tokens == 64


def test_long_sentence_is_cut_at_the_budget(tokenizer):
    seg = Segmenter(hf_token_offsets(tokenizer), budget=10)
    doc = " ".join(["protein"] * 95) + "."
    segments = seg.segment(doc)
    assert "".join(segments) == doc
    counts = [len(tokenizer.encode(s).ids) for s in segments]
    assert all(c == 10 for c in counts[:-1]) and 0 < counts[-1] <= 10


def test_empty_and_whitespace_documents(tokenizer):
    seg = Segmenter(hf_token_offsets(tokenizer), budget=16)
    assert seg.segment("") == []
    assert seg.segment("   \n") == ["   \n"]


def test_trained_punkt_learns_abbreviations():
    sample = ["The dose was approx. 5 mg per day. It worked."] * 50 + ["We saw approx. 3 cases. Then more."] * 50
    splitter = train_punkt(sample)
    assert splitter.sentences_from_text("It was approx. 4 mg. Fine.") == ["It was approx. 4 mg.", "Fine."]


def test_budget_must_be_positive(tokenizer):
    with pytest.raises(ValueError, match="budget"):
        Segmenter(hf_token_offsets(tokenizer), budget=0)
