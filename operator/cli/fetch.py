"""`bakeline fetch JOB`: a finished job's package out of the cluster, every file checked
against the sha256 its checkpoint manifest records.

It reads what the namespace's `view` role may read: the job, its result's checkpoint record
and, on ConfigMap lanes, the job's checkpoint store. A package on a Volume lane sits on the
job's claim, which only a pod can read; that is not fetched yet (the command says so).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bakeline.api.common import GROUP, VERSION
from bakeline.checkpoints.configmap import ConfigMapData, ConfigMapStore
from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError
from bakeline.cli.cluster import load_credentials
from bakeline.runtime.pods import checkpoint_record_name


class FetchError(Exception):
    """Why the package cannot be fetched, in words for the user."""


def fetch_command(job: str, namespace: str | None, to: Path | None) -> int:
    try:
        namespace = load_credentials(namespace)
        destination = to or Path(job)
        manifest_files = fetch_package(client.CoreV1Api(), namespace, job, destination)
    except FetchError as exc:
        print(f"bakeline fetch: {namespace}/{job}: {exc}", file=sys.stderr)
        return 1
    total = sum(size for _, size in manifest_files)
    print(
        f"bakingjob {namespace}/{job}: {len(manifest_files)} files, {total} bytes, "
        f"every sha256 checked, in {destination}"
    )
    return 0


def fetch_package(
    core: client.CoreV1Api, namespace: str, job: str, destination: Path
) -> list[tuple[str, int]]:
    """Write the job's result package into `destination` (which must not exist); returns its
    files and sizes. Raises FetchError with the reason when it cannot."""
    if destination.exists():
        raise FetchError(f"{destination} already exists; name another with --to")
    status = _job_status(namespace, job)
    if status.get("phase") != "Succeeded":
        raise FetchError(f"the job has not succeeded (phase {status.get('phase') or 'unset'})")
    checkpoint = str(status.get("currentCheckpoint") or "")
    record = _read_configmap(core, namespace, checkpoint_record_name(job, checkpoint))
    if record is None:
        raise FetchError(f"the record of its result checkpoint {checkpoint} is gone")
    data = record.data
    if data.get("storage") != "ConfigMap":
        raise FetchError(
            f"its package is on the job's volume (claim {data.get('claim')}), which only a pod "
            "can read; bakeline fetch reads packages in a ConfigMap store (a lane with "
            "storage: ConfigMap) for now"
        )
    store = ConfigMapStore(_StoreReader(core, namespace), prefix=data["storePrefix"])
    try:
        manifest = store.restore(data["storeId"], destination)
    except (ChecksumMismatchError, ManifestError) as exc:
        raise FetchError(f"the stored package does not match its manifest: {exc}") from exc
    if data.get("artifactSha256") and manifest.artifact_sha256 != data["artifactSha256"]:
        shutil.rmtree(destination, ignore_errors=True)
        raise FetchError(
            f"the stored artifact's sha256 {manifest.artifact_sha256} is not the one the job "
            f"recorded ({data['artifactSha256']})"
        )
    return [(entry.path, entry.size_bytes) for entry in manifest.files]


def _job_status(namespace: str, job: str) -> Mapping[str, Any]:
    try:
        obj: Any = client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, "bakingjobs", job
        )
    except ApiException as exc:
        raise FetchError("no such BakingJob" if exc.status == 404 else str(exc.reason)) from exc
    return dict(obj.get("status") or {})


def _read_configmap(core: client.CoreV1Api, namespace: str, name: str) -> ConfigMapData | None:
    try:
        item: Any = core.read_namespaced_config_map(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise FetchError(f"reading ConfigMap {name}: {exc.reason}") from exc
    return ConfigMapData.from_api(_json(item))


@dataclass(frozen=True)
class _StoreReader:
    """The checkpoint store's ConfigMaps, read only (bakeline.checkpoints.configmap)."""

    core: client.CoreV1Api
    namespace: str

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        raise NotImplementedError("bakeline fetch only reads the checkpoint store")

    def get(self, name: str) -> ConfigMapData | None:
        return _read_configmap(self.core, self.namespace, name)

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        listing: Any = self.core.list_namespaced_config_map(
            self.namespace, label_selector=selector, _preload_content=False
        )
        return [ConfigMapData.from_api(item) for item in _json(listing).get("items") or []]

    def delete(self, name: str) -> None:
        raise NotImplementedError("bakeline fetch only reads the checkpoint store")


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))
