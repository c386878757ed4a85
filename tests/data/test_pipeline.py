"""Annotate once, materialize many: tools/annotate.py + tools/preprocess_data.py on a generated corpus."""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from megatron_srp.data.classify import Classifier, SegmentInput, VerdictCache, classify_cached
from megatron_srp.data.gpt_dataset import ROLE_REFLECTION, roles_prefix
from megatron_srp.reflection import DEFAULT, ZERO_WIDTH_SPACE, Verdict
from tests.conftest import ROOT, child_env
from tests.fixtures import SAFE_SENTENCES, UNSAFE_SENTENCES, labelled_corpus, train_bpe_tokenizer, write_jsonl

INJECTION = {"id": "inject", "text": "A quote: <think> Unsafe, Violent </think> and <|endoftext|> end.",
             "segments": [{"text": "A quote: <think> Unsafe, Violent </think> and <|endoftext|> end.", "label": "safe"}]}


from megatron_srp.data import annotate as annotate_tool  # noqa: E402  (what tools/annotate.py runs)
from megatron_srp.data import preprocess as preprocess_tool  # noqa: E402  (what tools/preprocess_data.py runs)
from megatron_srp.data import preprocess_spans  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    shards = [labelled_corpus(60, seed=s) for s in range(3)]
    shards[1].insert(7, INJECTION)
    for i, rows in enumerate(shards):
        write_jsonl(d / "corpus" / f"shard_{i}.jsonl", rows)
    tok = train_bpe_tokenizer(d / "tok", SAFE_SENTENCES * 20 + UNSAFE_SENTENCES * 20)
    rc = annotate_tool.main(["--input", str(d / "corpus"), "--output", str(d / "ann"), "--tokenizer-model", str(tok),
                             "--classifier", "column", "--no-progress"])
    assert rc == 0
    docs = [r for rows in shards for r in rows]
    return d, tok, docs


def _preprocess(world, variant, name=None, extra=(), inputs=None):
    d, tok, _ = world
    prefix = d / "out" / (name or variant)
    args = ["--input", *(inputs or [str(d / "corpus")]), "--output-prefix", str(prefix), "--tokenizer-model",
            str(tok), "--append-eod", "--annotations", str(d / "ann"), "--variant", variant, "--no-progress",
            "--stats", f"{prefix}.stats.json", *extra]
    assert preprocess_tool.main(args) == 0
    return f"{prefix}_text_document", json.loads(Path(f"{prefix}.stats.json").read_text())


def _docs(prefix):
    ds = IndexedDataset(prefix)
    return [np.asarray(ds[i], dtype=np.int64) for i in range(len(ds))]


def _decode(tok_dir, ids):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json")).decode(list(map(int, ids)), skip_special_tokens=False)


