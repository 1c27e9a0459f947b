"""pyproject.toml's lower bounds are the versions CI's second virtualenv installs (.ci/minimum.txt).

CI runs the suite twice: with today's packages and with the floors. A floor raised or added in
pyproject.toml without the constraints file (or the other way round) would leave one of them
untested, so the two must name the same versions.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")


def _floors() -> dict[str, str]:
    """``name: version`` for every ``name>=version`` of the core and test dependencies."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    floors = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([0-9][0-9.]*)", requirement)
        assert match, f"{requirement!r}: give every dependency a floor (name>=version)"
        floors[match[1].lower()] = match[2]
    return floors


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "minimum.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _release(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def test_ci_installs_every_floor_exactly():
    floors, pins = _floors(), _pins()
    assert set(pins) == set(floors), "pyproject.toml and .ci/minimum.txt name other packages"
    for name, floor in floors.items():
        assert _release(pins[name]) == _release(floor), (name, floor, pins[name])


def test_ci_runs_the_minimum_versions():
    script = (ROOT / ".ci" / "run").read_text()
    assert "PIP_CONSTRAINT=.ci/minimum.txt" in script
    assert script.count("fresh_venv ") >= 2  # today's packages, then the floors
