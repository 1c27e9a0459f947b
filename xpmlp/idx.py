"""IDX files, the format of MNIST and Fashion-MNIST: read with every size checked, and written."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

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
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if data[:2] == b"\x1f\x8b" or str(path).endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"corrupt gzip stream in {path}: {err}") from None
    return _parse_idx(data, path)


def _parse_idx(data: bytes, path) -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"not an IDX file: {path} has only {len(data)} bytes after decompression")
    if data[:2] != b"\x00\x00":
        raise DataError(f"not an IDX file: bad magic 0x{data[:4].hex()} in {path}")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise DataError(f"unknown IDX dtype code 0x{code:02x} in {path}")
    if ndim == 0:
        raise DataError(f"IDX header of {path} declares 0 dimensions; need at least 1")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"truncated IDX header in {path}: {len(data)} of {offset} bytes")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - offset
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes in"
        raise DataError(
            f"{what} IDX file {path}: header {dims} of {dtype.name} needs {expected} data bytes,"
            f" found {found}"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=offset)
    return flat.astype(dtype.newbyteorder("=")).reshape(dims)


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
