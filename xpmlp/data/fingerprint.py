"""What a run was trained on, in a few bytes: the shape and dtype of each array and a SHA-256 of
their contents. A run records it (config.json and every checkpoint); resuming on other data is
refused unless the user accepts it, and the processes of an MPI job compare theirs at start.

The hash is of the loaded arrays, not of the files: the same data re-gzipped, or read from
another mirror, is the same data. Hashing runs once per run, on the host, at about 1 GB/s.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..backend import to_numpy
from ..errors import DataError

SHOWN = 12  # hex digits of the hash a message shows


def fingerprint(arrays: dict) -> dict:
    """The fingerprint of named arrays (None values are skipped), as JSON.

    Parameters
    ----------
    arrays : dict of str to array or None
        e.g. ``{"X": X_train, "y": y_train, "X_test": None}``; arrays of any backend are
        copied to the host once.

    Returns
    -------
    dict
        ``{"arrays": {name: {"shape": [...], "dtype": "float32"}}, "sha256": hex}``.
    """
    digest, described = hashlib.sha256(), {}
    for name, array in arrays.items():
        if array is None:
            continue
        host = np.ascontiguousarray(to_numpy(array))
        if host.dtype.kind == "O":  # labels given as Python objects: hashed as their text
            host = host.astype(str)
        described[name] = {"shape": list(host.shape), "dtype": host.dtype.str}
        digest.update(f"{name}:{host.dtype.str}:{host.shape};".encode())
        digest.update(host.view(np.uint8).reshape(-1))
    return {"arrays": described, "sha256": digest.hexdigest()}


def check_unchanged(saved, now: dict, *, what: str, accept: bool = False) -> None:
    """Refuse to resume a run on data other than its own, unless ``accept``.

    ``saved`` is the run's recorded fingerprint; None (a run made before fingerprints were
    recorded) is accepted as before. ``what`` names the data: ``the data in train.npz``.

    Raises
    ------
    DataError
        ``the data in train.npz changed since the run started (...); resume with the data it
        was trained on, or pass --accept-changed-data ...``
    """
    if accept or not isinstance(saved, dict) or saved.get("sha256") == now["sha256"]:
        return
    raise DataError(
        f"{what} changed since the run started ({_what_changed(saved, now)}); "
        "resume with the data it was trained on, or pass --accept-changed-data "
        "(accept_changed_data=True) to continue on the new data"
    )


def _what_changed(saved: dict, now: dict) -> str:
    before, after = saved.get("arrays"), now["arrays"]
    for name in sorted(after.keys() | (before or {}).keys()):
        old, new = (before or {}).get(name), after.get(name)
        if isinstance(before, dict) and old != new:
            return f"{name} was {_shape(old)} and is now {_shape(new)}"
    return f"fingerprint {str(saved.get('sha256'))[:SHOWN]}, now {now['sha256'][:SHOWN]}"


def _shape(described) -> str:
    if not isinstance(described, dict):
        return "absent"
    shape = "x".join(map(str, described.get("shape") or ()))
    try:
        dtype = np.dtype(str(described.get("dtype"))).name
    except TypeError:
        dtype = "of an unknown dtype"
    return f"{shape} {dtype}"
