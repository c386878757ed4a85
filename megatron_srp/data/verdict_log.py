"""Verdict caches that never share a file between processes, so annotation can span nodes on NFS or Lustre.

Two layers, both under the annotation directory:

- ``verdicts/<shard>.verdicts.jsonl``: an append-only log of the verdicts computed for one input
  shard. Only the task that annotates that shard writes it (one writer, no locks); a rerun of an
  interrupted shard reads it back, cuts a torn last line, and appends.
- ``verdicts.sqlite``: the merged cache. The finishing step (one task) folds every shard log into
  it: built on local disk, copied in under a temporary name and renamed into place. Tasks open it
  read-only with SQLite's ``immutable`` flag, which takes no locks and writes no journal, so any
  number of nodes may read it at once.

A verdict is looked up in the shard's own log, then in the merged cache; identical segments in two
shards of one run are classified once per shard (the merged cache serves later runs).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import tempfile
import urllib.parse
from typing import Optional, Sequence

import orjson

from megatron_srp.errors import SRPError
from megatron_srp.io import atomic_copy
from megatron_srp.reflection import Verdict

LOG_DIR = "verdicts"
LOG_SUFFIX = ".verdicts.jsonl"
MERGED = "verdicts.sqlite"


class VerdictLogError(SRPError, ValueError):
    """A damaged verdict log (the message names the file and line)."""


def log_path(out_dir: str, shard_name: str) -> str:
    return os.path.join(out_dir, LOG_DIR, shard_name + LOG_SUFFIX)


def _entry(line: bytes, where: str) -> Optional[tuple[str, Verdict]]:
    """One log line -> (key, verdict); None for a writer header."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise VerdictLogError(f"{where}: not JSON ({e}); delete the file to classify that shard again") from None
    if isinstance(row, dict):  # {"writer": ...}: who opened the log, one line per session
        return None
    if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[1], str)
            and isinstance(row[2], list)):
        raise VerdictLogError(f"{where}: expected [key, label, [categories]], got {line[:120]!r}")
    return row[0], Verdict(row[1], tuple(row[2]))


def read_log(path: str) -> tuple[dict[str, Verdict], int]:
    """(verdicts, bytes of complete lines) of a log; a last line without its newline was torn by a kill."""
    found: dict[str, Verdict] = {}
    if not os.path.exists(path):
        return found, 0
    with open(path, "rb") as f:
        data = f.read()
    complete = data.rfind(b"\n") + 1
    for i, line in enumerate(data[:complete].splitlines(), start=1):
        if line.strip():
            entry = _entry(line, f"{path}:{i}")
            if entry is not None:
                found[entry[0]] = entry[1]
    return found, complete


def writer_sessions(path: str) -> list[dict]:
    """The writer headers of a log, in order (one per process that appended to it)."""
    with open(path, "rb") as f:
        return [row for row in map(orjson.loads, filter(bytes.strip, f.read().splitlines())) if isinstance(row, dict)]


def _open_immutable(path: str) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?immutable=1"
    return sqlite3.connect(uri, uri=True)


def _lookup(db: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Verdict]:
    found = {}
    for i in range(0, len(keys), 500):
        chunk = list(keys[i:i + 500])
        rows = db.execute(f"SELECT key, label, categories FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})",
                          chunk)
        for key, label, cats in rows:
            found[key] = Verdict(label, tuple(orjson.loads(cats)))
    return found


class ShardVerdictCache:
    """The cache one shard's annotation uses: its own log (read and appended) over the merged cache (read-only).

    ``rank`` is recorded in the log's writer header with host and pid, so a log shows who wrote it.
    """

    def __init__(self, out_dir: str, shard_name: str, rank: Optional[int] = None):
        self.path = log_path(out_dir, shard_name)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.known, complete = read_log(self.path)
        if os.path.exists(self.path) and os.path.getsize(self.path) != complete:
            os.truncate(self.path, complete)  # the torn tail of a killed writer; this process is the only writer
        merged = os.path.join(out_dir, MERGED)
        self._merged = _open_immutable(merged) if os.path.exists(merged) else None
        self._log = open(self.path, "ab")
        self._log.write(orjson.dumps({"writer": f"{socket.gethostname()}:{os.getpid()}", "rank": rank}) + b"\n")
        self._log.flush()

    def get_many(self, keys: Sequence[str]) -> dict[str, Verdict]:
        found = {k: self.known[k] for k in keys if k in self.known}
        rest = [k for k in keys if k not in found]
        if rest and self._merged is not None:
            found.update(_lookup(self._merged, rest))
        return found

    def put_many(self, pairs: Sequence[tuple[str, Verdict]]) -> None:
        self._log.write(b"".join(orjson.dumps([k, v.label, list(v.categories)]) + b"\n" for k, v in pairs))
        self._log.flush()  # a killed process loses nothing it flushed; a torn line is cut on reopen
        self.known.update(pairs)

    def close(self) -> None:
        self._log.close()
        if self._merged is not None:
            self._merged.close()


def _create_tables(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, label TEXT, categories TEXT)")
    # provenance: each merged log and the writer sessions (host:pid, rank) that appended to it
    db.execute("CREATE TABLE IF NOT EXISTS merged_logs (log TEXT, verdicts INTEGER, writers TEXT)")


def merged_logs(out_dir: str) -> list[dict]:
    """The logs folded into the merged cache so far: ``{"log", "verdicts", "writers"}`` each."""
    db = _open_immutable(os.path.join(out_dir, MERGED))
    try:
        rows = db.execute("SELECT log, verdicts, writers FROM merged_logs ORDER BY rowid").fetchall()
    finally:
        db.close()
    return [{"log": log, "verdicts": n, "writers": orjson.loads(w)} for log, n, w in rows]


def merged_verdicts(out_dir: str) -> dict[str, Verdict]:
    """Every verdict of the merged cache (for checks and small runs)."""
    db = _open_immutable(os.path.join(out_dir, MERGED))
    try:
        return {k: Verdict(label, tuple(orjson.loads(c))) for k, label, c in db.execute("SELECT * FROM verdicts")}
    finally:
        db.close()


def merge_logs(out_dir: str) -> dict:
    """Fold every shard log into the merged cache, then delete the logs. One process (the finishing step).

    Returns ``{"logs": n, "verdicts": rows in the merged cache}``.
    """
    logs = sorted(glob.glob(os.path.join(out_dir, LOG_DIR, "**", "*" + LOG_SUFFIX), recursive=True))
    merged = os.path.join(out_dir, MERGED)
    if not logs:
        rows = 0
        if os.path.exists(merged):
            db = _open_immutable(merged)
            rows = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
            db.close()
        return {"logs": 0, "verdicts": rows}
    with tempfile.TemporaryDirectory(prefix="srp-verdicts-") as tmp:  # local disk: SQLite's locks work there
        local = os.path.join(tmp, MERGED)
        if os.path.exists(merged):
            shutil.copyfile(merged, local)
        db = sqlite3.connect(local)
        _create_tables(db)
        for path in logs:
            verdicts, _ = read_log(path)
            db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?)",
                           [(k, v.label, orjson.dumps(list(v.categories)).decode()) for k, v in verdicts.items()])
            db.execute("INSERT INTO merged_logs VALUES (?, ?, ?)", (os.path.relpath(path, out_dir), len(verdicts),
                                                                   orjson.dumps(writer_sessions(path)).decode()))
        db.commit()
        rows = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
        db.close()
        atomic_copy(local, merged)
    for path in logs:  # merged: a crash before this point only means merging them again
        os.remove(path)
    return {"logs": len(logs), "verdicts": rows}
