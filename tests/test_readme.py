"""The README's commands, run as a new user runs them: in the order written, in one directory.

The main job (``xpmlp train ... --out runs/...``) and then the library example, with one epoch
each instead of ten: they must both succeed and leave two runs side by side, not collide. The
README stays a short front door: its detail lives in docs/, and every link there must resolve.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from optional import need

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(
    str(p.relative_to(ROOT)) for p in [*DOCS.glob("*.md"), ROOT / "docker" / "README.md"]
)
MAX_README_LINES = 150


def _blocks(language: str, page: Path = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def _main_job() -> list[str]:
    """The `xpmlp train` of the README's first command (after its install steps)."""
    command = next(block for block in _blocks("bash") if "xpmlp train" in block)
    train = next(part for part in command.split("&&") if part.strip().startswith("xpmlp train"))
    return shlex.split(train)[1:]


def _library_example(page: Path = README) -> str:
    blocks = _blocks("python", page)
    return next(block for block in blocks if "import xpmlp" in block and "fit(" in block)


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


def test_the_library_page_example_compiles():
    full = _library_example(DOCS / "library.md")
    assert "out=" in full and "gradcheck(" in full
    compile(full, "docs/library.md", "exec")


@pytest.mark.realdata
@pytest.mark.slow
def test_the_library_page_example_runs(tmp_path):
    need("realdata")
    code = _one_epoch(_library_example(DOCS / "library.md"))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 0.7 < float(result.stdout.splitlines()[0]) <= 1.0, result.stdout


# ---- the front door and its pages


def _links(page: Path) -> list[str]:
    """The relative link targets of a markdown page (web addresses left out)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _broken(page: Path) -> list[str]:
    broken = []
    for link in _links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and anchor not in _anchors(target)):
            broken.append(link)
    return broken


def test_the_readme_is_a_short_front_door():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move detail into docs/"


def test_the_readme_links_every_page_in_docs_and_each_link_resolves():
    linked = {link.partition("#")[0] for link in _links(README) if link.startswith("docs/")}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    assert linked == pages, f"README links {sorted(linked)}, docs/ has {sorted(pages)}"
    assert not _broken(README), _broken(README)


@pytest.mark.parametrize("page", PAGES)
def test_links_between_the_pages_resolve(page):
    assert not _broken(ROOT / page), _broken(ROOT / page)


def test_every_module_path_in_the_docs_exists():
    # docs/architecture.md and the other pages name modules by path: after a move they must follow
    root = README.parent
    pages = [README, *sorted((root / "docs").glob("*.md")), root / "benchmarks" / "README.md"]
    for page in pages:
        for path in re.findall(r"`((?:xpmlp|tests|benchmarks)/[\w/]+\.py)`", page.read_text()):
            assert (root / path).is_file(), f"{page.name} names {path}, which does not exist"
    table = (root / "docs" / "architecture.md").read_text()
    for folder, modules in re.findall(r"^\| `(\w+)/` \| (.+) \|$", table, flags=re.M):
        named = set(re.findall(r"`(\w+\.py)`", modules))
        actual = {p.name for p in (root / "xpmlp" / folder).glob("*.py")} - {"__init__.py"}
        assert named == actual, (folder, named ^ actual)
