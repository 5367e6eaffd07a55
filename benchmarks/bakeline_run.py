"""`bakeline run` as the bake benchmarks call it: a job file baked in a subprocess, as a user runs
it, and the report it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def bake(job: Path, workdir: Path, *options: str) -> float:
    """`bakeline run JOB --workdir WORKDIR [options]`; its wall seconds. RuntimeError with the
    end of its stderr when it exits non-zero."""
    started = time.monotonic()
    command = [sys.executable, "-m", "bakeline.cli.main", "run", str(job)]
    done = subprocess.run(
        [*command, "--workdir", str(workdir), *options],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bakeline run exited {done.returncode}: {done.stderr[-2000:]}")
    return time.monotonic() - started


def report(workdir: Path) -> dict[str, Any]:
    """The report.json a run left in `workdir`."""
    found: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return found
