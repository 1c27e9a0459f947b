"""Host-side data loading: IDX files, the built-in datasets, user arrays, and preprocessing.

Everything here is NumPy on the host; the training code moves arrays to the device. Every problem
a user can cause raises `DataError` (or `ConfigError` for a bad option) with one line saying what
is wrong and where.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..files import write_atomic
from .idx import read_idx
from .inputs import check_labels, check_rows

log = logging.getLogger(__name__)

# The four files of each built-in dataset, in the order (train X, train y, test X, test y).
FILENAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
N_CLASSES = {"mnist": 10, "fashion-mnist": 10}
CLASS_NAMES = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
}  # fmt: skip

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
    if data_dir is not None:
        return _load_from(name, Path(data_dir))
    places = _search_places(name)
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
        raise unknown_dataset(str(name))
    return canonical


def unknown_dataset(text: str) -> ConfigError | DataError:
    """The error for a dataset that is neither a built-in name nor an existing file: a name-like
    one (no folder, no .npz/.csv) gets the built-in names and the closest one; a path, no such file.
    """
    builtin = ", ".join(N_CLASSES)
    if not looks_like_name(text):
        return DataError(f"no such file: {text} (built-in datasets: {builtin})")
    close = difflib.get_close_matches(text.lower().replace("_", "-"), N_CLASSES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown dataset {text!r}; built-in: {builtin}{hint}")


def looks_like_name(text: str) -> bool:
    """Whether a dataset argument reads as a name, not a path: no folder, no .npz/.csv suffix."""
    return not ("/" in text or os.sep in text or Path(text).suffix.lower() in (".npz", ".csv"))


def _cache_dir(name: str) -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "xpmlp" / name


def _load_from(name: str, data_dir: Path) -> Dataset:
    """An explicit data directory must hold the dataset: no falling back to another copy."""
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    for place in (data_dir, data_dir / name):
        if files := _find_files(place):
            return _load_files(name, files, source=str(place))
    missing = [f for f in FILENAMES if _find_file(data_dir, f) is None]
    hint = (
        f"; or install it with 'apt-get install {APT_PACKAGES[name]}'"
        if name in APT_PACKAGES
        else ""
    )
    raise DataError(
        f"{name} not found in data directory {data_dir}: {', '.join(missing)} missing "
        f"(each gzipped or not; or all four in {data_dir / name}){hint}"
    )


def _search_places(name: str) -> list[Path]:
    places = []
    base = os.environ.get("XPMLP_DATA_DIR") or None
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
    if len(images) == 0 or images[0].size == 0:
        raise DataError(f"{images_path} holds no images (shape {images.shape})")
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
