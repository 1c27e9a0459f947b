"""``xpmlp doctor FILE``: a user's Python file imported, and its functions checked."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Sequence

from ..errors import ConfigError
from .forward import check_forward
from .gradients import check_gradients
from .reference import OUTPUTS
from .report import Report

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


def check_file(path, *, grads: str | None = None, forward: str | None = None,
               loss: str | None = None, layer_sizes: Sequence[int] | None = None,
               **settings) -> dict[str, Report]:  # fmt: skip
    """Import a user's Python file and check its ``grads`` and ``forward`` functions (or the
    ones named), with its ``loss`` where it has one. Layer sizes and every setting of
    :func:`~xpmlp.doctor.check_gradients` (activation, labels, output, bias, layout,
    bias_layout, returns, lr) come from the arguments, else the file's ``LAYER_SIZES``,
    ``ACTIVATION``, ``LABELS``, ``OUTPUT``, ``BIAS``, ``LAYOUT``, ``BIAS_LAYOUT``, ``RETURNS``,
    ``LR``. A function that cannot take the doctor's arguments is skipped, and says why.
    Returns name -> report."""
    module = _import_user_file(path)
    layer_sizes = layer_sizes or getattr(module, "LAYER_SIZES", None)
    if not layer_sizes:
        raise ConfigError(f"{path} has no LAYER_SIZES; pass --layer-sizes, e.g. 784,300,10")
    chosen = {key: settings.get(key) if settings.get(key) is not None
              else getattr(module, name, default) for key, (name, default) in SETTINGS.items()}  # fmt: skip
    found = _functions(module, path, {"grads": grads, "forward": forward, "loss": loss})
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


def _import_user_file(path):
    spec = importlib.util.spec_from_file_location("xpmlp_doctor_patient", path)
    if spec is None or not str(path).endswith(".py"):
        raise ConfigError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except Exception as exc:  # their code: one line about it
        raise ConfigError(f"importing {path} raised {type(exc).__name__}: {exc}") from None
    sys.modules.pop("xpmlp_doctor_patient", None)
    return module
