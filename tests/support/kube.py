"""Helpers for tests that talk to the real API server through the pinned kubectl."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import yaml

from bakeline.stagepod.store import ApiServer, KubeConfigMapClient
from controlplane import ControlPlane

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 60,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def to_yaml(manifests: Iterable[dict[str, Any]] | dict[str, Any]) -> str:
    docs = [manifests] if isinstance(manifests, dict) else list(manifests)
    return yaml.safe_dump_all(docs, sort_keys=False)


def apply(
    cluster: ControlPlane,
    manifests: Iterable[dict[str, Any]] | dict[str, Any] | str,
    namespace: str | None = None,
    server_side: bool = False,
) -> str:
    """`kubectl apply` one or more manifests (dicts or YAML text); returns kubectl's output."""
    text = manifests if isinstance(manifests, str) else to_yaml(manifests)
    args = ["apply", "-f", "-"]
    if server_side:
        args.append("--server-side")
    if namespace:
        args += ["-n", namespace]
    return cluster.kubectl(*args, input=text).stdout


def get(cluster: ControlPlane, resource: str, name: str, namespace: str | None = None) -> Any:
    """The object as JSON, or None if it does not exist."""
    args = ["get", resource, name, "-o", "json", "--ignore-not-found"]
    if namespace:
        args += ["-n", namespace]
    out = cluster.kubectl(*args).stdout
    return json.loads(out) if out.strip() else None


def job_finished(
    cluster: ControlPlane, name: str, namespace: str, timeout: float = 120
) -> dict[str, Any]:
    """The BakingJob once it has Succeeded or Failed."""

    def done() -> dict[str, Any] | None:
        job = get(cluster, "bj", name, namespace) or {}
        phase = (job.get("status") or {}).get("phase")
        return job if phase in ("Succeeded", "Failed") else None

    return wait_for(done, timeout, interval=1, what=f"job {name} to finish")


def warnings_about(cluster: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Warning Events about the object named `name`."""
    listed = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name},type=Warning",
        "-o",
        "json",
    ).stdout
    return list(json.loads(listed)["items"])


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def wait_for_condition(
    cluster: ControlPlane,
    resource: str,
    name: str,
    namespace: str,
    kind: str,
    status: str = "True",
    timeout: float = 60,
) -> dict[str, Any]:
    """Wait until the object's status.conditions has `kind` with `status`; return the object."""

    def probe() -> dict[str, Any] | None:
        obj = get(cluster, resource, name, namespace)
        cond = condition(obj, kind)
        return obj if cond and cond.get("status") == status else None

    return wait_for(probe, timeout, what=f"{resource}/{name} condition {kind}={status}")


def stage_configmaps(
    cluster: ControlPlane,
    namespace: str,
    owner: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
) -> KubeConfigMapClient:
    """The ConfigMap client stage pods use (bakeline.stagepod.store), as the admin."""
    api = ApiServer(cluster.server, cluster.ca_file, lambda: cluster.admin_token)
    return KubeConfigMapClient(api, namespace, owner or {}, labels or {})
