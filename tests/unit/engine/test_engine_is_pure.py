"""The engine imports no kopf, kubernetes, torch or I/O library: import-linter proves it.

import-linter reads module names from folders, and our folders map onto the `bakeline` namespace
(operator/ -> bakeline, agents/ -> bakeline.agents), so it runs on a symlink tree laid out as the
installed package is (as hack/lint does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _package_tree(repo: Path, root: Path, engine_extra: str | None = None) -> Path:
    package = root / "bakeline"
    package.mkdir(parents=True)
    for entry in (repo / "operator").iterdir():
        if entry.name == "engine" and engine_extra is not None:
            engine = package / "engine"
            engine.mkdir()
            for module in entry.iterdir():
                (engine / module.name).symlink_to(module)
            (engine / "_leak.py").write_text(engine_extra)
        else:
            (package / entry.name).symlink_to(entry)
    (package / "agents").symlink_to(repo / "agents")
    return root


def _lint_imports(repo: Path, tree: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("lint-imports")
    if executable is None:
        pytest.fail("lint-imports is not installed (pip install -e .[dev])")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [executable, "--config", str(repo / ".importlinter"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=repo,
        env=env,
        check=False,
    )


def test_the_layering_contracts_hold(repo_root: Path, tmp_path: Path) -> None:
    result = _lint_imports(repo_root, _package_tree(repo_root, tmp_path / "tree"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "The engine is pure" in result.stdout


def test_an_engine_module_doing_io_breaks_the_contract(repo_root: Path, tmp_path: Path) -> None:
    tree = _package_tree(repo_root, tmp_path / "tree", engine_extra="import subprocess\n")
    result = _lint_imports(repo_root, tree)
    assert result.returncode != 0
    assert "bakeline.engine._leak -> subprocess" in result.stdout
