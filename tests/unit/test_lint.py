"""ruff, mypy --strict and the import-linter layering contract hold over the whole tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.mark.slow
def test_hack_lint_passes(repo_root: Path) -> None:
    result = subprocess.run(
        [str(repo_root / "hack" / "lint")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
