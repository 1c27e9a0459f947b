"""``xpmlp doctor FILE``: a user's Python file imported, and its functions checked."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from ..errors import ConfigError
from .forward import check_forward
from .gradients import check_gradients
from .report import Report


def check_file(path, *, grads: str | None = None, forward: str | None = None,
               layer_sizes: Sequence[int] | None = None, activation: str | None = None,
               labels: str | None = None, returns: str = "gradient") -> dict[str, Report]:  # fmt: skip
    """Import a user's Python file and check its ``grads`` and ``forward`` functions (or the
    ones named); layer sizes, activation and label format come from the arguments or the
    file's ``LAYER_SIZES``, ``ACTIVATION`` and ``LABELS``. Returns name -> report."""
    module = _import_user_file(path)
    layer_sizes = layer_sizes or getattr(module, "LAYER_SIZES", None)
    if not layer_sizes:
        raise ConfigError(f"{path} has no LAYER_SIZES; pass --layer-sizes, e.g. 784,300,10")
    activation = activation or getattr(module, "ACTIVATION", "relu")
    labels = labels or getattr(module, "LABELS", "onehot")
    found = {}
    for kind, name in (("grads", grads), ("forward", forward)):
        function = getattr(module, name or kind, None)
        if name and not callable(function):
            raise ConfigError(f"{path} has no function {name}")
        if callable(function):
            found[kind] = (name or kind, function)
    if not found:
        raise ConfigError(f"{path} defines neither grads nor forward; name yours with --grads "
                          "NAME or --forward NAME")  # fmt: skip
    reports = {}
    if "grads" in found:
        name, function = found["grads"]
        reports[name] = check_gradients(function, layer_sizes, activation=activation,
                                        labels=labels, returns=returns)  # fmt: skip
    if "forward" in found:
        name, function = found["forward"]
        reports[name] = check_forward(function, layer_sizes, activation=activation)
    return reports


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
