"""``xpmlp doctor FILE``: a user's Python file imported and its functions checked, in a child
process (:mod:`xpmlp.doctor.child`) so that their code cannot hang, exit or flood the doctor."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError
from .forward import check_forward
from .gradients import check_gradients
from .reference import OUTPUTS
from .report import Finding, Report

SETTINGS = {  # keyword: (the file's name for it, the default)
    "activation": ("ACTIVATION", "relu"),
    "labels": ("LABELS", "onehot"),
    "output": ("OUTPUT", "softmax"),
    "bias": ("BIAS", True),
    "layout": ("LAYOUT", "rows"),
    "bias_layout": ("BIAS_LAYOUT", "separate"),
    "returns": ("RETURNS", "gradient"),
    "lr": ("LR", 1.0),
}
CALLS = {"grads": "(weights, biases, X, Y)", "forward": "(weights, biases, X)",
         "loss": "(weights, biases, X, Y)"}  # fmt: skip
TIMEOUT_S = 60.0
SHOWN_OUTPUT = 40  # lines of what the user's code printed, shown after the reports
MESSAGE_CHARS = 500  # a finding's message from the child is cut to this
# The doctor's arrays are tiny: one BLAS thread, so that a loaded machine does not slow it 50-fold.
CHILD_ENV = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def check_file(path, *, grads: str | None = None, forward: str | None = None,
               loss: str | None = None, layer_sizes: Sequence[int] | None = None,
               timeout: float = TIMEOUT_S, **settings) -> dict[str, Report]:  # fmt: skip
    """Import a user's Python file and check its ``grads`` and ``forward`` functions (or the
    ones named), with its ``loss`` where it has one. Layer sizes and every setting of
    :func:`~xpmlp.doctor.check_gradients` (activation, labels, output, bias, layout,
    bias_layout, returns, lr) come from the arguments, else the file's ``LAYER_SIZES``,
    ``ACTIVATION``, ``LABELS``, ``OUTPUT``, ``BIAS``, ``LAYOUT``, ``BIAS_LAYOUT``, ``RETURNS``,
    ``LR``. A function that cannot take the doctor's arguments is skipped, and says why.

    The file runs in a child process: one that does not finish within ``timeout`` seconds,
    dies, or raises outside the calls the doctor checks is a :class:`~xpmlp.errors.ConfigError`
    naming the function; ``sys.exit`` inside a checked function is a finding; what the file
    prints is shown first, cut to its first lines. Returns name -> report."""
    request = {"path": str(path), "layer_sizes": None if layer_sizes is None else list(layer_sizes),
               "names": {"grads": grads, "forward": forward, "loss": loss}, "settings": settings}  # fmt: skip
    messages, returncode = _run_child(request, timeout)
    outcome = next((m for m in messages if "reports" in m or "error" in m), None)
    if outcome is None:
        running = [m["running"] for m in messages if "running" in m]
        doing = (running[-1] if running else None) or f"checking {path}"
        raise ConfigError(_unfinished(doing, timeout, returncode))
    _show_printed(outcome["printed"], outcome["printed_chars"])
    if "error" in outcome:
        raise ConfigError(outcome["error"])
    return {name: _report(fields) for name, fields in outcome["reports"].items()}


def _run_child(request: dict, timeout: float) -> tuple[list[dict], int | None]:
    """The child's messages (JSON lines) and its exit status, None when it was still running
    after ``timeout`` seconds (it is killed then, with any process it started)."""
    package_root = str(Path(__file__).resolve().parents[2])
    code = f"import sys; sys.path.insert(0, {package_root!r}); from xpmlp.doctor.child import main; main()"  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env={**os.environ, **CHILD_ENV},
                             start_new_session=hasattr(os, "killpg"))  # fmt: skip
    timed_out = False
    try:
        out, _ = child.communicate(json.dumps(request).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(child)
        out, _ = child.communicate()
    finally:
        _kill(child)  # also on Ctrl-C: in its own session, the child missed the terminal's signal
    return _messages(out), None if timed_out else child.returncode


def _messages(out: bytes) -> list[dict]:
    """The child's JSON lines; a last one cut short by a kill is left out."""
    messages = []
    for line in out.decode(errors="replace").splitlines():
        try:
            messages.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return messages


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        if hasattr(os, "killpg"):
            os.killpg(child.pid, signal.SIGKILL)
        else:
            child.kill()
        child.wait()


