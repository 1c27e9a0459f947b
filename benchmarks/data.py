"""The benchmark's data: Fashion-MNIST scaled to [0, 1] float32, or a small synthetic stand-in."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from workloads import N_CLASSES, N_INPUTS

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Data:
    """Train and test sets on the host.

    X_train : float32 array of shape (n_train, 784), values in [0, 1]
    y_train : int64 array of shape (n_train,)
    X_test, y_test : the same for the test set
    source : where the data came from (a directory, or ``synthetic``)
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    source: str


def load(data_dir: str | None, *, synthetic: bool = False) -> Data:
    """Fashion-MNIST from ``data_dir`` (through xpmlp.data.datasets when it exists), or synthetic data."""
    if synthetic:
        return synthetic_data()
    try:
        from xpmlp.data.datasets import load_dataset
    except ImportError:  # the package's loader has not landed: read the IDX files here
        return _load_idx(Path(data_dir or DEFAULT_DATA_DIR))
    ds = load_dataset("fashion-mnist", data_dir=data_dir or DEFAULT_DATA_DIR, download=False)
    return Data(
        _unit(ds.X_train),
        ds.y_train.astype(np.int64),
        _unit(ds.X_test),
        ds.y_test.astype(np.int64),
        ds.source,
    )


def synthetic_data(n_train: int = 1024, n_test: int = 256, seed: int = 0) -> Data:
    """Easily learnt random data: each class is a random prototype image plus noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((N_CLASSES, N_INPUTS), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, n_train + n_test)
    noise = rng.random((n_train + n_test, N_INPUTS), dtype=np.float32)
    X = (0.5 * prototypes[y] + 0.5 * noise).astype(np.float32)
    return Data(X[:n_train], y[:n_train], X[n_train:], y[n_train:], "synthetic")


def _unit(X: np.ndarray) -> np.ndarray:
    return np.multiply(X, np.float32(1 / 255), dtype=np.float32)


def _load_idx(directory: Path) -> Data:
    def read(name):
        raw = gzip.decompress((directory / name).read_bytes())
        ndim = raw[3]
        dims = np.frombuffer(raw, ">u4", count=ndim, offset=4)
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)

    def images(name):
        return _unit(read(name).reshape(-1, N_INPUTS))

    return Data(
        images("train-images-idx3-ubyte.gz"),
        read("train-labels-idx1-ubyte.gz").astype(np.int64),
        images("t10k-images-idx3-ubyte.gz"),
        read("t10k-labels-idx1-ubyte.gz").astype(np.int64),
        str(directory),
    )
