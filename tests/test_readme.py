"""The README's commands, run as a new user runs them: in the order written, in one directory.

The main job (``xpmlp train ... --out runs/...``) and then the library example, with one epoch
each instead of ten: they must both succeed and leave two runs side by side, not collide.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from optional import need

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _main_job() -> list[str]:
    """The `xpmlp train` of the README's first command (after its install steps)."""
    command = next(block for block in _blocks("bash") if "xpmlp train" in block)
    train = next(part for part in command.split("&&") if part.strip().startswith("xpmlp train"))
    return shlex.split(train)[1:]


def _library_example() -> str:
    return next(block for block in _blocks("python") if "import xpmlp" in block and "fit(" in block)


def _one_epoch(text: str) -> str:
    shorter = re.sub(r"(--epochs[ =]|epochs=)10\b", r"\g<1>1", text)
    assert shorter != text, "the README's commands should train for 10 epochs"
    return shorter


@pytest.mark.realdata
@pytest.mark.slow
def test_the_readme_commands_run_in_order_without_colliding(tmp_path):
    need("realdata")
    cli = [sys.executable, "-m", "xpmlp", *shlex.split(_one_epoch(shlex.join(_main_job())))]
    first = subprocess.run(cli, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    library = subprocess.run([sys.executable, "-c", _one_epoch(_library_example())], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert library.returncode == 0, library.stderr
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2, runs
    for run in runs:
        assert (tmp_path / "runs" / run / "metrics.jsonl").read_text().count("\n") == 1, run
    accuracy = float(library.stdout.splitlines()[0])
    assert 0.7 < accuracy <= 1.0, library.stdout


def test_the_readme_shows_both_commands():
    assert _main_job()[:1] == ["train"] and "--out" in _main_job()
    assert "out=" in _library_example()
