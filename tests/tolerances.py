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
    """Whether xpmlp's fused kernels run their CUDA source (CUDA's math, its summation order,
    -ftz=true for float32): on a real GPU, and on the stand-in with
    ``XPMLP_STANDIN_KERNELS=emulated`` (tests/cuda_emulator); the twins run elsewhere."""
    import os

    if real_gpu(backend):
        return True
    emulated = os.environ.get("XPMLP_STANDIN_KERNELS") == "emulated"
    return backend.name == "cupy" and emulated
