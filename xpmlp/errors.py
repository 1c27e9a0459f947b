"""Domain errors. The command line turns any of these into one line on stderr and exit status 2.

Imports from: nothing in xpmlp.
"""

import errno
from pathlib import Path


def install_hint(requirement: str, extra: str) -> str:
    """How to install an optional dependency: by its own name (xpmlp is not on PyPI), or through
    the extra of an xpmlp checkout."""
    return f'pip install "{requirement}" (in an xpmlp checkout: pip install ".[{extra}]")'


def in_words(exc: BaseException) -> str:
    """An error's message in words, for a message that names the file itself: an OSError's
    ``[Errno 28] No space left on device: '.tmp-x1y2'`` becomes ``no space left on device``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc)


FIXES = {
    errno.ENOSPC: "free some space and run the command again",
    errno.EFBIG: "the file grew past its size limit (ulimit -f) or the file system's; raise it, "
    "or write elsewhere",
    errno.EDQUOT: "free some space and run the command again",
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.EROFS: "choose a path on a writable file system",
    errno.EEXIST: "choose another path, or remove what is there",
    errno.ENOENT: "check the path",
}


def os_error_message(exc: OSError) -> str:
    """An OSError in words, naming the file (not a temporary one beside it) and the fix."""
    path = exc.filename
    if path is not None and Path(path).name.startswith(".tmp-"):
        path = Path(path).parent  # a temporary file: the directory it was written in
    message = in_words(exc) if path is None else f"{path}: {in_words(exc)}"
    fix = FIXES.get(exc.errno)
    return f"{message}; {fix}" if fix else message


class XpmlpError(Exception):
    """Base class for every error a user can cause with bad input."""


class ConfigError(XpmlpError, ValueError):
    """A setting (argument, flag, option) has a value xpmlp cannot use."""


class DeviceError(XpmlpError, RuntimeError):
    """The requested device or array backend is not available."""


class GpuUnavailableError(DeviceError):
    """No usable GPU here: ``reason`` names the fault in a few words; the message adds what CUDA
    said (``detail``) and the fix."""

    def __init__(self, reason: str, fix: str, *, detail: str = ""):
        super().__init__(f"{reason} ({detail}); {fix}" if detail else f"{reason}; {fix}")
        self.reason = reason


class DataError(XpmlpError, ValueError):
    """Input data is malformed: wrong shape, labels out of range, NaN, unreadable file."""


class CheckpointError(XpmlpError, ValueError):
    """A checkpoint is missing, corrupt, or does not match the model."""


class NonFiniteError(XpmlpError, FloatingPointError):
    """Training produced a NaN or infinite loss; the message carries the diagnosis."""


class DivergedError(XpmlpError, ArithmeticError):
    """Training loss grew far above its starting value while staying finite."""
