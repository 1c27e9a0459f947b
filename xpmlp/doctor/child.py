"""The child process :func:`~xpmlp.doctor.check_file` runs a user's file in.

It reads the request (path, function names, layer sizes, settings) as JSON on stdin and writes
JSON lines to its stdout: ``{"running": "your grads"}`` when a user function is entered and
``{"running": null}`` when it returns (so that a timeout names the function), then one outcome,
``{"reports": ...}`` or ``{"error": ...}``, with the first characters the user's code printed.
The user's code never writes to that stream: ``sys.stdout`` and ``sys.stderr`` keep only their
first :data:`KEPT` characters, and file descriptors 1 and 2 lead to the null device. The child
ends with ``os._exit``, so threads the file started do not keep it alive.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import sys

from ..errors import XpmlpError
from .userfile import check_module, import_user_file

KEPT = 4000


class Kept(io.TextIOBase):
    """A text stream that keeps the first :data:`KEPT` characters written and counts the rest."""

    def __init__(self):
        self.head, self.chars = io.StringIO(), 0

    def write(self, text) -> int:
        text = str(text)
        if self.chars < KEPT:
            self.head.write(text[: KEPT - self.chars])
        self.chars += len(text)
        return len(text)


class ExitInUserCode(Exception):
    """``sys.exit`` in a user's function, turned into an error the doctor reports as any other."""


ExitInUserCode.__name__ = "SystemExit"  # how the report names what their function raised


def main() -> None:
    channel = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    printed = sys.stdout = sys.stderr = Kept()
    request = json.loads(sys.stdin.read())

    def say(message: dict) -> None:
        channel.write(json.dumps(message, default=_plain) + "\n")
        channel.flush()

    try:
        outcome = {"reports": _checked(request, say)}
    except XpmlpError as exc:
        outcome = {"error": str(exc)}
    except BaseException as exc:  # their code, outside the calls the doctor catches (their loss)
        where = _raised_in or f"checking {request['path']}"
        outcome = {"error": f"{where} raised {type(exc).__name__}: {str(exc)[:500]}"}
    say({**outcome, "printed": printed.head.getvalue(), "printed_chars": printed.chars})
    channel.close()
    os._exit(0)


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)  # NumPy scalars in a report


_raised_in = None  # the user's code an exception last left, if none has returned since


def _checked(request: dict, say) -> dict:
    global _raised_in
    path = request["path"]
    _raised_in = f"importing {path}"
    say({"running": _raised_in})
    module = import_user_file(path)
    say({"running": None})
    _raised_in = None

    def watched(name: str, function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            global _raised_in
            _raised_in = f"your {name}"
            say({"running": _raised_in})
            try:
                result = function(*args, **kwargs)
            except SystemExit as exc:
                raise ExitInUserCode(f"sys.exit({exc.code!r}) ends the program; return your "
                                     "result instead") from None  # fmt: skip
            finally:
                say({"running": None})
            _raised_in = None
            return result

        return call

    reports = check_module(module, path, names=request["names"], layer_sizes=request["layer_sizes"],
                           watched=watched, **request["settings"])  # fmt: skip
    return {name: dataclasses.asdict(report) for name, report in reports.items()}


if __name__ == "__main__":
    main()
