"""Shared fixtures: every test that takes ``backend`` runs once per array backend.

As array-api-extra's conftest: the array-api-strict backend lives on a *non-default* device
(``device1``) and with its strictest flags, so an array created without ``device=`` or a
data-dependent shape fails a test instead of slipping through. CuPy runs under the ``gpu``
marker and is skipped where CuPy or a CUDA device is missing; torch is skipped where it is not
installed (CI installs it).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from xpmlp import DeviceError, get_backend


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
    pytest.param("cuda:0", id="cupy", marks=pytest.mark.gpu),
]


def _make_backend(spec: str):
    if spec == "torch":
        pytest.importorskip("torch")
    if spec.startswith("cuda"):
        pytest.importorskip("cupy")
        try:
            return get_backend(spec)
        except DeviceError as exc:
            pytest.skip(f"no CUDA device: {exc}")
    return get_backend(spec)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """An :class:`xpmlp.Backend`: numpy, array-api-strict on device1, torch CPU, cupy."""
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
