"""A Succeeded job's package on a Volume lane, copied into the job's ConfigMap store so that
`bakeline fetch` works with the namespace's `view` role (which may read ConfigMaps and pods but
create nothing). Part of the job pass (`handlers/jobs.py`) for finished jobs.

The copy is the fetch pod `bakeline fetch` would otherwise have to create (`build_fetch_pod`,
one per result checkpoint, run as the stage ServiceAccount): the operator creates it once, and
its termination message names the copy. Packages above `--export-max-bytes` stay on the volume
only, since each copy lives in etcd; the `Exported` condition says which case holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bakeline.contract import parse_termination
from bakeline.handlers.config import OperatorConfig
from bakeline.kube.client import Kube, status_changes
from bakeline.kube.conditions import set_condition
from bakeline.runtime import pods as manifests

CONDITION = "Exported"


def reconcile_export(kube: Kube, config: OperatorConfig, obj: dict[str, Any]) -> None:
    """Start, or read the outcome of, the copy of a Succeeded Volume-lane job's package.

    Sets the `Exported` condition in `obj["status"]` (and on the API server) when it changes;
    the fetch pod's end wakes the job (its pods are the job's), so nothing here polls."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = dict(obj.get("status") or {})
    checkpoint = str(status.get("currentCheckpoint") or "")
    if status.get("phase") != "Succeeded" or not checkpoint:
        return
    pod_name = manifests.fetch_pod_name(name, checkpoint)
    pod = kube.job_pods(namespace, name).get(pod_name)
    if pod is not None:
        _say(kube, obj, status, *_outcome(pod, checkpoint))
        return
    record = _record(kube, namespace, name, checkpoint)
    if record is None or record.get("storage") != "Volume":
        return  # a ConfigMap lane's package is in its store already
    size = int(json.loads(record.get("result.json") or "{}").get("sizeBytes") or 0)
    if size > config.export_max_bytes:
        limit = f"above the operator's --export-max-bytes {config.export_max_bytes}"
        _say(
            kube,
            obj,
            status,
            "False",
            "NotExported",
            f"the package of {checkpoint} ({size} bytes) stays on the job's volume only "
            f"({limit}): `bakeline fetch` needs the namespace's edit role to copy it out, or "
            "set spec.output",
        )
        return
    kube.create_pod(
        manifests.build_fetch_pod(
            obj, checkpoint=checkpoint, image=config.image, service_account=config.service_account
        )
    )
    _say(kube, obj, status, "False", "Exporting", _exporting(checkpoint, pod_name))


def _record(kube: Kube, namespace: str, job: str, checkpoint: str) -> Mapping[str, Any] | None:
    for record in kube.job_records(namespace, job):
        data = record.get("data") or {}
        if data.get("checkpoint") == checkpoint:
            return dict(data)
    return None


def _outcome(pod: Mapping[str, Any], checkpoint: str) -> tuple[str, str, str]:
    phase = (pod.get("status") or {}).get("phase")
    name = pod["metadata"]["name"]
    if phase not in ("Succeeded", "Failed"):
        return "False", "Exporting", _exporting(checkpoint, name)
    terminated = manifests.terminated_state(pod)
    message = parse_termination(str(terminated.get("message") or ""))
    stored = (message.store if message else None) or {}
    if phase == "Succeeded" and stored.get("id"):
        return (
            "True",
            "Exported",
            f"the package of {checkpoint} is in ConfigMaps too: `bakeline fetch` works with "
            "the namespace's view role",
        )
    why = message.message if message and message.message else f"pod {name} ended {phase}"
    return (
        "False",
        "ExportFailed",
        f"could not copy the package of {checkpoint} out of the volume: {why}; `bakeline "
        f"fetch` needs the edit role (delete pod {name} to try again)",
    )


def _exporting(checkpoint: str, pod: str) -> str:
    return f"copying the package of {checkpoint} from the job's volume into ConfigMaps (pod {pod})"


def _say(
    kube: Kube,
    obj: dict[str, Any],
    status: dict[str, Any],
    value: str,
    reason: str,
    message: str,
) -> None:
    meta = obj["metadata"]
    observed = obj.get("status") or {}
    set_condition(status, CONDITION, value, reason, message, meta)
    if not status_changes(status, observed):
        return
    kube.patch_status("BakingJob", meta["namespace"], meta["name"], status)
    kube.post_event(obj, "Warning" if reason == "ExportFailed" else "Normal", reason, message)
    obj["status"] = status
