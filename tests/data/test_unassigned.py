"""Characters the tokenizer libraries classify apart: found as Python's tables say, and re-encoded by stretches
that give ``tokenizers``' ids for the whole text."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from megatron_srp.data import unassigned as ua
from megatron_srp.data.tokenizer import TextTokenizer

PIECES = ["word", "Words", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "!", "?!", "12345", "7", "'s", "'T",
          "\U00016ebb", "\u0378", "x\U00016ebby", "\U00016ebb\U00016ebb", "日本", "🙂", "\u00a0", "(", ")", "é",
          "<|endoftext|>", "<think>", "_", "-", ".", "e\u0301", "\u0301"]  # (NFC composes the last two)


def test_has_unassigned_agrees_with_pythons_tables():
    """The check skips code points below FIRST_UNASSIGNED (none of them may be unassigned) and looks each new
    one up once: every text must get the answer of a lookup of each of its characters, first time or not."""
    def unassigned(c: str) -> bool:  # the rule: Python's Cn in planes 0-3 and U+E0000-U+E0FFF, all of 4-13
        cp = ord(c)
        return 0x40000 <= cp < 0xE0000 or ((cp < 0x40000 or 0xE0000 <= cp < 0xE1000)
                                           and unicodedata.category(c) == "Cn")

    below = [chr(c) for c in range(ua.FIRST_UNASSIGNED)]
    assert not any(map(unassigned, below)) and unassigned(chr(ua.FIRST_UNASSIGNED))
    rng = np.random.default_rng(0)
    drawn = ["".join(map(chr, rng.integers(0x378, 0x110000, 40))).encode("utf-8", "replace").decode() for _ in range(300)]
    texts = ["", "plain", "caf\u00e9 \u0377", "caf\u00e9 \u0378", "\u00ff" * 50 + "\U000e0fff", "\U0001f642 \U00016ebb",
             *drawn, *drawn]  # each drawn text twice: looked up, then from the table
    for text in texts:
        want = any(unassigned(c) for c in text)
        assert ua.has_unassigned(text) == want, text
    assert [ua.has_unassigned(t) for t in texts[2:6]] == [False, True, True, True]
    assert ua._classes()[0x378] == ua.UNASSIGNED and ua._classes()[0x377] == ua.SAME


def test_stretches_reach_from_cut_to_cut():
    text = "ab \U00016ebb cd\n  ef x\u0378 \u0378y gh"
    stretches, byte_at = ua.unsure_stretches(text)
    # a space before a non-ASCII character is no cut: " \U00016ebb" joins "ab", " \u0378y" joins " x\u0378"
    assert [text[a:b] for a, b in stretches] == ["ab \U00016ebb", " x\u0378 \u0378y"]
    assert byte_at.tolist() == np.cumsum([0] + [len(c.encode()) for c in text]).tolist()
    assert ua.unsure_stretches("\U00016ebb")[0] == [(0, 1)] and ua.unsure_stretches("a \U00016ebb")[0] == [(0, 3)]
    assert ua.unsure_stretches("x\u0378 y\u0378 z")[0] == [(0, 5)]  # stretches that touch are one


def _tokenizer(path, pre_tokenizer, texts, normalizer=None):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return path


def _texts(seed: int, n: int, unassigned_share: float = 0.1, pieces: tuple = tuple(PIECES)) -> list[str]:
    """Texts of 1-400 ``pieces``, a piece with an unassigned character drawn at about ``unassigned_share``."""
    rng = np.random.default_rng(seed)
    odd = np.array([ua.has_unassigned(p) for p in pieces])
    p = np.where(odd, unassigned_share / odd.sum(), (1 - unassigned_share) / (~odd).sum())
    return ["".join(rng.choice(pieces, size=int(rng.integers(1, 400)), p=p)) for _ in range(n)]


PRETOKENIZERS = {
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "llama3": lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(ua.CUT_SAFE_PATTERNS[0]), "isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "qwen2": lambda: pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(ua.CUT_SAFE_PATTERNS[1]), "isolated"),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}


class _Recording:
    """A tokenizers.Tokenizer whose encode_batch inputs are kept (what went through tokenizers)."""

    def __init__(self, hf):
        self.hf, self.seen = hf, []

    def encode_batch(self, texts, **kwargs):
        self.seen += list(texts)
        return self.hf.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.hf, name)


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("name", sorted(PRETOKENIZERS))
def test_stretches_give_tokenizers_ids(tmp_path, name, guard):
    """Random texts of words, spaces, line breaks, digits, punctuation and unassigned characters: ids and token
    starts as tokenizers gives them for the whole text, though only the stretches went through tokenizers, on
    texts where gigatoken alone differs."""
    pytest.importorskip("gigatoken")
    normalizer = normalizers.NFC() if name == "qwen2" else None  # as Qwen's tokenizer.json has it
    path = _tokenizer(tmp_path / name, PRETOKENIZERS[name](), _texts(0, 300), normalizer)
    assert ua.cut_pattern(json.loads((path / "tokenizer.json").read_text())) is not None
    fast = TextTokenizer(str(path), guard, backend="gigatoken")
    ref = TextTokenizer(str(path), guard, backend="tokenizers")
    assert fast.backend == "gigatoken"
    composed = tuple(p for p in PIECES if not any(map(unicodedata.combining, p)))  # (what NFC changes goes whole)
    dense, rare = _texts(1, 200), _texts(2, 100, unassigned_share=0.005, pieces=composed)
    unsure = [t for t in dense if ua.has_unassigned(t)]
    raw = fast._fast._tok.encode_batch(unsure)
    assert any(list(r) != fast._fast._hf.encode(t, add_special_tokens=False).ids for r, t in zip(raw, unsure))
    fast._fast._hf = recording = _Recording(fast._fast._hf)
    for texts in (dense, rare):
        recording.seen = []
        for a, b in zip(fast.encode_batch(texts), ref.encode_batch(texts)):
            assert a.ids.tolist() == b.ids.tolist()
            assert a.starts.tolist() == b.starts.tolist()
    unsure = [t for t in rare if ua.has_unassigned(t)]
    assert 0 < sum(map(len, recording.seen)) < sum(map(len, unsure)) / 4  # (watched texts go whole)


def _cuts(config: dict, splitting: tuple = ()) -> bool:
    return ua.cut_pattern(config, splitting) is not None


def test_only_known_pretokenizers_are_cut(tmp_path):
    texts = _texts(0, 50)
    config = json.loads((_tokenizer(tmp_path / "a", PRETOKENIZERS["gpt2"](), texts) / "tokenizer.json").read_text())
    assert _cuts(config)
    assert not _cuts(config, ("<think> x",))  # a watched string with a space
    cut = ua.cut_pattern(config, ("<think>",))  # no cut before an added token or a watched string: it ends a text
    text = "a <|endoftext|> b \u0378 <think> c d"
    assert [text[a:b] for a, b in ua.unsure_stretches(text, cut)[0]] == [" b \u0378 <think>"]
    assert not _cuts({**config, "pre_tokenizer": {**config["pre_tokenizer"], "add_prefix_space": True}})
    spaced = [{**config["added_tokens"][0], "content": "a b"}]
    assert not _cuts({**config, "added_tokens": spaced})
    stripped = [{**config["added_tokens"][0], "lstrip": True}]
    assert not _cuts({**config, "added_tokens": stripped})
    for other in (pre_tokenizers.Whitespace(),
                  pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\w+|\s+"), "isolated"),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])):
        path = _tokenizer(tmp_path / type(other).__name__, other, texts)
        assert not _cuts(json.loads((path / "tokenizer.json").read_text()))
    for name, normalizer in (("nfc", normalizers.NFC()), ("lowercase", normalizers.Lowercase())):
        path = _tokenizer(tmp_path / name, PRETOKENIZERS["gpt2"](), texts, normalizer)
        assert _cuts(json.loads((path / "tokenizer.json").read_text())) == (name == "nfc")


@pytest.mark.parametrize("guard", [True, False])
def test_srp_with_an_nfc_tokenizer_places_reflections_as_tokenizers_does(tmp_path, guard):
    """Qwen's tokenizers normalize to NFC: gigatoken's ids are right for a decomposed "e" + U+0301, but its tokens
    count the composed text's bytes, so their starts in the document come from tokenizers' offsets; srp's
    reflections (placed by those starts) and every output equal the tokenizers backend's."""
    pytest.importorskip("gigatoken")
    from megatron_srp.data.materialize import DocInput, DocumentEncoder, MaterializeSettings
    from megatron_srp.reflection import Verdict

    path = _tokenizer(tmp_path / "nfc", PRETOKENIZERS["qwen2"](), _texts(0, 300), normalizers.NFC())
    settings = MaterializeSettings(variant="srp", injection_guard=guard)
    fast, ref = (DocumentEncoder(str(path), settings, backend) for backend in ("gigatoken", "tokenizers"))
    assert fast.tok.backend == "gigatoken" and fast.tok._fast.offsets_exact  # (srp on gigatoken, not tokenizers)
    texts = ["Cafe\u0301 au lait. " * 3 + "Plain words here.", "No accents at all. Second part.",
             "e\u0301" * 40 + " then more text after it.", *_texts(3, 30)]
    docs = []
    for i, text in enumerate(texts):
        cuts = sorted({0, len(text) // 3, len(text) // 2 + i % 5, len(text)})
        spans = list(zip(cuts, cuts[1:]))
        docs.append(DocInput([text], spans, [Verdict("unsafe", ("Violent",)) if k % 2 else Verdict("safe")
                                             for k in range(len(spans))]))
    a, b = fast.encode(docs), ref.encode(docs)
    for x, y in zip(a.plain.flats + [a.plain.roles], b.plain.flats + [b.plain.roles]):
        assert x.tolist() == y.tolist()
    assert [x.tolist() for x in a.plain.lengths] == [x.tolist() for x in b.plain.lengths]
