"""What preprocess writes: the statistics, the indexed-dataset writer that publishes only complete
outputs, the merge of per-file parts, and the progress bar."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
from tqdm import tqdm

from megatron_srp.data.corpus import input_size
from megatron_srp.data.indexed_writer import IndexedWriter
from megatron_srp.data.roles import roles_prefix
from megatron_srp.io import temp_name


@dataclass
class Stats:
    documents_in: int = 0
    documents_written: int = 0
    documents_dropped: int = 0
    empty_documents: int = 0
    segments: int = 0
    segments_dropped: int = 0
    segments_rewritten: int = 0
    tokens: int = 0
    guard_changed_documents: int = 0
    tokenizers_fallback_documents: int = 0  # encoded by tokenizers, not gigatoken (an unassigned character)
    reflection_tokens: int = 0
    inputs_verified_by_digest: int = 0  # input files with the digest their annotation recorded: texts not hashed
    texts_hash_checked: int = 0  # documents whose text was checked against its annotation's sha256
    labels: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)
    skipped_rows: int = 0
    row_errors: dict = field(default_factory=dict)

    def add(self, other: "Stats") -> None:
        for k, v in asdict(other).items():
            if isinstance(v, dict):
                mine = getattr(self, k)
                for kk, vv in v.items():
                    mine[kk] = mine.get(kk, 0) + vv
            else:
                setattr(self, k, getattr(self, k) + v)


def output_prefixes(prefix: str, keys) -> list[str]:
    return [f"{prefix}_{key}_document" for key in keys]


class Writer:
    """IndexedWriters on temporary names; ``commit`` renames them (each .idx last)."""

    def __init__(self, prefixes: list[str], dtype, with_roles: bool, adopt: Optional[list[str]] = None):
        """``adopt``: a finished part's prefixes whose .bin files become the start of these (renamed, not
        copied); its index is then added with ``add_index(..., with_data=False)``."""
        self.prefixes = prefixes
        self.tmp = [temp_name(p) for p in prefixes]
        for p in prefixes:
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        if adopt:
            moves = list(zip(adopt, self.tmp))
            if with_roles:
                moves.append((roles_prefix(adopt[0]), roles_prefix(self.tmp[0])))
            for part, tmp in moves:
                os.replace(f"{part}.bin", f"{tmp}.bin")
        self.builders = [IndexedWriter(f"{t}.bin", dtype, append=bool(adopt)) for t in self.tmp]
        self.roles = IndexedWriter(f"{roles_prefix(self.tmp[0])}.bin", np.uint8, append=bool(adopt)) \
            if with_roles else None

    def add_batch(self, batch) -> None:
        for builder, flat, lengths in zip(self.builders, batch.flats, batch.lengths):
            builder.add_documents(flat, lengths)
        if self.roles is not None:
            self.roles.add_documents(batch.roles, batch.lengths[0])

    def add(self, out) -> None:
        for builder, ids in zip(self.builders, out.tokens):
            builder.add_documents(ids, [len(ids)])
        if self.roles is not None:
            self.roles.add_documents(out.roles, [len(out.roles)])

    def abort(self) -> None:
        """Remove the temporary files of an unfinished output."""
        for b in self.builders + ([self.roles] if self.roles is not None else []):
            b.close()
        remove_dataset([p for t in self.tmp for p in (t, roles_prefix(t))])

    def commit(self) -> None:
        # A .bin/.idx pair is two files, so io's one-file writes do not fit: the .idx is renamed last,
        # and readers take a prefix as present only when its .idx is.
        if self.roles is not None:
            self.roles.finalize(f"{roles_prefix(self.tmp[0])}.idx")
            os.replace(f"{roles_prefix(self.tmp[0])}.bin", f"{roles_prefix(self.prefixes[0])}.bin")
            os.replace(f"{roles_prefix(self.tmp[0])}.idx", f"{roles_prefix(self.prefixes[0])}.idx")
        for builder, tmp, final in zip(self.builders, self.tmp, self.prefixes):
            builder.finalize(f"{tmp}.idx")
            os.replace(f"{tmp}.bin", f"{final}.bin")
            os.replace(f"{tmp}.idx", f"{final}.idx")


def merge(part_prefixes: list[list[str]], final_prefixes: list[str], dtype, with_roles: bool,
          consume: bool = False) -> None:
    """Concatenate parts in order (byte-identical to tokenizing them as one stream). ``consume``: the parts are
    used up: the first one's .bin files become the output's, the others are appended in the kernel, and every
    part's files are removed."""
    writer = Writer(final_prefixes, dtype, with_roles, adopt=part_prefixes[0] if consume else None)
    files = [(builder, [parts[j] for parts in part_prefixes]) for j, builder in enumerate(writer.builders)]
    if with_roles:
        files.append((writer.roles, [roles_prefix(parts[0]) for parts in part_prefixes]))
    try:
        if len(files) == 1:
            _append_parts(*files[0], consume)
        else:  # one thread per output file: the kernel copies into different files run at once (two files of
            # 324 and 162 MB: 0.18 -> 0.13 s; into one file they take turns)
            with ThreadPoolExecutor(len(files), thread_name_prefix="merge") as pool:
                for done in [pool.submit(_append_parts, builder, parts, consume) for builder, parts in files]:
                    done.result()
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    if consume:
        for parts in part_prefixes:
            remove_dataset(parts + ([roles_prefix(parts[0])] if with_roles else []))


def _append_parts(builder: IndexedWriter, parts: list[str], consume: bool) -> None:
    """Append the parts' datasets to ``builder`` in order (``consume``: the first one's .bin is already its own)."""
    for k, part in enumerate(parts):
        builder.add_index(part, with_data=not (consume and k == 0))


def remove_dataset(prefixes: list[str]) -> None:
    """Remove the .bin/.idx files of ``prefixes`` (those that exist)."""
    for p in prefixes:
        for path in (f"{p}.bin", f"{p}.idx"):
            if os.path.exists(path):
                os.remove(path)


class Progress:
    """A bar over the input files' bytes on disk (parquet: rows from its metadata), so it has a total and ETA."""

    def __init__(self, paths, disable: bool, desc: str):
        self.bar = tqdm(total=sum(input_size(p) for p in paths), unit="B", unit_scale=True, unit_divisor=1024,
                        disable=disable, dynamic_ncols=True, desc=desc)
        self.current = 0  # position in the file being read

    def advance(self, position: int) -> None:
        self.bar.update(position - self.current)
        self.current = position

    def file_done(self, path: str) -> None:
        self.bar.update(input_size(path) - self.current)
        self.current = 0

    def close(self) -> None:
        self.bar.close()
