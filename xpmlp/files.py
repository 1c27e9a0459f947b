"""Atomic file writes: a crash at any moment leaves the old file or the new one, never half.

Imports from: nothing in xpmlp.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path, write: Callable, *, mode: str = "wb") -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    The directory is fsynced too, so the rename itself survives a power loss.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise FileExistsError(f"refusing to replace {path}: it is not a regular file")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file follows the umask
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
