"""Where a checkpoint is written and read: one ``.npz`` holding arrays and a JSON header.

Layout of the archive (loaded with ``allow_pickle=False``):

``meta``                 uint8 array: UTF-8 JSON with the format version, ``model`` (its
                         config), ``trainer`` (:meth:`Trainer.state_dict`'s meta: epoch, history,
                         training config, optimizer steps, early stopping), ``data`` (where the
                         data came from, when known), ``scaling`` (the scaler's method) and ``rng``
``params/<name>``        model parameters, e.g. ``params/layers.0.weight``
``optimizer/<name>.<slot>``  optimizer moments, e.g. ``optimizer/layers.0.weight.m``
``best/<name>``          best weights so far (early stopping), when kept
``scaling/offset``, ``scaling/factor``  input preprocessing: ``X_scaled = (X - offset) / factor``

The groups ``params``, ``optimizer`` and ``best`` are exactly those of :meth:`Trainer.state_dict`.
Format 1 (xpmlp before the L2 penalty was named ``l2``) still loads, for evaluation and
prediction; resuming it is refused with one line.

Writes are atomic: a temporary file in the same directory, fsync, then rename, so a crash at
any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import numpy as np

from ..data.userdata import MAX_ARRAY_BYTES, read_npz
from ..errors import CheckpointError, DataError
from ..files import open_dir, write_atomic
from . import checkpoint_schema
from .checkpoint_schema import GROUPS

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
_NAME = re.compile(r"^checkpoint-epoch-(\d+)\.npz$")
# The JSON header of a 10,000-epoch run of a 10-layer network is about 20 MB, and nests 6 deep.
MAX_META_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-epoch-{epoch:04d}.npz"


def save(path, *, meta: dict, arrays: dict[str, dict[str, np.ndarray] | None],
         dir_fd: int | None = None) -> Path:  # fmt: skip
    """Atomically write a checkpoint.

    Parameters
    ----------
    path : path-like
        The ``.npz`` file to write (a name in the open directory ``dir_fd`` when given); its
        directory must exist.
    meta : dict
        JSON-serialisable header.
    arrays : dict
        Group name (``params``, ``optimizer``, ``best``, ``scaling``) -> {name: host array};
        a None group is left out.
    """
    path = Path(path)
    flat = {
        "meta": np.frombuffer(json.dumps({"format": FORMAT_VERSION, **meta}).encode(), np.uint8)
    }
    for group, members in arrays.items():
        for name, value in (members or {}).items():
            flat[f"{group}/{name}"] = np.asarray(value)
    return write_atomic(path, lambda handle: np.savez(handle, **flat), dir_fd=dir_fd)


def load(path) -> dict:
    """Read a checkpoint written by :func:`save`, bounded and checked before anything uses it.

    Every member's size is read from its ``.npy`` header and refused beyond
    :data:`MAX_ARRAY_BYTES` (the JSON header beyond :data:`MAX_META_BYTES`, or nested deeper than
    :data:`MAX_JSON_DEPTH`) before it is allocated; then the header and the arrays are checked
    against each other (:func:`xpmlp.train.checkpoint_schema.check`).

    Returns
    -------
    dict
        ``meta`` (the JSON header), ``path``, and one dict of NumPy arrays per group
        (``best`` is None when the checkpoint keeps no best weights).

    Raises
    ------
    CheckpointError
        If the file is missing, not a checkpoint, corrupt, too large, or inconsistent; one line
        naming the file and what is wrong.
    """
    path = resolve(path)
    try:
        _, flat = read_npz(path, max_bytes=_budget)
    except DataError as exc:  # the message names the file and the member
        raise CheckpointError(str(exc)) from None
    if "meta" not in flat:
        raise CheckpointError(f"{path} is not an xpmlp checkpoint (no meta entry)")
    meta = _parse_meta(flat.pop("meta"), path)
    if meta["format"] == 1:
        meta = _upgrade_format_1(meta)
    result: dict = {"meta": meta, "path": path, "best": None}
    result.update({group: {} for group in GROUPS if group != "best"})
    for key, value in flat.items():
        group, _, name = key.partition("/")
        if group not in GROUPS or not name:
            raise CheckpointError(f"{path} holds an array {key!r} that no checkpoint has")
        if group == "best" and result["best"] is None:
            result["best"] = {}
        result[group][name] = value
    checkpoint_schema.check(result)
    return result


def _budget(member: str) -> int:
    return MAX_META_BYTES if member == "meta" else MAX_ARRAY_BYTES


def _parse_meta(entry: np.ndarray, path: Path) -> dict:
    """The JSON header, refused when it is not JSON text, nests too deep, or has no known format."""
    if entry.dtype != np.uint8 or entry.ndim != 1:
        raise CheckpointError(
            f"{path} has a meta entry of {entry.dtype} values, shape {entry.shape}; expected "
            "JSON text (uint8)"
        )
    try:
        meta = json.loads(entry.tobytes().decode())
        depth = json_depth(meta)
    except RecursionError:  # raised by the parser, before any memory runs out
        depth = None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has a corrupt meta entry, not JSON text: {exc}") from None
    if depth is None or depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"{path} has a meta entry nested {depth or 'thousands of'} levels deep; a "
            f"checkpoint's nests at most {MAX_JSON_DEPTH}"
        )
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has a meta entry that is a JSON {type(meta).__name__}, "
                              "not an object")  # fmt: skip
    found = meta.get("format")
    if isinstance(found, bool) or found not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path} has checkpoint format {found!r:.40}; this xpmlp reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}"
        )
    return meta


def json_depth(value) -> int:
    """How deep the lists and dicts of a parsed JSON value nest, counted without recursion."""
    deepest, stack = 0, [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _upgrade_format_1(meta: dict) -> dict:
    """Format 1 named the model's L2 penalty ``weight_decay``; it kept no training config."""
    model = meta.get("model")
    if isinstance(model, dict) and "weight_decay" in model:
        model = {**model, "l2": model["weight_decay"]}
        del model["weight_decay"]
    return {**meta, "model": model}


def resolve(path) -> Path:
    """A checkpoint file itself, or the newest checkpoint in a run directory."""
    path = Path(path)
    if path.is_dir():
        newest = latest(path)
        if newest is None:
            raise CheckpointError(f"no checkpoint found in {path}")
        return newest
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    return path


def latest(directory) -> Path | None:
    """The checkpoint with the highest epoch in ``directory`` (or its ``checkpoints/``)."""
    candidates = []
    for folder in (Path(directory), Path(directory) / "checkpoints"):
        if folder.is_dir():
            candidates += [(epoch, folder / name) for epoch, name in checkpoints_in(folder)]
    return max(candidates)[1] if candidates else None


def checkpoints_in(folder) -> list[tuple[int, str]]:
    """(epoch, file name) of each checkpoint in ``folder`` (a path, or a directory held open),
    oldest first. Only regular files count: a FIFO would hang the reader, a link is not the
    run's own."""
    with os.scandir(folder) as entries:
        return sorted(
            (int(m.group(1)), entry.name)
            for entry in entries
            if (m := _NAME.match(entry.name)) and entry.is_file(follow_symlinks=False)
        )


def prune(directory, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints in ``directory`` (a path, or a directory
    held open; ``keep=0``: all of them), and stale temporaries, by name in that directory: a link
    is removed, never followed."""
    with open_dir(directory, follow=False) as folder:
        with os.scandir(folder) as entries:
            stale = [e.name for e in entries if e.name.startswith(".tmp-") and not e.is_dir()]
        found = checkpoints_in(folder)
        for name in stale + [name for _, name in found[: max(len(found) - keep, 0)]]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=folder)
