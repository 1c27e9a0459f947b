"""The modules' paths before they moved into subpackages, kept working: ``xpmlp.model``,
``from xpmlp.datasets import load_dataset``, ``from xpmlp import checkpoint``.

Each old name is the new module itself (not a copy), entered in ``sys.modules`` when the
package is imported, so ``import xpmlp.model`` and ``xpmlp.model.MLP`` find it.

Imports from: xpmlp.data, xpmlp.core, xpmlp.train.
"""

from __future__ import annotations

import importlib
import sys

OLD_PATHS = {  # old module (under xpmlp) -> where it lives now
    "idx": "data.idx", "datasets": "data.datasets", "userdata": "data.userdata",
    "inputs": "data.inputs",
    "ops": "core.ops", "flat": "core.flat", "rng": "core.rng", "kernels": "core.kernels",
    "model": "core.model", "optim": "core.optim", "gradcheck": "core.gradcheck",
    "config": "train.config", "checkpoint": "train.checkpoint", "runs": "train.runs",
    "training": "train.trainer", "fitting": "train.fitting", "metrics": "train.metrics",
    "diagnostics": "train.health", "reporting": "train.reporting", "signals": "train.signals",
    "distributed": "train.distributed", "prepare": "train.prepare",
}  # fmt: skip


def keep_old_paths(namespace: dict) -> None:
    """Enter every old path in ``sys.modules``; bind the old names the package does not use."""
    package = namespace["__name__"]
    for old, new in OLD_PATHS.items():
        module = importlib.import_module(f"{package}.{new}")
        sys.modules.setdefault(f"{package}.{old}", module)
        # ``xpmlp.gradcheck`` stays the function, as it always was on the package
        namespace.setdefault(old, module)
