"""Writing Megatron indexed datasets (.bin/.idx) without importing torch or Megatron-Core.

The bytes are those of ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`` (one
sequence per non-empty document, an empty document adds only a document boundary; tested against
it), written from flat numpy arrays so a batch of documents costs one write. Preprocessing starts
in a fraction of a second and its hot path never imports Megatron-Core.
"""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np

from megatron_srp.errors import SRPError


class IndexFileError(SRPError, ValueError):
    """A .bin/.idx part that cannot be merged (another dtype, a damaged header)."""

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
               np.uint16: 8}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


def optimal_dtype(vocab_size: int):
    """Megatron-Core's ``DType.optimal_dtype``."""
    return np.uint16 if vocab_size < 65500 else np.int32


def _append(src, dst) -> None:
    """Copy file ``src`` to the end of ``dst`` in the kernel (``copy_file_range``: 2-3x faster than reading
    and writing, BENCHMARKS.md), or by reading and writing where it is not supported."""
    dst.flush()
    size = os.fstat(src.fileno()).st_size
    try:
        while size > 0 and (n := os.copy_file_range(src.fileno(), dst.fileno(), size)):
            size -= n
    except (AttributeError, OSError):  # no such call (not Linux) or not between these files
        pass
    if size > 0:
        src.seek(os.fstat(src.fileno()).st_size - size)
        shutil.copyfileobj(src, dst, 64 << 20)
    dst.seek(0, os.SEEK_END)  # the file object learns where the kernel's copy left the offset


class IndexedWriter:
    """One .bin being written and the lengths/boundaries its .idx will hold."""

    def __init__(self, bin_path: str, dtype, append: bool = False):
        """``append``: the .bin exists and holds the data of the first index added (``add_index(with_data=False)``)."""
        self.dtype = dtype
        self.data_file = open(bin_path, "r+b" if append else "wb")  # (not O_APPEND: copy_file_range refuses it)
        self.data_file.seek(0, os.SEEK_END)
        self._lengths: list[np.ndarray] = []
        self._documents = 0
        self._boundaries: list[np.ndarray] = [np.zeros(1, np.int64)]
        self._sequences = 0

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Documents given as their concatenated tokens and each one's length (0: empty document)."""
        self.data_file.write(memoryview(np.ascontiguousarray(flat, dtype=self.dtype)))  # no bytes copy
        lengths = np.asarray(lengths, dtype=np.int64)
        nonempty = lengths[lengths > 0]
        self._lengths.append(nonempty.astype(np.int32))
        # Megatron-LM: each document adds its sequences, then a boundary at the running sequence count.
        self._boundaries.append(self._sequences + np.cumsum(lengths > 0))
        self._sequences += len(nonempty)
        self._documents += len(lengths)

    def add_index(self, prefix: str, with_data: bool = True) -> None:
        """Append a finished dataset (Megatron-Core's ``add_index``); ``with_data=False``: its .bin is already
        in this one's (``append``)."""
        lengths, boundaries, dtype = read_index(f"{prefix}.idx")
        if dtype != self.dtype:
            raise IndexFileError(f"{prefix}.idx holds {dtype.__name__}, not {self.dtype.__name__}")
        self._lengths.append(lengths)
        self._boundaries.append(self._sequences + boundaries[1:])
        self._sequences += len(lengths)
        self._documents += len(boundaries) - 1
        if with_data:
            with open(f"{prefix}.bin", "rb") as f:
                _append(f, self.data_file)

    def close(self) -> None:
        self.data_file.close()

    def finalize(self, idx_path: str) -> None:
        self.data_file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(self.dtype).itemsize, out=pointers[1:])
        boundaries = np.concatenate(self._boundaries).astype(np.int64)
        with open(idx_path, "wb") as f:
            f.write(INDEX_HEADER)
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(boundaries)))
            f.write(lengths.astype(np.int32).tobytes())
            f.write(pointers.tobytes())
            f.write(boundaries.tobytes())


def read_index(idx_path: str) -> tuple[np.ndarray, np.ndarray, type]:
    """(sequence lengths, document boundaries, dtype) of a .idx file."""
    with open(idx_path, "rb") as f:
        data = f.read()
    if data[:9] != INDEX_HEADER:
        raise IndexFileError(f"{idx_path}: not a Megatron .idx file (bad header)")
    code = data[17]
    n_seq, n_doc = struct.unpack_from("<QQ", data, 18)
    pos = 34
    lengths = np.frombuffer(data, np.int32, n_seq, pos)
    pos += 4 * n_seq + 8 * n_seq
    boundaries = np.frombuffer(data, np.int64, n_doc, pos)
    return lengths.copy(), boundaries.copy(), CODE_DTYPES[code]