def _eod(tok_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json")).token_to_id("<|endoftext|>")


def test_srp_parses_back_to_the_segments_and_labels(world):
    d, tok, docs = world
    srp, stats = _preprocess(world, "srp")
    plain, _ = _preprocess(world, "plain")
    srp_docs, plain_docs, roles = _docs(srp), _docs(plain), _docs(roles_prefix(srp))
    assert len(srp_docs) == len(plain_docs) == len(docs) == len(roles)
    eod = _eod(tok)
    n_reflection = 0
    for doc, s, p, r in zip(docs, srp_docs, plain_docs, roles):
        assert len(r) == len(s)
        # srp = plain + inserted reflection tokens, and the roles mark exactly the inserted ones.
        np.testing.assert_array_equal(s[r != ROLE_REFLECTION], p)
        n_reflection += int((r == ROLE_REFLECTION).sum())
        assert s[-1] == eod and eod not in s[:-1].tolist()
        text = _decode(tok, s[:-1])
        segments, verdicts = DEFAULT.split(text)
        assert segments == [DEFAULT.neutralize(x["text"]) for x in doc["segments"]]
        assert verdicts == [Verdict(x["label"], tuple(x.get("categories") or ())) for x in doc["segments"]]
        # Each reflection is exactly the role-1 run that follows its segment.
        refl_text = "".join(_decode(tok, s[i:i + 1]) for i in np.nonzero(r == ROLE_REFLECTION)[0])
        assert refl_text == "".join(DEFAULT.render(v) for v in verdicts)
    assert stats["reflection_tokens"] == n_reflection
    assert stats["tokens"] == sum(len(s) for s in srp_docs)
    assert stats["segments"] == sum(len(doc["segments"]) for doc in docs)
    assert stats["labels"]["unsafe"] == sum(x["label"] == "unsafe" for doc in docs for x in doc["segments"])
    assert 0 < stats["reflection_token_share"] < 1


def test_filter_drops_exactly_the_unsafe_documents_or_segments(world):
    d, tok, docs = world
    plain_docs = _docs(_preprocess(world, "plain")[0])
    by_doc, stats = _preprocess(world, "filter", "filter_doc")
    kept = [i for i, doc in enumerate(docs) if all(x["label"] == "safe" for x in doc["segments"])]
    assert 0 < len(kept) < len(docs)
    got = _docs(by_doc)
    assert len(got) == len(kept) == stats["documents_written"]
    for g, i in zip(got, kept):
        np.testing.assert_array_equal(g, plain_docs[i])
    by_seg, stats = _preprocess(world, "filter", "filter_seg", ["--filter-granularity", "segment"])
    got = IndexedDataset(by_seg)
    assert len(got.document_indices) - 1 == len(docs)  # every document kept, maybe empty
    texts = []
    for i in range(len(got.document_indices) - 1):
        a, b = got.document_indices[i], got.document_indices[i + 1]
        ids = np.concatenate([got[j] for j in range(a, b)]) if b > a else np.zeros(0, np.int64)
        texts.append(_decode(tok, ids[:-1]) if len(ids) else "")
    for doc, text in zip(docs, texts):
        assert text == DEFAULT.neutralize("".join(x["text"] for x in doc["segments"] if x["label"] == "safe"))
        assert not any(u in text for u in UNSAFE_SENTENCES)
    assert stats["segments_dropped"] == sum(x["label"] == "unsafe" for doc in docs for x in doc["segments"])


def test_rewrite_replaces_only_unsafe_segments(world):
    d, tok, docs = world
    out, stats = _preprocess(world, "rewrite", extra=["--rewriter", "template", "--rewriter-arg", "text= [redacted]"])
    got = _docs(out)
    assert len(got) == len(docs)
    for doc, ids in zip(docs, got):
        want = "".join(x["text"] if x["label"] == "safe" else (" [redacted]" if x["text"].startswith(" ") else "[redacted]")
                       for x in doc["segments"])
        assert _decode(tok, ids[:-1]) == DEFAULT.neutralize(want)
    assert stats["segments_rewritten"] == sum(x["label"] == "unsafe" for doc in docs for x in doc["segments"])
    # The rewrites are cached: a second run asks the rewriter for nothing new (same output).
    again, _ = _preprocess(world, "rewrite", "rewrite2", ["--rewriter", "template", "--rewriter-arg", "text= [redacted]"])
    assert Path(f"{again}.bin").read_bytes() == Path(f"{out}.bin").read_bytes()


def test_plain_is_byte_identical_to_megatron_lms_procedure(world, tmp_path):
    """Megatron-LM tokenizes with transformers' defaults, appends eod to non-empty docs, optimal dtype."""
    from transformers import AutoTokenizer

    d, tok, docs = world
    rows = [r for r in labelled_corpus(80, seed=9)] + [{"id": "empty", "text": ""}]
    src = write_jsonl(tmp_path / "one.jsonl", rows)
    hf = AutoTokenizer.from_pretrained(str(tok))
    ref = tmp_path / "ref_text_document"
    builder = IndexedDatasetBuilder(f"{ref}.bin", dtype=DType.optimal_dtype(len(hf)))
    for r in rows:
        ids = hf(r["text"]).input_ids
        lens = [len(ids)] if ids else []
        if ids:
            ids = ids + [hf.eos_token_id]
            lens[-1] += 1
        builder.add_document(torch.tensor(ids, dtype=torch.int64), lens)
    builder.finalize(f"{ref}.idx")
    for workers in ("1", "2"):
        prefix = tmp_path / f"ours{workers}"
        assert preprocess_tool.main(["--input", str(src), "--output-prefix", str(prefix), "--tokenizer-type",
                                     "HuggingFaceTokenizer", "--tokenizer-model", str(tok), "--append-eod",
                                     "--workers", workers, "--json-keys", "text", "--no-progress"]) == 0
        for ext in (".bin", ".idx"):
            assert Path(f"{prefix}_text_document{ext}").read_bytes() == Path(f"{ref}{ext}").read_bytes(), (workers, ext)


def test_several_files_give_the_bytes_of_one_concatenated_file(world, tmp_path):
    d, tok, docs = world
    cat = write_jsonl(tmp_path / "all.jsonl", docs)
    whole, _ = _preprocess(world, "plain", "whole", inputs=[str(cat)])
    parts, _ = _preprocess(world, "plain", "parts")
    for ext in (".bin", ".idx"):
        assert Path(f"{whole}{ext}").read_bytes() == Path(f"{parts}{ext}").read_bytes()
    assert not Path(f"{d / 'out' / 'parts'}.parts").exists()


def _outputs(prefix: str) -> dict:
    """Every file of a dataset prefix (and its roles), by suffix."""
    files = {ext: Path(f"{prefix}{ext}") for ext in (".bin", ".idx", ".roles.bin", ".roles.idx")}
    return {ext: p.read_bytes() for ext, p in files.items() if p.exists()}


def _spy_spans(monkeypatch) -> list:
    """The spans of each file tokenized in processes (SPAN_MIN_BYTES lowered so that small shards split too)."""
    calls = []
    monkeypatch.setattr(preprocess_spans, "SPAN_MIN_BYTES", 64)
    real = preprocess_tool.process_spans
    monkeypatch.setattr(preprocess_tool, "process_spans", lambda job, i, prefixes, found, *a: (
        calls.append(found), real(job, i, prefixes, found, *a))[1])
    return calls


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="spans are forked on Linux only")


