"""Static checks of the container images: no Docker engine is needed, or used.

The Dockerfiles are parsed here (line continuations, comments, ``ARG`` defaults substituted into
``FROM``) and held to what docs/docker.md promises: pinned base images, a numeric non-root user, the
``xpmlp`` CLI as entrypoint, ``/data`` and ``/out`` volumes, and pip extras that exist in
``pyproject.toml``. hadolint, when on ``PATH``, lints both files.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from optional import need

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "cpu": ROOT / "docker" / "Dockerfile",
    "cuda": ROOT / "docker" / "Dockerfile.cuda",
}
DOCS = [ROOT / "docs" / "docker.md"]
DATA_VOLUME = "/data"
OUT_VOLUME = "/out"


# ---- a small Dockerfile parser ---------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper-cased: FROM, RUN, ...
    args: str  # the rest, continuation lines joined, comment lines dropped
    line: int  # where it starts, 1-based


@dataclass
class Stage:
    base: str  # the image after ARG substitution, or an earlier stage's name
    name: str | None
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults declared in the stage
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]  # ARGs before the first FROM
    stages: list[Stage]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def lineage(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, outermost first."""
        chain = [stage]
        while (parent := self.stage(chain[0].base)) is not None:
            chain.insert(0, parent)
        return chain

    def final(self) -> list[Instruction]:
        """The instructions that shape the final image, its parent stages' included."""
        return [i for s in self.lineage(self.stages[-1]) for i in s.instructions]


def split_instructions(text: str) -> list[Instruction]:
    """Join backslash continuations and drop comment and blank lines, as the Docker parser does."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, where Docker drops comment lines too
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, f"line {start}: continuation runs off the end of the file"
    return instructions


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` whose value is known."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name in values:
            return values[name]
        return match.group(2) if match.group(2) is not None else match.group(0)

    return _VARIABLE.sub(replace, text)


def parse_arg(args: str) -> tuple[str, str | None]:
    """``NAME=default`` as (NAME, default); a bare ``NAME`` has no default (None)."""
    name, eq, default = args.partition("=")
    if not eq:
        return name.strip(), None
    words = shlex.split(default)
    return name.strip(), words[0] if words else ""


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in split_instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), name))
        elif instruction.keyword == "ARG" and not stages:
            name, default = parse_arg(instruction.args)
            if default is not None:
                global_args[name] = default
        elif stages:
            if instruction.keyword == "ARG":
                name, default = parse_arg(instruction.args)
                # A bare `ARG NAME` in a stage brings the global default into scope.
                value = default if default is not None else global_args.get(name)
                if value is not None:
                    stages[-1].args[name] = value
            stages[-1].instructions.append(instruction)
        else:
            raise AssertionError(f"{path}:{instruction.line}: {instruction.keyword} before FROM")
    assert stages, f"{path}: no FROM"
    return Dockerfile(path, global_args, stages)


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.args)
        if "=" not in words[0]:  # legacy `ENV KEY value`
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = substitute(value, env)
    return env


def volumes_of(instructions: list[Instruction]) -> set[str]:
    volumes: set[str] = set()
    for instruction in instructions:
        if instruction.keyword == "VOLUME":
            args = instruction.args
            volumes.update(json.loads(args) if args.startswith("[") else args.split())
    return volumes


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def is_pinned(image: str) -> bool:
    """A digest, or a tag that names an exact release (``3.12.11``, not ``3``/``3.12``/latest)."""
    if "@sha256:" in image:
        return True
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:  # no tag at all; the colon was a registry port
        return False
    return tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag) is not None


def pip_install_extras(dockerfile: Dockerfile) -> list[set[str]]:
    """The extras of each ``pip install ...[a,b]`` in a RUN, with the stage's ARG defaults in.

    Global ARGs count only where a stage redeclares them, as in Docker.
    """
    found = []
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            if instruction.keyword != "RUN":
                continue
            for command in re.split(r"&&|;|\|\|", instruction.args):
                if re.search(r"\bpip\s+install\b", command):
                    for group in re.findall(r"\[([^\]\s]+)\]", substitute(command, stage.args)):
                        found.append({e.strip() for e in group.split(",")})
    return found


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def optional_dependencies() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse_dockerfile(DOCKERFILES[request.param])


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def reincluded() -> set[str]:
    return {p[1:].strip().strip("/") for p in dockerignore_patterns() if p.startswith("!")}


def documented_commands(prefix: str) -> list[str]:
    """Shell commands in the docs' code blocks that start with ``prefix``, continuations joined."""
    commands = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for block in re.findall(r"```(?:bash|sh|console|shell)?\n(.*?)```", text, re.DOTALL):
            for raw in block.splitlines():
                line = raw.strip().removeprefix("$ ")
                if line.startswith(prefix):
                    commands.append(line)
    return commands


