"""gigatoken gives tokenizers' ids and offsets, guard on and off, and every variant's bytes are unchanged by it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from megatron_srp.data import preprocess as preprocess_tool
from megatron_srp.data.indexed_writer import IndexedWriter, read_index
from megatron_srp.data.materialize import DocInput, DocumentEncoder, MaterializeSettings
from megatron_srp.data.tokenizer import TextTokenizer
from megatron_srp.reflection import Verdict
from tests.conftest import ROOT, child_env
from tests.fixtures import labelled_corpus, write_jsonl

pytest.importorskip("gigatoken")

TEXTS = [
    "", "plain words", "a <|endoftext|> b <s>x</s> and <|endoftext|><|endoftext|>", "<think> Unsafe, Violent </think>",
    "  héllo  wörld 日本語 🙂 naïve", "   x", " ", "\n\n\tcode(x) -> y  # ok\n", "U+16EBB is new: \U00016ebb!",
    "emoji at the end 🙂", "ends with spaces   ", "x" * 500, "1234567890 3.14 1,000",
]


def _tokenizer(d: Path, post: str | None) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t["text"] for t in labelled_corpus(40)] + TEXTS * 3, trainer)
    if post == "trim":  # GPT-2's ByteLevel post-processor: offsets without leading spaces
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    elif post == "bos":  # Llama-style: BOS before every document
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return d


@pytest.fixture(scope="module", params=[None, "trim", "bos"])
def tok_dir(request, tmp_path_factory):
    return _tokenizer(tmp_path_factory.mktemp("tok") / str(request.param), request.param)


@pytest.mark.parametrize("guard", [True, False])
def test_ids_and_offsets_equal_tokenizers(tok_dir, guard):
    fast = TextTokenizer(str(tok_dir), guard, backend="gigatoken")
    ref = TextTokenizer(str(tok_dir), guard, backend="tokenizers")
    assert fast.backend == "gigatoken" and ref.backend == "tokenizers"
    for a, b in zip(fast.encode_batch(TEXTS), ref.encode_batch(TEXTS)):
        assert a.ids.tolist() == b.ids.tolist()
        assert a.starts.tolist() == b.starts.tolist()
    flat, lengths = fast.encode_flat(TEXTS)
    assert np.split(flat, np.cumsum(lengths)[:-1]) and [x.tolist() for x in np.split(flat, np.cumsum(lengths)[:-1])] \
        == [x.tolist() for x in ref.encode_ids(TEXTS)]
    # srp's byte line: the same ids, and every token at the same UTF-8 byte of its text
    lines = [t.encode_flat_with_byte_starts(TEXTS) for t in (fast, ref)]
    assert lines[0][0].tolist() == np.concatenate([e.ids for e in ref.encode_batch(TEXTS)]).tolist()
    for ids, starts, lengths, bases in lines:
        assert (np.diff(starts) >= 0).all()  # never decreasing: one searchsorted places a chunk's reflections
    relative = [np.split(starts - np.repeat(bases, lengths), np.cumsum(lengths)[:-1]) for _, starts, lengths, bases in lines]
    for text, enc, fast_rel, ref_rel in zip(TEXTS, ref.encode_batch(TEXTS), *relative):
        inner = (enc.starts >= 0) & (enc.starts < len(text))
        char_at_byte = [i for i, ch in enumerate(text) for _ in ch.encode()] + [len(text)]
        assert ref_rel[inner].tolist() == [len(text[:c].encode()) for c in enc.starts[inner]]
        # gigatoken's tokens may start inside a character (byte-level BPE): the character is tokenizers' start
        assert [char_at_byte[b] for b in fast_rel[inner]] == enc.starts[inner].tolist()
        assert fast_rel[~inner].tolist() == ref_rel[~inner].tolist()
    # srp searches the starts instead of building them: the same token for every byte of the line
    for t in (fast, ref):
        _, starts, _, _ = t.encode_flat_with_token_starts(TEXTS)
        built = starts.all()
        probe = np.arange(-1, int(built.max(initial=0)) + 3)
        assert starts.first_at_or_after(probe).tolist() == np.searchsorted(built, probe, side="left").tolist()
    # the guard's meaning: a special-token string is one control id only without it
    eod = ref.eod
    assert (eod in fast.encode_ids([TEXTS[2]])[0]) is (not guard)


def test_gigatoken_without_awkward_falls_back_naming_it(tmp_path, monkeypatch):
    """gigatoken installed without its dependency awkward (pip --no-deps) returns lists, not the flat layout."""
    import importlib.util

    from megatron_srp.data.tokenizer import TokenizerError

    d = _tokenizer(tmp_path, None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "awkward" else real(name, *a))
    t = TextTokenizer(str(d))
    assert t.backend == "tokenizers" and "awkward" in t.fallback_reason
    assert t.encode_ids([TEXTS[4]])[0].tolist() == Tokenizer.from_file(str(d / "tokenizer.json")).encode(TEXTS[4]).ids
    with pytest.raises(TokenizerError, match="awkward"):
        TextTokenizer(str(d), backend="gigatoken")


def test_a_model_gigatoken_does_not_implement_falls_back_to_tokenizers(tmp_path):
    """A word-level tokenizer (MedSafetyWorld's): the default backend says why and uses tokenizers."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the dose is safe", "the dose is not safe"],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    t = TextTokenizer(str(tmp_path))
    assert t.backend == "tokenizers" and "WordLevel" in t.fallback_reason
    assert t.encode_ids(["the dose is safe"])[0].tolist() == tok.encode("the dose is safe").ids


def test_unassigned_characters_go_through_tokenizers(tok_dir):
    """gigatoken 0.10 calls U+16EBB (Unicode 17) a letter, tokenizers 0.23 punctuation: such documents use tokenizers."""
    fast = TextTokenizer(str(tok_dir), backend="gigatoken")
    before = fast._fast.reference_documents  # the start-up probes include U+16EBB
    fast.encode_ids(["ascii only", "日本語 🙂", "naïve"])
    assert fast._fast.reference_documents == before
    fast.encode_ids([TEXTS[8], "\u0378 is unassigned too"])
    assert fast._fast.reference_documents == before + 2


@pytest.mark.parametrize("variant", ["plain", "srp", "filter", "rewrite"])
@pytest.mark.parametrize("guard", [True, False])
def test_every_variant_encodes_as_with_tokenizers(tok_dir, variant, guard):
    settings = MaterializeSettings(variant=variant, injection_guard=guard)
    fast, ref = DocumentEncoder(str(tok_dir), settings, "gigatoken"), DocumentEncoder(str(tok_dir), settings, "tokenizers")
    docs = []
    for i, text in enumerate(TEXTS):
        cut = len(text) // 2
        spans = [(0, cut), (cut, len(text))] if text else []
        verdicts = [Verdict("safe"), Verdict("unsafe", ("Violent",)) if i % 2 else Verdict("safe")][:len(spans)]
        docs.append(DocInput([text], spans, verdicts, {1: "a safer text"} if i % 2 and spans else None))
    a, b = fast.encode(docs), ref.encode(docs)
    # TEXTS[2] spells <|endoftext|> and <s>, TEXTS[3] a <think> tag (filter drops TEXTS[3] before the guard)
    assert a.guard_changed == b.guard_changed == ((1 if variant == "filter" else 2) if guard else 0)
    if a.plain is not None:
        for x, y in zip(a.plain.flats + [a.plain.roles], b.plain.flats + [b.plain.roles]):
            assert (x is None and y is None) or x.tolist() == y.tolist()
        assert [x.tolist() for x in a.plain.lengths] == [x.tolist() for x in b.plain.lengths]
    else:
        assert [d.tokens[0] is None or d.tokens[0].tolist() for d in a.docs] == \
            [d.tokens[0] is None or d.tokens[0].tolist() for d in b.docs]


def test_watching_finds_the_documents_a_search_finds(tok_dir):
    """plain's guard: gigatoken flags the texts spelling a tag or special-token string as it encodes them (a
    text tokenizers encodes instead is searched); those are encoded rewritten, the rest as they are."""
    import re

    from megatron_srp.reflection import ReflectionFormat

    fmt = ReflectionFormat()
    fast, ref = TextTokenizer(str(tok_dir), backend="gigatoken"), TextTokenizer(str(tok_dir), backend="tokenizers")
    needles = [fmt.open_tag, fmt.close_tag, *fast.special_strings]
    assert fast.watch(needles)
    texts = TEXTS + ["U+16EBB \U00016ebb and <think> here", "x</thin", "<thi nk> <|endoftext", "a<|endoftext|>", "</s>"]
    flat, lengths, hits = fast.encode_flat_watched(texts, fmt.neutralize)
    search = re.compile("|".join(map(re.escape, needles)))
    want_hits = [search.search(t) is not None for t in texts]
    assert hits.tolist() == want_hits and sum(want_hits) == 5
    want_flat, want_lengths = ref.encode_flat([fmt.neutralize(t) if h else t for t, h in zip(texts, want_hits)])
    assert flat.tolist() == want_flat.tolist() and lengths.tolist() == want_lengths.tolist()
    # srp: the same documents with a reflection after each half, as with tokenizers
    docs = [DocInput([t], [(0, len(t) // 2), (len(t) // 2, len(t))] if t else [], [Verdict("safe"), Verdict("unsafe", ("Violent",))][:2 if t else 0]) for t in texts]
    srp = MaterializeSettings(variant="srp")
    a = DocumentEncoder(str(tok_dir), srp, "gigatoken").encode(docs)
    b = DocumentEncoder(str(tok_dir), srp, "tokenizers").encode(docs)
    assert a.guard_changed == b.guard_changed == 5
    assert a.plain.flats[0].tolist() == b.plain.flats[0].tolist() and a.plain.roles.tolist() == b.plain.roles.tolist()


def test_no_watching_where_an_added_token_could_hide_a_tag(tmp_path):
    """A kept (non-special) added token overlapping a watched string could swallow it: the guard's search instead."""
    tok = Tokenizer.from_file(str(_tokenizer(tmp_path / "t", None) / "tokenizer.json"))
    tok.add_tokens(["x<th"])
    tok.save(str(tmp_path / "t" / "tokenizer.json"))
    fast = TextTokenizer(str(tmp_path / "t"), backend="gigatoken")
    assert not fast.watch(["<think>"]) and fast.watch(["<|endoftext|>"])
    assert not TextTokenizer(str(tmp_path / "t"), False, backend="gigatoken").watch(["<|endoftext|>"])  # no guard
    settings = MaterializeSettings(variant="plain")
    docs = [DocInput([t]) for t in ["ax<think> Safe </think>", "plain", "<|endoftext|>"]]
    a = DocumentEncoder(str(tmp_path / "t"), settings, "gigatoken").encode(docs)
    b = DocumentEncoder(str(tmp_path / "t"), settings, "tokenizers").encode(docs)
    assert a.guard_changed == b.guard_changed == 2
    assert a.plain.flats[0].tolist() == b.plain.flats[0].tolist()


def test_two_encoding_threads_give_one_threads_output(tok_dir):
    """Preprocessing encodes two chunks at once: new verdicts, tokenizer renewals and the fallback count
    arrive from both threads and the output is the same as with one."""
    from megatron_srp.data.preprocess import _overlapped

    from megatron_srp.reflection import QWEN3GUARD_CATEGORIES as categories
    texts = [t["text"] for t in labelled_corpus(60)] + TEXTS * 4

    def chunks():
        rng = np.random.default_rng(0)
        for c in range(0, len(texts), 7):
            docs = []
            for text in texts[c:c + 7]:
                cuts = sorted({0, len(text), *rng.integers(0, len(text) + 1, 3).tolist()})
                spans = list(zip(cuts, cuts[1:]))
                verdicts = [Verdict("unsafe", tuple(map(str, rng.choice(categories, rng.integers(1, 3), replace=False))))
                            if rng.random() < 0.5 else Verdict("safe") for _ in spans]
                docs.append(DocInput([text], spans, verdicts))
            yield docs

    runs = []
    for threads in (1, 2):
        enc = DocumentEncoder(str(tok_dir), MaterializeSettings(variant="srp"), "gigatoken")
        enc.tok._fast.refresh_bytes = 2000  # renewals while the other thread encodes
        runs.append([(r.plain.flats[0].tolist(), r.plain.lengths[0].tolist(), r.plain.roles.tolist(), r.guard_changed)
                     for r in _overlapped(enc.encode, chunks(), threads=threads)])
        runs[-1].append(enc.tok._fast.reference_documents)
    assert runs[0] == runs[1] and len(runs[0]) > 10


def test_writer_bytes_equal_megatron_core(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    import torch

    docs = [np.arange(5), np.zeros(0, np.int64), np.arange(3) + 7, np.zeros(0, np.int64), np.arange(70000) % 65000]
    for dtype in (np.uint16, np.int32):
        ref = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
        for d in docs:
            ref.add_document(torch.from_numpy(d), [len(d)] if len(d) else [])
        ref.finalize(str(tmp_path / "ref.idx"))
        ours = IndexedWriter(str(tmp_path / "ours.bin"), dtype)
        ours.add_documents(np.concatenate(docs[:2]), [5, 0])
        ours.add_documents(np.concatenate(docs[2:]), [3, 0, 70000])
        ours.finalize(str(tmp_path / "ours.idx"))
        for ext in (".bin", ".idx"):
            assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"ref{ext}").read_bytes(), (dtype, ext)
        merged = IndexedWriter(str(tmp_path / "m.bin"), dtype)
        merged.add_index(str(tmp_path / "ours"))
        merged.add_index(str(tmp_path / "ours"))
        merged.finalize(str(tmp_path / "m.idx"))
        lengths, bounds, _ = read_index(str(tmp_path / "m.idx"))
        assert lengths.tolist() == [5, 3, 70000] * 2 and bounds.tolist() == [0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6]


def test_stats_count_the_documents_the_guard_changed(tok_dir, tmp_path):
    rows = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    for flag, expect in (([], 2), (["--no-injection-guard"], 0)):
        stats = tmp_path / "s.json"
        assert preprocess_tool.main(["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model",
                                     str(tok_dir), "--append-eod", "--no-progress", "--stats", str(stats), *flag]) == 0
        out = json.loads(stats.read_text())
        assert out["guard_changed_documents"] == expect
        assert out["tokenizer_backend"] == "gigatoken"
        assert out["tokenizers_fallback_documents"] == 1  # U+16EBB's document; the start-up probes not counted


def test_help_and_plain_preprocessing_never_import_megatron_core(tok_dir, tmp_path):
    """--help is quick and quiet, and the plain hot path imports neither torch nor Megatron-Core (nor pandas or
    pyarrow.compute: 0.17 s of start-up)."""
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS])
    probe = ("import sys, runpy; sys.argv = sys.argv[1:]; "
             "rc = 0\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
             "print('IMPORTED', sorted(m for m in ('torch', 'megatron.core', 'transformer_engine', 'nltk', "
             "'pandas', 'pyarrow.compute') if m in sys.modules)); sys.exit(rc)")
    for args in (["--help"], ["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model",
                              str(tok_dir), "--append-eod", "--no-progress"]):
        proc = subprocess.run([sys.executable, "-c", probe, str(ROOT / "tools" / "preprocess_data.py"), *args],
                              cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]
        assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    assert "guard_changed_documents" in subprocess.run(
        [sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--help"], cwd=ROOT, env=child_env(),
        capture_output=True, text=True).stdout


def test_gather_equals_numpy_indexing_without_importing_pandas():
    """Both paths of the token-table gather (numpy below SMALL_GATHER ids, Arrow's take above it, on strided and
    offset views too) give ``table[ids]``; ids past the table are refused; neither pandas nor pyarrow.compute is
    imported."""
    code = """if True:
        import sys, numpy as np
        from megatron_srp.data.fast_tokenizer import SMALL_GATHER, _gather
        for dtype in (np.int32, np.int64, np.uint8):
            table = (np.arange(1000) * 7 % 251).astype(dtype)
            ids = (np.arange(3 * SMALL_GATHER, dtype=np.uint32) * 7919) % 1000
            for x in (ids, ids[5:], ids[::2], ids[:10], ids[:0], ids.astype(np.int64)):
                got = _gather(table, x)
                assert got.dtype == table.dtype and np.array_equal(got, table[x]), (dtype, len(x))
        try:
            _gather(table, np.asarray([1000] * SMALL_GATHER, np.uint32))
            raise SystemExit("no IndexError")
        except IndexError as e:
            assert "1000" in str(e)
        print("MODULES", "pandas" in sys.modules, "pyarrow.compute" in sys.modules)
    """
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MODULES False False" in proc.stdout  # (pyarrow.compute's wrappers: 0.02-0.04 s in each span process)


def test_a_text_at_a_time_gives_the_batch_ids(tok_dir, monkeypatch):
    """In a span process (and for a few bytes of text) gigatoken encodes a text at a time, with no awkward Array:
    the same ids and offsets as its batches, for the guarded, the watching and the unguarded tokenizer."""
    from megatron_srp.data import fast_tokenizer

    texts = TEXTS * 60 + ["".join(TEXTS) * 40]
    assert sum(map(len, texts)) > fast_tokenizer.SERIAL_BYTES
    for guard in (True, False):
        enc = TextTokenizer(str(tok_dir), guard, backend="gigatoken")._fast
        watching = enc.watch(["<think>", "</think>", "<|endoftext|>"])
        assert watching == guard  # (unguarded, special tokens are kept added tokens: nothing to watch)
        for tok in [enc._tokenizer(texts, False)] + ([enc._tokenizer(texts, True)] if watching else []):
            monkeypatch.setattr(fast_tokenizer, "_one_at_a_time", False)
            batch = fast_tokenizer._encode_texts(tok, texts)
            monkeypatch.setattr(fast_tokenizer, "_one_at_a_time", True)
            each = fast_tokenizer._encode_texts(tok, texts)
            assert each[0].dtype == batch[0].dtype == np.uint32
            assert np.array_equal(each[0], batch[0]) and np.array_equal(each[1], batch[1])
            assert len(each[1]) == len(texts) + 1 and each[1][-1] == len(each[0])
        assert [len(x) for x in fast_tokenizer._encode_texts(tok, [])] == [0, 1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spans are forked on Linux only")
def test_span_processes_and_their_parent_never_import_awkward(tok_dir, tmp_path):
    """A file read in span processes is encoded without awkward Arrays, in the parent's start-up and in the
    spans (importing awkward took 0.15-0.19 s before the spans could fork, a fifth of a 100 MB run); the output is
    that of one process, which encodes in batches (and imports it)."""
    rows = [{"text": t} for t in TEXTS] * 60
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    code = f"""if True:
        import os, sys
        from megatron_srp.data import preprocess, preprocess_spans
        preprocess_spans.SPAN_MIN_BYTES = 64
        process = preprocess._process
        def watched(*a):  # (in a span process: printed before the process sends its result and may be ended)
            out = process(*a)
            if len(a) > 6 and a[6] is not None:
                print("SPAN awkward" if "awkward" in sys.modules else "SPAN without", flush=True)
            return out
        preprocess._process = watched
        rc = preprocess.main(["--input", {str(src)!r}, "--output-prefix", {str(tmp_path / "split")!r},
                              "--tokenizer-model", {str(tok_dir)!r}, "--append-eod", "--no-progress",
                              "--workers", "2", "--chunk-mb", "0.1"])
        print("PARENT", "awkward" if "awkward" in sys.modules else "without", rc)
    """
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("SPAN without") >= 2 and "SPAN awkward" not in proc.stdout, proc.stdout[-1000:]
    assert "PARENT without 0" in proc.stdout, proc.stdout[-1000:]
    argv = ["--input", str(src), "--output-prefix", str(tmp_path / "one"), "--tokenizer-model", str(tok_dir),
            "--append-eod", "--no-progress", "--workers", "1", "--chunk-mb", "0.1"]
    assert preprocess_tool.main(argv) == 0
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"split_text_document{ext}").read_bytes() == (tmp_path / f"one_text_document{ext}").read_bytes()


def test_progress_has_a_total(tok_dir, tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS * 20])
    assert preprocess_tool.main(["--input", str(src), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model",
                                 str(tok_dir), "--append-eod"]) == 0
    err = capsys.readouterr().err
    assert "100%" in err, err[-500:]  # a bar without a total shows no percentage (nor an ETA)


@pytest.mark.parametrize("budget", [4, 16, 64])
def test_the_segmenter_counts_with_gigatoken_as_with_tokenizers(tok_dir, budget):
    """The annotator's segments are the same whichever library counts the tokens (hard cuts included)."""
    from megatron_srp.data.segment import Segmenter

    docs = [t["text"] for t in labelled_corpus(30)] + TEXTS + [
        "First sentence here. " + "word " * 90 + "end. Short one. " + "héllo wörld 🙂 " * 40 + "Done.",
        "A <|endoftext|> in a sentence. And <think> Unsafe, Violent </think> tags. U+16EBB \U00016ebb here."]
    fast, ref = TextTokenizer(str(tok_dir), backend="gigatoken"), TextTokenizer(str(tok_dir), backend="tokenizers")
    assert fast.backend == "gigatoken"
    got = Segmenter(fast.token_offsets(), budget=budget).segment_many(docs)
    want = Segmenter(ref.token_offsets(), budget=budget).segment_many(docs)
    assert got == want
    assert any(len(s) > 1 for s in want) and ["".join(s) for s in got] == docs
    pieces = fast.token_offsets()(docs)
    assert [len(p) for p in pieces] == [len(e) for e in ref.token_offsets()(docs)]


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1000])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_blocked_ends_equal_the_running_sum(n, dtype):
    """srp's token ends kept per block answer as the running sum over every token would (lengths of 0 included:
    the padding past the last token is such a length; uint16: a vocabulary with tokens of 256 bytes or more)."""
    from megatron_srp.data.fast_tokenizer import BlockedEnds

    lengths = np.random.default_rng(n).integers(0, 5 if dtype == np.uint8 else 2000, n).astype(dtype)
    running = np.cumsum(lengths, dtype=np.int64)
    ends = BlockedEnds(lengths)
    assert ends.all().tolist() == running.tolist()
    k = np.arange(n)
    assert ends.at(k).tolist() == running.tolist()
    positions = np.arange(-2, int(running[-1] if n else 0) + 3)
    found, end = ends.first_reaching(positions)
    assert found.tolist() == np.searchsorted(running, positions, side="left").tolist()
    inside = found < n
    assert end[inside].tolist() == running[found[inside]].tolist()


def test_token_starts_with_tokens_of_256_bytes_or_more(tmp_path):
    """A vocabulary with a token of 256 bytes or more keeps its byte lengths as uint16: every token starts at the
    byte of its text that tokenizers' offsets give, and searching the starts finds what building them would."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["y" * 2048] * 8 + TEXTS, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    fast = TextTokenizer(str(tmp_path), True, backend="gigatoken")
    ref = TextTokenizer(str(tmp_path), True, backend="tokenizers")
    assert fast.backend == "gigatoken" and fast._fast._byte_len.dtype == np.uint16
    # (ASCII: a byte-level token may start inside a character, where tokenizers names the character's start)
    texts = ["y" * 700 + " then words", "plain", "y" * 3000, *(t for t in TEXTS if t.isascii())]
    (ids, starts, lengths, bases), (ref_ids, ref_starts, _, ref_bases) = (
        t.encode_flat_with_token_starts(texts) for t in (fast, ref))
    assert ids.tolist() == ref_ids.tolist()
    built = starts.all()
    # (each backend lays the texts on its own byte line: compare starts within each text)
    assert (built - np.repeat(bases, lengths)).tolist() == (ref_starts.all() - np.repeat(ref_bases, lengths)).tolist()
    probe = np.arange(-1, int(built.max(initial=0)) + 3)
    assert starts.first_at_or_after(probe).tolist() == np.searchsorted(built, probe, side="left").tolist()


@pytest.mark.parametrize("seed", range(4))
def test_srp_insertion_equals_numpys_insert(tok_dir, seed):
    """srp's reflections and ends of document, merged as runs, land as ``np.insert`` puts them (a reflection
    before the end of document at its place, several reflections at one place in their order, places at 0
    and after the last token, no reflection, no end of document) and the roles mark the reflections only."""
    from megatron_srp.data.roles import ROLE_REFLECTION, ROLE_TEXT

    enc = DocumentEncoder(str(tok_dir), MaterializeSettings(variant="srp"), "gigatoken")
    verdicts = [Verdict("safe"), Verdict("unsafe", ("Violent",)), Verdict("unsafe", ("Violent", "Jailbreak"))]
    for v in verdicts:
        enc.reflection_ids(v)
    rng = np.random.default_rng(seed)
    n = [0, 1, 50, 400][seed]
    ids = rng.integers(0, 300, n).astype(np.uint32)
    cuts = np.sort(np.concatenate([rng.integers(0, n + 1, 30), [0, n, n]])) if seed else np.zeros(0, np.int64)
    refl = rng.integers(0, len(verdicts), len(cuts))
    eod_at = np.unique(np.concatenate([rng.integers(0, n + 1, 5), cuts[::4], [n]]))
    if seed == 2:  # --append-eod off
        eod_at = np.zeros(0, np.int64)
    out, roles = enc._insert(ids, cuts, refl, eod_at)
    at, values, is_refl = [], [], []
    for place, kind, r in sorted([(c, 0, r) for c, r in zip(cuts.tolist(), refl.tolist())]
                                 + [(e, 1, -1) for e in eod_at.tolist()], key=lambda x: (x[0], x[1])):
        run = enc._reflections[r].tolist() if kind == 0 else [enc.tok.eod]
        at += [place] * len(run)
        values += run
        is_refl += [kind == 0] * len(run)
    assert out.dtype == enc.out_dtype
    assert out.tolist() == np.insert(ids.astype(np.int64), at, values).tolist()
    want = np.insert(np.full(n, ROLE_TEXT), at, np.where(is_refl, ROLE_REFLECTION, ROLE_TEXT))
    assert roles.tolist() == want.tolist()


def test_watched_ids_are_found_in_uint32_ids():
    """The watch ids' positions in a chunk's ids (gigatoken's uint32), where none can be there too."""
    from megatron_srp.data.fast_tokenizer import _watched_at

    watch = np.asarray([500, 502], dtype=np.int64)
    flat = np.asarray([1, 500, 501, 7, 502, 499, 500], dtype=np.uint32)
    assert _watched_at(flat, watch).tolist() == [1, 4, 6]
    assert _watched_at(flat[[0, 2, 3, 5]], watch).tolist() == []
    assert _watched_at(np.zeros(0, np.uint32), watch).tolist() == []


@pytest.mark.parametrize("tags", ["special", "added", "absent", "normalized"])
def test_reflections_encode_as_the_unguarded_tokenizer_and_load_it_only_for_special_tags(tmp_path, tags):
    """A reflection's ids are those of the tokenizer without the guard, whether its tags are registered special
    tokens, non-special added tokens (as in Qwen3's tokenizer) or plain text, or a special token matches its
    normalized text only; the unguarded copy is loaded only where a reflection spells a special token."""
    from tokenizers import AddedToken, normalizers

    from megatron_srp.reflection import DEFAULT, Verdict

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 5, trainer)
    if tags in ("special", "added"):
        tok.add_tokens([AddedToken(t, special=tags == "special") for t in ("<think>", "</think>")])
    if tags == "normalized":  # a special token that " <think> Safe </think>" spells once lowercased
        tok.normalizer = normalizers.Lowercase()
        tok.add_special_tokens([AddedToken("> safe <", special=True, normalized=True)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    unguarded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text_tok = TextTokenizer(str(tmp_path), guard_special_tokens=True)
    for verdict in (Verdict("safe"), Verdict("unsafe", ("Violent", "Jailbreak"))):
        reflection = DEFAULT.render(verdict)
        assert text_tok.encode_control(reflection).tolist() == unguarded.encode(reflection, add_special_tokens=False).ids
        if tags != "normalized":
            assert text_tok.decode(text_tok.encode_control(reflection)) == reflection
    assert ("_control" in text_tok.__dict__) == (tags in ("special", "normalized"))
    unguarded_tok = TextTokenizer(str(tmp_path), guard_special_tokens=False)  # (no copy needed without the guard)
    reflection = DEFAULT.render(Verdict("safe"))
    assert unguarded_tok.encode_control(reflection).tolist() == unguarded.encode(reflection, add_special_tokens=False).ids
    assert "_control" not in unguarded_tok.__dict__
    if tags in ("special", "added"):  # (the guard itself: document text spelling a tag)
        guarded = text_tok.encode_ids(["a <think> b"])[0].tolist()
        assert (unguarded.token_to_id("<think>") in guarded) == (tags == "added")
