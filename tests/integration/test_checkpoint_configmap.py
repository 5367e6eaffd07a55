"""The ConfigMap checkpoint store on the real API server: a checkpoint of several MB across
immutable ConfigMaps under the 1 MiB limit, restored byte for byte; a damaged part refused."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bakeline.checkpoints import ConfigMapData, ConfigMapStore
from bakeline.checkpoints.configmap import (
    COMPONENT_DATA,
    LABEL_COMPONENT,
    ConfigMapExistsError,
)
from bakeline.checkpoints.manifest import (
    ChecksumMismatchError,
    Manifest,
    file_entry,
    write_manifest,
)
from controlplane import ControlPlane

pytestmark = pytest.mark.cluster


class KubeConfigMaps:
    """The store's ConfigMapClient on the kubernetes client, for one namespace."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self.core, self.namespace = client.CoreV1Api(api_client), namespace

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": dict(labels)},
            "data": dict(data),
            "binaryData": {k: base64.b64encode(v).decode() for k, v in binary_data.items()},
            "immutable": True,
        }
        try:
            self.core.create_namespaced_config_map(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise ConfigMapExistsError(name) from exc
            raise

    def get(self, name: str) -> ConfigMapData | None:
        try:
            found = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _data(found)

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        found = self.core.list_namespaced_config_map(self.namespace, label_selector=selector)
        return [_data(item) for item in found.items]

    def delete(self, name: str) -> None:
        try:
            self.core.delete_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _data(found: Any) -> ConfigMapData:
    return ConfigMapData(
        name=found.metadata.name,
        labels=found.metadata.labels or {},
        data=found.data or {},
        binary_data={k: base64.b64decode(v) for k, v in (found.binary_data or {}).items()},
    )


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
    configmaps = KubeConfigMaps(cluster.api_client(), namespace)
    store = ConfigMapStore(configmaps, prefix="job-1")
    payload = bytes(range(256)) * 12_000  # 3 MB, incompressible enough: four ConfigMaps
    source = _checkpoint(tmp_path / "out", payload)
    ref = store.put(source, stage="quantize", cache_key="a" * 64)
    parts = configmaps.list({LABEL_COMPONENT: COMPONENT_DATA})
    assert len(parts) == 4
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