def build_args(command: str) -> dict[str, str]:
    words = shlex.split(command)
    pairs = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--build-arg"]
    return dict(pair.split("=", 1) for pair in pairs)


# ---- the parser itself -------------------------------------------------------------------------


def test_parser_joins_continuations_drops_comments_and_substitutes_args(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=python:3.12.11-slim\n"
        "FROM ${BASE} AS build\n"
        "ARG EXTRA=cli\n"
        "RUN pip install \\\n"
        "    # a comment inside the continuation\n"
        '    "x.whl[${EXTRA},more]"\n'
        "FROM build\n"
        "ENV A=1 B=$A/2\n"
        "USER 1:2\n"
    )
    parsed = parse_dockerfile(path)
    assert [s.base for s in parsed.stages] == ["python:3.12.11-slim", "build"]
    assert parsed.stages[0].instructions[1].args == 'pip install "x.whl[${EXTRA},more]"'
    assert pip_install_extras(parsed) == [{"cli", "more"}]
    assert env_of(parsed.final()) == {"A": "1", "B": "1/2"}
    assert last(parsed.final(), "USER").args == "1:2"


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("python:3.12.11-slim-bookworm", True),
        ("nvidia/cuda:12.6.3-runtime-ubuntu24.04", True),
        ("python@sha256:" + "0" * 64, True),
        ("python", False),
        ("python:latest", False),
        ("python:3.12-slim", False),
        ("registry:5000/python", False),
    ],
)
def test_is_pinned(image, pinned):
    assert is_pinned(image) is pinned


# ---- the images --------------------------------------------------------------------------------


def test_every_base_image_is_pinned(dockerfile):
    stage_names = {s.name for s in dockerfile.stages}
    images = [s.base for s in dockerfile.stages if s.base not in stage_names]
    assert images, f"{dockerfile.path}: every FROM names a stage"
    for image in images:
        assert "$" not in image, f"{dockerfile.path}: FROM {image}: ARG without a default"
        assert is_pinned(image), f"{dockerfile.path}: FROM {image} is not pinned to a release"


def test_is_multi_stage_and_builds_the_wheel_from_the_source_tree(dockerfile):
    assert len(dockerfile.stages) >= 2
    runs = " ".join(i.args for s in dockerfile.stages for i in s.instructions if i.keyword == "RUN")
    assert re.search(r"\bpip wheel\b", runs)
    copied = {
        word.strip("/")
        for s in dockerfile.stages
        for i in s.instructions
        if i.keyword == "COPY" and "--from" not in i.args
        for word in i.args.split()[:-1]
    }
    assert {"pyproject.toml", "xpmlp"} <= copied
    final = dockerfile.final()
    assert not any(i.keyword == "COPY" and "--from" not in i.args for i in final), (
        "the final stage should take the built venv from a build stage, not the source tree"
    )


def test_final_user_is_numeric_and_not_root(dockerfile):
    user = last(dockerfile.final(), "USER").args
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"{dockerfile.path}: USER {user} should be a numeric uid:gid"
    assert int(match[1]) != 0 and int(match[2]) != 0, f"{dockerfile.path}: USER {user} is root"


def test_entrypoint_is_the_cli_in_exec_form(dockerfile):
    final = dockerfile.final()
    assert json.loads(last(final, "ENTRYPOINT").args) == ["xpmlp"]
    # Exec form for CMD too: a shell-form CMD would be passed to xpmlp as `/bin/sh -c ...`.
    assert isinstance(json.loads(last(final, "CMD").args), list)


def test_volumes_and_data_dir(dockerfile):
    final = dockerfile.final()
    volumes = volumes_of(final)
    assert {DATA_VOLUME, OUT_VOLUME} <= volumes
    env = env_of(final)
    assert env.get("XPMLP_DATA_DIR") == DATA_VOLUME
    # xpmlp downloads into $XDG_CACHE_HOME/xpmlp/<name>: keep that in the volume as well.
    assert env.get("XDG_CACHE_HOME", "").startswith(DATA_VOLUME + "/")
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert last(final, "WORKDIR").args in volumes, "relative --out paths should land in a volume"


def test_pip_never_keeps_a_cache(dockerfile):
    for stage in dockerfile.stages:
        for instruction in stage.instructions:
            for command in re.split(r"&&|;", instruction.args):
                if instruction.keyword == "RUN" and re.search(r"\bpip (install|wheel)\b", command):
                    assert "--no-cache-dir" in command, f"{dockerfile.path}:{instruction.line}"


