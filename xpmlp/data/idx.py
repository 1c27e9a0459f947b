"""IDX files, the format of MNIST and Fashion-MNIST: read with every size checked, and written."""

from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# Larger than any IDX dataset, and than half the memory of a small machine: a header claiming
# more is corrupt or hostile, and is refused before anything is decompressed or allocated.
MAX_IDX_BYTES = 8 * 2**30
# Deflate's best case is 1032:1, so n compressed bytes (gzip, a zip member) hold at most about
# 1032 * n: a size claimed beyond this ratio is corrupt.
MAX_DEFLATE_RATIO = 1100
CHUNK_BYTES = 2**24  # the payload is read in pieces: memory grows only with bytes really there

# IDX type code -> on-disk dtype (IDX stores every multi-byte value big-endian).
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or raw.

    Parameters
    ----------
    path : str or os.PathLike
        The file. It is decompressed if it starts with the gzip magic or its name ends in ``.gz``.

    Returns
    -------
    array of shape dims
        A writable array in native byte order with the shape stored in the header, e.g.
        ``(60000, 28, 28)`` uint8 for MNIST images.

    Raises
    ------
    DataError
        If the file cannot be read, the gzip stream is corrupt, the header is invalid, or the
        payload is shorter or longer than the header says.
    """
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    with raw:
        compressed = raw.read(2) == b"\x1f\x8b" or str(path).endswith(".gz")
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            return _read_idx_stream(stream, path, _file_size(raw), compressed)
        except (OSError, EOFError, zlib.error) as err:
            if compressed:
                raise DataError(f"corrupt gzip stream in {path}: {err}") from None
            raise DataError(f"cannot read {path}: {err}") from None


def _file_size(raw) -> int | None:
    found = os.fstat(raw.fileno())
    return found.st_size if stat.S_ISREG(found.st_mode) else None


def _read_idx_stream(stream, path, file_size: int | None, compressed: bool) -> np.ndarray:
    """Header first; the payload is read (and decompressed) only up to the size it declares, and
    only once that size is known to fit in memory and in the file (of ``file_size`` bytes)."""
    head = stream.read(4)
    if len(head) < 4:
        raise DataError(f"not an IDX file: {path} has only {len(head)} bytes after decompression")
    if head[:2] != b"\x00\x00":
        raise DataError(f"not an IDX file: bad magic 0x{head.hex()} in {path}")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        raise DataError(f"unknown IDX dtype code 0x{code:02x} in {path}")
    if ndim == 0:
        raise DataError(f"IDX header of {path} declares 0 dimensions; need at least 1")
    shape_bytes = stream.read(4 * ndim)
    if len(shape_bytes) < 4 * ndim:
        raise DataError(
            f"truncated IDX header in {path}: {4 + len(shape_bytes)} of {4 + 4 * ndim} bytes"
        )
    dims = tuple(int.from_bytes(shape_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise DataError(
            f"IDX header of {path} declares {dims} of {dtype.name}: {expected / 2**30:.3g} GiB, "
            f"more than the {MAX_IDX_BYTES / 2**30:.3g} GiB an IDX file may hold here"
        )
    _check_room(path, dims, dtype, expected, file_size, compressed)
    data = _read_at_most(stream, expected + 1)  # one more tells a longer payload from an exact one
    found = len(data)
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes in"
        shown = f"{found}" if found < expected else f"more than {expected}"
        raise DataError(
            f"{what} IDX file {path}: header {dims} of {dtype.name} needs {expected} data bytes,"
            f" found {shown}"
        )
    flat = np.frombuffer(data, dtype=dtype)
    return flat.astype(dtype.newbyteorder("=")).reshape(dims)


def _check_room(path, dims, dtype, expected: int, file_size: int | None, compressed: bool):
    """Refuse a payload larger than the file can hold, before reading it."""
    if file_size is None:  # not a regular file: the read itself is bounded
        return
    if compressed:
        room, holds = file_size * MAX_DEFLATE_RATIO, f"a gzip file of {file_size:,} bytes can hold"
    else:
        room = file_size - 4 - 4 * len(dims)
        holds = "the file holds after its header"
    if expected > room:
        raise DataError(
            f"truncated IDX file {path}: header {dims} of {dtype.name} needs {expected:,} data "
            f"bytes, more than {holds} ({room:,})"
        )


def _read_at_most(stream, size: int) -> bytes:
    """Up to ``size`` bytes, read in pieces (``read(size)`` would allocate ``size`` at once)."""
    pieces, left = [], size
    while left > 0:
        piece = stream.read(min(left, CHUNK_BYTES))
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def write_idx(path, array) -> None:
    """Write an array as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    array : array_like of shape dims
        At least one dimension; dtype uint8, int8, int16, int32, float32 or float64.

    Raises
    ------
    DataError
        If the array has no dimensions or a dtype IDX cannot store.
    """
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        names = ", ".join(dtype.newbyteorder("=").name for dtype in IDX_DTYPES.values())
        raise DataError(f"cannot write dtype {array.dtype} to {path}; IDX stores {names}")
    if array.ndim == 0:
        raise DataError(f"cannot write a 0-dimensional array to {path}; IDX needs at least 1")
    header = bytes([0, 0, code, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    Path(path).write_bytes(data)
