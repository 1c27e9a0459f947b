"""The package's layers, read from the code: each top-level module and each subpackage of xpmlp
says in its docstring what it may import (``Imports from: xpmlp.errors, xpmlp.backend.``), and
its modules import nothing else from xpmlp. Those declarations must form layers (no cycle), the
modules inside a subpackage must not import each other in a circle, only ``xpmlp.backend`` may
name CuPy, torch or array-api-strict, and no module uses another module's private names.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xpmlp"
DEVICE_LIBRARIES = {"cupy", "torch", "array_api_strict"}
DOOR = {"xpmlp", "xpmlp.__main__", "xpmlp.moved"}  # the package's door may import any layer
MODULES = sorted(PACKAGE.rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer a module belongs to: ``xpmlp.core.model`` -> ``xpmlp.core``; a top-level
    module (``xpmlp.backend``) is its own."""
    return ".".join(module.split(".")[:2])


def _declared(unit: str) -> set[str] | None:
    """What a unit's docstring says it may import; None where the door may import anything."""
    if unit in DOOR:
        return None
    path = PACKAGE / unit.split(".")[1]
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    match = re.search(r"^Imports from: (.+)\.$", doc, flags=re.M)
    assert match, f"{path.name}: the docstring should end with 'Imports from: ...' (its layer)"
    if match[1] == "nothing in xpmlp":
        return set()
    if match[1] == "everything in xpmlp but xpmlp.sklearn":
        return {_unit(_dotted(p)) for p in MODULES} - {unit, "xpmlp.sklearn"} - DOOR
    return {name.strip() for name in match[1].split(",")}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(xpmlp modules imported, top-level external modules imported) by one file, resolved to
    full dotted names (``from ..core import model`` -> ``xpmlp.core.model``)."""
    here = _dotted(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "xpmlp" or module.startswith("xpmlp."):
                names = [f"{module}.{alias.name}" for alias in node.names]
                internal.update(n if _is_module(n) else module for n in names)
            else:
                external.add(module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                (internal if alias.name.startswith("xpmlp") else external).add(alias.name)
    return internal, {name.split(".")[0] for name in external if name}


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


UNITS = sorted({_unit(_dotted(p)) for p in MODULES} - {"xpmlp"})


@pytest.mark.parametrize("unit", sorted(set(UNITS) - DOOR))
def test_every_layer_says_what_it_may_import(unit):
    declared = _declared(unit)
    assert declared is not None
    unknown = declared - set(UNITS)
    assert not unknown, f"{unit} declares {unknown}, which are not modules of xpmlp"


def test_the_declarations_form_layers():
    graph = {unit: _declared(unit) or set() for unit in UNITS if unit not in DOOR}
    order = list(graph_order(graph))
    assert set(order) == set(graph)


def graph_order(graph: dict[str, set[str]]):
    return graphlib.TopologicalSorter(graph).static_order()  # CycleError if any


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _dotted(p) or p.name)
def test_imports_point_down_the_layers(path):
    here = _dotted(path)
    internal, external = _imports(path)
    allowed = _declared(_unit(here))
    if allowed is not None:
        upward = {m for m in internal if _unit(m) != _unit(here) and _unit(m) not in allowed}
        assert not upward, f"{here} imports {upward}; its layer may import only {allowed}"
    if here != "xpmlp.backend":
        assert not external & DEVICE_LIBRARIES, f"{here} imports {external & DEVICE_LIBRARIES}"


@pytest.mark.parametrize("package", [p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()],
                         ids=lambda p: p.name)  # fmt: skip
def test_the_modules_of_a_subpackage_do_not_import_each_other_in_a_circle(package):
    graph = {}
    for path in package.glob("*.py"):
        if path.name == "__init__.py":
            continue  # the door re-exports its modules
        internal, _ = _imports(path)
        prefix = _dotted(package) + "."
        graph[_dotted(path)] = {m for m in internal if m.startswith(prefix) and m != _dotted(path)}
    list(graph_order(graph))


def test_a_layer_violation_is_detected(tmp_path, monkeypatch):
    # The check can fail: a core module that imports from train is caught.
    internal, _ = _imports(PACKAGE / "core" / "model.py")
    assert "xpmlp.data.inputs" in internal
    assert not {m for m in internal if _unit(m) == "xpmlp.train"}
    with pytest.raises(graphlib.CycleError):
        list(graph_order({"a": {"b"}, "b": {"a"}}))


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


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _dotted(p) or p.name)
def test_no_module_uses_another_modules_private_names(path):
    assert not _private_uses(path)


def test_private_use_is_detected(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from . import model\nfrom .ops import _relu\nmodel._check(1)\n")
    assert _private_uses(probe) == {"ops._relu", "model._check"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _dotted(p) or p.name)
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f"{path.name} has {lines} lines; split it by concept"


def test_the_top_level_is_the_ground_and_the_door():
    # A reader who opens xpmlp/ sees the layers as folders: the only top-level modules are the
    # ground (errors, files, backend) and the door.
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", "_version", "moved", "errors", "files", "machine",
                   "backend"}  # fmt: skip
