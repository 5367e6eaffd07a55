"""`bakeline fetch JOB`: a finished job's package out of the cluster, every file checked
against the sha256 its checkpoint manifest records.

It reads what the namespace's `view` role may read: the job, its result's checkpoint record,
pods and the job's checkpoint store. A package on a Volume lane sits on the job's claim, which
only a pod can read: a fetch pod (`build_fetch_pod`, run as the stage ServiceAccount) copies it
into the job's ConfigMap store. The operator runs that pod when the job succeeds
(`handlers/job_export.py`, packages up to its --export-max-bytes); for a bigger package, or
after a failed copy, `bakeline fetch` creates it, which takes the namespace's `edit` role.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bakeline.api.common import GROUP, VERSION
from bakeline.checkpoints.configmap import (
    ConfigMapData,
    ConfigMapStore,
    StoreReader,
    label_selector,
)
from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError
from bakeline.cli.cluster import load_credentials
from bakeline.contract import parse_termination
from bakeline.runtime.pods import (
    LABEL_JOB,
    build_fetch_pod,
    checkpoint_record_name,
    fetch_pod_name,
    label_value,
    terminated_state,
)

FETCH_TIMEOUT_S = 300.0


class FetchError(Exception):
    """Why the package cannot be fetched, in words for the user."""


def fetch_command(
    job: str, namespace: str | None, to: Path | None, stage_account: str = "bakeline-stage"
) -> int:
    try:
        namespace = load_credentials(namespace)
        destination = to or Path(job)
        manifest_files = fetch_package(
            client.CoreV1Api(), namespace, job, destination, stage_account
        )
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
    core: client.CoreV1Api,
    namespace: str,
    job: str,
    destination: Path,
    stage_account: str = "bakeline-stage",
) -> list[tuple[str, int]]:
    """Write the job's result package into `destination` (which must not exist); returns its
    files and sizes. Raises FetchError with the reason when it cannot."""
    if destination.exists():
        raise FetchError(f"{destination} already exists; name another with --to")
    obj = _job(namespace, job)
    status = dict(obj.get("status") or {})
    if status.get("phase") != "Succeeded":
        raise FetchError(f"the job has not succeeded (phase {status.get('phase') or 'unset'})")
    checkpoint = str(status.get("currentCheckpoint") or "")
    record = _read_configmap(core, namespace, checkpoint_record_name(job, checkpoint))
    if record is None:
        raise FetchError(f"the record of its result checkpoint {checkpoint} is gone")
    data = dict(record.data)
    if data.get("storage") != "ConfigMap":
        # Only a pod can read the job's claim: one copies the package into the job's store.
        data |= _export(core, obj, checkpoint, stage_account)
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


def _job(namespace: str, job: str) -> dict[str, Any]:
    try:
        obj: Any = client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, "bakingjobs", job
        )
    except ApiException as exc:
        raise FetchError("no such BakingJob" if exc.status == 404 else str(exc.reason)) from exc
    return dict(obj)


def _export(
    core: client.CoreV1Api, job: Mapping[str, Any], checkpoint: str, stage_account: str
) -> dict[str, str]:
    """Run (or find) the job's fetch pod for `checkpoint`; where it stored the package."""
    namespace = job["metadata"]["namespace"]
    name = fetch_pod_name(job["metadata"]["name"], checkpoint)
    if _pod(core, namespace, name) is None:  # the operator's copy, or an earlier fetch's
        pod = build_fetch_pod(
            job, checkpoint=checkpoint, image=_image(core, job), service_account=stage_account
        )
        try:
            core.create_namespaced_pod(namespace, cast(Any, pod))  # the client takes dicts too
        except ApiException as exc:
            if exc.status == 403:
                raise FetchError(
                    "the package is on the job's volume, which only a pod can read; the "
                    f"operator did not copy it out ({_exported(job)}), and this identity may "
                    f"not create pods (the namespace's edit role may): {_reason(exc)}"
                ) from exc
            if exc.status != 409:  # created meanwhile: its result serves
                raise FetchError(f"creating pod {name}: {_reason(exc)}") from exc
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    while True:
        state = _pod(core, namespace, name) or {}
        phase = (state.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        if time.monotonic() > deadline:
            raise FetchError(
                f"pod {name} did not finish in {FETCH_TIMEOUT_S:.0f} s (phase {phase})"
            )
        time.sleep(1.0)
    message = parse_termination(str(terminated_state(state).get("message") or ""))
    stored = (message.store if message else None) or {}
    if phase != "Succeeded" or not stored.get("id"):
        why = message.message if message and message.message else f"it ended {phase}"
        raise FetchError(f"pod {name} could not copy the package out of the volume: {why}")
    return {"storePrefix": str(stored.get("prefix")), "storeId": str(stored["id"])}


def _pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _json(core.read_namespaced_pod(name, namespace, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise FetchError(f"reading pod {name}: {_reason(exc)}") from exc


def _exported(job: Mapping[str, Any]) -> str:
    """What the job's `Exported` condition says (handlers/job_export.py)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Exported":
            return str(condition.get("message") or condition.get("reason"))
    return "the job has no Exported condition"


def _image(core: client.CoreV1Api, job: Mapping[str, Any]) -> str:
    """The image the job's stages ran in (its final stage pod's): it holds `bakeline`."""
    selector = f"{LABEL_JOB}={label_value(job['metadata']['name'])}"
    listing: Any = core.list_namespaced_pod(
        job["metadata"]["namespace"], label_selector=selector, _preload_content=False
    )
    for item in _json(listing).get("items") or []:
        for container in (item.get("spec") or {}).get("containers") or []:
            if container.get("image"):
                return str(container["image"])
    raise FetchError("no stage pod of the job is left to tell which image to run the copy in")


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def _read_configmap(core: client.CoreV1Api, namespace: str, name: str) -> ConfigMapData | None:
    try:
        item: Any = core.read_namespaced_config_map(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise FetchError(f"reading ConfigMap {name}: {exc.reason}") from exc
    return ConfigMapData.from_api(_json(item))


@dataclass(frozen=True)
class _StoreReader(StoreReader):
    """The checkpoint store's ConfigMaps, read with the caller's own identity."""

    core: client.CoreV1Api
    namespace: str

    def get(self, name: str) -> ConfigMapData | None:
        return _read_configmap(self.core, self.namespace, name)

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        listing: Any = self.core.list_namespaced_config_map(
            self.namespace, label_selector=label_selector(labels), _preload_content=False
        )
        return [ConfigMapData.from_api(item) for item in _json(listing).get("items") or []]


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))