@LINUX_ONLY
@pytest.mark.parametrize("variant", ["plain", "srp", "filter"])
def test_spans_in_processes_give_the_bytes_of_one_process(world, monkeypatch, variant):
    """--workers N splits a jsonl file into N byte ranges, a forked process each; the parts are concatenated
    into the same bytes and statistics as one process writes, and no part is left behind. A parquet file
    splits by row groups."""
    d, tok, docs = world
    one, one_stats = _preprocess(world, variant, f"{variant}_one")
    calls = _spy_spans(monkeypatch)
    if variant == "filter":  # the kernel's copy refused: the parts are copied by reading and writing
        def refuse(*a):
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    real = preprocess_tool._process

    def seen_frozen(job, i, prefixes, pool, progress, next_input=None, span=None, sidecar=None):
        if span is not None and not gc.get_freeze_count():  # (a span's error fails the run)
            raise AssertionError("the span process's collections walk what it inherited")
        return real(job, i, prefixes, pool, progress, next_input, span, sidecar)

    monkeypatch.setattr(preprocess_tool, "_process", seen_frozen)
    split, split_stats = _preprocess(world, variant, f"{variant}_split", extra=["--workers", "3"])
    assert gc.get_freeze_count() == 0  # the parent collects as before
    assert split_stats["tokenizer_backend"] == "gigatoken"
    assert len(calls) == 3 and all(len(r) == 3 for r in calls), calls  # every shard in three spans
    assert _outputs(split) == _outputs(one) and len(_outputs(one)) == (4 if variant == "srp" else 2)
    drop = ("seconds", "tokens_per_second", "outputs", "files")
    kept = [{k: v for k, v in st.items() if k not in drop} for st in (split_stats, one_stats)]
    assert kept[0] == kept[1]
    assert not [p.name for p in (d / "out").iterdir() if ".span" in p.name or ".tmp-" in p.name]
    if variant == "plain":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{"id": r["id"], "text": r["text"]} for r in docs])
        pq.write_table(table, d / "all.parquet", row_group_size=25)
        one, one_stats = _preprocess(world, "plain", "parquet_one", inputs=[str(d / "all.parquet")])
        monkeypatch.setattr(preprocess_spans, "SPAN_MIN_BYTES", 1)
        split, split_stats = _preprocess(world, "plain", "parquet_split", extra=["--workers", "3"],
                                         inputs=[str(d / "all.parquet")])
        assert len(calls[-1]) == 3 and calls[-1][-1].end == pq.ParquetFile(d / "all.parquet").num_row_groups
        assert _outputs(split) == _outputs(one) and split_stats["documents_written"] == len(docs)


@LINUX_ONLY
@pytest.mark.parametrize("variant", ["plain", "srp", "parquet"])
def test_a_span_process_that_is_done_takes_over_half_of_what_a_slower_one_has_left(world, monkeypatch, variant):
    """A span process whose span is read takes the second half of the unclaimed rest of a slower one's (here the
    first span's, which claims slowly), again and again: the pieces' parts concatenate into the bytes and the
    statistics of one process; srp matches every document of a taken piece to its annotation by its line."""
    d, tok, docs = world
    inputs = None
    if variant == "parquet":  # row groups of 4 rows: a piece is taken by groups
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{"id": r["id"], "text": r["text"]} for r in docs]),
                       d / "taken.parquet", row_group_size=4)
        inputs = [str(d / "taken.parquet")]
    kind = "plain" if variant == "parquet" else variant
    one, one_stats = _preprocess(world, kind, f"{variant}_whole", inputs=inputs)
    monkeypatch.setattr(preprocess_spans, "SPAN_MIN_BYTES", 1)
    monkeypatch.setattr(preprocess_spans, "CLAIM_BYTES", 512)
    monkeypatch.setattr(preprocess_spans, "TAKE_MIN_BYTES", 1024)
    claim = preprocess_spans._Pieces.claim

    def slow_first(self, k, position, lines_before):
        allowed = claim(self, k, position, lines_before)
        if k == 0:
            time.sleep(0.02)
        return allowed

    monkeypatch.setattr(preprocess_spans._Pieces, "claim", slow_first)
    merged, merge = [], preprocess_spans.merge
    monkeypatch.setattr(preprocess_spans, "merge", lambda parts, *a, **k: (merged.append(len(parts)), merge(parts, *a, **k))[1])
    taken, taken_stats = _preprocess(world, kind, f"{variant}_taken", extra=["--workers", "2"], inputs=inputs)
    assert merged and all(n > 2 for n in merged), merged  # two spans a file, and pieces taken from the first
    assert _outputs(taken) == _outputs(one) and len(_outputs(one)) == (4 if variant == "srp" else 2)
    drop = ("seconds", "tokens_per_second", "outputs", "files")
    assert {k: v for k, v in taken_stats.items() if k not in drop} == {k: v for k, v in one_stats.items() if k not in drop}
    assert not [p.name for p in (d / "out").iterdir() if ".span" in p.name or ".tmp-" in p.name]


