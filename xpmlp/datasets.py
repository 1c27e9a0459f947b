"""Host-side data loading: IDX files, the built-in datasets, user arrays, and preprocessing.

Everything here is NumPy on the host; the training code moves arrays to the device. Every problem
a user can cause raises `DataError` (or `ConfigError` for a bad option) with one line saying what
is wrong and where.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import http.client
import logging
import math
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xpmlp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# IDX type code -> on-disk dtype (IDX stores every multi-byte value big-endian).
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# The four files of each built-in dataset, in the order (train X, train y, test X, test y).
FILENAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
N_CLASSES = {"mnist": 10, "fashion-mnist": 10}

# Base URLs, tried in order.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# SHA-256 of the files the mirrors serve, in FILENAMES order, from tensorflow/datasets
# url_checksums/{mnist,fashion_mnist}.txt. Debian's dataset-fashion-mnist re-gzips its copies (no
# stored file name, a 2020 mtime), so their hashes differ; local files are checked by structure.
SHA256 = {
    "mnist": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
    "fashion-mnist": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
}

# Distribution packages that install a dataset under <system dir>/<name>.
APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)
DOWNLOAD_TIMEOUT_S = 30.0
MAX_LABEL = 2**31 - 1  # user labels beyond this are surely a mistake


# --- IDX files ------------------------------------------------------------------------------


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


# --- Built-in datasets -----------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test pair held on the host.

    Attributes
    ----------
    X_train : array of shape (n_train, n_features), uint8 or float
    y_train : array of shape (n_train,), int64, values in [0, n_classes)
    X_test : array of shape (n_test, n_features), same dtype as X_train
    y_test : array of shape (n_test,), int64, values in [0, n_classes)
    n_classes : int
    name : str
        e.g. ``"fashion-mnist"``.
    source : str
        Where the data came from: a directory or a file.
    """

    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    X_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    n_classes: int
    name: str
    source: str

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