def test_installed_extras_exist_in_pyproject(dockerfile, optional_dependencies):
    installs = pip_install_extras(dockerfile)
    assert installs, f"{dockerfile.path}: no `pip install ...[extras]`"
    for extras in installs:
        assert extras <= set(optional_dependencies), f"{dockerfile.path}: unknown extras {extras}"
        assert "cli" in extras, "the CLI's progress bar and plots need the cli extra"


def test_cpu_image_installs_no_cuda_extra():
    extras = set().union(*pip_install_extras(parse_dockerfile(DOCKERFILES["cpu"])))
    assert not {e for e in extras if e.startswith("cuda")}


def cuda_major(image: str) -> str:
    match = re.search(r":(\d+)\.\d+\.\d+", image)
    assert match, f"no CUDA version in {image}"
    return match[1]


def test_cuda_image_defaults_to_cuda12_and_its_base_matches():
    cuda = parse_dockerfile(DOCKERFILES["cuda"])
    defaults = {**cuda.global_args, **{k: v for s in cuda.stages for k, v in s.args.items()}}
    assert defaults["XPMLP_EXTRA"] == "cuda12"
    assert cuda.stages[0].base.startswith("nvidia/cuda:")
    assert cuda_major(cuda.stages[0].base) == "12"
    assert {"cuda12"} < set().union(*pip_install_extras(cuda))


def test_documented_cuda_builds_pair_a_pinned_base_with_an_existing_extra(optional_dependencies):
    cuda = parse_dockerfile(DOCKERFILES["cuda"])
    defaults = {**cuda.global_args, **{k: v for s in cuda.stages for k, v in s.args.items()}}
    builds = [c for c in documented_commands("docker build") if "docker/Dockerfile.cuda" in c]
    assert builds, "docs/docker.md should show how to build the CUDA image"
    documented = set()
    for command in builds:
        args = {**defaults, **build_args(command)}
        extra, base = args["XPMLP_EXTRA"], args["CUDA_BASE"]
        assert extra in optional_dependencies, command
        assert is_pinned(base), command
        assert extra == f"cuda{cuda_major(base)}", f"CUDA base and CuPy extra disagree: {command}"
        documented.add(extra)
    assert {"cuda12", "cuda13"} <= documented


def test_documented_builds_use_the_repository_root_as_context():
    builds = documented_commands("docker build")
    assert any("docker/Dockerfile " in c for c in builds), "no CPU build line in docs/docker.md"
    for command in builds:
        words = shlex.split(command)
        assert words[-1] == ".", command
        assert (ROOT / words[words.index("-f") + 1]).is_file(), command


def test_documented_gpu_runs_ask_for_the_gpu():
    runs = [c for c in documented_commands("docker run") if re.search(r"xpmlp:cuda\S* train", c)]
    assert runs, "docs/docker.md should show a GPU training run"
    for command in runs:
        assert "--gpus all" in command and "--device gpu" in command, command


# ---- the build context -------------------------------------------------------------------------


def test_dockerignore_is_an_allow_list():
    patterns = dockerignore_patterns()
    assert patterns[0] == "*", ".dockerignore should ignore everything first"
    assert {"xpmlp", "pyproject.toml"} <= reincluded()


def test_everything_the_builds_copy_is_in_the_context():
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        readme = tomllib.load(f)["project"]["readme"]
    allowed = reincluded()
    assert readme in allowed, "setuptools reads the readme while building the wheel"
    for path in DOCKERFILES.values():
        for stage in parse_dockerfile(path).stages:
            for instruction in stage.instructions:
                if instruction.keyword == "COPY" and "--from" not in instruction.args:
                    for source in instruction.args.split()[:-1]:
                        assert source.strip("/") in allowed, f"{path}: COPY {source} is ignored"
                        assert (ROOT / source).exists(), f"{path}: COPY {source}: no such path"


def test_hadolint_passes():
    hadolint = need("hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cuda_image_gives_cupy_a_kernel_cache_any_user_can_write():
    # Under `docker run --user`, HOME is / and CuPy's default ~/.cupy/kernel_cache cannot be made.
    cuda = parse_dockerfile(DOCKERFILES["cuda"])
    cache = env_of(cuda.final()).get("CUPY_CACHE_DIR", "")
    assert cache.startswith("/tmp/"), cache


def test_the_cuda_extras_bring_the_cuda_runtime_libraries(optional_dependencies):
    for extra in ("cuda12", "cuda13"):
        assert any("[ctk]" in requirement for requirement in optional_dependencies[extra]), extra