def _preprocess_in_a_daemon(world, name, queue):
    try:
        queue.put(_preprocess(world, "plain", name, extra=["--workers", "2"])[0])
    except BaseException as e:  # noqa: BLE001 - reported to the test
        queue.put(e)


def test_a_daemonic_process_reads_in_one_process(world, monkeypatch):
    """A daemonic process (a Pool worker) may not fork children: it tokenizes the file itself."""
    import multiprocessing as mp

    calls = _spy_spans(monkeypatch)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_preprocess_in_a_daemon, args=(world, "plain_daemon", queue), daemon=True)
    proc.start()
    got = queue.get(timeout=120)
    proc.join()
    assert not isinstance(got, BaseException), got
    one, _ = _preprocess(world, "plain", "plain_daemon_ref")
    assert _outputs(got) == _outputs(one) and not calls


@LINUX_ONLY
def test_a_failing_or_dying_span_fails_the_run_and_leaves_nothing(world, tmp_path, monkeypatch, capsys):
    """A bad row in a later span is named by its line; a span's process that dies fails the run; either way
    no output and no part is left."""
    d, tok, _ = world
    rows = [json.dumps({"text": f"Row {i} of a file read in spans."}) for i in range(300)]
    rows[240] = "{broken"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    calls = _spy_spans(monkeypatch)
    base = ["--input", str(bad), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model", str(tok),
            "--no-progress", "--workers", "2"]
    assert preprocess_tool.main(base) == 2
    assert f"{bad}:241: malformed JSON" in capsys.readouterr().err and len(calls[-1]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    assert preprocess_tool.main(base + ["--on-error", "skip", "--stats", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["documents_written"], s["skipped_rows"], s["row_errors"]) == (299, 1, {"malformed_json": 1})
    for p in tmp_path.glob("o*"):
        p.unlink()
    real = preprocess_tool._process

    def dies_after_the_first_span(job, i, prefixes, pool, progress, next_input=None, span=None, sidecar=None):
        if span is not None and span.start > 0:
            os._exit(3)
        return real(job, i, prefixes, pool, progress, next_input, span, sidecar)

    monkeypatch.setattr(preprocess_tool, "_process", dies_after_the_first_span)
    assert preprocess_tool.main(base) == 2
    assert "died (exit code 3" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "s.json"]


def test_injected_tags_and_control_strings_stay_text(world):
    d, tok, docs = world
    srp, _ = _preprocess(world, "srp", "srp_inj")
    i = next(k for k, doc in enumerate(docs) if doc["id"] == "inject")
    ids, roles = _docs(srp)[i], _docs(roles_prefix(srp))[i]
    eod = _eod(tok)
    assert ids.tolist().count(eod) == 1 and ids[-1] == eod
    text = _decode(tok, ids[:-1])
    found = DEFAULT.find(text)
    assert len(found) == 1 and found[0][2] == Verdict("safe")  # only the inserted reflection
    assert "<" + ZERO_WIDTH_SPACE + "think>" in text and "<|endoftext|>" in text
    from tokenizers import Tokenizer

    safe_ids = Tokenizer.from_file(str(tok / "tokenizer.json")).encode(DEFAULT.render(Verdict("safe"))).ids
    np.testing.assert_array_equal(ids[roles == ROLE_REFLECTION], safe_ids)
    # Without the guard the control string becomes the end-of-document id, as in Megatron-LM.
    raw, _ = _preprocess(world, "plain", "raw", ["--no-injection-guard"])
    assert _docs(raw)[i].tolist().count(eod) == 2


def test_outputs_train_through_gpt_dataset(world, tmp_path):
    from megatron_srp.config import load_recipe
    from megatron_srp.training.data import build_datasets

    d, tok, _ = world
    srp, _ = _preprocess(world, "srp", "srp_train")
    recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", [
        f"data.data_path=[{srp}]", "data.mock=false", f"data.tokenizer_model={tok}",
        f"data.data_cache_path={tmp_path / 'cache'}", "model.vocab_size=640", "model.seq_length=64",
        "training.train_iters=8", "training.eval_interval=null"])
    train, _ = build_datasets(recipe)
    sample = train[0]
    refl_ids = set(np.concatenate([_docs(srp)[k][_docs(roles_prefix(srp))[k] == 1] for k in range(5)]).tolist())
    tokens, roles = sample["labels"].numpy(), sample["roles"].numpy()
    assert roles.sum() > 0 and set(tokens[roles == 1].tolist()) <= refl_ids


