"""Annotation across nodes: every task writes only its own files, the finishing step merges them.

A real classifier backend (MedSafetyWorld's ``oracle``) runs in datatrove local-executor tasks,
each a separate spawned process that shares nothing with the others but the output folder (as tasks
on separate nodes would); the merged annotations and verdict cache must equal a one-process run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from megatron_srp.data import annotate, verdict_log
from megatron_srp.medsafetyworld import plugins  # noqa: F401  (registers the oracle backends)
from megatron_srp.medsafetyworld.corpus import CorpusSettings, write_corpus
from megatron_srp.medsafetyworld.world import WorldSettings, generate_world
from tests.fixtures import train_bpe_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("scaleout")
    w = generate_world(WorldSettings(seed=3))
    w.save(str(d / "world.json"))
    write_corpus(w, CorpusSettings(n_documents=240, unsafe_share=0.2, shards=3), str(d / "corpus"))
    texts = [json.loads(line)["text"] for p in (d / "corpus").glob("*.jsonl") for line in p.open()]
    tok = train_bpe_tokenizer(d / "tok", texts, vocab_size=500)
    return d, tok


def _args(corpus, out: Path) -> list[str]:
    d, tok = corpus
    return ["--input", str(d / "corpus"), "--output", str(out), "--tokenizer-model", str(tok), "--segment-tokens", "48",
            "--classifier", "oracle", "--classifier-arg", f"world={d / 'world.json'}", "--no-progress"]


def _sidecars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.annotations.parquet"))}


def test_tasks_as_separate_nodes_merge_to_the_one_process_result(corpus, tmp_path, capsys):
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert annotate.main(_args(corpus, single)) == 0
    totals = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert totals["classified"] > 0 and totals["verdict_cache"]["logs"] == 3

    assert annotate.main(_args(corpus, multi) + ["--executor", "local", "--tasks", "3", "--local-workers", "3"]) == 0
    assert _sidecars(multi) == _sidecars(single) and len(_sidecars(multi)) == 3
    assert verdict_log.merged_verdicts(multi) == verdict_log.merged_verdicts(single)
    assert (multi / "annotations.json").exists()
    # each shard's log had exactly one writer, and the three were three different task processes
    merged = verdict_log.merged_logs(multi)
    assert sorted(m["log"] for m in merged) == [f"verdicts/part_{k}.jsonl.verdicts.jsonl" for k in range(3)]
    writers = [m["writers"] for m in merged]
    assert all(len(w) == 1 for w in writers), writers
    assert len({w[0]["writer"] for w in writers}) == 3 and sorted(w[0]["rank"] for w in writers) == [0, 1, 2]
    assert not list(multi.glob("*-wal")) and not list(multi.glob("*-shm"))  # nothing SQLite locks over NFS
    assert not list((multi / "verdicts").rglob("*.jsonl"))  # merged, then removed

    # a rerun reuses the finished tasks' verdicts: a lost sidecar is rebuilt without one classification
    (multi / "part_1.jsonl.annotations.parquet").unlink()
    (multi / "annotations.json").unlink()
    assert annotate.main(_args(corpus, multi)) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["annotated_now"] == 1 and again["classified"] == 0
    assert _sidecars(multi) == _sidecars(single)


def test_an_interrupted_task_resumes_from_its_own_log(corpus, tmp_path):
    out = tmp_path / "ann"
    p = annotate.plan(annotate.settings_from_argv(_args(corpus, out)))
    first = annotate.annotate_files(p, [0], rank=0)[0]  # the body of datatrove task 0 of 3
    log = Path(verdict_log.log_path(str(out), "part_0.jsonl"))
    lines = log.read_bytes().splitlines(keepends=True)
    kept = lines[:1 + (len(lines) - 1) // 2]  # the writer header and half the verdicts ...
    log.write_bytes(b"".join(kept) + lines[len(kept)][:20])  # ... then a line torn by the kill
    Path(first.output).unlink()  # killed before its sidecar was renamed into place

    resumed = annotate.annotate_files(p, [0], rank=0)[0]
    assert resumed.classified == first.classified - (len(kept) - 1)
    assert [s["rank"] for s in verdict_log.writer_sessions(str(log))] == [0, 0]  # one writer at a time
    verdicts, complete = verdict_log.read_log(str(log))
    assert complete == log.stat().st_size and len(verdicts) == first.classified  # the torn line was cut

    single = tmp_path / "single"
    annotate.annotate_files(annotate.plan(annotate.settings_from_argv(_args(corpus, single))), [0])
    assert Path(first.output).read_bytes() == (single / "part_0.jsonl.annotations.parquet").read_bytes()


def test_a_damaged_log_names_its_file_and_line(corpus, tmp_path, capsys):
    out = tmp_path / "ann"
    log = Path(verdict_log.log_path(str(out), "part_2.jsonl"))
    log.parent.mkdir(parents=True)
    log.write_text('{"writer": "x:1", "rank": 2}\n["k", "safe", []]\nnot json\n')
    assert annotate.main(_args(corpus, out)) == 2
    assert f"{log}:3: not JSON" in capsys.readouterr().err


def test_progress_total_comes_from_file_sizes_and_parquet_metadata(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": str(i), "text": "word " * (i % 50)} for i in range(30_000)]
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    (tmp_path / "a.jsonl").write_bytes(lines)
    (tmp_path / "small.jsonl").write_bytes(lines[:5000])
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(lines)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    assert annotate.estimate_rows(str(tmp_path / "a.parquet")) == 30_000
    assert annotate.estimate_rows(str(tmp_path / "small.jsonl")) == lines[:5000].count(b"\n") + 1
    for name in ("a.jsonl", "a.jsonl.gz"):
        assert abs(annotate.estimate_rows(str(tmp_path / name)) - 30_000) < 30_000 * 0.15, name


def test_worker_processes_get_the_settings_and_write_the_one_process_sidecars(corpus, tmp_path):
    """--workers 3: each spawned process receives a pickled ShardJob (settings included)."""
    single, pooled = tmp_path / "single", tmp_path / "pooled"
    assert annotate.main(_args(corpus, single)) == 0
    assert annotate.main(_args(corpus, pooled) + ["--workers", "3"]) == 0
    assert len(_sidecars(pooled)) == 3 and _sidecars(pooled) == _sidecars(single)
