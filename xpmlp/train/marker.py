"""What makes a directory a run, so that nothing else is ever modified as one.

A run directory gets its marker, ``.xpmlp-run`` (JSON holding the run format), first of all,
atomically, when it is made. A run made by an xpmlp from before markers is recognised by what
xpmlp wrote there (its ``config.json``, or else a checkpoint that loads) and gets its marker when
it is resumed or replaced. Anything else is someone's files: refused, and named in words.
"""

from __future__ import annotations

import json
import os
import stat
from enum import Enum
from pathlib import Path

from .._version import __version__
from ..errors import CheckpointError, ConfigError
from ..files import kind, open_dir, open_in, write_atomic
from . import checkpoint

CONFIG, METRICS, CURVES, CHECKPOINTS, LOCK, MARKER = (
    "config.json", "metrics.jsonl", "curves.png", "checkpoints", ".lock", ".xpmlp-run",
)  # fmt: skip
RUN_FORMAT = 1
RUN_ENTRIES = {CONFIG, METRICS, CURVES, CHECKPOINTS, LOCK, MARKER}
RUN_FILES = {CONFIG, METRICS, CURVES, LOCK, MARKER}  # the run's own entries except checkpoints/
SMALL = 1 << 20  # more bytes than a marker or a config.json of xpmlp's ever has


class Found(Enum):
    EMPTY = "empty"  # nothing (or only a temporary file of a writer killed mid-write)
    RUN = "run"  # the marker
    OLD_RUN = "old run"  # no marker, but what an older xpmlp wrote
    FOREIGN = "foreign"


def survey(dir_fd: int, path: Path) -> Found:
    """What the directory ``path``, held open as ``dir_fd``, is."""
    names = {name for name in os.listdir(dir_fd) if not _temporary(dir_fd, name)}
    if not names:
        return Found.EMPTY
    if MARKER in names:
        return Found.RUN if _marker_format(dir_fd, path) is not None else Found.FOREIGN
    if names <= RUN_ENTRIES and _written_by_xpmlp(dir_fd, path, names):
        return Found.OLD_RUN
    return Found.FOREIGN


def write_marker(dir_fd: int) -> None:
    text = json.dumps({"xpmlp_run": RUN_FORMAT, "xpmlp": __version__}) + "\n"
    write_atomic(MARKER, lambda handle: handle.write(text), mode="w", dir_fd=dir_fd)


def not_a_run(path: Path, dir_fd: int) -> ConfigError:
    return ConfigError(
        f"{path} holds files that are not an xpmlp run ({describe(dir_fd)}); "
        "choose another --out (out=)"
    )


def check_entries(dir_fd: int, path: Path) -> None:
    """Refuse a run whose own entries are links (a run unpacked from someone's tarball could point
    its ``.lock`` at any file of the user's) or not what a run makes there."""
    for name in sorted(RUN_ENTRIES):
        found = kind(dir_fd, name)
        expected = stat.S_IFDIR if name == CHECKPOINTS else stat.S_IFREG
        if found == stat.S_IFLNK:
            raise ConfigError(f"{path / name} is a symbolic link; a run's own files cannot be "
                              "links (remove it, or choose another --out)")  # fmt: skip
        if found not in (None, expected):
            what = "a directory" if expected == stat.S_IFDIR else "a regular file"
            raise ConfigError(f"{path / name} is not {what}, as a run's {name} is; remove it, "
                              "or choose another --out")  # fmt: skip


def describe(dir_fd: int, *, shown: int = 5) -> str:
    """What a directory holds, in a few words: ``config.json, checkpoints/model.pt and 3 more``."""
    listed = []
    for name in sorted(os.listdir(dir_fd)):
        inner = _inside(dir_fd, name) if kind(dir_fd, name) == stat.S_IFDIR else None
        listed += [name] if inner is None else [f"{name}/{n}" for n in inner] or [f"{name}/"]
    more = len(listed) - shown
    return ", ".join(listed[:shown]) + (f" and {more} more" if more > 0 else "")


def run_holding(path) -> Path | None:
    """The run directory that holds the file ``path`` (in the run itself or in one of its
    folders, such as ``checkpoints/``), if any."""
    parent = Path(path).absolute().parent.resolve()
    for folder in (parent, parent.parent):
        if (folder / MARKER).is_file():
            return folder
    return None


def _inside(dir_fd: int, name: str) -> list[str] | None:
    try:
        with open_dir(name, dir_fd=dir_fd, follow=False) as inner:
            return sorted(os.listdir(inner))
    except OSError:
        return None


def _temporary(dir_fd: int, name: str) -> bool:
    """A temporary file of xpmlp's (``files.write_atomic``), left by a writer killed mid-write."""
    return name.startswith(".tmp-") and kind(dir_fd, name) == stat.S_IFREG


def _read_json(dir_fd: int, name: str):
    """The JSON in a small regular file ``name``; None when there is no such thing."""
    if kind(dir_fd, name) != stat.S_IFREG:  # a FIFO would hang the reader
        return None
    try:
        with open_in(dir_fd, name, "rb") as handle:
            text = handle.read(SMALL + 1)
        return json.loads(text) if len(text) <= SMALL else None
    except (OSError, ValueError, RecursionError):
        return None


def _marker_format(dir_fd: int, path: Path) -> int | None:
    found = _read_json(dir_fd, MARKER)
    run_format = found.get("xpmlp_run") if isinstance(found, dict) else None
    if not isinstance(run_format, int) or isinstance(run_format, bool):
        return None
    if run_format > RUN_FORMAT:
        raise ConfigError(f"{path} is a run of a newer xpmlp (run format {run_format}; this "
                          f"xpmlp {__version__} knows {RUN_FORMAT}); use that xpmlp")  # fmt: skip
    return run_format


def _written_by_xpmlp(dir_fd: int, path: Path, names: set[str]) -> bool:
    """Whether a directory without a marker is a run of an xpmlp from before markers: its
    config.json is xpmlp's (a config.json of anyone else's is never replaced), or it has none
    and one of its checkpoints loads."""
    if CONFIG in names:
        config = _read_json(dir_fd, CONFIG)
        versions = config.get("versions") if isinstance(config, dict) else None
        return isinstance(versions, dict) and "xpmlp" in versions and "train" in config
    if kind(dir_fd, CHECKPOINTS) != stat.S_IFDIR:
        return False
    with open_dir(CHECKPOINTS, dir_fd=dir_fd, follow=False) as folder:
        found = checkpoint.checkpoints_in(folder)
    for _, name in reversed(found):
        try:
            checkpoint.load(path / CHECKPOINTS / name)
            return True
        except CheckpointError:
            continue
    return False