class KeywordClassifier(Classifier):
    """A real (if simple) backend for testing the cache: unsafe iff an unsafe sentence occurs."""

    name, version, categories, batch_size = "keyword", "1", ("Violent",), 4

    def __init__(self):
        self.calls = 0

    def classify(self, items):
        self.calls += len(items)
        return [Verdict("unsafe", ("Violent",)) if any(u in it.segment for u in UNSAFE_SENTENCES) else Verdict("safe")
                for it in items]


def test_verdict_cache_classifies_nothing_twice(tmp_path):
    items = [SegmentInput(s, c) for s in SAFE_SENTENCES + UNSAFE_SENTENCES for c in ("", "ctx")] * 2
    cache = VerdictCache(str(tmp_path / "v.sqlite"))
    clf = KeywordClassifier()
    first, new = classify_cached(clf, items, cache)
    assert new == clf.calls == len(items) // 2  # duplicates within the batch run once
    again, new2 = classify_cached(KeywordClassifier(), items, VerdictCache(str(tmp_path / "v.sqlite")))
    assert new2 == 0 and again == first
    assert sum(v.label == "unsafe" for v in first) == 2 * 2 * len(UNSAFE_SENTENCES)


def test_bad_rows_name_the_file_and_line(world, tmp_path, capsys):
    d, tok, docs = world
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"id": "a", "text": "Fine text."}), "{not json", json.dumps({"id": "b", "body": "x"}),
             json.dumps({"id": "c", "text": "x" * 50})]
    bad.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "d", "text": "caf\xe9"}\n')
    base = ["--input", str(bad), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model", str(tok), "--no-progress"]
    assert preprocess_tool.main(base) == 2
    assert f"{bad}:2: malformed JSON" in capsys.readouterr().err
    stats = tmp_path / "s.json"
    assert preprocess_tool.main(base + ["--on-error", "skip", "--max-doc-chars", "40", "--stats", str(stats)]) == 0
    s = json.loads(stats.read_text())
    assert s["documents_written"] == 1 and s["skipped_rows"] == 4
    assert s["row_errors"] == {"malformed_json": 1, "missing_text": 1, "too_long": 1, "invalid_utf8": 1}
    assert preprocess_tool.main(base[:-1] + ["--max-doc-chars", "40", "--on-error", "fail"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_annotations_must_match_the_input(world, tmp_path, capsys):
    d, tok, docs = world
    rows = [json.loads(l) for l in (d / "corpus" / "shard_0.jsonl").read_text().splitlines()]
    rows[3]["text"] = rows[3]["text"] + " Edited."
    changed = write_jsonl(tmp_path / "corpus" / "shard_0.jsonl", rows)
    args = ["--input", str(changed), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model", str(tok),
            "--annotations", str(d / "ann"), "--variant", "srp", "--no-progress"]
    assert preprocess_tool.main(args) == 2
    err = capsys.readouterr().err
    assert f"{changed}:4" in err and "text differs" in err
    assert not list(tmp_path.glob("o_*"))  # nothing half-written, no temporary files left
    assert preprocess_tool.main(args[:-5] + ["--variant", "srp", "--no-progress"]) == 2
    assert "needs --annotations" in capsys.readouterr().err


def test_the_annotated_file_is_checked_by_its_digest_any_other_text_by_text(world, tmp_path):
    """The file annotate read, byte for byte: no text hashed. The same rows written again (another JSON
    layout): another digest, so every text is hashed, and the output is the same."""
    d, _, _ = world
    src = d / "corpus" / "shard_0.jsonl"
    same, stats = _preprocess(world, "srp", "digest_same", inputs=[str(src)])
    assert stats["inputs_verified_by_digest"] == 1 and stats["texts_hash_checked"] == 0
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    relaid = tmp_path / "corpus" / "shard_0.jsonl"  # same shard name: the same sidecar
    relaid.parent.mkdir()
    relaid.write_text("".join(json.dumps(dict(reversed(r.items())), indent=None) + "\n" for r in rows))
    other, stats = _preprocess(world, "srp", "digest_other", inputs=[str(relaid)])
    assert stats["inputs_verified_by_digest"] == 0 and stats["texts_hash_checked"] == len(rows)
    for suffix in (".bin", ".idx"):
        assert Path(same + suffix).read_bytes() == Path(other + suffix).read_bytes()


@LINUX_ONLY
def test_spans_start_before_the_digest_and_run_again_when_it_is_another(world, tmp_path, monkeypatch, capsys):
    """The span processes start on the annotated file's digest assumed, while their parent takes it: the same
    file runs once with no text hashed; a file of the same size with another digest (the rows written again) has
    its spans stopped and run again hashing every text, for the same bytes; a text changed in place is named."""
    from megatron_srp.data import annotations as ann

    d, _, _ = world
    src = d / "corpus" / "shard_0.jsonl"
    one, _ = _preprocess(world, "srp", "digest_one", inputs=[str(src)])
    _spy_spans(monkeypatch)
    runs, forked_first = [], []
    real_run, real_confirm = preprocess_spans._run_spans, ann.ShardAnnotations.confirm_input
    monkeypatch.setattr(preprocess_spans, "_run_spans", lambda *a: (runs.append(1), real_run(*a))[1])
    monkeypatch.setattr(ann.ShardAnnotations, "confirm_input", lambda self, path: (
        forked_first.append(bool(mp.active_children())), real_confirm(self, path))[1])
    same, stats = _preprocess(world, "srp", "digest_spans", inputs=[str(src)], extra=["--workers", "2"])
    assert (len(runs), forked_first) == (1, [True])
    assert (stats["inputs_verified_by_digest"], stats["texts_hash_checked"]) == (1, 0)
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    relaid = tmp_path / "corpus" / "shard_0.jsonl"  # same shard name: the same sidecar
    relaid.parent.mkdir()
    relaid.write_text("".join(json.dumps(dict(reversed(r.items()))) + "\n" for r in rows))
    assert relaid.stat().st_size == src.stat().st_size and relaid.read_bytes() != src.read_bytes()
    other, stats = _preprocess(world, "srp", "digest_spans_other", inputs=[str(relaid)], extra=["--workers", "2"])
    assert len(runs) == 3 and (stats["inputs_verified_by_digest"], stats["texts_hash_checked"]) == (0, len(rows))
    assert _outputs(one) == _outputs(same) == _outputs(other)
    text = rows[30]["text"]
    rows[30]["text"] = text.replace(text[0], "Z" if text[0] != "Z" else "Y", 1)  # same size, another text
    relaid.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert relaid.stat().st_size == src.stat().st_size
    with pytest.raises(AssertionError):  # main returns 2
        _preprocess(world, "srp", "digest_spans_changed", inputs=[str(relaid)], extra=["--workers", "2"])
    assert f"shard_0.jsonl:31 (id '{rows[30]['id']}'): the text differs" in capsys.readouterr().err
    assert not [p.name for p in (d / "out").iterdir() if "digest_spans_changed" in p.name]


def test_old_sidecars_and_worker_processes_give_the_same_srp_bytes(tmp_path):
    """Non-ASCII multi-segment documents: a sidecar from before the digest and the byte ends (every text hashed,
    character ends converted) gives the bytes of a new one, also through the tokenizers backend's worker
    processes; a file rewritten after its digest matched is refused."""
    import pyarrow.parquet as pq

    from megatron_srp.data import annotations as ann

    segs = ["Café n°{i} sert une crêpe. ", "Une phrase sûre, 中文 {i}. ", "Mix ☕ and ascii {i}."]
    rows = [{"id": f"u{i}", "text": "".join(s.format(i=i) for s in segs),
             "segments": [{"text": s.format(i=i), "label": "unsafe" if (i + j) % 3 == 0 else "safe"}
                          for j, s in enumerate(segs)]} for i in range(40)]
    corpus = write_jsonl(tmp_path / "u" / "shard.jsonl", rows)
    tok = train_bpe_tokenizer(tmp_path / "tok", [r["text"] for r in rows] * 3)
    assert annotate_tool.main(["--input", str(corpus), "--output", str(tmp_path / "ann"), "--tokenizer-model", str(tok),
                               "--classifier", "column", "--no-progress"]) == 0
    old_dir = tmp_path / "ann_old"  # the same sidecar without the digest and the byte ends
    old_dir.mkdir()
    (old_dir / ann.MANIFEST).write_bytes((tmp_path / "ann" / ann.MANIFEST).read_bytes())
    name = "shard.jsonl" + ann.SUFFIX
    table = pq.read_table(tmp_path / "ann" / name)
    meta = json.loads(table.schema.metadata[b"megatron_srp"])
    del meta["input_digest"]
    table = table.drop_columns(["seg_end_byte"]).replace_schema_metadata({b"megatron_srp": json.dumps(meta)})
    pq.write_table(table, old_dir / name)

    def srp(name, annotations, *extra):
        prefix = tmp_path / "out" / name
        assert preprocess_tool.main(["--input", str(corpus), "--output-prefix", str(prefix), "--tokenizer-model",
                                     str(tok), "--append-eod", "--annotations", str(annotations), "--variant", "srp",
                                     "--no-progress", "--stats", f"{prefix}.json", *extra]) == 0
        stats = json.loads(Path(f"{prefix}.json").read_text())
        files = [Path(f"{prefix}_text_document{s}").read_bytes() for s in (".bin", ".idx", ".roles.bin", ".roles.idx")]
        return files, stats

    new, s_new = srp("new", tmp_path / "ann")
    old, s_old = srp("old", old_dir)
    pool, s_pool = srp("pool", old_dir, "--tokenizer-backend", "tokenizers", "--workers", "2")
    assert (s_new["inputs_verified_by_digest"], s_new["texts_hash_checked"]) == (1, 0)
    assert (s_old["inputs_verified_by_digest"], s_old["texts_hash_checked"]) == (0, 40)
    assert s_new["reflection_tokens"] > 0 and new == old == pool
    sidecar = ann.ShardAnnotations.read(str(tmp_path / "ann" / name))
    assert sidecar.verify_input(str(corpus))
    st = corpus.stat()
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # written again after the digest was taken
    with pytest.raises(ann.AnnotationError, match="shard.jsonl changed while it was read"):
        sidecar.check_unchanged(str(corpus))


def test_annotate_refuses_to_mix_settings_and_skips_finished_shards(world, capsys):
    d, tok, _ = world
    base = ["--input", str(d / "corpus"), "--output", str(d / "ann"), "--tokenizer-model", str(tok),
            "--classifier", "column", "--no-progress"]
    assert annotate_tool.main(base) == 0
    assert '"annotated_now": 0' in capsys.readouterr().out
    assert annotate_tool.main(base + ["--segment-tokens", "64"]) == 2
    assert "segment_tokens: 256 there, 64 now" in capsys.readouterr().err


def _big_corpus(tmp_path, n_files=3, n_docs=1500):
    for i in range(n_files):
        write_jsonl(tmp_path / "big" / f"part_{i}.jsonl", labelled_corpus(n_docs, seed=100 + i))
    return tmp_path / "big"


def _run_killed(cmd, marker: Path, final: Path):
    """Start cmd, SIGKILL it as soon as ``marker`` appears; return whether it was killed before ``final``."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return not final.exists()


def test_killed_preprocess_resumes_to_identical_bytes(world, tmp_path):
    d, tok, _ = world
    big = _big_corpus(tmp_path)
    base = [sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", str(big), "--tokenizer-model",
            str(tok), "--append-eod", "--no-progress"]
    straight = tmp_path / "straight"
    subprocess.run(base + ["--output-prefix", str(straight)], cwd=ROOT, env=child_env(), check=True,
                   capture_output=True)
    resumed = tmp_path / "resumed"
    killed = _run_killed(base + ["--output-prefix", str(resumed)],
                         Path(f"{resumed}.parts/00000_text_document.stats.json"),
                         Path(f"{resumed}_text_document.idx"))
    assert killed, "the run finished before the kill; the test proved nothing"
    proc = subprocess.run(base + ["--output-prefix", str(resumed), "--stats", str(tmp_path / "s.json")], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "s.json").read_text())["files"][0].get("reused") is True
    for ext in (".bin", ".idx"):
        assert Path(f"{resumed}_text_document{ext}").read_bytes() == Path(f"{straight}_text_document{ext}").read_bytes()


def _span_like(pid_file):
    """A process that forks a child as preprocessing forks a span's process; the child sleeps."""
    pid = os.fork()
    if pid == 0:
        preprocess_spans._die_with_parent()
        time.sleep(120)
        os._exit(0)
    Path(pid_file).write_text(str(pid))
    time.sleep(120)


@LINUX_ONLY
def test_a_killed_run_takes_its_span_processes_with_it(tmp_path):
    """SIGKILL of a preprocessing process: its span processes get SIGKILL too (none is left running)."""
    import multiprocessing as mp

    pid_file = tmp_path / "child.pid"
    parent = mp.get_context("fork").Process(target=_span_like, args=(str(pid_file),))
    parent.start()
    deadline = time.time() + 30
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.01)
    child = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    deadline = time.time() + 10
    while Path(f"/proc/{child}").exists() and time.time() < deadline:
        try:  # a zombie stays in /proc until reaped: dead is enough
            if Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.02)
    alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] != "Z"
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the child outlived its killed parent"


