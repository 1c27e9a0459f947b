"""What the numbers were measured on: processor, BLAS, GPU, library versions, load."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "xpmlp",
    "numpy",
    "array-api-compat",
    "torch",
    "scikit-learn",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "threadpoolctl",
)


ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
            "CUPY_TF32", "NVIDIA_TF32_OVERRIDE", "CUDA_VISIBLE_DEVICES")  # fmt: skip


def describe(device: str) -> dict:
    """A JSON-able description of this machine and software, for ``device`` cpu or gpu."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": _versions(),
        "torch": _torch_info(),
        "blas": _numpy_blas(),  # after torch, so that threadpoolctl sees its libraries too
        "gpu": gpu_name() if device == "gpu" else None,
        "git": _git(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "load_average_at_start": list(os.getloadavg()),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return props["name"].decode()
    except Exception:
        return None


def device_slug(device: str) -> str:
    name = (gpu_name() if device == "gpu" else None) or cpu_model()
    name = re.sub(r"\((r|tm|c)\)", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or device


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _numpy_blas() -> dict:
    blas: dict = {}
    import numpy as np

    try:
        import threadpoolctl

        blas["threadpools"] = [
            {
                k: v
                for k, v in pool.items()
                if k
                in (
                    "user_api",
                    "internal_api",
                    "version",
                    "num_threads",
                    "threading_layer",
                    "architecture",
                    "prefix",
                )
            }
            for pool in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        pass
    try:
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas["numpy_build"] = {
            k: config.get(k) for k in ("name", "version", "openblas configuration")
        }
    except (KeyError, TypeError, ValueError):  # show_config's layout is not a stable API
        pass
    return blas


def _torch_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    info = {
        "version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "parallel_info": torch.__config__.parallel_info().splitlines()[:8],
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return info


def _git_output(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip()


def _git() -> dict | None:
    try:
        commit = _git_output("rev-parse", "HEAD")
        dirty = _git_output("status", "--porcelain", "--", "xpmlp")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit or None, "xpmlp_dirty": bool(dirty)}
