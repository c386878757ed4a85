"""Is a saved iteration readable? File-level checks that name the damaged file.

A torch_dist iteration folder holds ``.metadata`` (where every tensor lives: file, offset, length),
the ``*.distcp`` shards, ``metadata.json`` and (megatron-core 0.16) ``common.pt``. A shard cut short by a full disk or a
copy that stopped half-way fails deep inside torch with a bare ``EOFError``; these checks find it
before anything is loaded, from the files alone, so every rank reaches the same verdict.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from torch.distributed.checkpoint import FileSystemReader

from megatron_srp.training.layout import CheckpointError


class DamagedCheckpointError(CheckpointError):
    """A saved iteration whose files are missing, cut short or unreadable; the message names the file."""


def read_metadata(path: str):
    """The torch_dist ``.metadata`` of an iteration folder; a damaged one is named."""
    meta_file = os.path.join(path, ".metadata")
    try:
        return FileSystemReader(path).read_metadata()
    except Exception as e:  # a cut-short pickle raises EOFError, UnpicklingError, ...
        raise DamagedCheckpointError(f"{meta_file}: unreadable ({type(e).__name__}: {e})") from e


def _shard_extents(meta) -> dict[str, int]:
    """Bytes each shard file must hold at least, from the checkpoint's .metadata."""
    need: dict[str, int] = defaultdict(int)
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need[info.relative_path], info.offset + info.length)
    return need


def check_iteration_files(path: str):
    """Raise :class:`DamagedCheckpointError` naming the first missing, short or unreadable file; return
    the folder's ``.metadata``."""
    if not os.path.isdir(path):
        raise DamagedCheckpointError(f"{path}: missing (the tracker names it)")
    # common.pt exists up to megatron-core 0.16; 0.19 keeps the common state in the shards.
    for name in (".metadata", "metadata.json"):
        if not os.path.isfile(os.path.join(path, name)):
            raise DamagedCheckpointError(f"{os.path.join(path, name)}: missing")
    meta = read_metadata(path)
    for rel, need in sorted(_shard_extents(meta).items()):
        f = os.path.join(path, rel)
        if not os.path.isfile(f):
            raise DamagedCheckpointError(f"{f}: missing (listed in {os.path.join(path, '.metadata')})")
        size = os.path.getsize(f)
        if size < need:
            raise DamagedCheckpointError(f"{f}: {size} bytes, but .metadata places data up to byte {need} "
                                         "(the file was cut short)")
    try:
        with open(os.path.join(path, "metadata.json")) as fh:
            json.load(fh)
    except ValueError as e:
        raise DamagedCheckpointError(f"{os.path.join(path, 'metadata.json')}: unreadable ({e})") from e
    # common.pt is read (and a damaged one named) by checkpointing.checkpoint_common.
    return meta