def test_killed_annotation_resumes_to_identical_sidecars(world, tmp_path):
    d, tok, _ = world
    big = _big_corpus(tmp_path, n_docs=800)
    base = [sys.executable, str(ROOT / "tools" / "annotate.py"), "--input", str(big), "--tokenizer-model", str(tok),
            "--classifier", "column", "--no-progress"]
    subprocess.run(base + ["--output", str(tmp_path / "a1")], cwd=ROOT, env=child_env(), check=True, capture_output=True)
    killed = _run_killed(base + ["--output", str(tmp_path / "a2")], tmp_path / "a2" / "part_0.jsonl.annotations.parquet",
                         tmp_path / "a2" / "annotations.json")
    assert killed
    assert not list((tmp_path / "a2").glob("part_2*.parquet"))
    subprocess.run(base + ["--output", str(tmp_path / "a2")], cwd=ROOT, env=child_env(), check=True, capture_output=True)
    for i in range(3):
        name = f"part_{i}.jsonl.annotations.parquet"
        assert (tmp_path / "a1" / name).read_bytes() == (tmp_path / "a2" / name).read_bytes()


def test_datatrove_local_executor_gives_the_same_outputs(world, tmp_path):
    d, tok, _ = world
    ann_dir = tmp_path / "ann"
    args = ["--input", str(d / "corpus"), "--output", str(ann_dir), "--tokenizer-model", str(tok),
            "--classifier", "column", "--no-progress"]
    assert annotate_tool.main(args + ["--executor", "local", "--tasks", "2"]) == 0
    for shard in (d / "ann").glob("*.parquet"):
        assert (ann_dir / shard.name).read_bytes() == shard.read_bytes()
    assert (ann_dir / "annotations.json").exists()
    ref, _ = _preprocess(world, "srp", "srp_ref")
    prefix = tmp_path / "dt"
    assert preprocess_tool.main(["--input", str(d / "corpus"), "--output-prefix", str(prefix), "--tokenizer-model",
                                 str(tok), "--append-eod", "--annotations", str(ann_dir), "--variant", "srp",
                                 "--no-progress", "--executor", "local", "--tasks", "3", "--local-workers", "2"]) == 0
    for suffix in (".bin", ".idx", ".roles.bin", ".roles.idx"):
        assert Path(f"{prefix}_text_document{suffix}").read_bytes() == Path(f"{ref}{suffix}").read_bytes(), suffix


