"""Files written safely: atomically (a crash leaves the old file or the new one, never half), and,
inside a directory held open, by name relative to it with no symbolic link followed.

Imports from: nothing in xpmlp.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def write_atomic(path, write: Callable, *, mode: str = "wb", dir_fd: int | None = None) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    The directory is fsynced too, so the rename itself survives a power loss. With ``dir_fd``,
    ``path`` is a name in that open directory. A symbolic link at ``path`` is replaced, never
    written through; anything else that is not a regular file is refused.
    """
    path = Path(path)
    if dir_fd is not None:
        _write_in(dir_fd, os.fspath(path), write, mode, shown=path)
        return path
    with open_dir(path.parent) as parent:
        _write_in(parent, path.name, write, mode, shown=path)
    return path


def _write_in(dir_fd: int, name: str, write: Callable, mode: str, *, shown: Path) -> None:
    found = kind(dir_fd, name)
    if found not in (None, stat.S_IFREG, stat.S_IFLNK):
        raise FileExistsError(f"refusing to replace {shown}: it is not a regular file")
    tmp = f".tmp-{secrets.token_hex(6)}{Path(name).suffix}"
    # 0o666 under the umask, as open() would make it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        if exc.filename is None and exc.errno is not None:  # name the file being written
            raise type(exc)(exc.errno, exc.strerror, os.fspath(shown)) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def open_in(dir_fd: int, name: str, mode: str = "r"):
    """``open(name, mode)`` in the open directory ``dir_fd``; a symbolic link is refused (ELOOP)."""

    def opener(path, flags):
        return os.open(path, flags | NOFOLLOW, 0o666, dir_fd=dir_fd)

    return open(name, mode, opener=opener)


def open_directory(path, *, dir_fd: int | None = None, follow: bool = True) -> int:
    """A file descriptor of the directory ``path`` (relative to ``dir_fd`` when given);
    ``follow=False`` refuses a symbolic link (ELOOP)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | (0 if follow else NOFOLLOW)
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)


@contextlib.contextmanager
def open_dir(path, *, dir_fd: int | None = None, follow: bool = True) -> Iterator[int]:
    """:func:`open_directory` for the length of a block; ``path`` may be a directory already
    open (an int), which is then left open."""
    if isinstance(path, int):
        yield path
        return
    fd = open_directory(path, dir_fd=dir_fd, follow=follow)
    try:
        yield fd
    finally:
        os.close(fd)


def kind(dir_fd: int, name: str) -> int | None:
    """What ``name`` is in the open directory ``dir_fd`` (``stat.S_IFREG``, ``S_IFDIR``,
    ``S_IFLNK``, ...) without following a link; None when there is nothing."""
    try:
        return stat.S_IFMT(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None
