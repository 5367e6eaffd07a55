"""One job, one verdict on the user's data (issue 25, "Both paths"): a user's model judged on
the user's dataset gives the same verdict, quality and evidence from `bakeline run` (the
files beside the job) as from the operator, with model and dataset in ConfigMaps in one job
and on a PersistentVolumeClaim in another; so does a Hugging Face folder on a claim, and a bake
with no data of the user's says "unverified" in the cluster as `bakeline run` does, and an
image model's folder on a claim judged on a zip of image files in a ConfigMap. The agents are
the real ones, in pods the node harness runs."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from bakeline.checkpoints.manifest import sha256_file, sha256_path
from bakeline.engine.result import UNVERIFIED_NOTE
from controlplane import ControlPlane
from support.kube import apply, get, wait_for
from support.node_harness import NodeHarness
from support.user_models import (
    SmallCnn,
    build_huggingface_folder,
    build_huggingface_image_files,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CLAIM = "user-data"
# What a verdict is: the same on both paths, to the sample.
EVIDENCE = ("qualityVerified", "qualityNote", "evaluationData", "calibrationSamples",
            "evaluationSamples")  # fmt: skip


def _files(folder: Path) -> tuple[Path, Path]:
    """The user's model (an ExportedProgram with a dynamic batch) and dataset (npz, labels)."""
    torch.manual_seed(0)
    model = folder / "cnn.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        SmallCnn().eval(), (torch.rand(2, 1, 8, 8),), dynamic_shapes={"image": {0: batch}}
    )
    torch.export.save(program, str(model))
    images = np.random.default_rng(0).random((60, 1, 8, 8)).astype(np.float32)
    dataset = folder / "evals.npz"
    np.savez(dataset, image=images, __labels__=np.arange(60) % 10)
    return model, dataset


def _job(name: str, source: dict[str, Any], dataset: str, **model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": source, **model},
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


def _claim(cluster: ControlPlane, namespace: str, node: NodeHarness) -> Path:
    """The user's claim (the node harness's folder for it)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply(cluster, claim, namespace)
    return node.pvc_dir(namespace, CLAIM)


def _user_setup(cluster: ControlPlane, namespace: str, repo_root: Path) -> None:
    """The example lanes and default workflow, as the README installs them."""
    for name in ("lanes.yaml", "workflow-default.yaml"):
        cluster.kubectl("apply", "-n", namespace, "-f", str(repo_root / "examples" / name))


def _file_in_config_map(cluster: ControlPlane, namespace: str, name: str, path: Path) -> None:
    """A ConfigMap holding `path` under its file name, as binaryData (as a user would)."""
    binary = {path.name: base64.b64encode(path.read_bytes()).decode()}
    body = {"metadata": {"name": name}, "binaryData": binary}
    apply(cluster, {"apiVersion": "v1", "kind": "ConfigMap", **body}, namespace)


def _finished(cluster: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get(cluster, "bj", name, namespace) or {}
        done = (job.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        return job if done else None

    status: dict[str, Any] = wait_for(check, 1200, interval=2, what=f"job {name} to finish")[
        "status"
    ]
    return status


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

    _user_setup(cluster, namespace, repo_root)
    # As a user would: the files in ConfigMaps (binaryData) ...
    for config_map, path in (("user-model", model), ("user-evals", dataset)):
        _file_in_config_map(cluster, namespace, config_map, path)
    # ... and on a claim, both under folders of their own.
    on_claim = _claim(cluster, namespace, node)
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

    expected = local["result"]
    for name in jobs:
        status = _finished(cluster, namespace, name)
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


def test_hugging_face_folders_on_a_claim_and_a_bake_without_data_mean_the_same_on_both_paths(
    cluster: ControlPlane,
    namespace: str,
    node: NodeHarness,
    operator: Any,
    repo_root: Path,
    tmp_path: Path,
) -> None:
    folder, text = build_huggingface_folder(tmp_path)
    assert text is not None
    model, _ = _files(tmp_path)
    local_folder = {"url": {"url": f"file://{folder}", "sha256": sha256_path(folder)}}
    (tmp_path / "hf").mkdir()
    hf = _bakeline_run(
        _job("tiny-bert", local_folder, text.as_uri(), format="huggingface"), tmp_path / "hf"
    )
    assert hf["phase"] == "Succeeded", hf.get("reason")
    (tmp_path / "synthetic").mkdir()
    local_model = {"url": {"url": f"file://{model}", "sha256": sha256_file(model)}}
    synthetic = _bakeline_run(_job("cnn-no-data", local_model, "builtin"), tmp_path / "synthetic")
    assert synthetic["result"]["qualityVerified"] is False
    (tmp_path / "vit").mkdir()
    vit, pictures = build_huggingface_image_files(tmp_path / "vit")
    assert pictures is not None
    local_vit = {"url": {"url": f"file://{vit}", "sha256": sha256_path(vit)}}
    accurate = {"metric": "accuracy", "threshold": 0.8}
    vit_job = _job("vit-images", local_vit, pictures.as_uri())
    vit_job["spec"]["quality"].update(accurate)
    images = _bakeline_run(vit_job, tmp_path / "vit")
    assert images["phase"] == "Succeeded", images.get("reason")

    _user_setup(cluster, namespace, repo_root)
    on_claim = _claim(cluster, namespace, node)
    shutil.copytree(folder, on_claim / "models" / folder.name)
    (on_claim / "data").mkdir()
    shutil.copy(text, on_claim / "data" / text.name)
    _file_in_config_map(cluster, namespace, "user-model", model)
    shutil.copytree(vit, on_claim / "models" / vit.name)
    _file_in_config_map(cluster, namespace, "user-images", pictures)
    claimed = {"pvc": {"claimName": CLAIM, "path": f"models/{folder.name}"}}
    vit_claimed = {"pvc": {"claimName": CLAIM, "path": f"models/{vit.name}"}}
    vit_job = _job("vit-images", vit_claimed, f"configmap/user-images/{pictures.name}")
    vit_job["spec"]["quality"].update(accurate)
    in_config_map = {"configMap": {"name": "user-model", "key": model.name}}
    jobs = {
        "bert-pvc": (
            _job("bert-pvc", claimed, f"pvc://{CLAIM}/data/{text.name}", format="huggingface"),
            hf,
        ),
        "cnn-no-data": (_job("cnn-no-data", in_config_map, "builtin"), synthetic),
        "vit-images": (vit_job, images),
    }
    for job, _ in jobs.values():
        apply(cluster, job, namespace)
    for name, (_, local) in jobs.items():
        status = _finished(cluster, namespace, name)
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + operator.log()
        result, expected = status["result"], local["result"]
        assert {k: result.get(k) for k in EVIDENCE} == {k: expected.get(k) for k in EVIDENCE}
        assert result["quality"]["passed"] == expected["quality"]["passed"] is True
        assert abs(result["quality"]["value"] - expected["quality"]["value"]) < 0.02
    # The folder's every output, judged on the user's text, as `bakeline run` judged it.
    bert = _finished(cluster, namespace, "bert-pvc")
    assert bert["result"]["evaluationData"] == "dataset" and bert["result"]["qualityVerified"]
    # No data: a success, and the status says what it is worth, as the summary does.
    unverified = _finished(cluster, namespace, "cnn-no-data")
    assert unverified["result"]["qualityNote"] == UNVERIFIED_NOTE
    succeeded = next(c for c in unverified["conditions"] if c["type"] == "Succeeded")
    assert succeeded["message"].endswith(f"; {UNVERIFIED_NOTE}"), succeeded
