"""The gigatoken tokenizer is renewed as memory grows or every interval of text (its pretoken cache has no bound),
ids unchanged."""

from __future__ import annotations

import platform

import pytest

from megatron_srp.data import fast_tokenizer
from megatron_srp.data.tokenizer import TextTokenizer
from tests.fixtures import labelled_corpus, train_bpe_tokenizer

pytest.importorskip("gigatoken")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_bpe_tokenizer(tmp_path_factory.mktemp("tok"), [r["text"] for r in labelled_corpus(40)], 400)


def test_renewed_tokenizer_gives_the_same_ids(tok_dir):
    texts = [r["text"] for r in labelled_corpus(30, seed=1)]
    fast = TextTokenizer(str(tok_dir), backend="gigatoken")
    ref = TextTokenizer(str(tok_dir), backend="tokenizers")
    enc = fast._fast
    enc.refresh_bytes = 2000  # renew after every ~2 kB of text
    seen, want = [], [x.tolist() for x in ref.encode_ids(texts)]
    for start in range(0, len(texts), 3):
        got = fast.encode_ids(texts[start:start + 3])
        assert [x.tolist() for x in got] == want[start:start + 3]
        seen.append(enc._tok)  # (kept alive, so no two share an id)
    assert len({id(t) for t in seen}) > 3  # renewed several times


def test_by_default_growth_renews_and_the_variable_sets_an_interval_instead(tok_dir, monkeypatch):
    """Renewed once resident memory has grown by RENEW_AFTER_GROWTH over its lowest level since the last
    renewal (freed pages handed back each time), not after so much text; every 64 MB where memory cannot be
    read; SRP_GIGATOKEN_REFRESH_MB sets an interval of text instead (0: never)."""
    monkeypatch.delenv("SRP_GIGATOKEN_REFRESH_MB", raising=False)
    enc = TextTokenizer(str(tok_dir), backend="gigatoken")._fast
    assert enc.refresh_bytes is None
    mib, grow = 1 << 20, fast_tokenizer.RENEW_AFTER_GROWTH
    rss, trims = [0], []
    monkeypatch.setattr(fast_tokenizer, "resident_bytes", lambda: rss[0])
    monkeypatch.setattr(fast_tokenizer, "release_freed_memory", lambda: trims.append(rss[0]))
    text = ["some words of text " * 50]
    renewed = []
    for now in (400, 500, 350, 350 + grow // mib, 351 + grow // mib, 300, 310, 300 + grow // mib + 1, 320):
        rss[0] = now * mib
        before = enc._tok
        enc.encode_flat(text * 3)
        renewed.append(enc._tok is not before)
    # the lowest level (350 MiB) plus the growth is not yet renewal; 1 MiB over it is; then measured afresh
    assert renewed == [False, False, False, False, True, False, False, True, False]
    assert trims == [(351 << 20) + grow, (301 << 20) + grow]
    monkeypatch.setattr(fast_tokenizer.os, "getpid", lambda: -1)  # as in a span process after the fork:
    for now, renews in ((700, False), (700 + grow // mib, False), (701 + grow // mib, True)):  # its own level
        rss[0], before = now * mib, enc._tok
        enc.encode_flat(text * 3)
        assert (enc._tok is not before) == renews, now
    monkeypatch.undo()
    monkeypatch.setattr(fast_tokenizer, "resident_bytes", lambda: None)  # (off Linux)
    monkeypatch.setattr(fast_tokenizer, "RENEW_EVERY_BYTES", 10_000)
    first = enc._tok
    enc.encode_flat(text * 12)  # 11,400 characters: past the interval
    assert enc._tok is not first
    monkeypatch.setenv("SRP_GIGATOKEN_REFRESH_MB", "0")
    assert TextTokenizer(str(tok_dir), backend="gigatoken")._fast.refresh_bytes == 0
    monkeypatch.setenv("SRP_GIGATOKEN_REFRESH_MB", "64")
    assert TextTokenizer(str(tok_dir), backend="gigatoken")._fast.refresh_bytes == 64 << 20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_goes_back_to_the_system_on_glibc():
    assert fast_tokenizer._malloc_trim() is not None
    fast_tokenizer.release_freed_memory()


def test_freed_pages_go_back_once_the_process_grew_by_a_few_intervals(tok_dir, monkeypatch):
    enc = TextTokenizer(str(tok_dir), backend="gigatoken")._fast
    enc.refresh_bytes = 1000
    rss, trims = [0], []
    monkeypatch.setattr(fast_tokenizer, "resident_bytes", lambda: rss[0])
    monkeypatch.setattr(fast_tokenizer, "release_freed_memory", lambda: trims.append(rss[0]))
    for now in (10_000, 13_000, 14_500, 15_000, 9_000, 18_600):
        rss[0] = now
        enc._release()
    # the first renewal trims; then only growth past TRIM_SLACK intervals over the last trimmed size does
    assert fast_tokenizer.TRIM_SLACK == 4 and trims == [10_000, 14_500, 18_600]
    monkeypatch.undo()
    if platform.system() == "Linux":
        assert fast_tokenizer.resident_bytes() > 10 << 20  # this interpreter, numpy and the tokenizers
