"""`bakeline run` of a user's model file with no data of the user's: the bake Succeeds, and
everywhere its result is shown (summary, report.json, report.html, the package README) it says
the quality was measured on synthetic inputs and is unverified. The builtin model baked from the
same program with its own evaluation split says which data it was.

The user's file is the digits CNN's program as torch.export.save wrote it in the import stage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeline.checkpoints.manifest import sha256_file

pytestmark = pytest.mark.slow


def _bakeline(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    return subprocess.run(
        [command, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _report(workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return report


def _job(name: str, source: dict[str, Any], workflow: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {"model": {"source": source}, "workflowRef": workflow},
    }


def test_a_user_file_without_data_bakes_and_says_its_quality_is_unverified(
    tmp_path: Path,
) -> None:
    # The digits CNN's program, written by the import stage of a one-stage workflow.
    only_import = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "import-only"},
        "spec": {"stages": [{"name": "import", "agent": "BakingCoordinator"}]},
    }
    export = tmp_path / "export.yaml"
    builtin = _job("digits-export", {"builtin": "digits-cnn"}, "import-only")
    export.write_text(yaml.safe_dump_all([only_import, builtin]))
    done = _bakeline("run", export, "--workdir", tmp_path / "export")
    assert done.returncode == 0, done.stderr[-3000:]
    exported = _report(tmp_path / "export")
    assert exported["result"]["qualityVerified"] is True  # the builtin's own split
    assert exported["result"]["evaluationData"] == "builtin"
    written = Path(exported["stages"][0]["checkpoint"]["path"]) / "original.pt2"
    model = tmp_path / "digits.pt2"
    shutil.copy(written, model)

    # The same program as a user's file, with no data: the full default workflow.
    job = tmp_path / "user.yaml"
    url = {"url": {"url": f"file://{model}", "sha256": sha256_file(model)}}
    job.write_text(yaml.safe_dump(_job("user-digits", url)))
    workdir = tmp_path / "user"
    done = _bakeline("run", job, "--workdir", workdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("quality unverified (synthetic inputs)"), done.stdout

    report = _report(workdir)
    assert report["phase"] == "Succeeded"
    result = report["result"]
    assert result["qualityVerified"] is False and result["evaluationData"] == "synthetic"
    assert result["qualityNote"] == "evaluated on synthetic inputs: quality unverified"
    assert result["quality"]["passed"]  # the gate held, on noise: a success, marked unverified
    page = (workdir / "report.html").read_text()
    assert "Quality unverified (synthetic inputs)" in page

    readme = (Path(result["manifest"]).parent / "README.md").read_text()
    assert "**Quality unverified: evaluated on synthetic inputs.**" in readme
    assert "synthetic inputs only" in readme[readme.index("## Limitations") :]
