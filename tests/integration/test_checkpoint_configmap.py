"""The ConfigMap checkpoint store on the real API server: a checkpoint of several MB across
immutable ConfigMaps under the 1 MiB limit, restored byte for byte; a damaged part refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from bakeline.checkpoints import ConfigMapStore
from bakeline.checkpoints.configmap import COMPONENT_BLOB, LABEL_COMPONENT
from bakeline.checkpoints.manifest import (
    ChecksumMismatchError,
    Manifest,
    file_entry,
    write_manifest,
)
from bakeline.cli.stage_store import KubeConfigMapClient
from controlplane import ControlPlane
from support.kube import stage_configmaps

pytestmark = pytest.mark.cluster


def _configmaps(cluster: ControlPlane, namespace: str) -> KubeConfigMapClient:
    """The client stage pods use; a ConfigMap stands in for the job that owns the checkpoints."""
    core = client.CoreV1Api(cluster.api_client())
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="job-1"))
    meta = core.create_namespaced_config_map(namespace, body).metadata
    assert meta is not None
    uid = meta.uid
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "job-1", "uid": uid}
    return stage_configmaps(cluster, namespace, reference)


def _checkpoint(directory: Path, payload: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(payload)
    (directory / "tokenizer.json").write_text('{"vocab": {}}')
    files = [file_entry(directory, "model.onnx", "model"), file_entry(directory, "tokenizer.json")]
    manifest = Manifest.model_validate(
        {"modelName": "m", "artifact": "model.onnx", "format": "onnx", "files": files}
    )
    write_manifest(directory, manifest)
    return directory


def test_checkpoint_across_config_maps_round_trips_and_refuses_damage(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    configmaps = _configmaps(cluster, namespace)
    store = ConfigMapStore(configmaps, prefix="job-1")
    payload = bytes(range(256)) * 12_000  # 3 MB, incompressible enough: four ConfigMaps
    source = _checkpoint(tmp_path / "out", payload)
    ref = store.put(source, stage="quantize", cache_key="a" * 64)
    blob = configmaps.list({LABEL_COMPONENT: COMPONENT_BLOB})
    parts = [m for m in blob if m.binary_data]
    assert len(parts) == 4 and len(blob) == 5  # the chunks, then the blob's index
    core = client.CoreV1Api(cluster.api_client())
    assert all(core.read_namespaced_config_map(p.name, namespace).immutable for p in parts)

    store.restore(ref.id, tmp_path / "restored")
    for name in ("model.onnx", "tokenizer.json", "manifest.json"):
        assert (tmp_path / "restored" / name).read_bytes() == (source / name).read_bytes()
    assert store.lookup("a" * 64) == ref

    # Immutable ConfigMaps cannot be edited; replace one part with other bytes of the same size.
    victim = parts[1]
    key = next(iter(victim.binary_data))
    damaged = {**victim.binary_data, key: b"\0" * len(victim.binary_data[key])}
    configmaps.delete(victim.name)
    configmaps.create(victim.name, victim.labels, {}, damaged)
    with pytest.raises(ChecksumMismatchError):
        store.restore(ref.id, tmp_path / "again")
    assert not (tmp_path / "again").exists()

    store.delete(ref.id)
    assert configmaps.list({"bakeline.io/checkpoint-store": "job-1"}) == []
