"""A gate on accuracy with nothing to measure it against is refused before the bake (issue 25):
where the spec alone shows it (a user's model on synthetic inputs) before any stage runs, and
where only the data shows it (the user's dataset has no labels) at the import stage, exit 2,
with the job failed there: no retry, no later stage, no rollback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from bakeline.checkpoints.manifest import sha256_file

pytestmark = pytest.mark.slow


def _model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    program = torch.export.export(
        module, (torch.rand(2, 1, 4, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = tmp_path / "small.pt2"
    torch.export.save(program, str(path))
    return path


def _run(tmp_path: Path, quality: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    model = _model(tmp_path)
    job = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": "labels"},
        "spec": {
            "model": {"source": {"url": {"url": f"file://{model}", "sha256": sha256_file(model)}}},
            "quality": quality,
        },
    }
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    return subprocess.run(
        [command, "run", str(manifest), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_accuracy_on_synthetic_inputs_is_refused_before_any_stage(tmp_path: Path) -> None:
    done = _run(tmp_path, {"metric": "accuracy", "threshold": 0.9})
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "accuracy needs labelled evaluation data" in said, said
    assert "quality.dataset" in said and "cosine" in said  # what to change
    assert not (tmp_path / "work" / "checkpoints").exists()  # nothing ran


def test_accuracy_on_a_dataset_without_labels_fails_at_import(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {"input": rng.random((12, 1, 4, 4), dtype=np.float32)}
    np.savez(tmp_path / "evals.npz", **arrays)
    done = _run(tmp_path, {"metric": "accuracy", "threshold": 0.9, "dataset": "evals.npz"})
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    report: dict[str, Any] = json.loads((tmp_path / "work" / "report.json").read_text())
    assert report["phase"] == "Failed"
    assert "accuracy needs labelled evaluation data" in report["reason"], report["reason"]
    assert "__labels__" in report["reason"]  # what to change
    imported, *later = report["stages"]
    assert imported["phase"] == "Failed" and imported["attempts"] == 1  # never retried
    assert {stage["phase"] for stage in later} == {"Pending"}  # nothing baked, nothing rolled back
