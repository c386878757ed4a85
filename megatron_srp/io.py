"""Atomic writes: a reader sees the old file (or folder) or the new one, never a part.

Every write goes to a temporary name next to the target and is renamed over it when complete
(``os.replace`` is atomic within one filesystem). A write that fails removes its temporary file.
Imports nothing beyond the standard library, so every layer may use it (the checkpoint layout
included, which must load without torch or Megatron-Core).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from typing import Any, Iterator, Optional


def temp_name(path: str) -> str:
    """The temporary name a write to ``path`` uses (per process, so concurrent writers never share one)."""
    return f"{path}.tmp-{os.getpid()}"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", fsync: bool = False) -> Iterator[Any]:
    """``open(path, mode)`` whose content appears at ``path`` only when the block ends without error.

    ``fsync``: flush to disk before the rename (commit points such as a checkpoint tracker)."""
    path = os.fspath(path)
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (fsync'd by default: used for commit points)."""
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any, indent: Optional[int] = None) -> None:
    """``json.dump(data)`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=indent)


def atomic_copy(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy ``src`` to ``path`` atomically."""
    path = os.fspath(path)
    tmp = temp_name(path)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def replace_dir(staged: str | os.PathLike, path: str | os.PathLike) -> None:
    """Publish the finished folder ``staged`` as ``path``, removing what was there (the only non-atomic
    moment: between the removal and the rename, ``path`` is absent, never partial)."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(staged, path)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """A temporary folder to fill; published as ``path`` (replacing it) when the block ends without error,
    removed when it fails."""
    path = os.fspath(path)
    tmp = temp_name(path)
    _remove(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
