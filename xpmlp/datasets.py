"""Host-side data loading: IDX files, the built-in datasets, user arrays, and preprocessing.

Everything here is NumPy on the host; the training code moves arrays to the device. Every problem
a user can cause raises `DataError` (or `ConfigError` for a bad option) with one line saying what
is wrong and where.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .files import write_atomic
from .idx import read_idx
from .inputs import check_finite, check_labels, check_rows, first_nonfinite_row

log = logging.getLogger(__name__)

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
    labels = check_labels(labels, n_classes, where=str(labels_path))
    return images.reshape(len(images), -1), labels


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

    def download(out) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(
                f"SHA-256 mismatch for {dest.name} from {url}: expected {sha256},"
                f" got {digest.hexdigest()}; the file was not saved"
            )

    write_atomic(dest, download)


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
    check_rows(X, y, where=str(path))
    check_finite(X, where=str(path))
    return X, check_labels(y, where=str(path))


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
    bad = first_nonfinite_row(X)
    if bad is not None:
        raise DataError(f"features must be finite; found {X[bad]} at line {lines[bad]} of {path}")
    return X, check_labels(table[:, col], locate=lambda i: f"line {lines[i]} of {path}")


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


# --- Splitting -------------------------------------------------------------------------------


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
    check_rows(X, y)
    n_val = int(len(X) * val_fraction)
    order = np.random.default_rng(seed).permutation(len(X))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return X[train], y[train], X[val], y[val]
