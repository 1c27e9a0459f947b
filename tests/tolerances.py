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
