"""User data: features and labels from ``.npz`` and ``.csv`` files, read with every size checked.

Everything here is NumPy on the host; every problem a user can cause raises `DataError` with one
line saying what is wrong and where.
"""

from __future__ import annotations

import csv
import math
import os
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, in_words
from .idx import MAX_DEFLATE_RATIO
from .inputs import check_finite, check_labels, check_rows, first_nonfinite_row

MAX_ARRAY_BYTES = 16 * 2**30  # a user array declaring more is refused before allocation


def load_arrays(path, *, label_column="label") -> tuple[np.ndarray, np.ndarray]:
    """Load features and labels from a ``.npz`` or ``.csv`` file.

    A ``.npz`` file must hold arrays ``X`` and ``y`` (no pickled objects). In a ``.csv`` file the
    label column is chosen by header name or integer index, every other column is a feature. A
    first row of numbers like the rows after it is data: the file has no header, and its label
    column goes by index. A UTF-8 byte order mark is ignored.

    Parameters
    ----------
    path : str or os.PathLike
    label_column : str or int
        CSV only: the label column's header name, or its index (negative counts from the end).

    Returns
    -------
    X : array of shape (n_samples, n_features)
        Finite values; the stored dtype for ``.npz``, float64 for ``.csv``.
    y : array of shape (n_samples,), int64 or str
        Whole-number labels of any sign, or text labels (each distinct value a class).

    Raises
    ------
    DataError
        If the file is missing or malformed; the message names the row or line at fault.
    """
    path = Path(path)
    check_regular_file(path)
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".csv":
        return _load_csv(path, label_column)
    raise DataError(f"unsupported file type {path.suffix!r} for {path}; use .npz or .csv")


def _load_npz(path: Path):
    names, arrays = read_npz(path, ("X", "y"))
    for key in ("X", "y"):
        if key not in arrays:
            found = ", ".join(names) or "none"
            raise DataError(f"{path} has no array {key!r} (arrays found: {found})")
    X, y = check_features(arrays["X"], where=str(path)), arrays["y"]
    if y.ndim != 1:
        raise DataError(f"y in {path} has shape {y.shape}; expected (n_samples,)")
    check_rows(X, y, where=str(path))
    if y.dtype.kind != "U":
        return X, check_labels(y, where=str(path))
    if (y == "").any():
        raise DataError(f"label at row {int(np.argmax(y == ''))} of {path} is empty")
    return X, y  # text labels: each distinct text is a class


def load_features(path) -> np.ndarray:
    """The array ``X`` of a ``.npz`` file, checked as :func:`check_features` checks it."""
    path = Path(path)
    check_regular_file(path, missing=f"input file {path} does not exist")
    names, arrays = read_npz(path, ("X",))
    if "X" not in arrays:
        raise DataError(f"{path} has no array named X (it has {', '.join(names) or 'none'})")
    return check_features(arrays["X"], where=str(path))


