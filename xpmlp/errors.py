"""Domain errors. The command line turns any of these into one line on stderr and exit status 2.

Imports from: nothing in xpmlp.
"""


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
