"""Shared fixtures: every test that takes ``backend`` runs once per array backend.

As array-api-extra's conftest: the array-api-strict backend lives on a *non-default* device
(``device1``) and with its strictest flags, so an array created without ``device=`` or a
data-dependent shape fails a test instead of slipping through. The CuPy stand-in
(``tests/cupy_standin.py``: NumPy underneath, no implicit host conversion, two fake devices,
counted launches, copies and syncs) runs everywhere, on its device 0 and on its device 1; real
CuPy runs under the ``gpu`` marker and is skipped where there is no CUDA device; torch is skipped
where it is not installed (CI installs it).
"""

from __future__ import annotations

import contextlib
import os

# SciPy reads this once, at import, and scikit-learn's array-API conformance checks skip without
# it: set before anything imports SciPy, so that those checks run (tests/test_sklearn.py).
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from optional import missing, need

from xpmlp import DeviceError, get_backend


def pytest_terminal_summary(terminalreporter):
    """One line per reason a test was skipped, with how to enable it (tests/optional.py)."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith("needs "):  # "needs torch: how (detail)": one line per component
            reason = reason.split(" (", 1)[0]
        counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return
    terminalreporter.section("skipped, and how to run them")
    for reason, count in sorted(counts.items(), key=lambda item: -item[1]):
        what = reason.replace("needs ", "need " if count > 1 else "needs ", 1)
        terminalreporter.write_line(f"{count} {what}")


def pytest_configure(config):
    # Hypothesis writes a patch for a failing example with libcst, whose import of
    # mypy_extensions warns; with warnings as errors that hides the failure behind an
    # INTERNALERROR.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )


settings.register_profile(
    "xpmlp",
    max_examples=20,
    deadline=None,
    database=None,  # no .hypothesis folder in the working tree; the seed is derandomized
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("xpmlp")

BACKENDS = [
    pytest.param("cpu", id="numpy"),
    pytest.param("array-api-strict:device1", id="array_api_strict"),
    pytest.param("torch", id="torch"),
    pytest.param("standin:cuda:0", id="cupy_standin"),
    pytest.param("standin:cuda:1", id="cupy_standin_device1"),
    pytest.param("cuda:0", id="cupy", marks=pytest.mark.gpu),
]


CALLER_SETS_DEVICE = {"test_ops", "test_optim"}


@contextlib.contextmanager
def _nothing():
    yield


@pytest.fixture
def cupy_standin():
    """The CuPy stand-in (tests/cupy_standin.py) as ``cupy`` in ``sys.modules``; yields its
    counters (kernel launches, host-to-device and device-to-host copies, host syncs)."""
    import cupy_standin as standin

    with standin.installed() as counters:
        yield counters


def _make_backend(spec: str):
    if spec == "torch":
        need("torch")
    if spec.startswith("cuda"):
        need("cupy")
        try:
            return get_backend(spec)
        except DeviceError as exc:
            missing("gpu", str(exc))
    return get_backend(spec)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """An :class:`xpmlp.Backend`: numpy, array-api-strict on device1, torch CPU, the CuPy stand-in
    on its devices 0 and 1, and real CuPy where there is a GPU."""
    if request.param.startswith("standin:"):
        request.getfixturevalue("cupy_standin")
        backend = get_backend(request.param.removeprefix("standin:"))
        # ops and optimizers run on the current device, as CuPy's own functions do: their tests
        # make it current, as the model and the trainer do (which every other test checks).
        with backend.activate() if request.module.__name__ in CALLER_SETS_DEVICE else _nothing():
            yield backend
        return
    backend = _make_backend(request.param)
    if backend.name != "array_api_strict":
        yield backend
        return
    import array_api_strict

    with array_api_strict.ArrayAPIStrictFlags(boolean_indexing=False, data_dependent_shapes=False):
        yield backend


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    return request.param


@pytest.fixture
def make_problem():
    """A factory for a small seeded dataset: ``make_problem(n, n_in, n_out, loss, seed=0)``.

    Returns host arrays ``(X, y)``: integer labels for cross-entropy, float64 targets for mse.
    The classes are separable by a linear rule, so training can reach high accuracy.
    """

    def make(n=24, n_in=3, n_out=2, loss="cross_entropy", *, seed=0):
        generator = np.random.default_rng(seed)
        X = generator.normal(size=(n, n_in))
        projection = generator.normal(size=(n_in, n_out))
        scores = X @ projection
        if loss == "cross_entropy":
            return X, np.argmax(scores, axis=1).astype(np.int64)
        return X, np.tanh(scores) + 0.1 * generator.normal(size=(n, n_out))

    return make