def check_regular_file(path, *, missing: str | None = None) -> None:
    """Refuse, in words, a data file that is missing, a directory, or no regular file (a FIFO,
    a device such as /dev/zero, a socket), before anything opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(missing or f"no such file: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {in_words(err)}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path} is a directory; pass a .npz or .csv file")
    if not stat.S_ISREG(mode):
        kind = ("a pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device")  # fmt: skip
        raise DataError(f"{path} is not a regular file but {kind}; pass a .npz or .csv file")


def check_features(X: np.ndarray, *, where: str) -> np.ndarray:
    """A 2-D array of real numbers with at least one row, all finite."""
    if X.ndim != 2:
        raise DataError(f"X in {where} has shape {X.shape}; expected (n_samples, n_features)")
    if X.dtype.kind not in "biuf":
        raise DataError(f"X in {where} has dtype {X.dtype}; expected real numbers")
    if X.shape[0] == 0:
        raise DataError(f"X in {where} has no rows")
    check_finite(X, where=where)
    return X


def read_npz(path: Path, wanted=None, *, max_bytes=MAX_ARRAY_BYTES):
    """The names of all arrays in a ``.npz`` archive, and the ``wanted`` ones that are present
    (every one when ``wanted`` is None).

    Each member's ``.npy`` header is read first: an object dtype, a size larger than the member
    holds, or one beyond ``max_bytes`` (an int, or a function of the array's name) is refused
    before anything is allocated, and so is a member larger than the archive could hold.

    Returns
    -------
    names : list of str
    arrays : dict of str to array
    """
    try:
        with path.open("rb") as file:
            if file.read(6) == b"\x93NUMPY":
                raise DataError(f"{path} holds a single array (a .npy file); expected .npz arrays")
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
                room = os.fstat(file.fileno()).st_size
                arrays, total = {}, 0
                for name in members if wanted is None else wanted:
                    if name in members:
                        limit = max_bytes(name) if callable(max_bytes) else max_bytes
                        # members may share one compressed stream (a zip bomb): each is also
                        # refused, before it is allocated, past what the others left of the budget
                        limit = min(limit, MAX_ARRAY_BYTES - total)
                        arrays[name] = _read_npy_member(archive, members[name], path, room, limit)
                        total += arrays[name].nbytes
                return list(members), arrays
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"cannot read {path} as .npz: {in_words(err)}") from None


def _read_npy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, room: int, limit: int
) -> np.ndarray:
    where = f"{info.filename} in {path}"
    if not info.filename.endswith(".npy"):
        raise DataError(f"{where} is not a .npy array")
    if info.compress_size > room or info.file_size > max(info.compress_size, 1) * MAX_DEFLATE_RATIO:
        raise DataError(
            f"{where} claims {info.file_size:,} bytes from {info.compress_size:,} compressed, "
            f"in an archive of {room:,} bytes; the archive is corrupt"
        )
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    if dtype.hasobject:
        raise DataError(f"cannot read {where}: it holds Python objects; xpmlp reads numbers only")
    size = math.prod(shape) * dtype.itemsize
    if size > min(info.file_size, limit):
        raise DataError(
            f"{where} declares shape {shape} of {dtype} ({size:,} bytes) but "
            + (f"holds only {info.file_size:,}" if size > info.file_size else
               f"the limit is {limit:,}")
        )  # fmt: skip
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _load_csv(path: Path, label_column):
    rows, lines = _read_csv(path)
    header = rows[0] if _is_header(rows) else None
    if header is not None:
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise DataError(f"{path} has a header but no data rows")
    names = header or list(range(len(rows[0])))  # a headerless file's columns go by index
    col = _column_index(header, len(names), label_column, path)
    if len(names) < 2:
        raise DataError(f"{path} has only the label column; it needs feature columns too")
    feature_names, first = names[:col] + names[col + 1 :], "the header" if header else "line 1"
    table = []
    for row, line in zip(rows, lines):
        if len(row) != len(names):
            raise DataError(
                f"line {line} of {path} has {len(row)} fields; {first} has {len(names)}"
            )
        table.append(_parse_row(row[:col] + row[col + 1 :], feature_names, line, path))
    X = np.stack(table)
    bad = first_nonfinite_row(X)
    if bad is not None:
        raise DataError(f"features must be finite; found {X[bad]} at line {lines[bad]} of {path}")
    return X, _parse_labels([row[col] for row in rows], lines, path)


def _read_csv(path: Path) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows as text, and each one's line number; a UTF-8 BOM is dropped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            rows, lines = [], []
            for row in reader:
                if row:  # blank lines are skipped
                    rows.append(row)
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path} as CSV: {in_words(err)}") from None
    if not rows:
        raise DataError(f"{path} is empty; expected a header row or data")
    return rows, lines


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _is_header(rows: list[list[str]]) -> bool:
    """Whether the first row names the columns: it has text where the next row has a number (a
    lone row: any text). A first row of numbers like the rest is data."""
    first = [_is_number(cell) for cell in rows[0]]
    if len(rows) == 1 or all(first):
        return not all(first)
    return any(number and not named for named, number in zip(first, map(_is_number, rows[1])))


def _parse_row(row: list[str], names: list[str], line: int, path: Path) -> np.ndarray:
    try:
        return np.asarray(row, dtype=np.float64)
    except ValueError:
        pass
    for name, cell in zip(names, row):
        if not _is_number(cell):
            raise DataError(
                f"non-numeric value {cell!r} at line {line}, column {name!r} of {path}"
            ) from None
    return np.asarray([float(cell) for cell in row])


def _parse_labels(cells: list[str], lines: list[int], path: Path) -> np.ndarray:
    """Whole numbers (checked by `check_labels`) or text, each kept as a class of its own."""
    try:
        y = np.asarray(cells, dtype=np.float64)
    except ValueError:
        numeric = [_is_number(cell) for cell in cells]
        if "" in cells:
            row, why = cells.index(""), "is empty; every row needs a label"
        elif not any(numeric):
            return np.asarray(cells, dtype=str)
        elif sum(numeric) * 2 < len(cells):
            row, why = numeric.index(True), "is a number among text labels"
        else:
            row, why = numeric.index(False), "is text among numeric labels"
        if "empty" not in why:
            why += "; a label column holds numbers or text, not both"
        raise DataError(f"label {cells[row]!r} at line {lines[row]} of {path} {why}") from None
    return check_labels(y, locate=lambda i: f"line {lines[i]} of {path}")


def _column_index(header: list[str] | None, n_columns: int, label_column, path: Path) -> int:
    if isinstance(label_column, str):
        if header is None:
            raise DataError(
                f"{path} has no header row (line 1 is numbers like the rest), so no column "
                f"{label_column!r}; choose the label column by index: --label-column 0 for the "
                "first, -1 for the last"
            )
        if label_column not in header:
            shown = ", ".join(header[:5]) + (f", ... ({len(header)} in all)" * (len(header) > 5))
            raise DataError(
                f"no column {label_column!r} in {path} (columns: {shown}); choose the label "
                "column with --label-column NAME_OR_INDEX"
            )
        return header.index(label_column)
    if isinstance(label_column, int) and not isinstance(label_column, bool):
        if not -n_columns <= label_column < n_columns:
            raise DataError(
                f"label column {label_column} is out of range: {path} has {n_columns} columns"
            )
        return label_column % n_columns
    raise ConfigError(f"label_column must be a column name or index; got {label_column!r}")