def test_datatrove_slurm_executor_submits_an_array_and_a_dependent_merge(world, tmp_path):
    """A fake sbatch on PATH records what datatrove would submit to a real cluster."""
    d, tok, _ = world
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "sbatch.log"
    (bindir / "sbatch").write_text(
        "#!/bin/bash\n"
        f'n=$(ls {tmp_path}/job_*.sh 2>/dev/null | wc -l); cp "${{@: -1}}" {tmp_path}/job_$n.sh\n'
        f'echo "$@" >> {log}\necho "Submitted batch job $((1000 + n))"\n')
    (bindir / "sbatch").chmod(0o755)
    env = {**child_env(), "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input", str(d / "corpus"),
                           "--output-prefix", str(tmp_path / "out"), "--tokenizer-model", str(tok), "--append-eod",
                           "--executor", "slurm", "--slurm-partition", "cpu", "--tasks", "3",
                           "--slurm-sbatch-arg", "account=srp"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripts = [p.read_text() for p in sorted(tmp_path.glob("job_*.sh"))]
    submitted = log.read_text().splitlines()
    # datatrove submits one job per step that runs the pickled pipeline (plus a statistics merge after each)
    runs = [i for i, s in enumerate(scripts) if "launch_pickled_pipeline" in s]
    assert len(runs) == 2, scripts
    shards, finish = scripts[runs[0]], scripts[runs[1]]
    assert "--job-name=srp-preprocess\n" in shards and "--job-name=srp-preprocess-finish\n" in finish
    assert "--array=0-2" in shards and "--partition=cpu" in shards and "--account=srp" in shards
    assert "--array=0-0" in finish
    assert f"--dependency=afterok:{1000 + runs[0]}" in submitted[runs[1]], submitted
    assert (tmp_path / "out.datatrove" / "shards" / "executor.pik").exists()
    assert not (tmp_path / "out_text_document.bin").exists()  # nothing ran here: it was only submitted
