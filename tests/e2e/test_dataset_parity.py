"""One job, one verdict on the user's data (issue 25, "Both paths"): a user's model judged on
the user's dataset gives the same verdict, quality and evidence from `bakeline run` (the
files beside the job) as from the operator, with model and dataset in ConfigMaps in one job
and on a PersistentVolumeClaim in another. The agents are the real ones, in pods the node
harness runs."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from bakeline.checkpoints.manifest import sha256_file
from controlplane import ControlPlane
from support.kube import apply, get, wait_for
from support.node_harness import NodeHarness

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLAIM = "user-data"
# What a verdict is: the same on both paths, to the sample.
EVIDENCE = ("qualityVerified", "qualityNote", "evaluationData", "calibrationSamples",
            "evaluationSamples")  # fmt: skip


class _SmallCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.head(torch.relu(self.conv(image)).flatten(1))
        return result


def _files(folder: Path) -> tuple[Path, Path]:
    """The user's model (an ExportedProgram with a dynamic batch) and dataset (npz, labels)."""
    torch.manual_seed(0)
    model = folder / "cnn.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        _SmallCnn().eval(), (torch.rand(2, 1, 8, 8),), dynamic_shapes={"image": {0: batch}}
    )
    torch.export.save(program, str(model))
    images = np.random.default_rng(0).random((60, 1, 8, 8)).astype(np.float32)
    dataset = folder / "evals.npz"
    np.savez(dataset, image=images, __labels__=np.arange(60) % 10)
    return model, dataset


def _job(name: str, source: dict[str, Any], dataset: str) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": source},
            "workflowRef": "default",
            "laneRef": "express",
            "target": {"device": "cpu", "batchSizes": [1, 16]},
            "quality": {"dataset": dataset, "metric": "cosine", "threshold": 0.9},
        },
    }


def _bakeline_run(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    manifest = folder / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    done = subprocess.run(
        [command, "run", str(manifest), "--workdir", str(folder / "work")],
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((folder / "work" / "report.json").read_text())
    return report


def test_a_users_dataset_gives_one_verdict_from_bakeline_run_a_configmap_and_a_claim(
    cluster: ControlPlane,
    namespace: str,
    node: NodeHarness,
    operator: Any,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    model, dataset = _files(tmp_path)
    digest = sha256_file(model)
    local = _bakeline_run(
        _job("user-cnn", {"url": {"url": f"file://{model}", "sha256": digest}}, "evals.npz"),
        tmp_path,
    )
    assert local["phase"] == "Succeeded", local.get("reason")

    for name in ("lanes.yaml", "workflow-default.yaml"):
        cluster.kubectl("apply", "-n", namespace, "-f", str(repo_root / "examples" / name))
    # As a user would: the files in ConfigMaps (binaryData) ...
    for config_map, path in (("user-model", model), ("user-evals", dataset)):
        binary = {path.name: base64.b64encode(path.read_bytes()).decode()}
        body = {"metadata": {"name": config_map}, "binaryData": binary}
        apply(cluster, {"apiVersion": "v1", "kind": "ConfigMap", **body}, namespace)
    # ... and on a claim, both under folders of their own.
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply(cluster, claim, namespace)
    on_claim = node.pvc_dir(namespace, CLAIM)
    for folder, path in (("models", model), ("data/v1", dataset)):
        (on_claim / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, on_claim / folder / path.name)
    jobs = {
        "cnn-configmap": _job(
            "cnn-configmap",
            {"configMap": {"name": "user-model", "key": model.name}},
            f"configmap/user-evals/{dataset.name}",
        ),
        "cnn-pvc": _job(
            "cnn-pvc",
            {"pvc": {"claimName": CLAIM, "path": f"models/{model.name}"}},
            f"pvc://{CLAIM}/data/v1/{dataset.name}",
        ),
    }
    for job in jobs.values():
        apply(cluster, job, namespace)

    def finished(name: str) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            job = get(cluster, "bj", name, namespace) or {}
            done = (job.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            return job if done else None

        return check

    expected = local["result"]
    for name in jobs:
        job = wait_for(finished(name), 1200, interval=2, what=f"job {name} to finish")
        status = job["status"]
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + operator.log()
        result = status["result"]
        # The verdict and what it was measured on: the same rows of the same file.
        assert {k: result.get(k) for k in EVIDENCE} == {k: expected.get(k) for k in EVIDENCE}
        assert result["qualityVerified"] is True
        assert result["evaluationData"] == "dataset"
        assert (result["calibrationSamples"], result["evaluationSamples"]) == (20, 40)
        quality, local_quality = result["quality"], expected["quality"]
        assert {k: quality[k] for k in ("metric", "threshold", "passed")} == {
            k: local_quality[k] for k in ("metric", "threshold", "passed")
        }
        # The same model on the same rows; the stages may choose differently by timing.
        assert abs(quality["value"] - local_quality["value"]) < 0.02, (quality, local_quality)
        imported = status["stages"][0]
        assert imported["phase"] == "Succeeded", imported
