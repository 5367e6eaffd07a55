"""quality.dataset resolved by each driver: `bakeline run` hashes a local file into the job
document; a stage pod mounts a ConfigMap key or a claim read-only (issue 25)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from bakeline.runtime import pods
from bakeline.runtime.local import ModelSourceError, job_document, resolve_dataset

JOB: dict[str, Any] = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "BakingJob",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "uid-1"},
}


def test_bakeline_run_resolves_a_dataset_file_with_its_sha256(tmp_path: Path) -> None:
    data = tmp_path / "data" / "evals.npz"
    data.parent.mkdir()
    data.write_bytes(b"npz bytes")
    digest = hashlib.sha256(b"npz bytes").hexdigest()
    expected = f"{data.resolve().as_uri()}#sha256={digest}"
    for given in (data.as_uri(), "file://data/evals.npz", "data/evals.npz"):  # relative: the job's
        resolved = resolve_dataset({"dataset": given, "metric": "cosine"}, tmp_path)
        assert resolved == {"dataset": expected, "metric": "cosine"}, given
    doc = job_document(
        "j", {"source": {"builtin": "digits-cnn"}}, {}, {"dataset": "data/evals.npz"}, tmp_path
    )
    assert doc["quality"]["dataset"] == expected  # in the import stage's cache key: its bytes
    data.write_bytes(b"other bytes")
    assert resolve_dataset({"dataset": "data/evals.npz"}, tmp_path)["dataset"] != expected
    assert resolve_dataset({"dataset": "builtin"}, tmp_path) == {"dataset": "builtin"}
    assert resolve_dataset({}, tmp_path) == {}


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        ("missing.npz", "does not exist"),
        ("configmap/evals/data.npz", "ConfigMap, which the operator mounts"),
        ("pvc://data/evals/data.npz", "PersistentVolumeClaim, which the operator mounts"),
        ("s3://bucket/evals.npz", "not fetched yet"),
    ],
)
def test_bakeline_run_refuses_what_it_cannot_read(tmp_path: Path, dataset: str, match: str) -> None:
    with pytest.raises(ModelSourceError, match=match):
        resolve_dataset({"dataset": dataset}, tmp_path)


def _import_pod(quality: dict[str, Any], input_checkpoint: str | None = None) -> dict[str, Any]:
    return pods.build_stage_pod(
        JOB,
        stage="import",
        agent="BakingCoordinator",
        attempt=1,
        params={},
        job_document={"name": "digits", "model": {"source": {}}, "quality": quality},
        input_checkpoint=input_checkpoint,
        image="bakeline:1",
    )


def _job_env(pod: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    job: dict[str, Any] = json.loads(env["BAKELINE_JOB"])
    return job


def test_a_configmap_key_is_mounted_read_only_into_the_import_pod() -> None:
    document = {"dataset": "configmap/evals/data.npz", "metric": "cosine"}
    pod = _import_pod(document)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "dataset")
    assert volume["configMap"] == {
        "name": "evals",
        "items": [{"key": "data.npz", "path": "data.npz"}],
    }
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "dataset")
    assert mount == {"name": "dataset", "mountPath": pods.DATASET_MOUNT, "readOnly": True}
    assert _job_env(pod)["quality"] == {"dataset": "file:///dataset/data.npz", "metric": "cosine"}
    assert document["dataset"] == "configmap/evals/data.npz"  # the caller's document untouched
    whole = _import_pod({"dataset": "configmap/evals"})
    assert next(v for v in whole["spec"]["volumes"] if v["name"] == "dataset")["configMap"] == {
        "name": "evals"
    }
    assert _job_env(whole)["quality"]["dataset"] == "file:///dataset"


def test_a_file_on_a_claim_is_mounted_read_only_into_the_import_pod() -> None:
    pod = _import_pod({"dataset": "pvc://data/evals/v2/data.npz"})
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "dataset")
    assert volume["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "dataset")
    assert mount == {"name": "dataset", "mountPath": pods.DATASET_MOUNT, "readOnly": True}
    assert _job_env(pod)["quality"] == {"dataset": "file:///dataset/evals/v2/data.npz"}


def test_only_the_import_stage_mounts_the_dataset() -> None:
    later = _import_pod({"dataset": "configmap/evals/data.npz"}, input_checkpoint="import-1")
    assert all(v["name"] != "dataset" for v in later["spec"]["volumes"])
    builtin = _import_pod({"dataset": "builtin"})
    assert all(v["name"] != "dataset" for v in builtin["spec"]["volumes"])
    assert _job_env(builtin)["quality"] == {"dataset": "builtin"}