def _unfinished(doing: str, timeout: float, returncode: int | None) -> str:
    """Why the child gave no outcome: still running at the timeout, or ended by the user's code."""
    if returncode is None:
        return (f"{doing} did not return within {timeout:g} s; look for a loop that never ends, "
                "or allow more time with --timeout SECONDS")  # fmt: skip
    how = (f"was killed by signal {-returncode} ({signal.strsignal(-returncode)})"
           if returncode < 0 else f"ended the process with exit status {returncode}")  # fmt: skip
    return f"{doing} {how} before the doctor finished; return a result instead"


def _report(fields: dict) -> Report:
    findings = [Finding(**{**f, "message": _cut(f["message"])}) for f in fields.pop("findings")]
    return Report(findings=findings, **fields)


def _cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"


def _show_printed(printed: str, total: int) -> None:
    """What the user's code printed, cut to its first lines (it would have gone to stdout)."""
    lines = printed.splitlines()
    if lines:
        print("\n".join(line[:200] for line in lines[:SHOWN_OUTPUT]))
    if len(lines) > SHOWN_OUTPUT or total > len(printed):
        print(f"(your code printed {total:,} characters; the first lines are shown above)")


def import_user_file(path):
    spec = importlib.util.spec_from_file_location("xpmlp_doctor_patient", path)
    if spec is None or not str(path).endswith(".py"):
        raise ConfigError(f"{path} is not a Python file")
    if Path(path).exists() and not Path(path).is_file():
        raise ConfigError(f"{path} is not a regular file; pass your network's .py file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except Exception as exc:  # their code: one line about it
        raise ConfigError(
            f"importing {path} raised {type(exc).__name__}: {_cut(str(exc))}"
        ) from None
    sys.modules.pop("xpmlp_doctor_patient", None)
    return module


def check_module(module, path, *, names: dict, layer_sizes: Sequence[int] | None = None,
                 watched: Callable = lambda name, function: function, **settings) -> dict[str, Report]:  # fmt: skip
    """:func:`check_file`'s checks, here, on an imported ``module``; ``watched(name, function)``
    wraps each of the user's functions before it is called."""
    layer_sizes = layer_sizes or getattr(module, "LAYER_SIZES", None)
    if not layer_sizes:
        raise ConfigError(f"{path} has no LAYER_SIZES; pass --layer-sizes, e.g. 784,300,10")
    chosen = {key: settings.get(key) if settings.get(key) is not None
              else getattr(module, name, default) for key, (name, default) in SETTINGS.items()}  # fmt: skip
    found = {kind: (name, watched(name, function))
             for kind, (name, function) in _functions(module, path, names).items()}  # fmt: skip
    if "grads" not in found and "forward" not in found:
        raise ConfigError(f"{path} defines neither grads nor forward; name yours with --grads "
                          "NAME or --forward NAME")  # fmt: skip
    reports = {}
    user_loss = found.get("loss", (None, None))[1]
    if "grads" in found:
        name, function = found["grads"]
        reports[name] = _skipped(function, name, "grads") or check_gradients(
            function, layer_sizes, loss=user_loss or _loss_name(chosen["output"]), **chosen
        )
    if "forward" in found:
        name, function = found["forward"]
        forward_settings = {k: chosen[k] for k in ("activation", "output", "bias", "layout",
                                                   "bias_layout")}  # fmt: skip
        reports[name] = _skipped(function, name, "forward") or check_forward(
            function, layer_sizes, **forward_settings
        )
    return reports


def _functions(module, path, names: dict) -> dict:
    found = {}
    for kind, name in names.items():
        function = getattr(module, name or kind, None)
        if name and not callable(function):
            raise ConfigError(f"{path} has no function {name}")
        if callable(function):
            found[kind] = (name or kind, function)
    return found


def _skipped(function, name: str, kind: str) -> Report | None:
    """A report saying why, where ``function`` cannot be called as the doctor calls it."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None  # no signature to read (a builtin): call it and see
    try:
        signature.bind(*range(CALLS[kind].count(",") + 1))
    except TypeError:
        return Report(skipped=f"{name}{signature} does not take {CALLS[kind]}, which the doctor "
                      f"passes; name the right function with --{kind} NAME")  # fmt: skip
    return None


def _loss_name(output: str) -> str:
    return OUTPUTS.get(output, "cross_entropy")
