"""Test tolerances: bit-level on the CPU, a few ulps more on a real GPU."""

from __future__ import annotations


def real_gpu(backend) -> bool:
    """Whether ``backend`` computes on a real GPU (not the NumPy-based stand-in)."""
    import sys

    if backend.name == "torch":
        return backend.is_gpu
    return backend.name == "cupy" and "standin" not in sys.modules["cupy"].__version__


def rtol_for(backend, rtol: float) -> float:
    """A tolerance that is bit-level on the CPU stays tight there; on a GPU, cuBLAS (another
    summation order) and CUDA's math library (exp, tanh, sqrt within an ulp or two) differ from
    NumPy's by a few ulps per operation: 1e-11 relative in float64."""
    return max(rtol, 1e-11) if real_gpu(backend) else rtol


def runs_cuda_source(backend) -> bool:
    """Whether xpmlp's fused kernels run their CUDA source (CUDA's math and its summation
    order): on a real GPU, and on the stand-in with
    ``XPMLP_STANDIN_KERNELS=emulated`` (tests/cuda_emulator); the twins run elsewhere."""
    import os

    if real_gpu(backend):
        return True
    emulated = os.environ.get("XPMLP_STANDIN_KERNELS") == "emulated"
    return backend.name == "cupy" and emulated


def twins_run(backend) -> bool:
    """Whether ``backend``'s fused kernels are their NumPy twins (NumPy itself, or the CuPy
    stand-in in its default mode): then a fused computation is the CPU's bit for bit. On a GPU,
    or where the stand-in runs the CUDA source (:func:`runs_cuda_source`), tanh, exp and log come
    from CUDA's math library and reductions add in another order (:func:`fused_tolerance`)."""
    return backend.name in ("numpy", "cupy") and not runs_cuda_source(backend)


def fused_tolerance(exact: bool, dtype) -> dict:
    """``assert_allclose`` keywords for a fused computation against the CPU's: none when ``exact``
    (the twins ran); else a few ulps per operation over a short training: rtol 1e-5 and atol
    1e-6 in float32, 1e-12 and 1e-14 in float64."""
    import numpy as np

    if exact:
        return {"rtol": 0, "atol": 0}
    return (
        {"rtol": 1e-5, "atol": 1e-6}
        if np.dtype(dtype) == np.float32
        else {"rtol": 1e-12, "atol": 1e-14}
    )