def load_dataset(name: str, *, data_dir=None, download: bool = True) -> Dataset:
    """Load a built-in dataset, finding its four IDX files locally or downloading them.

    Each place is searched for the files directly in it or in ``<place>/<name>/``, in order:
    ``data_dir``, ``$XPMLP_DATA_DIR``, the user cache (``$XDG_CACHE_HOME/xpmlp/<name>`` or
    ``~/.cache/xpmlp/<name>``), then ``<dir>/<name>`` for each dir in `SYSTEM_DATA_DIRS`. Failing
    all of them, the files are downloaded into the cache from `MIRRORS` and checked against
    `SHA256`. A file may be stored gzipped (``*.gz``) or raw (the same name without ``.gz``).

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    data_dir : str or os.PathLike, optional
        A directory to search first; it must exist.
    download : bool
        Whether to download the files when no local copy is found.

    Returns
    -------
    Dataset
        Images flattened to ``(n, 784)`` uint8, labels int64.

    Raises
    ------
    ConfigError
        If the name is unknown.
    DataError
        If the data cannot be found or fetched, or a file is malformed.
    """
    name = _canonical_name(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    places = _search_places(name, data_dir)
    for place in places:
        if files := _find_files(place):
            return _load_files(name, files, source=str(place))
    why = "download disabled"
    if download:
        cache = _cache_dir(name)
        why = _download(name, cache)
        if why is None:
            return _load_files(name, _find_files(cache), source=str(cache))
    raise DataError(_not_found_message(name, places, why))


def _canonical_name(name: str) -> str:
    canonical = str(name).lower().replace("_", "-")
    if canonical not in N_CLASSES:
        raise ConfigError(f"unknown dataset {name!r}; built-in datasets: {', '.join(N_CLASSES)}")
    return canonical


def _cache_dir(name: str) -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "xpmlp" / name


def _search_places(name: str, data_dir) -> list[Path]:
    places = []
    for base in (data_dir, os.environ.get("XPMLP_DATA_DIR") or None):
        if base is not None:
            places += [Path(base), Path(base) / name]
    places.append(_cache_dir(name))
    places += [Path(base) / name for base in SYSTEM_DATA_DIRS]
    return places


def _find_files(place: Path) -> list[Path] | None:
    """The four files in `place` (each gzipped or raw), or None unless all four are there."""
    found = [_find_file(place, filename) for filename in FILENAMES]
    return None if None in found else found


def _find_file(place: Path, filename: str) -> Path | None:
    for candidate in (place / filename, place / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _load_files(name: str, files: list[Path], *, source: str) -> Dataset:
    X_train, y_train = _load_pair(files[0], files[1], N_CLASSES[name])
    X_test, y_test = _load_pair(files[2], files[3], N_CLASSES[name])
    if X_train.shape[1] != X_test.shape[1]:
        raise DataError(
            f"{files[0]} has {X_train.shape[1]} pixels per image but {files[2]} has"
            f" {X_test.shape[1]}"
        )
    return Dataset(X_train, y_train, X_test, y_test, N_CLASSES[name], name, source)


def _load_pair(images_path: Path, labels_path: Path, n_classes: int):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim < 2:
        raise DataError(
            f"{images_path} holds a {images.ndim}-D array; images need at least 2 dimensions"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds a {labels.ndim}-D array; labels must be 1-D")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    check_labels(labels, n_classes, where=str(labels_path))
    return images.reshape(len(images), -1), labels.astype(np.int64)


def _download(name: str, cache: Path) -> str | None:
    """Fetch the files missing from `cache`; None on success, else why it failed."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create cache directory {cache}: {err.strerror or err}"
    for filename, sha256 in zip(FILENAMES, SHA256[name]):
        if _find_file(cache, filename) is None:
            failures = _fetch_from_mirrors(MIRRORS[name], cache / filename, sha256)
            if failures:
                return f"download failed ({'; '.join(failures)})"
    return None


def _fetch_from_mirrors(bases, dest: Path, sha256: str) -> list[str]:
    """Try each mirror in turn; return the failures, empty once one succeeded."""
    failures = []
    for base in bases:
        url = base + dest.name
        try:
            _fetch(url, dest, sha256)
            return []
        except urllib.error.HTTPError as err:
            err.close()
            failures.append(f"{url}: HTTP {err.code}")
        except (OSError, http.client.HTTPException) as err:
            failures.append(f"{url}: {err}")
    return failures or ["no mirror configured"]


def _fetch(url: str, dest: Path, sha256: str) -> None:
    """Download `url` to `dest` atomically: no file ever sits under `dest` unverified."""
    log.info("downloading %s", url)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise DataError(
                f"SHA-256 mismatch for {dest.name} from {url}: expected {sha256},"
                f" got {digest.hexdigest()}; the file was not saved"
            )
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _not_found_message(name: str, places: list[Path], why: str) -> str:
    ways = []
    if name in APT_PACKAGES:
        ways.append(f"install it with 'apt-get install {APT_PACKAGES[name]}'")
    ways.append("pass --data-dir DIR (a directory holding the four IDX files)")
    ways.append("allow the download" if why == "download disabled" else "retry the download")
    searched = ", ".join(str(place) for place in places)
    return f"{name} not found in {searched}; {why}; {', or '.join(ways)}"


# --- User data -------------------------------------------------------------------------------


def load_arrays(path, *, label_column="label") -> tuple[np.ndarray, np.ndarray]:
    """Load features and labels from a ``.npz`` or ``.csv`` file.

    A ``.npz`` file must hold arrays ``X`` and ``y`` (no pickled objects). A ``.csv`` file needs a
    header row; the label column is chosen by name or integer index, every other column is a
    feature.

    Parameters
    ----------
    path : str or os.PathLike
    label_column : str or int
        CSV only: the label column's header name, or its index (negative counts from the end).

    Returns
    -------
    X : array of shape (n_samples, n_features)
        Finite values; the stored dtype for ``.npz``, float64 for ``.csv``.
    y : array of shape (n_samples,), int64
        Non-negative integer labels.

    Raises
    ------
    DataError
        If the file is missing or malformed; the message names the row or line at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".csv":
        return _load_csv(path, label_column)
    raise DataError(f"unsupported file type {path.suffix!r} for {path}; use .npz or .csv")


def _load_npz(path: Path):
    names, arrays = _read_npz(path)
    for key in ("X", "y"):
        if key not in arrays:
            found = ", ".join(names) or "none"
            raise DataError(f"{path} has no array {key!r} (arrays found: {found})")
    X, y = arrays["X"], arrays["y"]
    if X.ndim != 2:
        raise DataError(f"X in {path} has shape {X.shape}; expected (n_samples, n_features)")
    if y.ndim != 1:
        raise DataError(f"y in {path} has shape {y.shape}; expected (n_samples,)")
    if X.dtype.kind not in "biuf":
        raise DataError(f"X in {path} has dtype {X.dtype}; expected numbers")
    if len(X) != len(y):
        raise DataError(f"{path} has {len(X)} rows in X but {len(y)} labels in y")
    check_finite(X, where=str(path))
    return X, _integer_labels(y, lambda i: f"row {i} of {path}")


def _read_npz(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """The names of all arrays in the archive, and arrays X and y where present."""
    try:
        with path.open("rb") as file:  # np.load leaks the file it opens if the zip is corrupt
            archive = np.load(file, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path} holds a single array; expected .npz arrays X and y")
            with archive:
                return archive.files, {key: archive[key] for key in ("X", "y") if key in archive}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} as .npz: {err}") from None


def _load_csv(path: Path, label_column):
    header, table, lines = _read_csv(path)
    col = _column_index(header, label_column, path)
    if len(header) < 2:
        raise DataError(f"{path} has only the label column; it needs feature columns too")
    X = np.delete(table, col, axis=1)
    bad = _first_nonfinite_row(X)
    if bad is not None:
        raise DataError(f"features must be finite; found {X[bad]} at line {lines[bad]} of {path}")
    return X, _integer_labels(table[:, col], lambda i: f"line {lines[i]} of {path}")


def _read_csv(path: Path):
    """The header, the numeric table (n_rows, n_columns), and each row's line number."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty; expected a header row")
            rows, lines = [], []
            for row in reader:
                if row:  # blank lines are skipped
                    rows.append(_parse_row(row, header, reader.line_num, path))
                    lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read {path} as CSV: {err}") from None
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    return header, np.stack(rows), lines


def _parse_row(row: list[str], header: list[str], line: int, path: Path) -> np.ndarray:
    if len(row) != len(header):
        raise DataError(
            f"line {line} of {path} has {len(row)} fields; the header has {len(header)}"
        )
    try:
        return np.asarray(row, dtype=np.float64)
    except ValueError:
        pass
    for name, cell in zip(header, row):
        try:
            float(cell)
        except ValueError:
            raise DataError(
                f"non-numeric value {cell!r} at line {line}, column {name!r} of {path}"
            ) from None
    return np.asarray([float(cell) for cell in row])


def _column_index(header: list[str], label_column, path: Path) -> int:
    if isinstance(label_column, str):
        if label_column not in header:
            shown = ", ".join(header[:5]) + (f", ... ({len(header)} in all)" * (len(header) > 5))
            raise DataError(f"no column {label_column!r} in {path} (columns: {shown})")
        return header.index(label_column)
    if isinstance(label_column, int) and not isinstance(label_column, bool):
        if not -len(header) <= label_column < len(header):
            raise DataError(
                f"label column {label_column} is out of range: {path} has {len(header)} columns"
            )
        return label_column % len(header)
    raise ConfigError(f"label_column must be a column name or index; got {label_column!r}")


def _integer_labels(y: np.ndarray, locate) -> np.ndarray:
    """`y` as int64, or a DataError naming (via `locate(i)`) the first bad label."""
    if y.dtype.kind not in "iuf":
        raise DataError(f"labels must be integers; found dtype {y.dtype} ({locate(0)})")
    with np.errstate(invalid="ignore"):
        bad = ~(y >= 0) | (y > MAX_LABEL) | (y != np.round(y))  # NaN fails y >= 0
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"labels must be integers in [0, {MAX_LABEL}]; found {y[i]} at {locate(i)}")
    return y.astype(np.int64)


# --- Validators ------------------------------------------------------------------------------


def check_labels(y, n_classes: int, *, where: str) -> None:
    """Check that every label is an integer in ``[0, n_classes)``.

    Parameters
    ----------
    y : array of shape (n_samples,)
        Integer labels.
    n_classes : int
    where : str
        Where the labels came from, for the message (a file name, "y_train").

    Raises
    ------
    DataError
        Naming the first bad label and its row, e.g. ``labels must be in [0, 10); found 12 at
        row 3047 of train-labels-idx1-ubyte.gz``.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"labels must be 1-D; found shape {y.shape} in {where}")
    if y.dtype.kind not in "iu":
        raise DataError(f"labels must be integers; found dtype {y.dtype} in {where}")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"labels must be in [0, {n_classes}); found {y[i]} at row {i} of {where}")


def check_finite(X, *, where: str) -> None:
    """Check that every feature value is finite (no NaN, no infinity).

    Parameters
    ----------
    X : array of shape (n_samples, ...)
    where : str
        Where the features came from, for the message.

    Raises
    ------
    DataError
        Naming the first row with a non-finite value and how many rows have one.
    """
    X = np.asarray(X)
    bad = _first_nonfinite_row(X)
    if bad is not None:
        n_bad = int((~np.isfinite(X.reshape(len(X), -1))).any(axis=1).sum())
        raise DataError(
            f"features must be finite; found {X[bad]} at row {bad} of {where}"
            f" ({n_bad} rows affected)"
        )


def _first_nonfinite_row(X: np.ndarray) -> int | None:
    if X.ndim == 0 or X.size == 0 or X.dtype.kind not in "fc":
        return None
    rows = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
    return int(np.argmax(rows)) if rows.any() else None


# --- Preprocessing ---------------------------------------------------------------------------


def scale(X_train, *others, method: str = "unit", dtype=np.float32) -> tuple[np.ndarray, ...]:
    """Scale features with statistics of the training set only.

    ``"unit"`` maps to [0, 1]: uint8 data is divided by 255; other data is min-max scaled per
    feature with the training set's minimum and maximum (a constant feature maps to 0). Data
    outside the training range lands outside [0, 1]. ``"standard"`` subtracts the training
    mean and divides by the training standard deviation per feature (a zero deviation by 1).
    ``"none"`` only converts the dtype.

    Parameters
    ----------
    X_train : array of shape (n_train, n_features)
    *others : arrays of shape (n_i, n_features)
        Scaled with the training statistics (validation, test sets).
    method : {"unit", "standard", "none"}
    dtype : floating dtype
        The dtype of the results.

    Returns
    -------
    tuple of arrays
        ``(X_train_scaled, *others_scaled)``, same shapes, dtype `dtype`; a 1-tuple without
        `others`.

    Raises
    ------
    ConfigError
        If `method` or `dtype` is not one of the above.
    DataError
        If the training set is empty or the feature counts differ.
    """
    if method not in ("unit", "standard", "none"):
        raise ConfigError(f"scale method must be 'unit', 'standard' or 'none'; got {method!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ConfigError(f"scale dtype must be a floating dtype; got {dtype}")
    arrays = [np.asarray(X) for X in (X_train, *others)]
    for i, X in enumerate(arrays[1:], start=1):
        if X.shape[1:] != arrays[0].shape[1:]:
            raise DataError(
                f"array {i} to scale has shape {X.shape}; the training set has {arrays[0].shape}"
            )
    offset, factor = scaling_stats(arrays[0], method)
    return tuple(apply_scaling(X, offset, factor, dtype) for X in arrays)


def apply_scaling(X, offset, factor, dtype=np.float32) -> np.ndarray:
    """``(X - offset) / factor`` in ``dtype``, with statistics from :func:`scaling_stats`."""
    dtype = np.dtype(dtype)
    return (np.asarray(X).astype(dtype) - np.asarray(offset, dtype)) / np.asarray(factor, dtype)


def scaling_stats(X, method: str):
    """``(offset, factor)`` from training data such that the scaled data is ``(X - offset) / factor``.

    Kept with a model (in its checkpoint) so new data is scaled exactly like the training set;
    see :func:`scale` for the methods.
    """
    X = np.asarray(X)
    if method == "none":
        return 0.0, 1.0
    if method == "unit" and X.dtype == np.uint8:
        return 0.0, 255.0
    if len(X) == 0:
        raise DataError("cannot compute scaling statistics from an empty training set")
    if method == "unit":
        low, high = X.min(axis=0).astype(np.float64), X.max(axis=0).astype(np.float64)
        return low, np.where(high > low, high - low, 1.0)
    std = X.std(axis=0, dtype=np.float64)
    return X.mean(axis=0, dtype=np.float64), np.where(std > 0, std, 1.0)


def train_val_split(X, y, val_fraction: float, *, seed):
    """Split off a random validation set, keeping each row of X with its label.

    One seeded permutation of row indices picks ``floor(n * val_fraction)`` validation rows;
    both parts keep the original row order.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples,)
    val_fraction : float in [0, 1)
    seed : int
        Seed for `numpy.random.default_rng`; the same seed gives the same split.

    Returns
    -------
    X_train : array of shape (n_samples - n_val, n_features)
    y_train : array of shape (n_samples - n_val,)
    X_val : array of shape (n_val, n_features)
    y_val : array of shape (n_val,)

    Raises
    ------
    ConfigError
        If `val_fraction` is outside [0, 1).
    DataError
        If X and y have different numbers of rows.
    """
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise ConfigError(f"validation fraction must be in [0, 1); got {val_fraction!r}")
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} rows but y has {len(y)} labels")
    n_val = int(len(X) * val_fraction)
    order = np.random.default_rng(seed).permutation(len(X))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return X[train], y[train], X[val], y[val]
