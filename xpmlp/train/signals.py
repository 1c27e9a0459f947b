"""SIGINT and SIGTERM during training: noted at once, acted on between steps.

A signal that lands in the middle of a checkpoint write, an evaluation or an epoch's bookkeeping
could leave a checkpoint whose weights and epoch number disagree. While :class:`DeferredStop` is
active, the first SIGINT (Ctrl-C) or SIGTERM (``docker stop``, a batch scheduler) only sets a
flag; the trainer raises :class:`Interrupted` at the next step boundary, where its state is one
it can roll back to. A second signal raises at once, for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class DeferredStop:
    """A context in which SIGINT/SIGTERM set :attr:`received` instead of interrupting.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise Interrupted(signum)
        self.received = signum

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal has arrived."""
        if self.received is not None:
            raise Interrupted(self.received)

    def __enter__(self) -> DeferredStop:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
