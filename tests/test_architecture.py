"""Dependencies point one way: backend -> ops -> model -> optim -> config/runs -> training -> cli.

Parses the package's imports; a module may import only modules of a lower layer, and only the
backend module may name CuPy, torch or array-api-strict.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xpmlp"

LAYERS = {
    "errors": 0, "_version": 0, "files": 0,
    "backend": 1, "idx": 1, "signals": 1, "checkpoint": 1, "reporting": 1,
    "inputs": 2, "ops": 2, "rng": 2, "flat": 2,
    "kernels": 3, "datasets": 3, "userdata": 3,
    "model": 4,
    "optim": 5, "fitdata": 5, "gradcheck": 5, "metrics": 5, "diagnostics": 5, "doctor": 5,
    "config": 6, "runs": 6, "distributed": 6,
    "training": 7,
    "fitting": 8, "prepare": 8, "sklearn_arrays": 8,
    "cli": 9, "__init__": 9, "sklearn_labels": 9, "sklearn": 10, "__main__": 11,
}  # fmt: skip
DEVICE_LIBRARIES = {"cupy", "torch", "array_api_strict"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(xpmlp modules imported, top-level external modules imported) by one file."""
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            names = [node.module] if node.module else [alias.name for alias in node.names]
            internal.update(name.split(".")[0] for name in names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root == "xpmlp":
                internal.add(node.module.split(".")[1] if "." in node.module else "__init__")
            else:
                external.add(root)
        elif isinstance(node, ast.Import):
            external.update(alias.name.split(".")[0] for alias in node.names)
    return internal, external


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(LAYERS), "add new modules to LAYERS in tests/test_architecture.py"


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_point_down_the_layers(module):
    internal, external = _imports(PACKAGE / f"{module}.py")
    upward = {
        name for name in internal if LAYERS.get(name, 99) >= LAYERS[module] and name != module
    }
    assert not upward, f"{module} (layer {LAYERS[module]}) imports {upward} from its layer or above"
    if module != "backend":
        assert not external & DEVICE_LIBRARIES, f"{module} imports {external & DEVICE_LIBRARIES}"


def _private_uses(path: Path) -> set[str]:
    """``_names`` this file takes from other xpmlp modules (imported, or as ``module._name``)."""
    tree = ast.parse(path.read_text())
    modules, found = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("xpmlp")
        ):
            for alias in node.names:
                if alias.name.startswith("_") and alias.name != "__version__":
                    found.add(f"{node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.add(f"{node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_no_module_uses_another_modules_private_names(module):
    assert not _private_uses(PACKAGE / f"{module}.py")


def test_private_use_is_detected(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from . import model\nfrom .ops import _relu\nmodel._check(1)\n")
    assert _private_uses(probe) == {"ops._relu", "model._check"}


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_modules_stay_small(module):
    lines = len((PACKAGE / f"{module}.py").read_text().splitlines())
    assert lines <= 500, f"{module}.py has {lines} lines; split it by concept"
